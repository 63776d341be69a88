"""IP-in-IP desired state and planning (pure: no kernel, no root)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tabby.calc.messages import (
    ConfigUpdate,
    InSync,
    IPPoolRemove,
    IPPoolUpdate,
    RouteRemove,
    RouteUpdate,
)
from tabby.dataplane.ipip.model import (
    DesiredRoute,
    IpipState,
    Op,
    RouteSpec,
    lpm_entries,
    plan,
)

LOCAL = "172.31.0.10"


def block(dst: str, node_ip: str, *, same_subnet: bool = False, encap: str = "ipip",
          kind: str = "remote-block") -> RouteUpdate:
    return RouteUpdate(dst, kind, dst_node="n", dst_node_ip=node_ip, next_hop=node_ip,
                       encap=encap, same_subnet=same_subnet)


def state(*msgs: object) -> IpipState:
    s = IpipState(LOCAL)
    for m in msgs:
        s.update(m)
    return s


def test_always_encapsulates_every_ipip_route() -> None:
    s = state(
        IPPoolUpdate("10.65.0.0/16", ipip_mode="Always"),
        block("10.65.1.0/26", "172.31.0.11", same_subnet=True),
        block("10.65.2.0/26", "172.31.1.10"),
        block("10.65.3.5/32", "172.31.0.12", kind="remote-workload"),
        block("10.65.4.0/32", "172.31.0.13", kind="remote-tunnel"),
    )
    assert s.desired_routes() == {
        "10.65.1.0/26": DesiredRoute("10.65.1.0/26", "172.31.0.11", True),
        "10.65.2.0/26": DesiredRoute("10.65.2.0/26", "172.31.1.10", True),
        "10.65.3.5/32": DesiredRoute("10.65.3.5/32", "172.31.0.12", True),
        "10.65.4.0/32": DesiredRoute("10.65.4.0/32", "172.31.0.13", True),
    }
    assert lpm_entries(s.desired_routes(), LOCAL)["10.65.2.0/26"] == ("172.31.1.10", LOCAL)
    assert s.active()


def test_cross_subnet_plain_route_on_our_subnet() -> None:
    s = state(
        IPPoolUpdate("10.65.0.0/16", ipip_mode="CrossSubnet"),
        block("10.65.1.0/26", "172.31.0.11", same_subnet=True),
        block("10.65.2.0/26", "172.31.1.10", same_subnet=False),
    )
    d = s.desired_routes()
    assert d["10.65.1.0/26"].encap is False and d["10.65.2.0/26"].encap is True
    assert lpm_entries(d, LOCAL) == {"10.65.2.0/26": ("172.31.1.10", LOCAL)}
    # The most specific pool decides.
    s.update(IPPoolUpdate("10.65.1.0/24", ipip_mode="Always"))
    assert s.desired_routes()["10.65.1.0/26"].encap is True
    s.update(IPPoolRemove("10.65.1.0/24"))
    assert s.desired_routes()["10.65.1.0/26"].encap is False


def test_what_is_not_ours_is_ignored() -> None:
    s = state(
        block("10.65.1.0/26", "172.31.0.11", encap="vxlan"),
        block("10.65.2.0/26", "172.31.0.12", encap="none"),
        RouteUpdate("10.65.0.1/32", "local-workload", ifname="cali1234", encap="ipip"),
        RouteUpdate("10.65.0.0/26", "local-block", encap="ipip"),
        block("fd00:65::/122", "fd00::11"),
        block("10.65.5.0/26", LOCAL),  # never tunnel to ourselves
        ConfigUpdate(),
    )
    assert s.desired_routes() == {}
    assert not s.active()
    # A pool with ipipMode makes IP-in-IP active before any route needs it (decap ready).
    s.update(IPPoolUpdate("10.65.0.0/16", ipip_mode="CrossSubnet"))
    assert s.active()
    s.update(IPPoolUpdate("10.65.0.0/16", ipip_mode="Never"))
    assert not s.active()


def test_allowed_nodes() -> None:
    s = state(
        block("10.65.1.0/26", "172.31.0.11"),
        block("10.65.2.0/26", "172.31.0.12", encap="vxlan"),  # still a node
        RouteUpdate("172.31.1.20/32", "remote-host", dst_node="n9"),
        RouteUpdate("172.31.2.0/24", "remote-host"),  # not a single address
        RouteUpdate(f"{LOCAL}/32", "remote-host"),
    )
    assert s.allowed_nodes() == {"172.31.0.11", "172.31.0.12", "172.31.1.20"}
    assert s.set_peers(["172.31.3.3", "172.31.0.11"])
    assert not s.set_peers(["172.31.0.11", "172.31.3.3"])
    assert "172.31.3.3" in s.allowed_nodes()
    s.update(RouteRemove("10.65.1.0/26"))
    assert s.allowed_nodes() == {"172.31.0.11", "172.31.0.12", "172.31.1.20", "172.31.3.3"}
    s.set_peers([])
    assert s.allowed_nodes() == {"172.31.0.12", "172.31.1.20"}


def test_update_reports_changes_only() -> None:
    s = IpipState(LOCAL)
    r = block("10.65.1.0/26", "172.31.0.11")
    assert s.update(r) and not s.update(r)
    assert s.update(block("10.65.1.0/26", "172.31.0.12"))
    assert s.update(RouteRemove("10.65.1.0/26")) and not s.update(RouteRemove("10.65.1.0/26"))
    assert s.update(InSync()) and not s.update(InSync()) and s.in_sync
    assert not s.update(ConfigUpdate())
    p = IPPoolUpdate("10.65.0.0/16", ipip_mode="Always")
    assert s.update(p) and not s.update(p)


def test_tunnel_address() -> None:
    s = state(RouteUpdate("10.65.0.0/32", "local-tunnel", encap="vxlan"))
    assert s.tunnel_address() is None
    s.update(RouteUpdate("10.65.0.0/32", "local-tunnel", encap="ipip"))
    assert s.tunnel_address() == "10.65.0.0"


# --- planning ------------------------------------------------------------------------------


def spec(dst: str, gw: str, mtu: int | None = 1480) -> RouteSpec:
    return RouteSpec(dst, gw, "eth0", onlink=True, mtu=mtu)


def test_plan_order_makes_no_stale_encapsulation() -> None:
    ops = plan(
        routes={"10.65.1.0/26": spec("10.65.1.0/26", "172.31.0.12"),
                "10.65.3.0/26": spec("10.65.3.0/26", "172.31.0.13")},
        actual_routes={"10.65.1.0/26": spec("10.65.1.0/26", "172.31.0.11"),
                       "10.65.2.0/26": spec("10.65.2.0/26", "172.31.0.11")},
        lpm={"10.65.1.0/26": ("172.31.0.12", LOCAL), "10.65.3.0/26": ("172.31.0.13", LOCAL)},
        actual_lpm={"10.65.1.0/26": ("172.31.0.11", LOCAL),
                    "10.65.2.0/26": ("172.31.0.11", LOCAL)},
        nodes={"172.31.0.12", "172.31.0.13"},
        actual_nodes={"172.31.0.11", "172.31.0.12"},
    )
    assert [(o.kind, o.key) for o in ops] == [
        ("allow-node", "172.31.0.13"),
        ("lpm-set", "10.65.1.0/26"),  # moved block: map entry changes in place first
        ("lpm-set", "10.65.3.0/26"),
        ("route-set", "10.65.1.0/26"),
        ("route-set", "10.65.3.0/26"),
        ("route-del", "10.65.2.0/26"),
        ("lpm-del", "10.65.2.0/26"),  # after its route is gone
        ("forget-node", "172.31.0.11"),
    ]


def test_plan_is_empty_when_in_step() -> None:
    routes = {"10.65.1.0/26": spec("10.65.1.0/26", "172.31.0.11")}
    lpm = {"10.65.1.0/26": ("172.31.0.11", LOCAL)}
    assert plan(routes=routes, actual_routes=dict(routes), lpm=lpm, actual_lpm=dict(lpm),
                nodes={"172.31.0.11"}, actual_nodes={"172.31.0.11"}) == []


def _execute(ops: list[Op], routes: dict, lpm: dict, nodes: set) -> None:
    for op in ops:
        if op.kind == "route-set":
            routes[op.key] = op.value
        elif op.kind == "route-del":
            routes.pop(op.key)
        elif op.kind == "lpm-set":
            lpm[op.key] = op.value
        elif op.kind == "lpm-del":
            lpm.pop(op.key)
        elif op.kind == "allow-node":
            nodes.add(op.key)
        elif op.kind == "forget-node":
            nodes.discard(op.key)


NODES = [f"172.31.{s}.{h}" for s in (0, 1) for h in (11, 12, 13)]
DSTS = [f"10.65.{i}.0/26" for i in range(6)] + ["10.65.9.7/32"]

route_msg = st.builds(
    lambda dst, node, same, encap, remove: RouteRemove(dst) if remove else RouteUpdate(
        dst, "remote-block", dst_node_ip=node, encap=encap, same_subnet=same),
    st.sampled_from(DSTS), st.sampled_from(NODES), st.booleans(),
    st.sampled_from(["ipip", "ipip", "none"]), st.booleans(),
)
pool_msg = st.sampled_from([IPPoolUpdate("10.65.0.0/16", ipip_mode=m)
                            for m in ("Always", "CrossSubnet", "Never")])


def _desired(s: IpipState) -> tuple[dict, dict, set]:
    d = s.desired_routes()
    routes = {k: spec(k, r.node_ip, 1480 if r.encap else None) for k, r in d.items()}
    return routes, lpm_entries(d, LOCAL), set(s.allowed_nodes())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(route_msg, pool_msg), max_size=30), st.integers(1, 29), st.randoms())
def test_replayed_split_squashed_and_reordered(msgs, split, rnd: random.Random) -> None:
    """Applying plans after every message, after a split, or once at the end reaches the
    same state; the squashed stream (last message per key) and any order of distinct keys
    give the same desired state."""
    full = state(*msgs)
    want = _desired(full)

    # one plan per message
    s, routes, lpm, nodes = IpipState(LOCAL), {}, {}, set()
    for m in msgs:
        s.update(m)
        r, lp, n = _desired(s)
        _execute(plan(routes=r, actual_routes=routes, lpm=lp, actual_lpm=lpm, nodes=n,
                      actual_nodes=nodes), routes, lpm, nodes)
    assert (routes, lpm, nodes) == want

    # split in two batches
    s, routes, lpm, nodes = IpipState(LOCAL), {}, {}, set()
    for part in (msgs[:split], msgs[split:]):
        for m in part:
            s.update(m)
        r, lp, n = _desired(s)
        _execute(plan(routes=r, actual_routes=routes, lpm=lp, actual_lpm=lpm, nodes=n,
                      actual_nodes=nodes), routes, lpm, nodes)
    assert (routes, lpm, nodes) == want

    # squashed: the last message per key, in a random order
    last: dict[str, object] = {}
    for m in msgs:
        key = m.cidr if isinstance(m, IPPoolUpdate) else m.dst  # type: ignore[union-attr]
        last[key] = m
    squashed = list(last.values())
    rnd.shuffle(squashed)
    assert _desired(state(*squashed)) == want

    # and back to nothing: every route removed, the pool gone
    for m in list(last.values()):
        if isinstance(m, RouteUpdate):
            full.update(RouteRemove(m.dst))
        elif isinstance(m, IPPoolUpdate):
            full.update(IPPoolRemove(m.cidr))
    r, lp, n = _desired(full)
    assert r == {} and lp == {} and not full.active()
    ops = plan(routes=r, actual_routes=routes, lpm=lp, actual_lpm=lpm, nodes=n,
               actual_nodes=nodes)
    _execute(ops, routes, lpm, nodes)
    assert routes == {} and lpm == {} and nodes == set()
