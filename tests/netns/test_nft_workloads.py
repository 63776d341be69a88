"""NftDataplane in real namespaces: workload policy enforced on real TCP/UDP/ICMP traffic.

One node namespace with four Calico-wired workloads (shared by the module; every test
replaces the whole `inet tabby` table with its own state and flushes conntrack first).
w4 is wired like the others but never gets an endpoint message: an unknown cali* link.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tabby.calc.messages import (
    ConfigUpdate,
    InSync,
    IPSetUpdate,
    PolicyUpdate,
    ProfileUpdate,
    Rule,
    TierInfo,
    WorkloadEndpointUpdate,
)
from tabby.dataplane.nft import NftApplyError, NftDataplane, model, rules
from tabby.lab import netns as nsops
from tabby.lab.probe import ProbeServer, make_spec, probe_batch
from tabby.lab.testing import OTHER, PORT
from tabby.lab.testing import WorkloadsLab as Lab

pytestmark = pytest.mark.root
FAST = 0.5  # a dropped probe costs this; probes of one check run in parallel
ALLOW_ALL = ProfileUpdate("allow-all", (Rule("allow"),), (Rule("allow"),))

ECHO_SERVER = """
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(16); print("READY", flush=True)
def serve(c):
    while (d := c.recv(100)):
        c.sendall(d)
while True:
    c, _ = srv.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
HOLD_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)
print("CONNECTED", flush=True)
for line in sys.stdin:
    try:
        s.sendall(b"x"); print("OK" if s.recv(10) == b"x" else "CLOSED", flush=True)
    except OSError as exc:
        print("FAIL", exc, flush=True)
"""


@pytest.fixture(scope="module")
def lab(workloads_lab: Lab) -> Lab:
    return workloads_lab


@pytest.fixture
def dp(lab: Lab) -> Iterator[NftDataplane]:
    nsops.run(lab.node.netns, ["conntrack", "-F"], check=False)
    d = NftDataplane(lab.node.netns)
    yield d
    d.remove_table()


def wep(lab: Lab, name: str, tiers=(), profiles=("allow-all",)) -> WorkloadEndpointUpdate:
    wl = lab.w[name]
    return WorkloadEndpointUpdate(f"k8s/{name}", wl.host_if, (f"{wl.ip}/32",), (),
                                  tuple(tiers), tuple(profiles))


def load(dp: NftDataplane, lab: Lab, *msgs, endpoints=("w1", "w2", "w3"), tiers=None) -> None:
    """Apply a fresh state: allow-all profile, the given messages, endpoints w1-w3 (w2
    with `tiers` if given), then InSync."""
    dp.on_update(ALLOW_ALL)
    for msg in msgs:
        dp.on_update(msg)
    for name in endpoints:
        dp.on_update(wep(lab, name, tiers if (tiers and name == "w2") else ()))
    dp.on_update(InSync())
    res = dp.apply()
    assert res.mode in ("full", "delta"), res
    assert dp.verify() == []


def reach(lab: Lab, *checks: tuple[str, str, str, int | None]) -> list[bool]:
    """Probe (src, dst, proto, port) all at once; True where traffic got through."""
    specs = [make_spec(lab.ns(s), lab.ip(d), proto, port, FAST) for s, d, proto, port in checks]
    results = probe_batch(specs)
    for r in results:
        assert r.outcome in ("ok", "timeout"), r  # a policy drop is silent, never an error
    return [r.ok for r in results]


def tier(name: str, *ingress: str, default: str = "Deny", egress: tuple[str, ...] = ()) -> TierInfo:
    return TierInfo(name, default, tuple(ingress), egress)


def test_allow_deny_by_ip_set_protocol_and_port(dp: NftDataplane, lab: Lab) -> None:
    pol = PolicyUpdate(("default", "web"), inbound_rules=(
        Rule("allow", protocol="tcp", src_ip_set_ids=("s:w1",), dst_ports=(PORT,)),
    ))
    load(dp, lab, IPSetUpdate("s:w1", "ip", frozenset({lab.ip("w1")})), pol,
         tiers=[tier("default", "web")])
    assert reach(
        lab,
        ("w1", "w2", "tcp", PORT),  # allowed
        ("w1", "w2", "tcp", OTHER),  # wrong port: end-of-tier drop
        ("w1", "w2", "udp", PORT),  # wrong protocol
        ("w1", "w2", "icmp", None),
        ("w3", "w2", "tcp", PORT),  # source not in the set
        ("w2", "w1", "tcp", PORT),  # w1 has no policy, its profile allows
        ("w1", "w3", "icmp", None),
    ) == [True, False, False, False, False, True, True]
    # membership is the hot path: moving w3 into the set is a set-only delta
    dp.on_update(IPSetUpdate("s:w1", "ip", frozenset({lab.ip("w1"), lab.ip("w3")})))
    res = dp.apply()
    assert res.mode == "delta" and res.lines <= 4, res
    assert reach(lab, ("w3", "w2", "tcp", PORT), ("w3", "w2", "tcp", OTHER)) == [True, False]


def test_pass_default_pass_and_end_of_tier(dp: NftDataplane, lab: Lab) -> None:
    msgs = [
        IPSetUpdate("s:w1", "ip", frozenset({lab.ip("w1")})),
        IPSetUpdate("s:w3", "net", frozenset({f"{lab.ip('w3')}/32"})),
        # tier1: w1 passes on to tier2, w3 is allowed outright, anything else hits the
        # end of tier1 and is dropped.
        PolicyUpdate(("tier1", "pass-w1"), inbound_rules=(Rule("pass", src_ip_set_ids=("s:w1",)),)),
        PolicyUpdate(("tier1", "allow-w3"), inbound_rules=(
            Rule("allow", src_ip_set_ids=("s:w3",), protocol="tcp", dst_ports=(PORT,)),)),
        # tier2 (defaultAction Pass): matches nothing for tcp, so w1 continues to tier3
        PolicyUpdate(("tier2", "udp-only"), inbound_rules=(Rule("deny", protocol="udp"),)),
        # tier3: allow PORT from w1, deny the rest explicitly
        PolicyUpdate(("tier3", "web"), inbound_rules=(
            Rule("allow", protocol="tcp", dst_ports=(PORT,)), Rule("deny"))),
    ]
    tiers = [tier("tier1", "pass-w1", "allow-w3"), tier("tier2", "udp-only", default="Pass"),
             tier("tier3", "web")]
    load(dp, lab, *msgs, tiers=tiers)
    assert reach(
        lab,
        ("w1", "w2", "tcp", PORT),  # pass -> tier2 pass-through -> tier3 allow
        ("w1", "w2", "tcp", OTHER),  # ... -> tier3 deny
        ("w1", "w2", "udp", PORT),  # tier2 denies udp
        ("w3", "w2", "tcp", PORT),  # tier1 allow: later tiers not consulted
        ("w3", "w2", "tcp", OTHER),  # tier1 end-of-tier drop
    ) == [True, False, False, True, False]


def test_profiles_after_tiers_and_fail_closed(dp: NftDataplane, lab: Lab) -> None:
    msgs = [
        ProfileUpdate("web-only", inbound_rules=(Rule("allow", protocol="tcp", dst_ports=(PORT,)),)),
        PolicyUpdate(("default", "pass-all"), inbound_rules=(Rule("pass"),)),
    ]
    load(dp, lab, *msgs, endpoints=("w1",))
    dp.on_update(wep(lab, "w2", [tier("default", "pass-all")], ("web-only",)))
    dp.on_update(wep(lab, "w3", (), ()))  # no policy, no profile: everything dropped
    dp.apply()
    assert reach(
        lab,
        ("w1", "w2", "tcp", PORT),  # passed to profiles; web-only allows
        ("w1", "w2", "tcp", OTHER),  # no profile allows: final drop
        ("w1", "w3", "tcp", PORT),
        ("w3", "w1", "tcp", PORT),  # w3's egress is dropped too
    ) == [True, False, False, False]
    # a profile the calc graph never sent denies (and is reported)
    dp.on_update(wep(lab, "w2", (), ("missing", "allow-all")))
    dp.apply()
    assert "profile:missing" in dp.problems()
    assert reach(lab, ("w1", "w2", "tcp", PORT)) == [False]


def test_named_ports_and_log_continue(dp: NftDataplane, lab: Lab) -> None:
    msgs = [
        IPSetUpdate("np:http", "ip-port", frozenset({f"{lab.ip('w2')},tcp:{PORT}"})),
        PolicyUpdate(("default", "named"), inbound_rules=(
            Rule("log", log_prefix="tabby-test"),
            Rule("allow", dst_named_port_ip_set_ids=("np:http",)),
            # numeric OR named on one side: udp PORT via the number, tcp PORT via the set
            Rule("allow", protocol="udp", dst_ports=(OTHER,), dst_named_port_ip_set_ids=("np:http",)),
            Rule("allow", protocol="udp", dst_ports=(PORT,), rule_id="udp-by-number"),
        )),
    ]
    load(dp, lab, *msgs, tiers=[tier("default", "named")])
    assert reach(
        lab,
        ("w1", "w2", "tcp", PORT),  # named port (after the Log rule: Log continues)
        ("w1", "w2", "tcp", OTHER),
        ("w1", "w2", "udp", PORT),
    ) == [True, False, True]
    listing = nsops.run(lab.node.netns, ["nft", "list", "table", "inet", "tabby"]).stdout
    assert 'log prefix "tabby-test "' in listing and 'comment "udp-by-number"' in listing


def test_established_connection_survives_deny(dp: NftDataplane, lab: Lab) -> None:
    echo_port = 7070
    allow = PolicyUpdate(("default", "p"), inbound_rules=(Rule("allow", protocol="tcp"),))
    load(dp, lab, allow, tiers=[tier("default", "p")])
    server = lab.topo.spawn(lab.w["w2"], [sys.executable, "-c", ECHO_SERVER, str(echo_port)],
                            stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert server.stdout.readline().strip() == "READY"
        client = lab.topo.spawn(lab.w["w1"], [sys.executable, "-c", HOLD_CLIENT, lab.ip("w2"),
                                              str(echo_port)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "CONNECTED"

        def ping() -> str:
            client.stdin.write("go\n")
            client.stdin.flush()
            return client.stdout.readline().strip()

        assert ping() == "OK"
        dp.on_update(PolicyUpdate(("default", "p"), inbound_rules=(Rule("deny", protocol="tcp"),)))
        assert dp.apply().mode == "delta"
        assert ping() == "OK"  # conntrack fast path: the established flow lives on
        assert reach(lab, ("w1", "w2", "tcp", PORT)) == [False]  # new flows do not
    finally:
        if client is not None:
            client.terminate()
        server.terminate()


def test_unknown_workload_interface_drops(dp: NftDataplane, lab: Lab) -> None:
    load(dp, lab)  # w4's cali link exists and is routed, but no endpoint was sent
    assert reach(
        lab,
        ("w4", "w1", "tcp", PORT),
        ("w1", "w4", "tcp", PORT),
        ("w4", "w1", "icmp", None),
        ("w1", "w2", "tcp", PORT),
    ) == [False, False, False, True]
    # once the endpoint arrives (a delta: new chains + map elements) it is reachable
    dp.on_update(wep(lab, "w4"))
    assert dp.apply().mode == "delta"
    assert reach(lab, ("w4", "w1", "tcp", PORT), ("w1", "w4", "tcp", PORT)) == [True, True]


def test_workload_to_host_default_action(dp: NftDataplane, lab: Lab) -> None:
    with ProbeServer.start(lab.node, tcp=[PORT], udp=[], topology=lab.topo):
        load(dp, lab)
        spec = make_spec(lab.ns("w1"), lab.node.ip, "tcp", PORT, FAST)
        assert probe_batch([spec])[0].outcome == "timeout"  # Calico's default: Drop
        dp.on_update(ConfigUpdate(default_endpoint_to_host_action="Accept"))
        dp.apply()
        assert probe_batch([spec])[0].ok


def test_failed_apply_keeps_old_rules(dp: NftDataplane, lab: Lab, monkeypatch) -> None:
    deny = PolicyUpdate(("default", "p"), inbound_rules=(Rule("deny", protocol="tcp", dst_ports=(PORT,)),))
    load(dp, lab, deny, tiers=[tier("default", "p")])
    assert reach(lab, ("w1", "w2", "tcp", PORT)) == [False]
    real_full, real_delta = model.full_text, model.delta_text

    def broken(text: model.Text | None) -> model.Text | None:
        if text is not None:
            text.add("add rule inet tabby no-such-chain accept")
        return text

    monkeypatch.setattr(model, "full_text", lambda rs: broken(real_full(rs)))
    monkeypatch.setattr(model, "delta_text", lambda a, b: broken(real_delta(a, b)))
    dp.on_update(PolicyUpdate(("default", "p"), inbound_rules=(Rule("allow"),)))
    with pytest.raises(NftApplyError, match="nft -f -"):
        dp.apply()
    assert dp.pending  # kept for the caller's retry
    assert reach(lab, ("w1", "w2", "tcp", PORT)) == [False]  # old rules still in force
    assert dp.verify() == ["nothing applied yet"]  # we no longer trust our picture
    monkeypatch.undo()
    assert dp.apply().mode == "full"
    assert reach(lab, ("w1", "w2", "tcp", PORT)) == [True]


def test_kernel_rejected_policy_fails_closed(dp: NftDataplane, lab: Lab, monkeypatch) -> None:
    # Lift our own pre-check so the kernel sees (and refuses) a rule with ~70 lookups.
    monkeypatch.setattr(rules, "MAX_MATCHES", 1000)
    sets = [IPSetUpdate(f"s:{i}", "ip", frozenset({lab.ip("w1")})) for i in range(70)]
    big = PolicyUpdate(("default", "big"), inbound_rules=(
        Rule("allow", src_ip_set_ids=tuple(s.set_id for s in sets)),))
    first = PolicyUpdate(("default", "first"), inbound_rules=(
        Rule("allow", protocol="tcp", dst_ports=(OTHER,)),))
    load(dp, lab, *sets, first, big, tiers=[tier("default", "first", "big")])
    problems = dp.problems()
    assert set(problems) == {"policy:default/big"}, problems
    assert "kernel rejected" in problems["policy:default/big"]
    # the earlier policy still works; what reaches the rejected one is dropped
    assert reach(lab, ("w1", "w2", "tcp", OTHER), ("w1", "w2", "tcp", PORT)) == [True, False]
    # an update of the policy clears the rejection and is tried again
    dp.on_update(PolicyUpdate(("default", "big"), inbound_rules=(Rule("allow", src_ip_set_ids=("s:1",)),)))
    dp.apply()
    assert dp.problems() == {}
    assert reach(lab, ("w1", "w2", "tcp", PORT)) == [True]


def test_restart_replaces_stale_table_without_a_window(dp: NftDataplane, lab: Lab) -> None:
    only_w1 = [IPSetUpdate("s:w1", "ip", frozenset({lab.ip("w1")})),
               PolicyUpdate(("default", "w1"), inbound_rules=(Rule("allow", src_ip_set_ids=("s:w1",)),)),
               PolicyUpdate(("default", "stale"), inbound_rules=(Rule("allow"),))]
    load(dp, lab, *only_w1, tiers=[tier("default", "w1")], endpoints=("w1", "w2", "w3", "w4"))
    before = dp.read_existing()
    assert before is not None and "tabby-tw-" + lab.w["w4"].host_if in before.chains
    stop, leaks = threading.Event(), []

    def hammer() -> None:  # w3 -> w2 is denied before, during and after the restart
        while not stop.is_set():
            leaks.extend(r for r in reach(lab, ("w3", "w2", "tcp", PORT)) if r)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        time.sleep(0.3)
        fresh = NftDataplane(lab.node.netns)  # no memory of the old table
        for msg in only_w1[:2]:
            fresh.on_update(msg)
        fresh.on_update(ALLOW_ALL)
        for name in ("w1", "w2", "w3"):
            fresh.on_update(wep(lab, name, [tier("default", "w1")] if name == "w2" else ()))
        fresh.on_update(InSync())
        assert fresh.apply().mode == "full"
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    assert leaks == []
    assert fresh.verify() == []
    after = fresh.read_existing()
    assert "tabby-tw-" + lab.w["w4"].host_if not in after.chains  # stale endpoint gone
    assert not any("stale" in c for c in after.chains)
    assert reach(lab, ("w1", "w2", "tcp", PORT), ("w4", "w1", "tcp", PORT)) == [True, False]


def test_nothing_written_before_in_sync(lab: Lab) -> None:
    d = NftDataplane(lab.node.netns)
    d.on_update(ALLOW_ALL)
    d.on_update(wep(lab, "w1"))
    assert d.apply().mode == "waiting"
    assert d.read_existing() is None
    d.on_update(InSync())
    try:
        assert d.apply().mode == "full"
        assert d.read_existing() is not None
    finally:
        d.remove_table()
    assert d.read_existing() is None

