"""Real-namespace tests for tabby.lab.netns and tabby.lab.topology."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tabby.lab import netns
from tabby.lab.topology import (
    CALICO_HOST_MAC,
    STATE_FILE,
    Topology,
    TopologyError,
    workload_host_ifname,
)

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]


def _links(ns: str) -> dict[str, dict]:
    out = netns.run(ns, ["ip", "-j", "addr"]).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def _routes(ns: str) -> list[str]:
    return [line.strip() for line in netns.run(ns, ["ip", "-4", "route"]).stdout.splitlines()]


def _ping(src: str, dst: str, wait: float = 1.0) -> bool:
    return netns.run(src, ["ping", "-c1", f"-W{wait}", dst], check=False).returncode == 0


# --- netns primitives --------------------------------------------------------------------


def test_netns_primitives(netns_prefix: str) -> None:
    name = f"{netns_prefix}-x"
    netns.add_netns(name)
    try:
        assert netns.list_netns(netns_prefix + "-") == [name]
        with pytest.raises(netns.NetnsError, match="already exists"):
            netns.add_netns(name)
        # lo is up, so loopback works in a fresh namespace
        assert _ping(name, "127.0.0.1")
        assert netns.get_sysctl(name, "net.ipv4.ip_forward") == "0"
        netns.set_sysctls(name, {"net.ipv4.ip_forward": 1, "net.ipv4.conf.lo.forwarding": 1})
        assert netns.get_sysctl(name, "net.ipv4.ip_forward") == "1"
        with pytest.raises(netns.NetnsError, match="nonexistent"):
            netns.set_sysctls(name, {"net.ipv4.nonexistent": 1})
        with pytest.raises(ValueError, match="sysctl"):
            netns.set_sysctls(name, {"../../etc/x": 1})
        # run: exit codes and timeouts
        assert netns.run(name, ["sh", "-c", "exit 3"], check=False).returncode == 3
        with pytest.raises(netns.NetnsError, match="exit 3"):
            netns.run(name, ["sh", "-c", "exit 3"])
        with pytest.raises(netns.NetnsError, match="timed out"):
            netns.run(name, ["sleep", "5"], timeout=0.3)
        # spawn: the handle's PID is the command's own, inside the namespace
        proc = netns.spawn(name, ["sleep", "30"])
        assert netns.pid_alive(proc.pid, proc.starttime)
        for _ in range(250):  # `ip netns exec` enters the namespace just after exec
            if proc.pid in netns.netns_pids(name):
                break
            time.sleep(0.02)
        assert proc.pid in netns.netns_pids(name)
        assert os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        proc.terminate()
        assert not proc.alive() and not netns.pid_alive(proc.pid)
        # pyroute2 in the namespace sees only its links
        with netns.ipr(name) as ip:
            assert [link.get("ifname") for link in ip.get_links()] == ["lo"]
    finally:
        assert netns.del_netns(name)
    assert not netns.del_netns(name)
    assert netns.list_netns(netns_prefix + "-") == []


def test_ipr_never_creates_a_namespace(netns_prefix: str) -> None:
    missing = f"{netns_prefix}-missing"
    with pytest.raises(netns.NetnsError, match="does not exist"):
        with netns.ipr(missing):
            pass
    assert not netns.netns_exists(missing)
    for bad in ("", "a/b", "..", "x" * 200):
        with pytest.raises(ValueError, match="invalid namespace name"):
            netns.check_netns_name(bad)
    with pytest.raises(ValueError, match="interface name"):
        netns.check_ifname("x" * 16)


def test_kill_pid_checks_start_time(netns_prefix: str) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        start = netns.proc_starttime(proc.pid)
        assert start is not None
        # A recorded start time that does not match (a recycled PID) is left alone.
        assert not netns.kill_pid(proc.pid, start + 1)
        assert proc.poll() is None
        assert netns.kill_pid(proc.pid, start)
        assert proc.wait(5) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- topology ------------------------------------------------------------------------------


def test_two_node_layout(topology) -> None:
    topo = topology()
    a, b = topo.add_node("a"), topo.add_node("b")
    wl = topo.add_workload(a, "wa", "10.65.0.1")
    p = topo.prefix
    assert set(netns.list_netns(p + "-")) == {f"{p}-ul", f"{p}-a", f"{p}-b", f"{p}-wa"}
    assert topo.router_netns is None
    assert (a.netns, a.ip, a.gateway, a.subnet) == (f"{p}-a", "172.31.0.10", "172.31.0.1", 0)
    assert b.ip == "172.31.0.11"

    # node: underlay address, default route via the bridge (proxy ARP needs it), sysctls
    links = _links(a.netns)
    assert all(len(name) <= 15 for name in links)
    assert {"local": "172.31.0.10", "prefixlen": 24} in [
        {k: ai[k] for k in ("local", "prefixlen")} for ai in links[a.underlay_if]["addr_info"]
    ]
    assert f"default via 172.31.0.1 dev {a.underlay_if} proto static" in _routes(a.netns)
    assert netns.get_sysctl(a.netns, "net.ipv4.ip_forward") == "1"
    ul_links = _links(topo.underlay_netns)
    assert any(
        ai["local"] == "172.31.0.1" for link in ul_links.values() for ai in link["addr_info"]
    )

    # workload: Calico-style wiring
    assert wl.host_if == workload_host_ifname(f"{p}/wa") and wl.host_if.startswith("cali")
    assert len(wl.host_if) == 15
    host = links[wl.host_if]
    assert host["address"] == CALICO_HOST_MAC
    assert not [ai for ai in host["addr_info"] if ai["family"] == "inet"]
    assert netns.get_sysctl(a.netns, f"net.ipv4.conf.{wl.host_if}.proxy_arp") == "1"
    assert netns.get_sysctl(a.netns, f"net.ipv4.neigh.{wl.host_if}.proxy_delay") == "0"
    assert f"10.65.0.1 dev {wl.host_if} proto static scope link" in _routes(a.netns)
    wl_links = _links(wl.netns)
    assert [ai["prefixlen"] for ai in wl_links["eth0"]["addr_info"] if ai["family"] == "inet"] == [
        32
    ]
    assert _routes(wl.netns) == [
        "default via 169.254.1.1 dev eth0 proto static",
        "169.254.1.1 dev eth0 proto static scope link",
    ]
    # traffic: workload -> own node (via proxy ARP), node -> node over the bridge; the
    # workload reaches the other node only once that node has a route back to it
    assert _ping(wl.netns, a.ip)
    assert _ping(a.netns, b.ip)
    assert not _ping(wl.netns, b.ip, wait=0.3)
    topo.add_route(b, f"{wl.ip}/32", via=a.ip)
    assert _ping(wl.netns, b.ip)

    # the state file lists everything, written as objects were created
    state = json.loads((topo.state_dir / STATE_FILE).read_text())
    assert set(state["namespaces"]) == set(netns.list_netns(p + "-"))
    assert [n["name"] for n in state["nodes"]] == ["a", "b"]
    assert state["workloads"][0]["host_if"] == wl.host_if


def test_host_routes_between_nodes(topology) -> None:
    topo = topology()
    a, b = topo.add_node("a"), topo.add_node("b")
    wa = topo.add_workload(a, "wa", "10.65.0.1")
    wb = topo.add_workload(b, "wb", "10.65.1.1")
    assert not _ping(wa.netns, wb.ip, wait=0.3)
    topo.add_route(a, f"{wb.ip}/32", via=b.ip)
    topo.add_route("b", f"{wa.ip}/32", via=a.ip)
    assert _ping(wa.netns, wb.ip) and _ping(wb.netns, wa.ip)
    topo.del_route(a, f"{wb.ip}/32")
    assert not any(r.startswith(wb.ip) for r in _routes(a.netns))
    with pytest.raises(netns.NetnsError, match="not found"):
        topo.del_route(a, f"{wb.ip}/32")


def test_del_route_any_scope_and_type(topology) -> None:
    topo = topology()
    a = topo.add_node("a")
    wa = topo.add_workload(a, "wa", "10.65.0.1")  # its host route is scope link
    topo.add_route(a, "10.99.0.0/24", dev=a.underlay_if)  # scope link too
    topo.add_route(a, "10.98.0.0/24", via=a.gateway)
    topo.add_blackhole(a, "10.97.0.0/24")
    for cidr in (f"{wa.ip}/32", "10.99.0.0/24", "10.98.0.0/24", "10.97.0.0/24"):
        topo.del_route(a, cidr)
    left = _routes(a.netns)
    assert not [r for r in left if r.split()[0] in (wa.ip, "10.99.0.0/24", "10.98.0.0/24")]
    assert not [r for r in left if r.startswith("blackhole")]
    assert any(r.startswith("default via") for r in left)  # only what was asked for went
    with pytest.raises(ValueError, match="cidr: invalid destination 'nope'"):
        topo.del_route(a, "nope")


def test_two_subnets_route_via_router(topology) -> None:
    topo = topology(subnets=2)
    a, b, c = topo.add_node("a"), topo.add_node("b"), topo.add_node("c", subnet=1)
    assert (a.subnet, b.subnet, c.subnet) == (0, 1, 1)
    assert (a.cidr, b.cidr) == ("172.31.0.0/24", "172.31.1.0/24")
    assert b.gateway == "172.31.1.1" and b.ip == "172.31.1.10" and c.ip == "172.31.1.11"
    assert topo.router_netns in netns.list_netns(topo.prefix + "-")
    assert netns.get_sysctl(topo.router_netns, "net.ipv4.ip_forward") == "1"
    # a and b are on different subnets: the path crosses the router (TTL drops by one)
    out = netns.run(a.netns, ["ping", "-c1", "-W1", b.ip]).stdout
    assert "ttl=63" in out
    out = netns.run(b.netns, ["ping", "-c1", "-W1", c.ip]).stdout
    assert "ttl=64" in out
    # workloads across subnets with static routes (router learns /32s via their nodes)
    wa = topo.add_workload(a, "wa", "10.65.0.1")
    wb = topo.add_workload(b, "wb", "10.65.1.1")
    wc = topo.add_workload(c, "wc", "10.65.2.1")
    topo.install_static_routes()
    assert f"{wa.ip} via {a.ip} dev {topo.sid}r0 proto static" in _routes(topo.router_netns)
    assert _ping(wa.netns, wb.ip) and _ping(wb.netns, wc.ip) and _ping(wc.netns, wa.ip)


def test_teardown_removes_everything_and_is_idempotent(topology) -> None:
    topo = topology(subnets=2)
    a = topo.add_node("a")
    topo.add_workload(a, "wa", "10.65.0.1")
    proc = topo.spawn(a, ["sleep", "300"])
    # a daemon-style grandchild the topology never saw: found via `ip netns pids`
    topo.run(a, ["sh", "-c", "setsid sleep 301 >/dev/null 2>&1 < /dev/null &"])
    stray = [p for p in netns.netns_pids(a.netns) if p != proc.pid]
    assert stray
    extra = topo.state_dir / "extra.conf"
    extra.write_text("x")
    topo.record_file(extra)
    topo.teardown()
    assert netns.list_netns(topo.prefix + "-") == []
    assert not netns.pid_alive(proc.pid, proc.starttime)
    assert not any(netns.pid_alive(p) for p in stray)
    assert not extra.exists() and not (topo.state_dir / STATE_FILE).exists()
    topo.teardown()  # again: nothing to do, no error
    with pytest.raises(FileNotFoundError, match="no topology state"):
        Topology.load(topo.state_dir)


def test_default_state_dir_is_a_temp_dir_removed_at_teardown(need_root, netns_prefix) -> None:
    with Topology(netns_prefix) as topo:
        topo.add_node("a")
        sdir = topo.state_dir
        assert (sdir / STATE_FILE).exists() and sdir.name.startswith("tabby-")
    assert not sdir.exists()
    assert netns.list_netns(netns_prefix + "-") == []


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    from tabby.lab.topology import Topology
    topo = Topology(sys.argv[1], state_dir=sys.argv[2], subnets=2)
    a = topo.add_node("a"); b = topo.add_node("b")
    topo.add_workload(a, "wa", "10.65.0.1")
    p = topo.spawn(b, ["sleep", "300"])
    print(p.pid, flush=True)
    os._exit(0)   # crash: no teardown, no finalizers
""")


def test_crash_recovery_from_state_file(netns_prefix: str, tmp_path: Path) -> None:
    sdir = tmp_path / "state"
    out = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, netns_prefix, str(sdir)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=True,
    )
    pid = int(out.stdout.split()[0])
    p = netns_prefix
    assert set(netns.list_netns(p + "-")) == {f"{p}-ul", f"{p}-rtr", f"{p}-a", f"{p}-b", f"{p}-wa"}
    assert netns.pid_alive(pid)
    topo = Topology.load(sdir)
    assert sorted(topo.nodes) == ["a", "b"] and topo.workloads["wa"].node == "a"
    topo.teardown()
    assert netns.list_netns(p + "-") == []
    for _ in range(100):  # the orphan is reparented to init, which reaps it
        if not netns.pid_alive(pid):
            break
        time.sleep(0.02)
    assert not netns.pid_alive(pid)
    with pytest.raises(FileNotFoundError):  # the state file went with the teardown
        Topology.load(sdir)


def test_bad_input_errors_name_field_and_value(topology, netns_prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix: invalid topology prefix 'Bad_Prefix'"):
        Topology("Bad_Prefix")
    with pytest.raises(ValueError, match="subnets: 0 out of range"):
        Topology(netns_prefix, subnets=0)
    with pytest.raises(ValueError, match="subnets: invalid CIDR 'nope'"):
        Topology(netns_prefix, subnets=["nope"])
    with pytest.raises(ValueError, match="overlaps"):
        Topology(netns_prefix, subnets=["10.0.0.0/24", "10.0.0.128/25"])
    assert netns.list_netns(netns_prefix + "-") == []
    topo = topology()
    with pytest.raises(TopologyError, match="already exist"):
        Topology(topo.prefix)
    a = topo.add_node("a")
    with pytest.raises(ValueError, match="node: invalid name 'ul'"):
        topo.add_node("ul")
    with pytest.raises(ValueError, match="node: name 'a' already used"):
        topo.add_node("a")
    with pytest.raises(ValueError, match="subnet: 1 out of range"):
        topo.add_node("b", subnet=1)
    with pytest.raises(ValueError, match="ip: 10.0.0.5 is not a host address of 172.31.0.0/24"):
        topo.add_node("b", ip="10.0.0.5")
    with pytest.raises(ValueError, match="ip: invalid workload address 'x'"):
        topo.add_workload(a, "w", "x")
    with pytest.raises(KeyError, match="no node 'zz'"):
        topo.add_workload("zz", "w", "10.65.0.1")
    topo.add_workload(a, "w", "10.65.0.1")
    with pytest.raises(ValueError, match="ip: 10.65.0.1 already used"):
        topo.add_workload(a, "w2", "10.65.0.1")
    with pytest.raises(ValueError, match="cidr: invalid destination"):
        topo.add_route(a, "nope", via="172.31.0.11")
    # failed calls created nothing extra
    assert len(netns.list_netns(topo.prefix + "-")) == 3
