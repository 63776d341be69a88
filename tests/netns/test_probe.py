"""Real-namespace tests for tabby.lab.probe: TCP/UDP/ICMP probes and matrices."""

from __future__ import annotations

import time

import pytest

from tabby.lab import netns
from tabby.lab.probe import (
    ProbeServer,
    make_spec,
    probe,
    probe_batch,
    probe_detail,
    probe_matrix,
    probe_matrix_detail,
    serve_all,
)

PORT = 8080
CLOSED = 9
FAST = 0.5  # seconds; a dropped probe costs exactly this, and they run in parallel


def _two_nodes(topology, per_node: int = 1):
    """Two nodes, `per_node` raw workloads each, host routes between the nodes."""
    topo = topology()
    a, b = topo.add_node("a"), topo.add_node("b")
    wls = [
        topo.add_workload(node, f"w{node.name}{i}", f"10.65.{n}.{i + 1}")
        for n, node in enumerate((a, b))
        for i in range(per_node)
    ]
    for wl in wls:
        home = topo.nodes[wl.node]
        other = b if home is a else a
        topo.add_route(other, f"{wl.ip}/32", via=home.ip)
    return topo, a, b, wls


@pytest.mark.root
def test_cross_node_tcp_udp_icmp(topology) -> None:
    topo, a, b, (wa, wb) = _two_nodes(topology)
    serve_all([wa, wb], tcp=[PORT], udp=[PORT], topology=topo)
    for src, dst in ((wa, wb), (wb, wa)):
        for proto in ("tcp", "udp"):
            res = probe_detail(src, dst, proto, PORT, FAST)
            assert res.ok, res
            assert res.peer == dst.name  # answered by the server in the right namespace
        assert probe(src.netns, dst.ip, "icmp", None, FAST)
    # node to remote workload works too (host routes), and the result says where it went
    res = probe_detail(a, wb.ip, "TCP", PORT, FAST)
    assert (res.src, res.dst, res.protocol, res.port, res.outcome) == (
        a.netns,
        wb.ip,
        "tcp",
        PORT,
        "ok",
    )


@pytest.mark.root
def test_blackhole_times_out_and_closed_port_is_refused(topology) -> None:
    topo, a, b, (wa, wb) = _two_nodes(topology)
    with ProbeServer.start(wb, tcp=[PORT], udp=[PORT], topology=topo) as server:
        assert server.netns == wb.netns
        # nothing listening: reached, but refused (TCP RST / ICMP port unreachable)
        assert probe_detail(wa, wb, "tcp", CLOSED, FAST).outcome == "refused"
        assert probe_detail(wa, wb, "udp", CLOSED, FAST).outcome == "refused"
        # dropped on the way: a blackhole route on the source node swallows everything
        topo.add_blackhole(a, f"{wb.ip}/32")
        results = probe_batch(
            [make_spec(wa, wb, proto, PORT, FAST) for proto in ("tcp", "udp", "icmp")]
        )
        assert [r.outcome for r in results] == ["timeout"] * 3, results
        # an unreachable route answers with ICMP: told apart from a silent drop
        topo.add_route(a, f"{wb.ip}/32", type="unreachable")
        assert probe_detail(wa, wb, "tcp", PORT, FAST).outcome == "unreachable"
        assert probe_detail(wa, wb, "icmp", None, FAST).outcome == "unreachable"
        topo.add_route(a, f"{wb.ip}/32", via=b.ip)
        assert probe(wa, wb, "tcp", PORT, FAST)
    assert not netns.pid_alive(server.pid)


@pytest.mark.root
def test_matrix_all_pairs_and_one_dropped_destination(topology) -> None:
    topo, a, b, wls = _two_nodes(topology, per_node=3)
    serve_all(wls, tcp=[PORT], udp=[PORT], topology=topo)
    pairs = [(s, d) for s in wls for d in wls]
    for proto in ("tcp", "udp", "icmp"):
        grid = probe_matrix(pairs, proto, PORT, FAST)
        assert list(grid) == pairs  # keys are the pairs exactly as given, in order
        assert all(grid.values()), [k for k, ok in grid.items() if not ok]
    # blackhole one workload's address on node a only: exactly the pairs between it and
    # a's workloads fail, both ways (a's replies to it are swallowed too)
    victim = next(w for w in wls if w.node == "b")
    topo.add_blackhole(a, f"{victim.ip}/32")
    detail = probe_matrix_detail(pairs, "tcp", PORT, FAST)
    failed = {k for k, r in detail.items() if not r.ok}
    on_a = [w for w in wls if w.node == "a"]
    assert failed == {(w, victim) for w in on_a} | {(victim, w) for w in on_a}
    assert {detail[k].outcome for k in failed} == {"timeout"}
    # plain namespace names and IPs work as keys too
    names = probe_matrix([(w.netns, victim.ip) for w in wls], "udp", PORT, FAST)
    assert sorted(ok for ok in names.values()) == [False] * 3 + [True] * 3


@pytest.mark.root
def test_tcp_probe_to_a_non_probe_listener(topology) -> None:
    topo = topology()
    a, b = topo.add_node("a"), topo.add_node("b")
    listener = topo.spawn(b, ["nc", "-lk", "7000"])
    try:
        for _ in range(100):  # wait for nc to bind
            if topo.run(b, ["ss", "-Htln", "sport = :7000"]).stdout.strip():
                break
            time.sleep(0.02)
        res = probe_detail(a, b.ip, "tcp", 7000, FAST)
        assert res.ok and res.peer is None
    finally:
        listener.terminate()


@pytest.mark.root
def test_server_exits_with_its_parent_and_reports_bind_errors(topology) -> None:
    topo = topology()
    a = topo.add_node("a")
    server = ProbeServer.start(a, tcp=[PORT], udp=[])
    assert server.proc.stdin is not None
    server.proc.stdin.close()  # what happens when the test process dies
    assert server.proc.popen.wait(5) == 0
    server.stop()  # closes our ends of its pipes
    with ProbeServer.start(a, tcp=[PORT], udp=[]):
        with pytest.raises(netns.NetnsError, match="not ready"):
            ProbeServer.start(a, tcp=[PORT], udp=[])  # port taken


def test_bad_probe_input_errors_name_field_and_value() -> None:
    with pytest.raises(ValueError, match="protocol: unsupported 'sctp'"):
        make_spec("x", "10.0.0.1", "sctp", 80)
    with pytest.raises(ValueError, match="port: 0 out of range"):
        make_spec("x", "10.0.0.1", "tcp", 0)
    with pytest.raises(ValueError, match="dst: invalid IP address '10.0.0'"):
        make_spec("x", "10.0.0", "tcp", 80)
    with pytest.raises(ValueError, match="timeout: 0 out of range"):
        make_spec("x", "10.0.0.1", "tcp", 80, 0)
    with pytest.raises(ValueError, match="invalid namespace name"):
        make_spec("a/b", "10.0.0.1", "tcp", 80)
    assert make_spec("x", "10.0.0.1", "icmp", 80).port is None
    assert probe_batch([]) == []


@pytest.mark.root
def test_ipv6_probes(topology) -> None:
    topo = topology()
    a, b = topo.add_node("a"), topo.add_node("b")
    for node, ip in ((a, "fd00:31::10"), (b, "fd00:31::11")):
        # nodad: usable at once instead of after duplicate address detection (~1-2 s)
        topo.run(node, ["ip", "-6", "addr", "add", f"{ip}/64", "dev", node.underlay_if, "nodad"])
    ProbeServer.start(b, tcp=[PORT], udp=[PORT], topology=topo)
    results = probe_batch(
        [make_spec(a, "fd00:31::11", proto, PORT, FAST) for proto in ("tcp", "udp", "icmp")]
        + [make_spec(a, "fd00:31::11", proto, CLOSED, FAST) for proto in ("tcp", "udp")]
    )
    assert [r.outcome for r in results] == ["ok"] * 3 + ["refused"] * 2, results
    assert results[0].peer == results[1].peer == "b"
    # an ICMPv6 error quoting our echo request is reported as unreachable
    topo.add_route(b, "fd00:34::/64", type="unreachable")
    topo.add_route(a, "fd00:34::/64", via="fd00:31::11")
    res = probe_detail(a, "fd00:34::1", "icmp", None, FAST)
    assert res.outcome == "unreachable" and "fd00:31::11" in res.detail, res
