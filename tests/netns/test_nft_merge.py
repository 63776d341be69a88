# The messages coerce friendly inputs ("tcp", 80, ("tier", "name")); mypy sees the
# normalised field types, so argument types are not checked in this file.
# mypy: disable-error-code="arg-type"
"""Merged policy rules in a real kernel: same verdicts as one nft rule per policy rule.

One node namespace with four Calico-wired workloads. w2's ingress policy has ~2,000
rules that merge into a few set lookups; real TCP/UDP probes from allowed and
not-allowed workloads must get the verdicts the unmerged rule list gives, with the
policy rendered merged and unmerged. Every merged shape the random unit test makes is
also loaded into the kernel.
"""

from __future__ import annotations

import random

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
from tabby.dataplane.nft import NftDataplane, merge
from tabby.dataplane.nft.names import policy_chain
from tabby.lab import netns as nsops
from tabby.lab.probe import make_spec, probe_batch
from tabby.lab.testing import OTHER, PORT
from tabby.lab.testing import WorkloadsLab as Lab

pytestmark = pytest.mark.root
FAST = 0.5
ALLOW_ALL = ProfileUpdate("allow-all", (Rule("allow"),), (Rule("allow"),))
TIER = TierInfo("default", "Deny", ("big",), ())


@pytest.fixture(scope="module")
def lab(workloads_lab: Lab) -> Lab:
    return workloads_lab


def fresh(lab: Lab, merge_rules: bool = True) -> NftDataplane:
    nsops.run(lab.node.netns, ["conntrack", "-F"], check=False)
    return NftDataplane(lab.node.netns, merge_rules=merge_rules)


def big_policy(lab: Lab, w1_allowed: bool = True, w1_other: bool = True,
               pair_net: int = 202) -> PolicyUpdate:
    """~2,000 rules: allow TCP PORT from 1,000 /32s (w1 among them), deny
    anything from w3, then 1,000 (source, port or port range) pairs (an interval set)
    that include (w3, PORT) - too late, the deny comes first - and (w1, OTHER)."""
    first = [f"10.201.{k // 250}.{k % 250 + 1}/32" for k in range(1000)]
    if w1_allowed:
        first[700] = f"{lab.ip('w1')}/32"
    rules = [Rule("allow", protocol="tcp", src_nets=(n,), dst_ports=(PORT,)) for n in first]
    rules.append(Rule("deny", src_nets=(f"{lab.ip('w3')}/32",), rule_id="deny-w3"))
    pairs: list[tuple[str, int | str]] = [
        (f"10.{pair_net}.{k // 250}.{k % 250 + 1}/32", f"{20000 + 2 * k}:{20001 + 2 * k}")
        for k in range(998)]
    pairs += [(f"{lab.ip('w3')}/32", PORT), (f"{lab.ip('w1') if w1_other else '10.9.9.9'}/32", OTHER)]
    rules += [Rule("allow", protocol="tcp", src_nets=(n,), dst_ports=(p,)) for n, p in pairs]
    return PolicyUpdate(("default", "big"), tuple(rules))


def load(dp: NftDataplane, lab: Lab, *msgs: object) -> None:
    dp.on_update(ALLOW_ALL)
    for msg in msgs:
        dp.on_update(msg)
    for name, wl in lab.w.items():
        tiers = (TIER,) if name == "w2" else ()
        dp.on_update(WorkloadEndpointUpdate(f"k8s/{name}", wl.host_if, (f"{wl.ip}/32",), (),
                                            tiers, ("allow-all",)))
    dp.on_update(InSync())
    dp.apply()
    assert dp.verify() == []  # rule and element counts as rendered (no kernel re-merging)


CHECKS = [("w1", "tcp", PORT), ("w1", "tcp", OTHER), ("w1", "udp", PORT), ("w3", "tcp", PORT),
          ("w3", "udp", PORT), ("w4", "tcp", PORT), ("w4", "tcp", OTHER)]
EXPECTED = [True, True, False, False, False, False, False]


def reach(lab: Lab, checks: list[tuple[str, str, int]]) -> list[bool]:
    specs = [make_spec(lab.w[s].netns, lab.ip("w2"), proto, port, FAST) for s, proto, port in checks]
    results = probe_batch(specs)
    assert all(r.outcome in ("ok", "timeout") for r in results), results
    return [r.ok for r in results]


def test_merged_and_unmerged_policies_give_the_same_verdicts(lab: Lab) -> None:
    pol = big_policy(lab)
    for merge_rules in (False, True):
        dp = fresh(lab, merge_rules)
        try:
            load(dp, lab, pol)
            chain = dp.read_existing().chains[policy_chain("default/big", True)]  # type: ignore[union-attr]
            assert chain == (3 if merge_rules else 2001)
            assert reach(lab, CHECKS) == EXPECTED, f"merge_rules={merge_rules}"
        finally:
            dp.remove_table()


def test_a_changed_rule_is_an_element_delta_in_the_kernel(lab: Lab) -> None:
    dp = fresh(lab)
    try:
        load(dp, lab, big_policy(lab))
        assert reach(lab, [("w1", "tcp", PORT)]) == [True]
        dp.on_update(big_policy(lab, w1_allowed=False))  # w1's /32 replaced by another
        res = dp.apply()
        # the 1,000 /32s collapse into prefixes (an interval set): flush + refill, no rules
        assert res.mode == "delta" and res.lines < 1010, res
        assert dp.verify() == []
        nsops.run(lab.node.netns, ["conntrack", "-F"], check=False)
        assert reach(lab, [("w1", "tcp", PORT), ("w1", "tcp", OTHER)]) == [False, True]
        # one pair changed: an exact delete + add in the concatenated set
        dp.on_update(big_policy(lab, w1_allowed=False, w1_other=False))
        res = dp.apply()
        assert res.mode == "delta" and res.lines == 4, res
        # every pair changed: the set is rebuilt under its emptied chain, in one go
        dp.on_update(big_policy(lab, w1_allowed=False, pair_net=203))
        res = dp.apply()
        assert res.mode == "delta" and dp.verify() == []
        nsops.run(lab.node.netns, ["conntrack", "-F"], check=False)
        assert reach(lab, CHECKS) == [False, True, False, False, False, False, False]
    finally:
        dp.remove_table()


def test_every_merged_shape_loads(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The random unit test's rule lists, merged with named and anonymous sets, all load
    (and read back with the rendered element counts)."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "unit"))
    import test_nft_render_merge_random as rnd

    rng = random.Random(7)
    dp = fresh(lab)
    try:
        for i in range(24):
            monkeypatch.setattr(merge, "ANON_MAX", 2 if i % 2 else 32)
            rules = rnd.random_rules(rng, rng.randint(10, 60))
            dp.on_update(PolicyUpdate(("default", "big"), rules))
            if i == 0:
                load(dp, lab, *(IPSetUpdate(s.set_id, s.kind, s.members) for s in rnd.IPSETS.values()))
            else:
                dp.apply()
            assert dp.problems() == {} and dp.verify() == [], (i, rules)
    finally:
        dp.remove_table()
