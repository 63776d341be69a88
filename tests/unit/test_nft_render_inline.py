# The messages coerce friendly inputs ("tcp", 80, ("tier", "name")); mypy sees the
# normalised field types, so argument types are not checked in this file.
# mypy: disable-error-code="arg-type"
"""Allow-only policies inlined into their tier chains or looked up by port (pure).

Which policies are inlined (allow-only, at most INLINE_MAX compiled rules, not failed
closed) and which keep their own chain (any Deny/Pass/Log rule, more rules, a problem);
which runs of policies get a port index (allow-only, every rule with a protocol and
destination ports, at least INDEX_MIN in a row); the tier chain's exact text around
them; that a kernel refusal of an inlined rule is still blamed on its policy; the
deltas (a changed inlined policy rewrites its tier chains, an indexed one its chain and
map elements, a member change touches only the set). Then a randomised check: whole
endpoint walks (tiers, Pass, end-of-tier drops, profiles, unknown and rejected policies)
rendered plain, inlined, and inlined + indexed give the same verdict and the same Log
rules for every packet.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from test_nft_render_driver import FakeNft
from test_nft_render_merge_random import (
    IPSETS,
    PORTS,
    Packet,
    _part_matches,
    _tokens,
    match_term,
    random_packet,
    random_rules,
)

from tabby.calc.messages import (
    InSync,
    IPSetUpdate,
    PolicyId,
    PolicyUpdate,
    ProfileUpdate,
    Rule,
    TierInfo,
    WorkloadEndpointUpdate,
)
from tabby.dataplane.nft import build
from tabby.dataplane.nft.model import Ruleset, full_text
from tabby.dataplane.nft.names import MARK_ACCEPT, policy_chain
from tabby.dataplane.nft.render import INDEX_MIN, INLINE_MAX, DataplaneState

ALLOW = ProfileUpdate("allow", (Rule("allow"),), (Rule("allow"),))
ACCEPT = "meta mark set meta mark | 0x10000 return"


def pol(name: str, *rules: Rule) -> PolicyUpdate:
    return PolicyUpdate(("t", name), tuple(rules))


def state(*pols: PolicyUpdate, tiers: tuple[TierInfo, ...]) -> DataplaneState:
    s = DataplaneState(ipsets=dict(IPSETS), profiles={"allow": ALLOW})
    for p in pols:
        s.policies[p.policy_id] = p
    s.workloads["w"] = WorkloadEndpointUpdate("w", "cali1", tiers=tiers, profile_ids=("allow",))
    return s


def tier_chain(rs: Ruleset) -> tuple[str, ...]:
    (name,) = [n for n in rs.chains if n.startswith("tabby-ti-")]
    return rs.chains[name].rules


WEB = pol("web", Rule("allow", protocol="tcp", src_ip_set_ids=("a",), dst_ports=(80,), rule_id="web"))
POLICIES = {
    "web": WEB,  # allow-only, one rule per family: inlined
    "empty": pol("empty"),  # no rules: inlined as nothing
    "deny": pol("deny", Rule("deny", protocol="udp", rule_id="deny")),
    "pass": pol("pass", Rule("pass", protocol="udp", rule_id="pass")),
    "log": pol("log", Rule("log"), Rule("allow", protocol="tcp", rule_id="log")),
    # allow-only but too many nft rules: protocols never merge
    "long": pol("long", *(Rule("allow", protocol=p, src_nets=("10.1.0.0/16",))
                          for p in ("tcp", "udp", "sctp", "udplite", "icmp"))),
    "badset": pol("badset", Rule("allow", src_ip_set_ids=("nope",))),  # fails closed
}


def test_which_policies_are_inlined() -> None:
    names = tuple(POLICIES)
    rs = build(state(*POLICIES.values(), tiers=(TierInfo("t", "Deny", names),)),
               inline_max=INLINE_MAX).ruleset
    chains = {n for n in names if policy_chain(f"t/{n}", True) in rs.chains}
    assert chains == {"deny", "pass", "log", "long", "badset", "unknown"} - {"unknown"}
    assert len(build(state(POLICIES["long"], tiers=()), inline_max=INLINE_MAX).ruleset.chains) > 0
    rules = tier_chain(rs)
    assert [r for r in rules if "comment \"web\"" in r] == [
        f'meta nfproto ipv4 meta l4proto tcp tcp dport 80 ip saddr @tabby-ip4-a {ACCEPT} comment "web"',
        f'meta nfproto ipv6 meta l4proto tcp tcp dport 80 ip6 saddr @tabby-ip6-a {ACCEPT} comment "web"']
    # without inlining every policy has its chain, as before
    plain = build(state(*POLICIES.values(), tiers=(TierInfo("t", "Deny", names),))).ruleset
    assert all(policy_chain(f"t/{n}", True) in plain.chains for n in names)


def test_tier_chain_text_around_inlined_policies() -> None:
    tiers = (TierInfo("t", "Deny", ("web", "pass", "empty", "web2", "deny", "zz")),)
    web2 = pol("web2", Rule("allow", protocol="tcp", dst_ports=(81,), rule_id="web2"))
    zz = pol("zz", Rule("allow", rule_id="zz"))
    rs = build(state(WEB, POLICIES["pass"], POLICIES["empty"], web2, POLICIES["deny"], zz,
                     tiers=tiers), inline_max=INLINE_MAX).ruleset
    rules = tier_chain(rs)
    jump_pass = f"meta mark & 0x20000 == 0x0 jump {policy_chain('t/pass', True)}"
    assert rules == (
        "meta mark set meta mark & 0xfffdffff",
        *[r for r in rules if '"web"' in r],  # first: no PASS test needed
        jump_pass,
        "meta mark & 0x10000 == 0x10000 return",
        # a Pass above skips the rest of the tier (no end-of-tier drop): leave at once,
        # so the copied rules below need no guard; "empty" adds nothing
        "meta mark & 0x20000 == 0x20000 return",
        f'meta l4proto tcp tcp dport 81 {ACCEPT} comment "web2"',
        f"meta mark & 0x20000 == 0x0 jump {policy_chain('t/deny', True)}",
        "meta mark & 0x10000 == 0x10000 return",
        "meta mark & 0x20000 == 0x20000 return",
        f'{ACCEPT} comment "zz"',
        'meta mark & 0x20000 == 0x0 drop comment "end of tier t"',
    )
    assert len([r for r in rules if '"web"' in r]) == 2


def test_a_kernel_refusal_of_an_inlined_rule_fails_its_policy_closed() -> None:
    dp = FakeNft(INLINE_MAX)  # the driver's default: inlining on
    for m in (ALLOW, WEB, IPSetUpdate("a", "ip", frozenset({"10.0.0.1"})), InSync(),
              WorkloadEndpointUpdate("w", "cali1", tiers=(TierInfo("t", "Deny", ("web",)),),
                                     profile_ids=("allow",))):
        dp.on_update(m)
    text = full_text(build(dp.state, inline_max=INLINE_MAX).ruleset)
    line = next(i + 1 for i, ln in enumerate(text.lines) if '"web"' in ln)
    assert text.lines[line - 1].startswith("    meta nfproto ipv4")  # inside the tier chain
    dp.fail = [f"/dev/stdin:{line}:5-40: Error: Could not process rule: Argument list too long"]
    res = dp.apply()
    assert set(res.problems) == {"policy:t/web"} and len(dp.calls) == 2
    assert dp._applied is not None and policy_chain("t/web", True) in dp._applied.chains
    assert dp._applied.chains[policy_chain("t/web", True)].rules[0].startswith("drop ")


def synced(*msgs: object) -> FakeNft:
    dp = FakeNft(INLINE_MAX)  # the driver's default: inlining on
    for m in (ALLOW, *msgs, InSync()):
        dp.on_update(m)
    assert dp.apply().mode == "full"
    return dp


def big(n: int, port: int = 80, base: int = 2) -> PolicyUpdate:
    """n (source /32, port) rules: one merged rule with a named set, so inlined."""
    return pol("big", *(Rule("allow", protocol="tcp", src_nets=(f"10.{base}.{k // 250}.{k % 250 + 1}/32",),
                             dst_ports=(port + k % 3,)) for k in range(n)))


WEP = WorkloadEndpointUpdate("w", "cali1", tiers=(TierInfo("t", "Deny", ("web", "big")),),
                             profile_ids=("allow",))


def test_deltas_with_inlined_policies() -> None:
    dp = synced(IPSetUpdate("a", "ip", frozenset({"10.0.0.1"})), WEB, big(600), WEP)
    assert dp._applied is not None
    assert not [c for c in dp._applied.chains if c.startswith("tabby-pi-")]
    (bigset,) = [s for s in dp._applied.sets if s.startswith("tabby-pi-t_big")]
    # an IP set member: the set only
    dp.on_update(IPSetUpdate("a", "ip", frozenset({"10.0.0.2"})))
    assert dp.apply().mode == "delta"
    assert dp.calls[-1] == ("delete element inet tabby tabby-ip4-a { 10.0.0.1 }\n"
                            "add element inet tabby tabby-ip4-a {\n  10.0.0.2\n}\n")
    # one rule of the big merged policy: an element delta of its set, no chain rewritten
    rules = list(big(600).inbound_rules)
    rules[7] = dataclasses.replace(rules[7], src_nets=("10.9.0.1/32",))
    dp.on_update(pol("big", *rules))
    assert dp.apply().mode == "delta"
    assert "10.9.0.1" in dp.calls[-1] and "chain" not in dp.calls[-1]
    assert f"tabby {bigset} " in dp.calls[-1]
    # a small policy's rule: its tier chain is rewritten, nothing else
    dp.on_update(pol("web", Rule("allow", protocol="tcp", dst_ports=(8080,), rule_id="web")))
    assert dp.apply().mode == "delta"
    lines = dp.calls[-1].splitlines()
    assert lines[0].startswith("flush chain inet tabby tabby-ti-t-")
    assert all(ln.startswith("add rule inet tabby tabby-ti-t-") for ln in lines[1:])
    # every pair replaced: the concatenated interval set is rebuilt, its (tier) chain emptied first
    dp.on_update(pol("big", *(Rule("allow", protocol="tcp", src_nets=(f"10.3.{k // 250}.{k % 250 + 1}/32",),
                                   dst_ports=(f"{1000 + 2 * k}:{1001 + 2 * k}",)) for k in range(600))))
    dp.apply()
    (pairs,) = [s for s in dp._applied.sets if s.startswith("tabby-pi-t_big")]
    assert dp._applied.sets[pairs].interval
    dp.on_update(pol("big", *(Rule("allow", protocol="tcp", src_nets=(f"10.4.{k // 250}.{k % 250 + 1}/32",),
                                   dst_ports=(f"{1000 + 2 * k}:{1001 + 2 * k}",)) for k in range(600))))
    assert dp.apply().mode == "delta"
    text = dp.calls[-1]
    steps = ["flush chain inet tabby tabby-ti-t-", f"delete set inet tabby {pairs}",
             f"add set inet tabby {pairs} ", f"add element inet tabby {pairs} {{",
             "add rule inet tabby tabby-ti-t-"]
    at = [text.index(s) for s in steps]
    assert at == sorted(at), text


def test_a_policy_growing_past_the_limit_gets_its_chain_back() -> None:
    dp = synced(IPSetUpdate("a", "ip", frozenset({"10.0.0.1"})), WEB, big(600), WEP)
    dp.on_update(POLICIES["long"].__class__(("t", "web"), POLICIES["long"].inbound_rules))
    assert dp.apply().mode == "delta"
    assert dp._applied is not None and policy_chain("t/web", True) in dp._applied.chains
    text = dp.calls[-1]
    assert text.index(f"add chain inet tabby {policy_chain('t/web', True)}") < text.index(
        f"jump {policy_chain('t/web', True)}")


# --- randomised: whole endpoint walks, inlined or not, give the same verdicts ------------------


def walk(rs: Ruleset, chain: str, p: Packet, st: dict[str, object]) -> str | None:
    """Run a regular chain: "drop", or None when it returns or ends. `st` holds the mark
    and the Log prefixes met."""
    for line in rs.chains[chain].rules:
        toks, i, ok = _tokens(line), 0, True
        while ok and i < len(toks):
            t = toks[i]
            mark = st["mark"]
            assert isinstance(mark, int)
            if t == "comment":
                i += 2
            elif t == "log":
                st["logs"].append(toks[i + 2].strip('"').rstrip())  # type: ignore[attr-defined]
                i += 3
            elif t == "return":
                return None
            elif t == "drop":
                return "drop"
            elif t == "jump":
                if walk(rs, toks[i + 1], p, st) == "drop":
                    return "drop"
                i += 2
            elif toks[i:i + 6] == ("meta", "l4proto", ".", "th", "dport", "vmap"):
                m = rs.maps[toks[i + 6][1:]]
                assert m.verb == "jump"
                sels = [("meta", "l4proto"), ("th", "dport")]
                values = [p.proto, p.dport if p.dport is not None else -1]
                hits = [v for k, v in m.elements if all(
                    _part_matches(s, part.strip(), val)
                    for s, part, val in zip(sels, k.split(" . "), values, strict=True))]
                assert len(hits) <= 1  # segments are disjoint
                if hits and walk(rs, hits[0], p, st) == "drop":
                    return "drop"
                i += 7
            elif toks[i:i + 3] == ("meta", "mark", "set"):
                op, val = toks[i + 5], int(toks[i + 6], 16)
                st["mark"] = mark & val if op == "&" else mark | val
                i += 7
            elif toks[i:i + 3] == ("meta", "mark", "&"):
                ok = mark & int(toks[i + 3], 16) == int(toks[i + 5], 16)
                i += 6
            else:
                ok, i = match_term(toks, i, rs, p)
    return None


def verdict(rs: Ruleset, chain: str, p: Packet) -> tuple[str, list[str]]:
    st: dict[str, object] = {"mark": 0, "logs": []}
    out = walk(rs, chain, p, st)
    mark = st["mark"]
    assert isinstance(mark, int)
    return out or ("allow" if mark & MARK_ACCEPT else "none"), st["logs"]  # type: ignore[return-value]


def random_policy(rng: random.Random, i: int) -> PolicyUpdate:
    rules = random_rules(rng, rng.randint(0, 5))
    if rng.random() < 0.6:  # mostly allow-only, so most of them are inlined
        rules = tuple(dataclasses.replace(r, action="allow", log_prefix=None) for r in rules)
    if rng.random() < 0.5:  # port-keyed: indexable
        rules = tuple(Rule("allow", protocol=rng.choice(["tcp", "udp"]),
                           dst_ports=tuple(rng.sample(PORTS, rng.randint(1, 2))),
                           src_ip_set_ids=rng.choice([(), ("a",), ("c",)]),
                           src_nets=rng.choice([(), ("10.0.0.0/30",), ("10.0.0.5/32", "fd00::/126")]),
                           rule_id=f"k{i}.{j}")
                      for j in range(rng.randint(1, 30 if rng.random() < 0.2 else 3)))
    return pol(f"p{i}", *rules)


def random_state(rng: random.Random) -> DataplaneState:
    pols = [random_policy(rng, i) for i in range(10)]
    names = [p.policy_id.name for p in pols] + ["missing"]  # never sent: fails closed
    tiers = tuple(
        TierInfo(f"t{k}", rng.choice(["Deny", "Deny", "Pass"]),
                 tuple(rng.sample(names, rng.randint(0, 7))), tuple(rng.sample(names, rng.randint(0, 7))))
        for k in range(rng.randint(1, 3)))
    s = DataplaneState(ipsets=dict(IPSETS))
    for p in pols:  # the same policy in every tier (ids are per tier)
        for t in tiers:
            s.policies[PolicyId(t.name, p.policy_id.name)] = dataclasses.replace(
                p, policy_id=PolicyId(t.name, p.policy_id.name))
    s.profiles["allow"] = ALLOW
    s.profiles["web"] = ProfileUpdate("web", (Rule("allow", protocol="tcp", dst_ports=(80,)),),
                                      (Rule("deny", protocol="udp"),))
    profiles = tuple(rng.sample(["allow", "web"], rng.randint(0, 2)))
    s.workloads["w"] = WorkloadEndpointUpdate("w", "cali1", tiers=tiers, profile_ids=profiles)
    s.workloads["v"] = WorkloadEndpointUpdate("v", "cali2", tiers=tiers[:1], profile_ids=profiles)
    if rng.random() < 0.3:  # a policy the kernel refused: a single drop, never inlined
        s.rejected[f"policy:{tiers[0].name}/p0"] = "refused"
    return s


@pytest.mark.parametrize("seed", range(12))
def test_inlined_indexed_and_plain_give_the_same_verdicts(seed: int) -> None:
    rng = random.Random(seed)
    inlined = indexed = 0
    for _ in range(15):
        s = random_state(rng)
        plain = build(s).ruleset
        inl = build(s, inline_max=INLINE_MAX).ruleset
        both = build(s, inline_max=rng.choice([0, INLINE_MAX]), index_min=2).ruleset
        inlined += sum(1 for c in plain.chains if c.startswith(("tabby-pi-", "tabby-po-"))
                       and c not in inl.chains)
        indexed += sum(1 for m in both.maps.values() if m.verb == "jump")
        assert inl.sets == plain.sets == both.sets
        for _ in range(30):
            p = random_packet(rng)
            for chain in ("tabby-tw-cali1", "tabby-fw-cali1", "tabby-tw-cali2", "tabby-fw-cali2"):
                want = verdict(plain, chain, p)
                assert verdict(inl, chain, p) == want, (chain, p)
                assert verdict(both, chain, p) == want, (chain, p)
    assert inlined > 0 and indexed > 0


# --- the port index -------------------------------------------------------------------------


def keyed(name: str, *ports: object, proto: str = "tcp", sets: tuple[str, ...] = ("a",)) -> PolicyUpdate:
    return pol(name, *(Rule("allow", protocol=proto, src_ip_set_ids=sets, dst_ports=(p,),
                            rule_id=f"{name}/{p}") for p in ports))


def index_state(*pols: PolicyUpdate) -> DataplaneState:
    return state(*pols, tiers=(TierInfo("t", "Deny", tuple(p.policy_id.name for p in pols)),))


def test_which_runs_are_indexed() -> None:
    ks = [keyed(f"k{i}", 1000 + i) for i in range(INDEX_MIN)]
    anyport = pol("anyport", Rule("allow", src_ip_set_ids=("a",), rule_id="anyport"))
    deny = POLICIES["deny"]
    # a full run (with a port-less allow-only policy among them: inlined beside the index)
    rs = build(index_state(*ks[:3], anyport, *ks[3:], deny), inline_max=INLINE_MAX,
               index_min=INDEX_MIN).ruleset
    (m,) = [m for m in rs.maps.values() if m.verb == "jump"]
    assert (m.type, m.interval) == ("inet_proto . inet_service", False)
    assert m.elements == tuple(sorted((f"tcp . {1000 + i}", policy_chain(f"t/k{i}", True))
                                      for i in range(INDEX_MIN)))
    assert all(policy_chain(f"t/k{i}", True) in rs.chains for i in range(INDEX_MIN))
    assert tier_chain(rs) == (
        "meta mark set meta mark & 0xfffdffff",
        f"meta l4proto . th dport vmap @{m.name}",
        "meta mark & 0x10000 == 0x10000 return",
        *[r for r in tier_chain(rs) if '"anyport"' in r],
        f"meta mark & 0x20000 == 0x0 jump {policy_chain('t/deny', True)}",
        "meta mark & 0x10000 == 0x10000 return",
        'meta mark & 0x20000 == 0x0 drop comment "end of tier t"')
    # a Deny policy splits the run: one short of INDEX_MIN on each side, so no index
    rs = build(index_state(*ks[:-1], deny, ks[-1]), inline_max=INLINE_MAX,
               index_min=INDEX_MIN).ruleset
    assert not [m for m in rs.maps.values() if m.verb == "jump"]
    assert not [c for c in rs.chains if c.startswith("tabby-pi-t_k")]  # all inlined
    # a Pass policy before the index: leave the tier at once if it passed
    rs = build(index_state(POLICIES["pass"], *ks), inline_max=INLINE_MAX,
               index_min=INDEX_MIN).ruleset
    assert tier_chain(rs)[1:5] == (
        f"jump {policy_chain('t/pass', True)}", "meta mark & 0x10000 == 0x10000 return",
        "meta mark & 0x20000 == 0x20000 return",
        f"meta l4proto . th dport vmap @{next(iter(m for m in rs.maps if '-x' in m))}")


def test_overlapping_ports_jump_to_each_policy_in_tier_order() -> None:
    pols = [keyed("a1", "80:90", proto="tcp"), keyed("a2", 85, "100:101", proto="tcp"),
            keyed("a3", 85, proto="udp")]
    rs = build(index_state(*pols), index_min=3).ruleset
    (m,) = [m for m in rs.maps.values() if m.verb == "jump"]
    a1, a2, a3 = (policy_chain(f"t/{p}", True) for p in ("a1", "a2", "a3"))
    both = dict(m.elements)["tcp . 85"]
    assert m.interval and dict(m.elements) == {
        "tcp . 80-84": a1, "tcp . 85": both, "tcp . 86-90": a1, "tcp . 100-101": a2,
        "udp . 85": a3}
    assert rs.chains[both].rules == (f"jump {a1}", "meta mark & 0x10000 == 0x10000 return",
                                     f"jump {a2}", "meta mark & 0x10000 == 0x10000 return")


def test_an_indexed_policy_change_is_a_chain_and_map_element_delta() -> None:
    ks = [keyed(f"k{i}", 1000 + i) for i in range(20)]
    wep = WorkloadEndpointUpdate("w", "cali1", tiers=(
        TierInfo("t", "Deny", tuple(p.policy_id.name for p in ks)),), profile_ids=("allow",))
    dp = synced(IPSetUpdate("a", "ip", frozenset({"10.0.0.1"})), *ks, wep)
    assert dp._applied is not None
    (m,) = [m for m in dp._applied.maps if "-x" in m]
    dp.on_update(keyed("k7", 2007))
    assert dp.apply().mode == "delta"
    k7 = policy_chain("t/k7", True)
    lines = dp.calls[-1].splitlines()
    assert lines[0] == f"flush chain inet tabby {k7}"
    assert lines[1].startswith(f"add rule inet tabby {k7} meta nfproto ipv4 ")
    assert lines[-2:] == [f"delete element inet tabby {m} {{ tcp . 1007 }}",
                          f"add element inet tabby {m} {{ tcp . 2007 : jump {k7} }}"]
    assert "chain inet tabby tabby-ti-" not in dp.calls[-1]
    # a member of the shared IP set: the set only, as ever
    dp.on_update(IPSetUpdate("a", "ip", frozenset({"10.0.0.2"})))
    dp.apply()
    assert dp.calls[-1].count("\n") == 4 and "tabby-ip4-a" in dp.calls[-1]
    # fewer than INDEX_MIN left: the map and its rule go, the policies are inlined
    dp.on_update(WorkloadEndpointUpdate("w", "cali1", tiers=(
        TierInfo("t", "Deny", ("k1", "k2")),), profile_ids=("allow",)))
    assert dp.apply().mode == "delta"
    text = dp.calls[-1]
    # the map goes after the rule using it and before the chains its elements jump to
    assert text.index("flush chain inet tabby tabby-ti-") < text.index(f"delete map inet tabby {m}")
    assert text.index(f"delete map inet tabby {m}") < text.index(
        f"delete chain inet tabby {policy_chain('t/k7', True)}")
    assert not [c for c in dp._applied.chains if c.startswith("tabby-pi-")]
