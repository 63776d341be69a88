# The messages coerce friendly inputs ("tcp", 80, ("tier", "name")); mypy sees the
# normalised field types, so argument types are not checked in this file.
# mypy: disable-error-code="arg-type"
"""Golden tests of rule merging (pure, no root): runs of same-action rules that differ
only in CIDRs or ports become one nft rule with a set lookup (tabby/dataplane/nft/merge.py),
and the driver's deltas carry a merged policy's sets with its chain."""

from __future__ import annotations

import pytest
from test_nft_render_driver import FakeNft

from tabby.calc.messages import (
    InSync,
    IPSetUpdate,
    PolicyId,
    PolicyRemove,
    PolicyUpdate,
    ProfileUpdate,
    Rule,
    TierInfo,
    WorkloadEndpointUpdate,
)
from tabby.dataplane.nft import build, merge
from tabby.dataplane.nft.model import NftSet, full_text
from tabby.dataplane.nft.names import policy_chain
from tabby.dataplane.nft.render import DataplaneState

VERDICTS = {"allow": "ACCEPT", "deny": "drop", "pass": "PASS"}
BIG_CHAIN = policy_chain("t/big", True)


def resolve(set_id: str, want: str, version: int) -> str:
    return f"{want}{version}-{set_id}"


def compiled(rules: list[Rule], merge_rules: bool = True) -> tuple[list[str], list[NftSet]]:
    return merge.compile_rules(rules, chain="tabby-pi-p", owner="policy:t/p", label="p",
                               resolve=resolve, verdicts=VERDICTS, log_prefix="lp",
                               merge=merge_rules)


def lines(rules: list[Rule]) -> list[str]:
    out, sets = compiled(rules)
    assert sets == []
    return out


def src(*nets: str, action: str = "allow", **kw: object) -> Rule:
    return Rule(action, src_nets=nets, **kw)


# --- planning ----------------------------------------------------------------------------------


def test_runs_end_at_log_rules_and_action_changes() -> None:
    acts = ["allow", "allow", "log", "log", "allow", "deny", "deny", "pass", "allow"]
    assert merge.runs([Rule(a) for a in acts]) == [[0, 1], [2], [3], [4], [5, 6], [7], [8]]


def test_a_run_of_source_nets_is_one_rule_with_a_set() -> None:
    rules = [src(f"10.0.0.{2 * i + 1}/32", protocol="tcp", dst_ports=(80,)) for i in range(5)]
    assert lines(rules) == [
        "meta nfproto ipv4 meta l4proto tcp tcp dport 80 ip saddr { 10.0.0.1, 10.0.0.3, 10.0.0.5, "
        '10.0.0.7, 10.0.0.9 } ACCEPT comment "p/0 +4 merged (0-4)"']
    # adjacent networks collapse (an interval set refuses overlaps)
    assert lines([src("10.0.0.0/25"), src("10.0.0.128/25"), src("10.0.0.7/32"), src("10.0.2.0/24")]) == [
        'meta nfproto ipv4 ip saddr { 10.0.0.0/24, 10.0.2.0/24 } ACCEPT comment "p/0 +3 merged (0-3)"']


def test_a_log_rule_breaks_the_run() -> None:
    rules = [src("10.0.0.1/32"), src("10.0.0.2/32"), Rule("log"), src("10.0.0.3/32"),
             src("10.0.0.5/32")]
    assert lines(rules) == [
        'meta nfproto ipv4 ip saddr { 10.0.0.1, 10.0.0.2 } ACCEPT comment "p/0 +1 merged (0-1)"',
        'log prefix "lp " comment "p/2"',
        'meta nfproto ipv4 ip saddr { 10.0.0.3, 10.0.0.5 } ACCEPT comment "p/3 +1 merged (3-4)"',
    ]


def test_mixed_actions_keep_their_order() -> None:
    rules = [src("10.0.0.1/32"), src("10.0.0.2/32", action="deny"), src("10.0.0.3/32"),
             src("10.0.0.4/32", action="pass")]
    assert lines(rules) == [
        'meta nfproto ipv4 ip saddr 10.0.0.1 ACCEPT comment "p/0"',
        'meta nfproto ipv4 ip saddr 10.0.0.2 drop comment "p/1"',
        'meta nfproto ipv4 ip saddr 10.0.0.3 ACCEPT comment "p/2"',
        'meta nfproto ipv4 ip saddr 10.0.0.4 PASS comment "p/3"',
    ]


def test_deny_and_pass_runs_merge_too() -> None:
    deny = [Rule("deny", protocol="udp", dst_ports=(p,)) for p in (53, 54, 55, 123, 53)]
    assert lines(deny) == ['meta l4proto udp udp dport { 53-55, 123 } drop comment "p/0 +4 merged (0-4)"']
    pas = [Rule("pass", protocol="tcp", src_ports=(p,), rule_id=f"id{p}") for p in (1, 3)]
    assert lines(pas) == ['meta l4proto tcp tcp sport { 1, 3 } PASS comment "id1 +1 merged (0-1)"']


def test_shapes_group_within_a_run_and_keep_first_appearance_order() -> None:
    rules = [src("10.0.0.1/32"), Rule("allow", protocol="tcp", dst_ports=(80,)),
             src("10.0.0.2/32"), Rule("allow", protocol="tcp", dst_ports=(443,))]
    assert lines(rules) == [
        'meta nfproto ipv4 ip saddr { 10.0.0.1, 10.0.0.2 } ACCEPT comment "p/0 +1 merged (0,2)"',
        'meta l4proto tcp tcp dport { 80, 443 } ACCEPT comment "p/1 +1 merged (1,3)"',
    ]


def test_negated_fields_merge_only_when_identical() -> None:
    rules = [src("10.0.0.1/32", not_src_nets=("10.0.0.0/31",)),
             src("10.0.0.5/32", not_src_nets=("10.0.0.4/31",)),
             src("10.0.0.6/32", not_src_nets=("10.0.0.4/31",)),
             src("10.0.0.7/32", not_dst_ports=(22,), protocol="tcp"),
             src("10.0.0.8/32", not_dst_ports=(23,), protocol="tcp")]
    assert lines(rules) == [
        'meta nfproto ipv4 ip saddr 10.0.0.1 ip saddr != 10.0.0.0/31 ACCEPT comment "p/0"',
        'meta nfproto ipv4 ip saddr { 10.0.0.5, 10.0.0.6 } ip saddr != 10.0.0.4/31 ACCEPT '
        'comment "p/1 +1 merged (1-2)"',
        'meta nfproto ipv4 meta l4proto tcp tcp dport != 22 ip saddr 10.0.0.7 ACCEPT comment "p/3"',
        'meta nfproto ipv4 meta l4proto tcp tcp dport != 23 ip saddr 10.0.0.8 ACCEPT comment "p/4"',
    ]


def test_any_is_not_a_value_and_selectors_are_shape() -> None:
    # an empty list means "any": never united with rules that list values
    assert len(lines([src("10.0.0.1/32"), Rule("allow", ip_version=4), src("10.0.0.2/32")])) == 2
    # IP sets are ANDed criteria, so different set ids never merge
    rules = [src("10.0.0.1/32", src_ip_set_ids=("a",)), src("10.0.0.2/32", src_ip_set_ids=("b",))]
    assert len(lines(rules)) == 2


def test_source_and_port_pairs_become_one_concatenated_lookup_per_family() -> None:
    rules = [src(f"10.0.0.{i}/32", f"fd00::{i}/128", protocol="tcp", dst_ports=(80 + i,))
             for i in range(1, 4)]
    assert lines(rules) == [
        "meta nfproto ipv4 meta l4proto tcp ip saddr . tcp dport { 10.0.0.1 . 81, 10.0.0.2 . 82, "
        '10.0.0.3 . 83 } ACCEPT comment "p/0 +2 merged (0-2)"',
        "meta nfproto ipv6 meta l4proto tcp ip6 saddr . tcp dport { fd00::1 . 81, fd00::2 . 82, "
        'fd00::3 . 83 } ACCEPT comment "p/0 +2 merged (0-2)"',
    ]
    # one family only: the other gets no rule (as an unmerged rule would not)
    v6 = [src("fd00::1/128", protocol="tcp", dst_ports=(1,)), src("fd00::2/128", protocol="tcp", dst_ports=(2,))]
    assert [ln.split(" ip6 ")[0] for ln in lines(v6)] == ["meta nfproto ipv6 meta l4proto tcp"]


def test_pairs_are_split_into_disjoint_elements() -> None:
    rules = [src("10.0.0.0/24", protocol="tcp", dst_ports=("80:90",)),
             src("10.0.0.1/32", protocol="tcp", dst_ports=(85, 100)),
             src("10.0.0.0/23", protocol="tcp", dst_ports=(95,))]
    elems = merge.elements(rules, [0, 1, 2], ("src_nets", "dst_ports"), 4)
    assert elems == ["10.0.0.0 . 80-90", "10.0.0.0 . 95", "10.0.0.1 . 80-90", "10.0.0.1 . 95",
                     "10.0.0.1 . 100", "10.0.0.2/31 . 80-90", "10.0.0.2/31 . 95",
                     "10.0.0.4/30 . 80-90", "10.0.0.4/30 . 95", "10.0.0.8/29 . 80-90",
                     "10.0.0.8/29 . 95", "10.0.0.16/28 . 80-90", "10.0.0.16/28 . 95",
                     "10.0.0.32/27 . 80-90", "10.0.0.32/27 . 95", "10.0.0.64/26 . 80-90",
                     "10.0.0.64/26 . 95", "10.0.0.128/25 . 80-90", "10.0.0.128/25 . 95",
                     "10.0.1.0/24 . 95"]
    assert merge.elements([src("10.0.0.0/24", protocol="tcp", dst_ports=("80:90",)),
                           src("10.0.0.9/32", protocol="tcp", dst_ports=(85,))],
                          [0, 1], ("src_nets", "dst_ports"), 4) == ["10.0.0.0/24 . 80-90"]


def test_numeric_ports_merge_beside_named_ports_with_scratch_marks() -> None:
    rules = [Rule("allow", protocol="tcp", dst_ports=(p,), dst_named_port_ip_set_ids=("np",),
                  ip_version=4) for p in (80, 443)]
    assert lines(rules) == [
        "meta mark set meta mark & 0xfff3ffff",
        "tcp dport { 80, 443 } meta mark set meta mark | 0x80000",
        "ip daddr . meta l4proto . th dport @port4-np meta mark set meta mark | 0x80000",
        'meta nfproto ipv4 meta l4proto tcp meta mark & 0x80000 == 0x80000 ACCEPT '
        'comment "p/0 +1 merged (0-1)"',
    ]
    # pairs cannot carry "port OR named port": a side with named ports merges one dimension
    pairs = [Rule("allow", protocol="tcp", src_nets=(f"10.0.0.{i}/32",), dst_ports=(p,),
                  dst_named_port_ip_set_ids=("np",)) for i in (1, 2) for p in (80, 443)]
    assert merge.plan(pairs) == [merge.Group((0, 2), ("src_nets",)), merge.Group((1, 3), ("src_nets",))]


def test_duplicates_collapse_to_one_rule() -> None:
    assert lines([src("10.0.0.1/32"), src("10.0.0.1/32", rule_id="x")]) == [
        'meta nfproto ipv4 ip saddr 10.0.0.1 ACCEPT comment "p/0 +1 merged (0-1)"']


def test_big_groups_use_a_named_set_owned_by_the_policy() -> None:
    rules = [src(f"10.1.0.{k + 1}/32", protocol="tcp", dst_ports=(1000 + k % 7,)) for k in range(40)]
    out, sets = compiled(rules)
    assert out == ["meta nfproto ipv4 meta l4proto tcp ip saddr . tcp dport @tabby-pi-p-m4h-470c6ada "
                   'ACCEPT comment "p/0 +39 merged (0-39)"']
    (s,) = sets  # single addresses and ports: a hash set
    assert (s.name, s.type, s.interval, s.owner, s.note) == (
        "tabby-pi-p-m4h-470c6ada", "ipv4_addr . inet_service", False, "policy:t/p", "p rules 0-39")
    assert len(s.elements) == 40 and "10.1.0.8 . 1000" in s.elements
    # a prefix or a range among them: an interval set, under another name
    (s,) = compiled([*rules[:-1], src("10.1.1.0/24", protocol="tcp", dst_ports=(1000,))])[1]
    assert (s.name, s.interval) == ("tabby-pi-p-m4-470c6ada", True) and "10.1.1.0/24 . 1000" in s.elements
    # ports alone: one set serves both families
    ports = [Rule("allow", protocol="tcp", src_ip_set_ids=("a",), dst_ports=(2 * p,)) for p in range(40)]
    out, sets = compiled(ports)
    assert len(out) == 2 and len(sets) == 1 and sets[0].type == "inet_service"
    assert all(f"tcp dport @{sets[0].name}" in ln for ln in out)


def test_ten_thousand_rules_render_a_handful_of_lines() -> None:
    rules = [src(f"10.{k // 62500}.{k // 250 % 250}.{k % 250 + 1}/32", protocol="tcp",
                 dst_ports=(10000 + k % 50,)) for k in range(10000)]
    rules.insert(5000, Rule("deny", protocol="udp"))
    s = DataplaneState()
    s.policies[PolicyId("t", "big")] = PolicyUpdate(("t", "big"), tuple(rules))
    s.workloads["w"] = WorkloadEndpointUpdate("w", "cali1", tiers=(TierInfo("t", "Deny", ("big",)),))
    rs = build(s).ruleset
    chain = rs.chains[BIG_CHAIN]
    assert [ln.split(" comment ")[-1] for ln in chain.rules] == [
        '"policy t/big ingress/0 +4999 merged (0-4999)"', '"policy t/big ingress/5000"',
        '"policy t/big ingress/5001 +4999 merged (5001-10000)"']
    merged_sets = [x for x in rs.sets.values() if x.owner == "policy:t/big"]
    assert sorted(len(x.elements) for x in merged_sets) == [5000, 5000]
    unmerged = build(s, merge=False).ruleset.chains[BIG_CHAIN]
    assert len(unmerged.rules) == 10001


def test_every_rule_of_a_group_is_still_checked() -> None:
    bad = [Rule("allow", dst_ports=(80,)), Rule("allow", dst_ports=(81,))]  # no protocol
    with pytest.raises(ValueError, match="numeric ports need protocol"):
        compiled(bad)


def test_merge_off_is_one_nft_rule_per_policy_rule() -> None:
    rules = [src(f"10.0.0.{i}/32") for i in range(1, 4)]
    assert compiled(rules, merge_rules=False)[0] == [
        f'meta nfproto ipv4 ip saddr 10.0.0.{i} ACCEPT comment "p/{i - 1}"' for i in range(1, 4)]


# --- applying: a merged policy's sets travel with its chain ------------------------------------


def big_policy(n: int, port: int = 80, extra: tuple[Rule, ...] = ()) -> PolicyUpdate:
    rules = tuple(src(f"10.2.{k // 250}.{k % 250 + 1}/32", protocol="tcp", dst_ports=(port,))
                  for k in range(n))
    return PolicyUpdate(("t", "big"), rules + extra)


def synced(pol: PolicyUpdate) -> FakeNft:
    dp = FakeNft()
    for m in (ProfileUpdate("allow", (Rule("allow"),)), pol, WorkloadEndpointUpdate(
            "w", "cali1", tiers=(TierInfo("t", "Deny", ("big",)),), profile_ids=("allow",)),
            InSync()):
        dp.on_update(m)
    assert dp.apply().mode == "full"
    return dp


def test_a_changed_rule_of_a_big_group_is_an_element_delta() -> None:
    dp = synced(big_policy(600))
    (name,) = [s for s in dp._applied.sets if s.startswith("tabby-pi-")]  # type: ignore[union-attr]
    full = dp.calls[-1]
    assert f"set {name} {{ type ipv4_addr; flags interval; comment " in full
    pol = big_policy(600)
    changed = (*pol.inbound_rules[:10], src("10.3.0.1/32", protocol="tcp", dst_ports=(80,)),
               *pol.inbound_rules[11:])
    dp.on_update(PolicyUpdate(("t", "big"), changed))
    assert dp.apply().mode == "delta"
    delta = dp.calls[-1]
    assert delta.startswith(f"flush set inet tabby {name}\nadd element inet tabby {name} {{\n")
    assert "10.3.0.1" in delta and "add rule" not in delta and "flush chain" not in delta


def test_a_reshaped_policy_swaps_its_sets_in_one_transaction() -> None:
    dp = synced(big_policy(600))
    (old,) = [s for s in dp._applied.sets if s.startswith("tabby-pi-")]  # type: ignore[union-attr]
    pol = big_policy(600)  # now pairs: every rule its own port
    dp.on_update(PolicyUpdate(("t", "big"), tuple(
        src(r.src_nets[0], protocol="tcp", dst_ports=(1000 + i,)) for i, r in enumerate(pol.inbound_rules))))
    assert dp.apply().mode == "delta"
    text = dp.calls[-1]
    (new,) = [s for s in dp._applied.sets if s.startswith("tabby-pi-")]  # type: ignore[union-attr]
    assert new != old
    steps = [f"add set inet tabby {new} {{ type ipv4_addr . inet_service; comment",
             f"add element inet tabby {new} {{", "flush chain inet tabby tabby-pi-t_big-",
             f"add rule inet tabby {BIG_CHAIN} meta nfproto ipv4 meta l4proto tcp "
             f"ip saddr . tcp dport @{new} ", f"delete set inet tabby {old}"]
    at = [text.index(s) for s in steps]
    assert at == sorted(at), text
    assert len(dp.calls) == 2  # one transaction


def test_removed_policy_takes_its_sets_after_its_chain() -> None:
    dp = synced(big_policy(600))
    (name,) = [s for s in dp._applied.sets if s.startswith("tabby-pi-")]  # type: ignore[union-attr]
    dp.on_update(PolicyRemove(("t", "big")))
    dp.on_update(WorkloadEndpointUpdate("w", "cali1", profile_ids=("allow",)))
    assert dp.apply().mode == "delta"
    text = dp.calls[-1]
    assert text.index("delete chain inet tabby tabby-pi-t_big") < text.index(f"delete set inet tabby {name}")
    assert not [s for s in dp._applied.sets if s.startswith("tabby-pi-")]  # type: ignore[union-attr]


def test_a_kernel_refusal_of_a_merged_set_fails_its_policy_closed() -> None:
    dp = FakeNft()
    for m in (ProfileUpdate("allow", (Rule("allow"),)), big_policy(600), InSync(),
              WorkloadEndpointUpdate("w", "cali1", tiers=(TierInfo("t", "Deny", ("big",)),))):
        dp.on_update(m)
    text = full_text(build(dp.state).ruleset)
    line = next(i + 1 for i, ln in enumerate(text.lines) if ln.startswith("  set tabby-pi-t_big"))
    dp.fail = [f"/dev/stdin:{line}:3-9: Error: Could not process rule: No space left on device"]
    res = dp.apply()
    assert set(res.problems) == {"policy:t/big"}
    assert "tabby-pi-t_big" not in "".join(s for s in dp._applied.sets)  # type: ignore[union-attr]


def test_member_only_updates_leave_merged_sets_alone() -> None:
    ipset = IPSetUpdate("s", "ip", frozenset({"10.0.0.1"}))
    pol = big_policy(40, extra=(Rule("allow", src_ip_set_ids=("s",)),))
    dp = FakeNft()
    for m in (ProfileUpdate("allow", (Rule("allow"),)), ipset, pol, InSync(), WorkloadEndpointUpdate(
            "w", "cali1", tiers=(TierInfo("t", "Deny", ("big",)),))):
        dp.on_update(m)
    dp.apply()
    before = dict(dp._applied.sets)  # type: ignore[union-attr]
    dp.on_update(IPSetUpdate("s", "ip", frozenset({"10.0.0.1", "10.0.0.2"})))
    assert dp.apply().mode == "delta"
    assert dp.calls[-1] == "add element inet tabby tabby-ip4-s {\n  10.0.0.2\n}\n"
    after = dp._applied.sets  # type: ignore[union-attr]
    assert all(after[k] is v for k, v in before.items() if k.startswith("tabby-pi-"))


def pairs_policy(n: int, base: int = 2, moved: int = -1) -> PolicyUpdate:
    """(source, port range) pairs: a concatenated interval set."""
    return PolicyUpdate(("t", "big"), tuple(
        src(f"10.{base if k != moved else 9}.{k // 250}.{k % 250 + 1}/32", protocol="tcp",
            dst_ports=(f"{1000 + 2 * k}:{1001 + 2 * k}",)) for k in range(n)))


def test_a_changed_pair_is_an_exact_element_delta() -> None:
    # concatenated interval sets delete elements fast enough one by one (and flush no
    # faster), while one-dimension interval sets are flushed and refilled (above)
    dp = synced(pairs_policy(600))
    (name,) = [s for s in dp._applied.sets if s.startswith("tabby-pi-")]  # type: ignore[union-attr]
    dp.on_update(pairs_policy(600, moved=7))
    assert dp.apply().mode == "delta"
    assert dp.calls[-1] == (f"delete element inet tabby {name} {{ 10.2.0.8 . 1014-1015 }}\n"
                            f"add element inet tabby {name} {{\n  10.9.0.8 . 1014-1015\n}}\n")


def test_a_rewritten_pair_set_is_rebuilt_with_its_chain_emptied_first() -> None:
    dp = synced(pairs_policy(600))
    (name,) = [s for s in dp._applied.sets if s.startswith("tabby-pi-")]  # type: ignore[union-attr]
    dp.on_update(pairs_policy(600, base=3))  # every element replaced
    assert dp.apply().mode == "delta"
    text = dp.calls[-1]
    steps = [f"flush chain inet tabby {BIG_CHAIN}", f"delete set inet tabby {name}",
             f"add set inet tabby {name} {{ type ipv4_addr . inet_service; flags interval;",
             f"add element inet tabby {name} {{", f"add rule inet tabby {BIG_CHAIN} "]
    at = [text.index(s) for s in steps]
    assert at == sorted(at), text
    assert text.count("flush chain") == 1 and "delete element" not in text
    # and when the policy goes away at the same time as a rebuild would be due
    dp.on_update(PolicyRemove(("t", "big")))
    dp.on_update(WorkloadEndpointUpdate("w", "cali1", profile_ids=("allow",)))
    dp.apply()
    assert f"delete set inet tabby {name}" in dp.calls[-1]


def test_hash_sets_take_exact_deltas_whatever_the_size() -> None:
    dp = synced(PolicyUpdate(("t", "big"), tuple(
        src(f"10.2.{k // 250}.{2 * (k % 100) + 1}/32", protocol="tcp", dst_ports=(1000 + k,))
        for k in range(600))))
    (name,) = [s for s in dp._applied.sets if s.startswith("tabby-pi-")]  # type: ignore[union-attr]
    assert not dp._applied.sets[name].interval  # type: ignore[union-attr]
    dp.on_update(PolicyUpdate(("t", "big"), tuple(
        src(f"10.3.{k // 250}.{2 * (k % 100) + 1}/32", protocol="tcp", dst_ports=(1000 + k,))
        for k in range(600))))
    assert dp.apply().mode == "delta"
    text = dp.calls[-1]
    assert text.startswith(f"delete element inet tabby {name} {{ ") and "flush" not in text
