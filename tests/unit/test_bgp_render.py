"""BIRD configuration rendering: golden files, and every golden output parses with `bird -p`.

Regenerate the golden files after an intended change with
    TABBY_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_bgp_render.py
and review the diff.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tabby.bgp.bird import check_config
from tabby.bgp.inputs import BgpInputs
from tabby.bgp.render import AGENT_IPIP_ANNOTATION, render, router_id

GOLDEN = Path(__file__).parent / "golden" / "bgp"
UPDATE = os.environ.get("TABBY_UPDATE_GOLDEN") == "1"


def res(kind: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec}


PLURAL = {"Node": "nodes", "BGPPeer": "bgppeers", "BGPConfiguration": "bgpconfigurations",
          "IPPool": "ippools", "BGPFilter": "bgpfilters"}


class Builder:
    def __init__(self) -> None:
        self.inputs = BgpInputs()

    def add(self, kind: str, name: str, spec: dict[str, Any], **kw: Any) -> Builder:
        changed = self.inputs.apply(f"/tabby/v3/{PLURAL[kind]}/{name}", res(kind, name, spec, **kw))
        assert changed
        return self

    def node(self, name: str, ip: str | None, labels: dict[str, str] | None = None,
             annotations: dict[str, str] | None = None, **bgp: Any) -> Builder:
        spec = {"bgp": {**({"ipv4Address": ip} if ip else {}), **bgp}} if (ip or bgp) else {}
        return self.add("Node", name, spec, labels=labels, annotations=annotations)

    def pool(self, name: str, cidr: str, **spec: Any) -> Builder:
        return self.add("IPPool", name, {"cidr": cidr, **spec})

    def peer(self, name: str, **spec: Any) -> Builder:
        return self.add("BGPPeer", name, spec)

    def config(self, name: str, **spec: Any) -> Builder:
        return self.add("BGPConfiguration", name, spec)

    def filter(self, name: str, **spec: Any) -> Builder:
        return self.add("BGPFilter", name, spec)

    def block(self, node: str, cidr: str, state: str = "confirmed") -> Builder:
        key = f"/tabby/ipam/v2/affinities/{node}/{cidr.replace('/', '-')}"
        self.inputs.apply(key, {"node": node, "cidr": cidr, "state": state})
        return self


def three_nodes() -> Builder:
    return (
        Builder()
        .node("n1", "172.31.0.10/24")
        .node("n2", "172.31.0.11/24")
        .node("n3", "172.31.1.10/24")
        .pool("default-ipv4-ippool", "10.65.0.0/16")
        .block("n1", "10.65.1.0/26")
        .block("n1", "10.65.7.192/26")
        .block("n1", "10.65.9.0/26", state="pending")
        .block("n2", "10.65.2.0/26")
    )


def mesh() -> tuple[BgpInputs, str]:
    return three_nodes().inputs, "n1"


def route_reflector() -> Builder:
    return (
        three_nodes()
        .config("default", nodeToNodeMeshEnabled=False)
        .node("n3", "172.31.1.10/24", labels={"route-reflector": "true"},
              routeReflectorClusterID="244.0.0.1")
        .peer("peer-with-route-reflectors", nodeSelector="all()",
              peerSelector="route-reflector == 'true'")
    )


def rr_reflector() -> tuple[BgpInputs, str]:
    return route_reflector().inputs, "n3"


def rr_client() -> tuple[BgpInputs, str]:
    return route_reflector().inputs, "n1"


def external_peers() -> tuple[BgpInputs, str]:
    b = (
        three_nodes()
        .config("default", asNumber=65010, listenPort=1179, bindMode="NodeIP")
        .config("node.n1", logSeverityScreen="Warning")
        .node("n2", "172.31.0.11/24", asNumber=65020)
        .peer("tor", peerIP="172.31.0.1", asNumber=65000, keepOriginalNextHop=True,
              password={"secretKeyRef": {"name": "bgp-secrets", "key": "tor"}},
              maxRestartTime="90s", keepaliveTime="10s")
        .peer("spine", peerIP="192.0.2.7:1790", asNumber=65001, nodeSelector="rack == 'a'",
              localASNumber=65099, sourceAddress="None", ttlSecurity=2,
              numAllowedLocalASNumbers=1, nextHopMode="Self")
        .peer("only-n2", node="n2", peerIP="192.0.2.8", asNumber=65002)
        # A node-specific peer to the global peer's address is dropped (global wins).
        .peer("tor-again", nodeSelector="all()", peerIP="172.31.0.1", asNumber=65000)
        .node("n1", "172.31.0.10/24", labels={"rack": "a"})
    )
    return b.inputs, "n1"


def pools_and_services() -> tuple[BgpInputs, str]:
    b = (
        Builder()
        .node("n1", "172.31.0.10/24", ipv6Address="fd00:31::10/64")
        .node("n2", "172.31.0.11/24", ipv6Address="fd00:31::11/64")
        .node("v6only", None, ipv6Address="fd00:31::12/64")
        .pool("ipip-always", "10.66.0.0/16", ipipMode="Always")
        .pool("ipip-cross", "10.67.0.0/16", ipipMode="CrossSubnet")
        .pool("vxlan", "10.68.0.0/16", vxlanMode="Always")
        .pool("private", "10.69.0.0/16", disableBGPExport=True)
        .pool("v6", "fd10::/48")
        .block("n1", "10.66.0.0/26")
        .block("n1", "10.68.0.64/26")
        .block("n1", "10.69.0.0/26")
        .block("n1", "fd10::/122")
        .config(
            "default",
            serviceClusterIPs=[{"cidr": "10.96.0.0/12"}, {"cidr": "fd20::/108"}],
            serviceExternalIPs=[{"cidr": "198.51.100.0/24"}],
            communities=[{"name": "no-export", "value": "65535:65281"}],
            prefixAdvertisements=[
                {"cidr": "10.66.0.0/16", "communities": ["no-export", "64512:100"]},
                {"cidr": "fd10::/48", "communities": ["64512:100:200"]},
            ],
            ignoredInterfaces=["docker*", "virbr0"],
            logSeverityScreen="Debug",
        )
    )
    return b.inputs, "n1"


def ipip_pools(annotations: dict[str, str] | None) -> Builder:
    return (
        Builder()
        .node("n1", "172.31.0.10/24", annotations=annotations)
        .node("n2", "172.31.0.11/24")
        .node("n3", "172.31.1.10/24")
        .pool("ipip-always", "10.66.0.0/16", ipipMode="Always")
        .pool("ipip-cross", "10.67.0.0/16", ipipMode="CrossSubnet")
        .pool("vxlan", "10.68.0.0/16", vxlanMode="Always")
        .pool("plain", "10.69.0.0/16")
        .block("n1", "10.66.0.0/26")
        .block("n1", "10.67.0.0/26")
    )


def agent_ipip() -> tuple[BgpInputs, str]:
    """The agent programs IP-in-IP with BPF (no tunl0): BIRD keeps IPIP pools out of the
    kernel as it does VXLAN pools, and still announces the blocks."""
    return ipip_pools({AGENT_IPIP_ANNOTATION: "bpf"}).inputs, "n1"


def invalid_things() -> tuple[BgpInputs, str]:
    b = three_nodes()
    b.inputs.apply("/tabby/v3/bgppeers/broken", res("BGPPeer", "broken",
                                                     {"peerIP": "300.1.1.1", "asNumber": 65000}))
    b.inputs.apply("/tabby/v3/bgppeers/bad-as", res("BGPPeer", "bad-as",
                                                    {"peerIP": "192.0.2.1", "asNumber": 0}))
    b.peer("nobody", peerSelector="role == 'nothing'")
    b.peer("v6-peer", peerIP="fd00::1", asNumber=65000)
    b.peer("secret-missing", peerIP="192.0.2.9", asNumber=65000,
           password={"secretKeyRef": {"name": "gone", "key": "k"}})
    b.peer("evil-password", peerIP="192.0.2.10", asNumber=65000,
           password={"secretKeyRef": {"name": "bgp-secrets", "key": "quote"}})
    b.peer("good", peerIP="192.0.2.11", asNumber=65000)
    return b.inputs, "n1"


LONG_FILTER = "a-filter-name-much-longer-than-what-a-bird-symbol.can-hold"


def bgp_filters() -> tuple[BgpInputs, str]:
    """BGPFilters on external peers: every operator, prefixLength, source, interface, both
    families, a filter without rules, a long name, a missing and an invalid filter."""
    b = (
        three_nodes()
        .node("n1", "172.31.0.10/24", ipv6Address="fd00:31::10/64")
        .pool("v6", "fd10::/48")
        .block("n1", "fd10::/122")
        .filter("edge",
                exportV4=[
                    {"action": "Reject", "matchOperator": "Equal", "cidr": "10.65.7.192/26"},
                    {"action": "Accept", "matchOperator": "In", "cidr": "10.65.0.0/16",
                     "prefixLength": {"max": 26}},
                    {"action": "Reject", "matchOperator": "NotEqual", "cidr": "10.65.1.0/26",
                     "source": "RemotePeers"},
                ],
                importV4=[
                    {"action": "Accept", "matchOperator": "In", "cidr": "198.51.100.0/24",
                     "prefixLength": {"min": 25, "max": 28}},
                    {"action": "Reject", "matchOperator": "NotIn", "cidr": "203.0.113.0/24"},
                    {"action": "Reject", "interface": "eth*.10"},
                ],
                importV6=[
                    {"action": "Accept", "matchOperator": "Equal", "cidr": "2001:db8::/64"},
                    {"action": "Reject", "matchOperator": "NotIn", "cidr": "2001:db8::/32",
                     "prefixLength": {"min": 48}},
                    {"action": "Reject"},
                ],
                exportV6=[{"action": "Reject", "source": "RemotePeers"}])
        .filter(LONG_FILTER, exportV4=[{"action": "Accept", "matchOperator": "In",
                                        "cidr": "192.0.2.0/24", "interface": "cali*"}],
                exportV6=[{"action": "Accept", "matchOperator": "In", "cidr": "fd10::/48"}])
        .filter("no-rules")
        .peer("tor", peerIP="172.31.0.1", asNumber=65000,
              filters=[LONG_FILTER, "edge", "missing", "no-rules", "broken"])
        .peer("tor6", peerIP="fd00:31::1", asNumber=65000, filters=["edge"])
        .peer("plain", peerIP="172.31.0.2", asNumber=65000)
    )
    b.inputs.apply("/tabby/v3/bgpfilters/broken", res("BGPFilter", "broken", {
        "exportV4": [{"action": "Reject", "cidr": "10.0.0.0/8"}]}))  # no matchOperator
    return b.inputs, "n1"


def unknown_node() -> tuple[BgpInputs, str]:
    return three_nodes().inputs, "not-registered"


SECRETS = {("bgp-secrets", "tor"): "s3cret-tor", ("bgp-secrets", "quote"): 'a"b'}

SCENARIOS: dict[str, Callable[[], tuple[BgpInputs, str]]] = {
    "mesh": mesh,
    "rr_reflector": rr_reflector,
    "rr_client": rr_client,
    "external_peers": external_peers,
    "pools_and_services": pools_and_services,
    "agent_ipip": agent_ipip,
    "invalid_things": invalid_things,
    "bgp_filters": bgp_filters,
    "unknown_node": unknown_node,
}


def rendered(name: str) -> Any:
    inputs, node = SCENARIOS[name]()
    return render(inputs, node, lambda n, k: SECRETS.get((n, k)))


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_golden(name: str) -> None:
    text = rendered(name).config
    path = GOLDEN / f"{name}.conf"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path} (run with TABBY_UPDATE_GOLDEN=1)"
    assert text == path.read_text()


@pytest.mark.skipif(shutil.which("bird") is None and not os.path.exists("/usr/sbin/bird"),
                    reason="BIRD 2 not installed (Debian package bird2)")
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_golden_parses_with_bird(name: str, tmp_path: Path) -> None:
    text = (GOLDEN / f"{name}.conf").read_text()
    assert check_config(text, tmp_path / "check.conf") is None


def test_render_is_deterministic() -> None:
    for name in SCENARIOS:
        assert rendered(name).config == rendered(name).config


def test_mesh_peers_and_blocks() -> None:
    r = rendered("mesh")
    assert [(p.name, p.passive) for p in r.peers] == [
        ("Mesh_172_31_0_11", True),  # the higher address waits for us
        ("Mesh_172_31_1_10", True),
    ]
    assert r.blocks == ["10.65.1.0/26", "10.65.7.192/26"]  # the pending claim is not announced
    assert "10.65.9.0/26" not in r.config
    assert r.router_id == "172.31.0.10"
    # the other end is the active one
    inputs, _ = mesh()
    assert all(not p.passive for p in render(inputs, "n3").peers)


def test_route_reflector_roles() -> None:
    rr = rendered("rr_reflector")
    assert [(p.name, p.peer_type, p.rr_client) for p in rr.peers] == [
        ("Node_172_31_0_10", "route reflector client", True),
        ("Node_172_31_0_11", "route reflector client", True),
    ]
    assert "rr cluster id 244.0.0.1;" in rr.config
    assert "no node-to-node mesh" in rr.config
    client = rendered("rr_client")
    assert [(p.name, p.peer_type, p.rr_client) for p in client.peers] == [
        ("Node_172_31_1_10", "route reflector", False)
    ]
    assert "rr client" not in client.config
    assert not client.issues  # the RR selecting only itself is not an issue


def test_mesh_skips_route_reflectors_when_mesh_on() -> None:
    b = three_nodes().node("n3", "172.31.1.10/24", routeReflectorClusterID="244.0.0.1")
    names = [p.name for p in render(b.inputs, "n1").peers]
    assert names == ["Mesh_172_31_0_11"]
    assert render(b.inputs, "n3").peers == []  # a reflector ignores the mesh


def test_external_peer_settings() -> None:
    r = rendered("external_peers")
    by_name = {p.name: p for p in r.peers}
    assert set(by_name) == {"Mesh_172_31_0_11", "Mesh_172_31_1_10", "Global_172_31_0_1",
                            "Node_192_0_2_7_port_1790"}
    tor = by_name["Global_172_31_0_1"]
    assert (tor.password, tor.next_hop, tor.restart_time, tor.keepalive_time) == (
        "s3cret-tor", "keep", 90, 10)
    spine = by_name["Node_192_0_2_7_port_1790"]
    assert (spine.local_as, spine.source_address, spine.ttl_security, spine.next_hop) == (
        65099, None, 2, "self")
    mesh_n2 = by_name["Mesh_172_31_0_11"]
    assert mesh_n2.as_number == 65020 and mesh_n2.port == 1179
    assert "local port 1179 as 65010;" in r.config
    assert "strict bind on;" in r.config
    assert "log stderr { warning, error, auth, fatal, bug };" in r.config  # node.n1 override


def test_reverse_peering_and_manual() -> None:
    b = (
        Builder()
        .node("a", "10.0.0.1/24", labels={"role": "edge"})
        .node("b", "10.0.0.2/24")
        .config("default", nodeToNodeMeshEnabled=False)
        .peer("edge", node="b", peerSelector="role == 'edge'")
    )
    assert [p.name for p in render(b.inputs, "b").peers] == ["Node_10_0_0_1"]
    # a is selected by peerSelector: it gets the reverse session automatically
    assert [p.name for p in render(b.inputs, "a").peers] == ["Node_10_0_0_2"]
    b.peer("edge", node="b", peerSelector="role == 'edge'", reversePeering="Manual")
    assert render(b.inputs, "a").peers == []
    # peerIP pointing at a node with the same AS reverses too
    b.peer("edge", node="b", peerIP="10.0.0.1", asNumber=64512)
    assert [p.name for p in render(b.inputs, "a").peers] == ["Node_10_0_0_2"]


def test_invalid_things_become_issues() -> None:
    r = rendered("invalid_things")
    text = "\n".join(f"{i.severity} {i}" for i in r.issues)
    assert 'error BGPPeer "broken": ignored: spec.peerIP: invalid peerIP "300.1.1.1"' in text
    assert 'error BGPPeer "bad-as": ignored: spec.asNumber' in text
    assert "selects no node" in text
    assert "has no spec.bgp.ipv6Address" in text
    assert "secret 'gone' key 'k' not found" in text
    assert "password contains a quote" in text
    assert [p.name for p in r.peers if p.scope == "global"] == ["Global_192_0_2_11"]


def test_unknown_node_renders_a_safe_config() -> None:
    r = rendered("unknown_node")
    assert r.peers == [] and r.blocks == []
    assert r.issues[0].message.startswith("not found in the datastore")
    assert r.router_id == router_id(None, "not-registered")
    assert "protocol bgp " not in r.config


def test_ipv6_only_node_gets_hashed_router_id() -> None:
    inputs, _ = pools_and_services()
    r = render(inputs, "v6only")
    assert r.router_id == router_id(None, "v6only")
    assert all(p.version == 6 for p in r.peers)
    assert {p.name for p in r.peers} == {"Mesh_fd00_31__10", "Mesh_fd00_31__11"}


def test_exclude_from_external_load_balancers_label() -> None:
    b = three_nodes().config("default", serviceClusterIPs=[{"cidr": "10.96.0.0/12"}],
                             serviceExternalIPs=[{"cidr": "198.51.100.0/24"}])
    assert "198.51.100.0/24" in render(b.inputs, "n1").config
    b.node("n1", "172.31.0.10/24",
           labels={"node.kubernetes.io/exclude-from-external-load-balancers": "true"})
    text = render(b.inputs, "n1").config
    assert "198.51.100.0/24" not in text and "10.96.0.0/12" in text


def _kernel_export(config: str) -> str:
    start = config.index("filter tabby_kernel_export4 {")
    return config[start:config.index("\n}", start)]


@pytest.mark.parametrize(("annotations", "agent"), [
    (None, False),
    ({AGENT_IPIP_ANNOTATION: "bpf"}, True),
    ({AGENT_IPIP_ANNOTATION: "kernel"}, True),  # the agent's tunl0 routes, not BIRD's
    ({AGENT_IPIP_ANNOTATION: "off"}, False),  # not a value the agent writes: Calico's way
    ({"other": "bpf"}, False),
])
def test_ipip_routes_belong_to_the_agent_when_it_says_so(
        annotations: dict[str, str] | None, agent: bool) -> None:
    b = ipip_pools(annotations)
    r = render(b.inputs, "n1")
    export = _kernel_export(r.config)
    assert ("tunl0" in export) is not agent
    for cidr in ("10.66.0.0/16", "10.67.0.0/16", "10.68.0.0/16"):  # vxlan: always the agent's
        rejected = f"if net ~ {cidr} then reject;" in export
        assert rejected is (agent or cidr == "10.68.0.0/16"), cidr
    assert "10.69.0.0/16" not in export  # plain pool: BGP's routes go to the kernel
    # Announcing is unchanged: BGP peers still learn our blocks either way.
    assert r.blocks == ["10.66.0.0/26", "10.67.0.0/26"]
    assert "if net = 10.66.0.0/26 then accept;" in r.config
    # Other nodes' configurations do not depend on n1's annotation.
    assert render(b.inputs, "n2").config == render(ipip_pools(None).inputs, "n2").config


def test_annotation_change_is_an_input_change() -> None:
    b = ipip_pools(None)
    key = "/tabby/v3/nodes/n1"
    doc = res("Node", "n1", {"bgp": {"ipv4Address": "172.31.0.10/24"}},
              annotations={AGENT_IPIP_ANNOTATION: "bpf"})
    assert b.inputs.apply(key, doc)  # the controller re-renders when the agent annotates
    assert "tunl0" not in _kernel_export(render(b.inputs, "n1").config)


def test_annotation_is_the_one_the_ipip_dataplane_writes() -> None:
    from tabby.dataplane.ipip import ANNOTATION

    assert AGENT_IPIP_ANNOTATION == ANNOTATION
