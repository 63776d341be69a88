"""An external router (GoBGP) peering through a global BGPPeer; live reconfiguration; a node
leaving."""

from __future__ import annotations

import shutil

import pytest

from tabby.bgp.testing import BgpLab, GoBGP, wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("gobgpd") is None,
                       reason="gobgpd not installed (Debian package gobgpd)"),
]
NODES = ("n1", "n2", "n3")
EXT_AS = 65000


def test_external_peer_reload_and_node_leaving(bgp_lab: BgpLab) -> None:
    topo = bgp_lab.topo
    bgp_lab.add_pool("10.65.0.0/16")
    for name in NODES:
        bgp_lab.add_node(topo.add_node(name))
    ext = topo.add_node("ext")
    blocks = {}
    for name in NODES:
        bgp_lab.assign_ip(name)
        [blocks[name]] = bgp_lab.blocks_of(name)
        bgp_lab.start(name)
    before = bgp_lab.wait_established("n1", 2)
    pid_before = before.controller.get("bird_pid") or bgp_lab.status("n1").controller.get("bird_pid")

    # An external router with a password, then the BGPPeer that points every node at it.
    gobgp = GoBGP(topo, ext, bgp_lab.workdir, EXT_AS,
                  [(topo.nodes[n].ip, 64512) for n in NODES], password="t0p-secret")
    bgp_lab.add_secret("bgp-secrets", "ext", "t0p-secret")
    bgp_lab.apply({"kind": "BGPPeer", "metadata": {"name": "ext-router"},
                   "spec": {"peerIP": ext.ip, "asNumber": EXT_AS,
                            "password": {"secretKeyRef": {"name": "bgp-secrets", "key": "ext"}}}})
    wait_for(lambda: list(gobgp.neighbors().values()) == ["established"] * 3, 30, 0.2,
             "GoBGP sessions")

    def full_rib() -> dict[str, list[str]] | None:
        rib = gobgp.rib()
        return rib if len(rib) == 3 and all(len(v) == 3 for v in rib.values()) else None

    rib = wait_for(full_rib, 20, 0.2, "pod blocks from every node in GoBGP's RIB")
    assert set(rib) == set(blocks.values())
    # every node offers every block, itself as next hop (no keepOriginalNextHop)
    assert all(v == sorted(topo.nodes[n].ip for n in NODES) for v in rib.values())

    # Adding the peer reloaded BIRD without touching the mesh sessions.
    after = bgp_lab.status("n1")
    for peer in before.peers:
        now = after.peer(peer.name)
        assert now is not None and now.established and now.since == peer.since
    ext_peer = after.peer(ext.ip)
    assert ext_peer is not None and ext_peer.peer_type == "global" and ext_peer.established
    assert ext_peer.name == "Global_" + ext.ip.replace(".", "_")
    if pid_before:
        assert after.controller["bird_pid"] == pid_before
    assert after.controller["reloads"] >= 1

    # Routes from the external router reach every node's kernel.
    gobgp.announce("198.51.100.0/24")
    for name in NODES:
        bgp_lab.wait_route(name, "198.51.100.0/24", ext.ip)

    # n3 leaves: its BIRD stops (routes withdrawn everywhere), then its Node is deleted.
    bgp_lab.stop("n3")
    for name in ("n1", "n2"):
        bgp_lab.wait_no_route(name, blocks["n3"])
    wait_for(lambda: blocks["n3"] not in gobgp.rib(), 20, 0.2, "n3's block withdrawn")
    assert bgp_lab.routes("n3") == {}  # `down` also removed BIRD's routes from n3's kernel
    bgp_lab.delete("Node", "n3")
    mesh_n3 = "Mesh_" + topo.nodes["n3"].ip.replace(".", "_")
    wait_for(lambda: bgp_lab.status("n1").peer(mesh_n3) is None, 10, 0.05, "n3's session removed")
    assert bgp_lab.status("n1").peer(ext.ip).established  # type: ignore[union-attr]
    gobgp.stop()
