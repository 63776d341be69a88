"""BGPFilter on a real BIRD: an export Reject keeps one node's block from an external router
(GoBGP) while the other block still arrives; an import Reject keeps an announced prefix out
of the nodes' kernels; changing the filter is a live reload."""

from __future__ import annotations

import shutil

import pytest

from tabby.bgp.testing import BgpLab, GoBGP, wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("gobgpd") is None,
                       reason="gobgpd not installed (Debian package gobgpd)"),
]
NODES = ("n1", "n2")
EXT_AS = 65000
KEPT_OUT = "198.51.100.0/24"  # announced by GoBGP, rejected by the import filter
LET_IN = "203.0.113.0/24"  # announced by GoBGP, no rule matches: the default import


def _filter(reject_export: str | None) -> dict:
    # The first rules match nothing here but make BIRD evaluate `ifname` and `source` on
    # every route (a blackhole block has no interface): a runtime error would drop routes.
    export = [{"action": "Reject", "interface": "nomatch*"}]
    if reject_export:
        export.append({"action": "Reject", "matchOperator": "Equal", "cidr": reject_export})
    return {"kind": "BGPFilter", "metadata": {"name": "ext-edge"},
            "spec": {"exportV4": export,
                     "importV4": [{"action": "Accept", "matchOperator": "In",
                                   "cidr": LET_IN, "source": "RemotePeers",
                                   "interface": "nomatch*"},
                                  {"action": "Reject", "matchOperator": "In",
                                   "cidr": KEPT_OUT}]}}


def test_export_and_import_filters(bgp_lab: BgpLab) -> None:
    topo = bgp_lab.topo
    bgp_lab.add_pool("10.65.0.0/16")
    for name in NODES:
        bgp_lab.add_node(topo.add_node(name))
    ext = topo.add_node("ext")
    blocks = {}
    for name in NODES:
        bgp_lab.assign_ip(name)
        [blocks[name]] = bgp_lab.blocks_of(name)
    bgp_lab.apply(_filter(reject_export=blocks["n1"]))
    bgp_lab.apply({"kind": "BGPPeer", "metadata": {"name": "ext-router"},
                   "spec": {"peerIP": ext.ip, "asNumber": EXT_AS, "filters": ["ext-edge"]}})
    gobgp = GoBGP(topo, ext, bgp_lab.workdir, EXT_AS,
                  [(topo.nodes[n].ip, 64512) for n in NODES])
    for name in NODES:
        bgp_lab.start(name)
    wait_for(lambda: list(gobgp.neighbors().values()) == ["established"] * 2, 30, 0.2,
             "GoBGP sessions")
    both = sorted(topo.nodes[n].ip for n in NODES)

    # n2's block arrives from both nodes: n1 re-exported what it learned over the mesh, so
    # n1's own block (in its table since start-up) went through the same export filter.
    rib = wait_for(lambda: (r := gobgp.rib()).get(blocks["n2"]) == both and r, 30, 0.2,
                   "n2's block from both nodes in GoBGP's RIB")
    assert blocks["n1"] not in rib, rib

    # Import: both prefixes come from GoBGP; only the one no rule matches is installed.
    gobgp.announce(KEPT_OUT)
    gobgp.announce(LET_IN)
    for name in NODES:
        routes = bgp_lab.wait_route(name, LET_IN, ext.ip)
        assert KEPT_OUT not in routes, (name, routes)
        # Filters apply to the external session only: the mesh still carries both blocks.
        other = blocks["n2" if name == "n1" else "n1"]
        assert other in routes, (name, routes)

    # Dropping the export rule is a reload, after which n1's block reaches GoBGP too.
    bgp_lab.apply(_filter(reject_export=None))
    wait_for(lambda: gobgp.rib().get(blocks["n1"]) == both, 30, 0.2,
             "n1's block in GoBGP's RIB once the rule is gone")
    for name in NODES:
        assert KEPT_OUT not in bgp_lab.routes(name)
        assert not [i for i in bgp_lab.status(name).issues if "BGPFilter" in str(i)]
        log = (bgp_lab.run_dir(name) / "bird.log").read_text()
        assert "filters, line" not in log.lower(), log[-2000:]  # BIRD's runtime errors
    gobgp.stop()
