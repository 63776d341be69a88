"""Unit tests (no root): the cluster's own VXLAN / IPIP packets between known nodes pass
host endpoint policy (as Felix accepts them ahead of it); the peer set follows the host
route and VTEP messages. The golden text is in test_nft_render.py (sample "tunnels")."""

from __future__ import annotations

from tabby.calc.messages import (
    HostEndpointRemove,
    HostEndpointUpdate,
    InSync,
    IPPoolRemove,
    IPPoolUpdate,
    RouteRemove,
    RouteUpdate,
    VTEPRemove,
    VTEPUpdate,
)
from tabby.dataplane.nft import NftDataplane, build, samples
from tabby.dataplane.nft.names import HOSTS_SET
from tabby.dataplane.vxlan import PORT

HEP = HostEndpointUpdate("n1/all", "*", ())
VXLAN_IN = f"ip saddr @{HOSTS_SET} udp dport {PORT} accept"
VXLAN_OUT = f"ip daddr @{HOSTS_SET} udp dport {PORT} accept"
IPIP_IN = f"ip saddr @{HOSTS_SET} meta l4proto 4 accept"
IPIP_OUT = f"ip daddr @{HOSTS_SET} meta l4proto 4 accept"


class FakeNft(NftDataplane):
    """Records what `nft` would have been fed instead of running it."""

    def __init__(self) -> None:
        super().__init__(None)
        self.calls: list[str] = []

    def _run(self, args: list[str], stdin: str | None) -> str:
        self.calls.append(stdin or " ".join(args))
        return ""


def host(ip: str, kind: str = "remote-host") -> RouteUpdate:
    return RouteUpdate(f"{ip}/32", kind, dst_node=f"node-{ip}", dst_node_ip=ip)


def started(*msgs: object) -> FakeNft:
    dp = FakeNft()
    for m in (*msgs, InSync()):
        dp.on_update(m)
    dp.apply()
    return dp


def rules(dp: FakeNft, chain: str) -> tuple[str, ...]:
    return build(dp.state).ruleset.chains[chain].rules


def test_accepts_come_before_host_endpoint_dispatch_per_encapsulation() -> None:
    rs = build(samples.tunnels()).ruleset
    inp, out = rs.chains["filter-input"].rules, rs.chains["filter-output"].rules
    for chain, accepts, dispatch in ((inp, (VXLAN_IN, IPIP_IN), "jump tabby-fh-dispatch"),
                                     (out, (VXLAN_OUT, IPIP_OUT), "jump tabby-th-dispatch")):
        idx = [next(i for i, r in enumerate(chain) if r.startswith(a)) for a in accepts]
        assert max(idx) < chain.index(dispatch)
    state = samples.tunnels()
    state.pools.pop("10.65.0.0/16")  # IPIP only (the disabled pool still counts)
    inp = build(state).ruleset.chains["filter-input"].rules
    assert any(r.startswith(IPIP_IN) for r in inp) and not any(VXLAN_IN in r for r in inp)


def test_nothing_rendered_without_host_endpoint_or_encapsulation() -> None:
    state = samples.tunnels()
    state.host_endpoints.clear()
    rs = build(state).ruleset
    assert HOSTS_SET not in rs.sets
    assert not any(HOSTS_SET in r for c in rs.chains.values() for r in c.rules)
    state = samples.tunnels()
    state.pools = {k: IPPoolUpdate(k) for k in state.pools}  # no pool encapsulates
    assert HOSTS_SET not in build(state).ruleset.sets


def test_peer_set_follows_host_routes_and_vteps() -> None:
    dp = started(IPPoolUpdate("10.65.0.0/16", vxlan_mode="Always"), HEP,
                 host("192.168.0.10", "local-host"), host("192.168.0.11"))
    assert dp.apply().mode == "noop"
    assert build(dp.state).ruleset.sets[HOSTS_SET].elements == {"192.168.0.10", "192.168.0.11"}
    assert VXLAN_IN in " ".join(rules(dp, "filter-input"))

    # A new node is one element, no chain rewritten.
    dp.on_update(host("192.168.0.12"))
    assert dp.apply().mode == "delta"
    assert dp.calls[-1].splitlines() == ["add element inet tabby tabby-hosts4 {",
                                         "  192.168.0.12", "}"]
    # A VTEP's underlay address counts too; IPv6 is not a tunnel peer here.
    dp.on_update(VTEPUpdate("n4", "10.65.4.0", "66:00:00:00:00:04", "192.168.1.13"))
    dp.on_update(VTEPUpdate("n6", "10.65.6.0", "66:00:00:00:00:06", "fd00::6"))
    dp.apply()
    assert "192.168.1.13" in dp.calls[-1] and "fd00::6" not in dp.calls[-1]
    # Removed, or no longer a host route: gone; a repeated update changes nothing.
    dp.on_update(RouteRemove("192.168.0.11/32"))
    dp.on_update(RouteUpdate("192.168.0.12/32", "remote-workload", dst_node="x",
                             next_hop="192.168.0.12"))
    dp.on_update(VTEPRemove("n4"))
    dp.apply()
    assert build(dp.state).ruleset.sets[HOSTS_SET].elements == {"192.168.0.10"}
    dp.on_update(host("192.168.0.10", "local-host"))
    assert dp.apply().mode == "noop"


def test_node_churn_costs_nothing_without_host_endpoints() -> None:
    dp = started(IPPoolUpdate("10.65.0.0/16", vxlan_mode="Always"), host("192.168.0.11"))
    dp.on_update(host("192.168.0.12"))
    assert not dp.pending and dp.apply().mode == "noop"
    dp.on_update(HEP)  # the peers learnt meanwhile are rendered with the host endpoint
    dp.apply()
    assert "192.168.0.12" in dp.calls[-1] and VXLAN_OUT in dp.calls[-1]
    dp.on_update(IPPoolRemove("10.65.0.0/16"))
    dp.apply()
    assert f"delete set inet tabby {HOSTS_SET}" in dp.calls[-1]
    dp.on_update(HostEndpointRemove("n1/all"))
    dp.apply()
    assert HOSTS_SET not in build(dp.state).ruleset.sets
