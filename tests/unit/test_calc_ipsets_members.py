"""IPSetCalculator against brute force: random members (shared addresses, CIDRs, named
ports), sets taken and dropped, flushes at random points. The messages, folded into the
dataplane's view, must always equal each active set's members computed from scratch."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tabby.calc import messages as m
from tabby.calc.ipsets import IPSetCalculator
from tabby.calc.rules import PROTOCOL_NAMES, IPSetSpec, named_port_set, selector_set
from tabby.selector import parse

SPECS = [
    selector_set(parse("app == 'a'")),
    selector_set(parse("app != 'a'")),
    selector_set(parse("all()")),
    named_port_set(parse("app == 'a'"), 6, "http"),
    named_port_set(None, None, "http"),
]
KEYS = ["e0", "e1", "e2", "e3", "n:net"]
ADDRS = ["10.0.0.1", "10.0.0.2", "fd00::1", "10.1.0.0/24"]
PORTS = [("http", 6, 80), ("http", 17, 80), ("http", 6, 81), ("other", 6, 80)]

ops = st.one_of(
    st.tuples(st.just("member"), st.sampled_from(KEYS), st.sampled_from(["a", "b"]),
              st.lists(st.sampled_from(ADDRS), max_size=3).map(tuple),
              st.lists(st.sampled_from(PORTS), max_size=2, unique=True).map(tuple)),
    st.tuples(st.just("remove"), st.sampled_from(KEYS)),
    st.tuples(st.just("ref"), st.sampled_from(range(len(SPECS)))),
    st.tuples(st.just("unref"), st.sampled_from(range(len(SPECS)))),
    st.tuples(st.just("flush")),
)


def expected_members(spec: IPSetSpec, members: dict) -> set[str]:
    out: set[str] = set()
    for labels, ips, ports in members.values():
        if not spec.selector.matches(labels):
            continue
        if spec.port_name is None:
            out.update(ips)
            continue
        for name, proto, port in ports:
            if name == spec.port_name and spec.protocol in (None, proto):
                pname = PROTOCOL_NAMES.get(proto, str(proto))
                out.update(f"{ip},{pname}:{port}" for ip in ips if "/" not in ip)
    return out


def apply(view: dict[str, tuple[str, set[str]]], msg: object) -> None:
    if isinstance(msg, m.IPSetUpdate):
        view[msg.set_id] = (msg.kind, set(msg.members))
    elif isinstance(msg, m.IPSetDeltaUpdate):
        kind, have = view[msg.set_id]
        assert not (msg.added & have) and msg.removed <= have, msg
        assert not (msg.added & msg.removed), msg
        assert msg.added or msg.removed, "empty delta"
        view[msg.set_id] = (kind, (have | msg.added) - msg.removed)
    else:
        assert isinstance(msg, m.IPSetRemove)
        del view[msg.set_id]


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=40))
def test_ip_sets_agree_with_brute_force(steps):
    calc = IPSetCalculator()
    members: dict[str, tuple[dict[str, str], tuple[str, ...], tuple]] = {}
    refs = [0] * len(SPECS)
    view: dict[str, tuple[str, set[str]]] = {}
    for step in [*steps, ("flush",)]:
        if step[0] == "member":
            _, key, app, ips, ports = step
            calc.update_member(key, {"app": app}, (), ips, ports)
            members[key] = ({"app": app}, ips, ports)
        elif step[0] == "remove":
            calc.remove_member(step[1])
            members.pop(step[1], None)
        elif step[0] == "ref":
            calc.ref(SPECS[step[1]])
            refs[step[1]] += 1
        elif step[0] == "unref":
            if refs[step[1]]:
                calc.unref(SPECS[step[1]].set_id)
                refs[step[1]] -= 1
        else:
            calc.flush_updates(lambda msg: apply(view, msg))
            calc.flush_removes(lambda msg: apply(view, msg))
            active = {SPECS[i].set_id: SPECS[i] for i, n in enumerate(refs) if n}
            assert set(view) == set(active)
            for sid, spec in active.items():
                want = expected_members(spec, members)
                kind = ("ip-port" if spec.port_name else
                        "net" if any("/" in x for x in want) else "ip")
                assert view[sid] == (kind, want), sid
                assert calc.members(sid) == want
                assert calc.kind(sid) == kind
