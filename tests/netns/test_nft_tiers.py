# The messages coerce friendly inputs ("tcp", 80, ("tier", "name")); mypy sees the
# normalised field types, so argument types are not checked in this file.
# mypy: disable-error-code="arg-type"
"""Inlined policies and the tier port index in a real kernel: the same verdicts as one
chain per policy (tabby/dataplane/nft/tiers.py).

One node namespace with four Calico-wired workloads. w2's ingress has a tier that starts
with a Pass policy, then 30 allow-only policies keyed by port (two of them let w1 and w3
in, on overlapping ports), then an allow-only policy without ports; a second tier
allows what was passed. Real TCP/UDP probes must get the same verdicts with the driver's
default (inlined + indexed) and with every policy jumped to, and after a change to an
indexed policy (a map element delta).
"""

from __future__ import annotations

import pytest

from tabby.calc.messages import (
    InSync,
    IPSetUpdate,
    PolicyUpdate,
    ProfileUpdate,
    Rule,
    TierInfo,
    WorkloadEndpointUpdate,
)
from tabby.dataplane.nft import NftDataplane
from tabby.lab import netns as nsops
from tabby.lab.probe import make_spec, probe_batch
from tabby.lab.testing import OTHER, PORT
from tabby.lab.testing import WorkloadsLab as Lab

pytestmark = pytest.mark.root
FAST = 0.5
ALLOW_ALL = ProfileUpdate("allow-all", (Rule("allow"),), (Rule("allow"),))
KEYED = [f"k{i:02d}" for i in range(30)]
TIERS = (TierInfo("security", "Deny", ("pass-w4", *KEYED, "udp-w3"), ()),
         TierInfo("default", "Deny", ("other-w4",), ()))


@pytest.fixture(scope="module")
def lab(workloads_lab: Lab) -> Lab:
    return workloads_lab


def policies(lab: Lab, w1_port: int = PORT) -> list[object]:
    msgs: list[object] = [
        IPSetUpdate("s:w1", "ip", frozenset({lab.ip("w1")})),
        IPSetUpdate("s:none", "ip", frozenset({"10.201.0.1", "10.201.0.2"})),
        PolicyUpdate(("security", "pass-w4"), (Rule("pass", src_nets=(f"{lab.ip('w4')}/32",)),)),
        PolicyUpdate(("security", "udp-w3"), (Rule("allow", protocol="udp",
                                                   src_nets=(f"{lab.ip('w3')}/32",)),)),
        PolicyUpdate(("default", "other-w4"), (Rule("allow", protocol="tcp", dst_ports=(OTHER,),
                                                    src_nets=(f"{lab.ip('w4')}/32",)),)),
    ]
    for i, name in enumerate(KEYED):
        if name == "k17":  # w1, on one port
            rules = (Rule("allow", protocol="tcp", src_ip_set_ids=("s:w1",), dst_ports=(w1_port,)),)
        elif name == "k18":  # w3, on a range that overlaps k17's port
            rules = (Rule("allow", protocol="tcp", src_nets=(f"{lab.ip('w3')}/32",),
                          dst_ports=("8000:8100",)),)
        else:  # never a real source
            rules = tuple(Rule("allow", protocol=("tcp", "udp")[j % 2], src_ip_set_ids=("s:none",),
                               dst_ports=(20000 + 20 * i + j,)) for j in range(20))
        msgs.append(PolicyUpdate(("security", name), rules))
    return msgs


def load(dp: NftDataplane, lab: Lab, *msgs: object) -> None:
    dp.on_update(ALLOW_ALL)
    for msg in msgs:
        dp.on_update(msg)
    for name, wl in lab.w.items():
        tiers = TIERS if name == "w2" else ()
        dp.on_update(WorkloadEndpointUpdate(f"k8s/{name}", wl.host_if, (f"{wl.ip}/32",), (),
                                            tiers, ("allow-all",)))
    dp.on_update(InSync())
    dp.apply()
    assert dp.problems() == {} and dp.verify() == []


CHECKS = [("w1", "tcp", PORT), ("w1", "tcp", OTHER), ("w1", "udp", PORT), ("w3", "tcp", PORT),
          ("w3", "tcp", OTHER), ("w3", "udp", PORT), ("w4", "tcp", PORT), ("w4", "tcp", OTHER)]
EXPECTED = [True, False, False, True, True, True, False, True]


def reach(lab: Lab, checks: list[tuple[str, str, int]]) -> list[bool]:
    nsops.run(lab.node.netns, ["conntrack", "-F"], check=False)
    specs = [make_spec(lab.w[s].netns, lab.ip("w2"), proto, port, FAST) for s, proto, port in checks]
    results = probe_batch(specs)
    assert all(r.outcome in ("ok", "timeout") for r in results), results
    return [r.ok for r in results]


@pytest.mark.parametrize("mode", ["plain", "inlined+indexed"])
def test_same_verdicts_with_and_without_inlining_and_the_index(lab: Lab, mode: str) -> None:
    opts = {"inline_max": 0, "index_min": 0} if mode == "plain" else {}
    dp = NftDataplane(lab.node.netns, **opts)
    try:
        load(dp, lab, *policies(lab))
        maps = [m for m in dp.read_existing().maps if "-x" in m]  # type: ignore[union-attr]
        assert len(maps) == (0 if mode == "plain" else 1)
        assert reach(lab, CHECKS) == EXPECTED
    finally:
        dp.remove_table()


def test_an_indexed_policy_change_reaches_the_kernel(lab: Lab) -> None:
    dp = NftDataplane(lab.node.netns)
    try:
        load(dp, lab, *policies(lab))
        assert reach(lab, [("w1", "tcp", PORT), ("w1", "tcp", OTHER)]) == [True, False]
        for msg in policies(lab, w1_port=OTHER):
            dp.on_update(msg)
        res = dp.apply()
        assert res.mode == "delta" and res.lines < 10, res
        assert dp.verify() == []
        assert reach(lab, [("w1", "tcp", PORT), ("w1", "tcp", OTHER), ("w3", "tcp", PORT)]) == [
            False, True, True]
    finally:
        dp.remove_table()


def test_the_index_comes_and_goes_in_place(lab: Lab) -> None:
    """A tier shrinking below INDEX_MIN drops its map, and the policy chains only the map
    jumped to, in one delta (the map goes before the chains it points at); growing back
    brings them back, again in place."""
    dp = NftDataplane(lab.node.netns)
    try:
        load(dp, lab, *policies(lab))
        w2 = lab.w["w2"]
        small = (TierInfo("security", "Deny", ("pass-w4", "k17", "k18", "udp-w3"), ()),
                 TIERS[1])
        for tiers, maps in ((small, 0), (TIERS, 1)):
            dp.on_update(WorkloadEndpointUpdate("k8s/w2", w2.host_if, (f"{w2.ip}/32",), (),
                                                tiers, ("allow-all",)))
            res = dp.apply()
            assert res.mode == "delta", res
            assert dp.verify() == []
            assert len([m for m in dp.read_existing().maps if "-x" in m]) == maps  # type: ignore[union-attr]
            assert reach(lab, CHECKS) == EXPECTED
    finally:
        dp.remove_table()
