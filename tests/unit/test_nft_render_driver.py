"""Unit tests (no root): in-place deltas and the NftDataplane apply logic, with `nft`
replaced by a recorder (what it would have been fed, and chosen failures)."""

from __future__ import annotations

import pytest

from tabby.calc.messages import (
    ConfigUpdate,
    InSync,
    IPSetDeltaUpdate,
    IPSetRemove,
    IPSetUpdate,
    PolicyRemove,
    PolicyUpdate,
    ProfileUpdate,
    RouteUpdate,
    Rule,
    TierInfo,
    VTEPRemove,
    WorkloadEndpointRemove,
    WorkloadEndpointUpdate,
)
from tabby.dataplane.nft import NftApplyError, NftDataplane, build, samples
from tabby.dataplane.nft.model import NftChain, NftSet, Ruleset, delta_text, full_text


class FakeNft(NftDataplane):
    """Records every `nft` call; `fail` holds stderr texts to fail the next calls with."""

    def __init__(self, inline_max: int = 0) -> None:
        # 0: every policy keeps its own chain, the layout these tests look at (inlining
        # into tier chains is tested in test_nft_render_inline.py)
        super().__init__(None, inline_max=inline_max)
        self.calls: list[str] = []
        self.fail: list[str] = []

    def _run(self, args: list[str], stdin: str | None) -> str:
        self.calls.append(stdin or " ".join(args))
        if self.fail:
            err = self.fail.pop(0)
            raise NftApplyError(f"nft {' '.join(args)} failed: {err.splitlines()[0]}", err)
        return ""


ALLOW = ProfileUpdate("allow", (Rule("allow"),), (Rule("allow"),))


def wep(i: int, tiers: tuple[TierInfo, ...] = ()) -> WorkloadEndpointUpdate:
    return WorkloadEndpointUpdate(f"w{i}", f"cali{i}", (f"10.65.0.{i}/32",), (), tiers, ("allow",))


def synced(*msgs: object) -> FakeNft:
    dp = FakeNft()
    for m in (ALLOW, *msgs, InSync()):
        dp.on_update(m)
    assert dp.apply().mode == "full"
    return dp


def order(text: str, *needles: str) -> list[int]:
    return [text.index(n) for n in needles]


def test_nothing_before_in_sync_then_full_then_noop() -> None:
    dp = FakeNft()
    dp.on_update(wep(1))
    assert dp.apply().mode == "waiting" and dp.calls == []
    dp.on_update(InSync())
    res = dp.apply()
    assert res.mode == "full" and len(dp.calls) == 1
    assert dp.calls[0].startswith("table inet tabby\ndelete table inet tabby\ntable inet tabby {")
    assert dp.apply().mode == "noop" and len(dp.calls) == 1
    dp.on_update(wep(1))  # the same message again changes nothing
    assert not dp.pending


def test_set_membership_is_a_small_delta_and_coalesces() -> None:
    pol = PolicyUpdate(("default", "p"), (Rule("allow", src_ip_set_ids=("s",)),))
    dp = synced(IPSetUpdate("s", "ip", frozenset({"10.0.0.1"})), pol,
                wep(1, (TierInfo("default", ingress_policies=("p",)),)))
    for i in range(2, 100):  # a burst for one key: one pending change
        dp.on_update(IPSetUpdate("s", "ip", frozenset({"10.0.0.1", f"10.0.1.{i}"})))
    dp.on_update(IPSetDeltaUpdate("s", added=frozenset({"10.0.2.1"}), removed=frozenset({"10.0.0.1"})))
    res = dp.apply()
    assert res.mode == "delta"
    assert dp.calls[-1] == (
        "delete element inet tabby tabby-ip4-s { 10.0.0.1 }\n"
        "add element inet tabby tabby-ip4-s {\n  10.0.1.99,\n  10.0.2.1\n}\n")


def test_interval_sets_are_rewritten_whole() -> None:
    old = Ruleset(sets={"n": NftSet("n", "ipv4_addr", True, frozenset({"10.0.0.0/24"}))})
    new = Ruleset(sets={"n": NftSet("n", "ipv4_addr", True, frozenset({"10.0.0.0/23"}))})
    assert delta_text(old, new).text() == (
        "flush set inet tabby n\nadd element inet tabby n {\n  10.0.0.0/23\n}\n")


def test_delta_order_adds_before_use_and_removes_in_reverse() -> None:
    dp = synced(wep(1))
    pol = PolicyUpdate(("default", "p"), (Rule("allow", src_ip_set_ids=("s",)),))
    dp.on_update(IPSetUpdate("s", "ip", frozenset({"10.0.0.9"})))
    dp.on_update(pol)
    dp.on_update(wep(2, (TierInfo("default", ingress_policies=("p",)),)))
    assert dp.apply().mode == "delta"
    add = dp.calls[-1]
    got = order(add, "add set inet tabby tabby-ip4-s", "add chain inet tabby tabby-pi-",
                "add element inet tabby tabby-ip4-s", "add rule inet tabby tabby-pi-",
                "add rule inet tabby tabby-tw-cali2", 'add element inet tabby tabby-tw-map { "cali2"')
    assert got == sorted(got), add
    for m in (WorkloadEndpointRemove("w2"), PolicyRemove(("default", "p")), IPSetRemove("s")):
        dp.on_update(m)
    assert dp.apply().mode == "delta"
    rm = dp.calls[-1]
    stmts = [line.split(" inet tabby ")[0] for line in rm.splitlines()]
    # map elements first, then every removed chain emptied, then deleted, then the sets
    assert stmts == ["delete element"] * 2 + ["flush chain"] * 4 + ["delete chain"] * 4 + [
        "delete set"], rm


def test_delta_needs_full_replace_for_base_chain_or_set_type_changes() -> None:
    a = Ruleset(chains={"x": NftChain("x", (), hook="type filter hook input priority 0;")})
    b = Ruleset(chains={"x": NftChain("x", (), hook="type filter hook output priority 0;")})
    assert delta_text(a, b) is None and delta_text(a, Ruleset()) is None
    s1 = Ruleset(sets={"s": NftSet("s", "ipv4_addr", False, frozenset())})
    s2 = Ruleset(sets={"s": NftSet("s", "ipv4_addr", True, frozenset())})
    assert delta_text(s1, s2) is None
    assert not delta_text(s1, s1)  # equal: empty


def test_failed_delta_falls_back_to_full_replace() -> None:
    dp = synced(wep(1))
    dp.on_update(wep(2))
    dp.fail = ["Error: No such file or directory"]
    assert dp.apply().mode == "full"
    assert dp.calls[-2].startswith("add chain") and dp.calls[-1].startswith("table inet tabby\n")


def test_failed_full_apply_keeps_pending_and_reports() -> None:
    dp = FakeNft()
    for m in (ALLOW, wep(1), InSync()):
        dp.on_update(m)
    dp.fail = ["/dev/stdin:3:1-5: Error: syntax error"]  # line 3 = the table header: not blamable
    with pytest.raises(NftApplyError, match="syntax error") as err:
        dp.apply()
    assert "syntax error" in err.value.stderr
    assert dp.pending
    assert dp.apply().mode == "full"  # the caller's retry


def test_kernel_rejection_of_a_policy_fails_it_closed_and_retries() -> None:
    pol = PolicyUpdate(("default", "p"), (Rule("allow", protocol="tcp"),))
    dp = FakeNft()
    for m in (ALLOW, pol, wep(1, (TierInfo("default", ingress_policies=("p",)),)), InSync()):
        dp.on_update(m)
    text = full_text(build(dp.state).ruleset)
    line = next(i + 1 for i, ln in enumerate(text.lines) if "meta l4proto tcp" in ln)
    dp.fail = [f"/dev/stdin:{line}:5-40: Error: Could not process rule: Argument list too long"]
    res = dp.apply()
    assert res.mode == "full" and len(dp.calls) == 2
    assert res.problems == {
        "policy:default/p": "kernel rejected: Could not process rule: Argument list too long"}
    assert "meta l4proto tcp" not in dp.calls[-1] and "rejected: kernel rejected" in dp.calls[-1]
    dp.on_update(PolicyUpdate(("default", "p"), (Rule("allow", protocol="udp"),)))
    assert dp.apply().problems == {}  # a new version of the policy is tried again


def test_messages_for_others_are_ignored_and_bad_ones_refused() -> None:
    dp = FakeNft()
    dp.on_update(RouteUpdate("10.65.1.0/26", "remote-block"))
    dp.on_update(VTEPRemove("n2"))
    with pytest.raises(ValueError, match="message: unsupported type str"):
        dp.on_update("hello")
    with pytest.raises(ValueError, match="IPSetDeltaUpdate.set_id: unknown IP set 'x'"):
        dp.on_update(IPSetDeltaUpdate("x", added=frozenset({"10.0.0.1"})))
    with pytest.raises(ValueError, match="invalid address 'nope'"):
        dp.on_update(IPSetUpdate("s", "ip", frozenset({"nope"})))
    assert "s" not in dp.state.ipsets


def test_namespace_argv_and_name_check() -> None:
    assert NftDataplane("node-1")._argv(["-f", "-"]) == [
        "ip", "netns", "exec", "node-1", "nft", "-f", "-"]
    assert NftDataplane()._argv(["-f", "-"]) == ["nft", "-f", "-"]
    with pytest.raises(ValueError, match="netns: invalid namespace name '../x'"):
        NftDataplane("../x")


def test_policy_chains_are_reused_across_builds() -> None:
    state = samples.scale(200, endpoints=3)
    cache: dict = {}
    first = build(state, cache).ruleset
    state.workloads.pop(next(iter(state.workloads)))
    second = build(state, cache).ruleset
    reused = [n for n in second.chains if n.startswith("tabby-pi-")]
    assert reused and all(second.chains[n] is first.chains[n] for n in reused)
    state.config = ConfigUpdate(log_prefix="other")  # a change chains depend on: recompiled
    third = build(state, cache).ruleset
    assert all(third.chains[n] is not first.chains[n] for n in reused)


def test_a_family_becoming_non_empty_re_renders_the_rules() -> None:
    pol = PolicyUpdate(("default", "p"), (Rule("allow", src_ip_set_ids=("s",)),))
    dp = synced(IPSetUpdate("s", "ip", frozenset({"10.0.0.1"})), pol,
                wep(1, (TierInfo("default", ingress_policies=("p",)),)))
    assert "ip6 saddr @" not in dp.calls[-1]  # no IPv6 member: no IPv6 rule, no IPv6 set
    dp.on_update(IPSetUpdate("s", "ip", frozenset({"10.0.0.1", "fd00::1"})))
    assert dp.apply().mode == "delta"
    delta = dp.calls[-1]
    assert "add set inet tabby tabby-ip6-s" in delta and "ip6 saddr @tabby-ip6-s" in delta
    dp.on_update(IPSetUpdate("s", "ip", frozenset({"fd00::1"})))  # and back: v4 empties
    dp.apply()
    assert "delete set inet tabby tabby-ip4-s" in dp.calls[-1]
    assert "ip saddr @tabby-ip4-s" not in full_text(build(dp.state).ruleset).text()
