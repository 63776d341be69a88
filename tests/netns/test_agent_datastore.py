"""The agent against a real etcd that comes and goes: nothing is written to the kernel before
the first complete sync; losing the datastore makes the agent not ready while the
dataplane keeps enforcing; when the datastore is back, changes made meanwhile arrive.

The etcd runs on the test's loopback; a relay (tabby/lab/relay.py, as `tabby lab up` uses)
makes it appear on 127.0.0.1 inside each node namespace. Killing the relay is the outage."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_agent_support import AgentLab, wait_for

from tabby.cni.constants import ROUTE_PROTO
from tabby.datastore.etcd_server import EtcdServer, etcd_binary
from tabby.lab import netns as nsops
from tabby.lab.probe import ProbeServer, probe
from tabby.lab.topology import Topology

pytestmark = [pytest.mark.root, pytest.mark.etcd]
RELAY = [sys.executable, "-I", "-S", str(Path(nsops.__file__).with_name("relay.py"))]


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    if etcd_binary() is None:
        pytest.skip("etcd binary not installed (Debian package etcd-server)")
    with EtcdServer() as server:
        yield server


class Relay:
    def __init__(self, topo: Topology, server: EtcdServer, netns: list[str]) -> None:
        self.topo, self.server, self.netns = topo, server, netns
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = RELAY + ["--target", f"127.0.0.1:{self.server.client_port}",
                        "--port", str(self.server.client_port), "--netns", ",".join(self.netns)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.topo.record_process(self.proc.pid, None, None, argv)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith(b"READY"), self.proc.stderr.read() if self.proc.stderr else line

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        self.proc = None


def tabby_state(lab: AgentLab, node: str) -> tuple[bool, str]:
    ns = lab.nodes[node].netns
    has_table = nsops.run(ns, ["nft", "list", "table", "inet", "tabby"],
                          check=False).returncode == 0
    routes = nsops.run(ns, ["ip", "route", "show", "proto", str(ROUTE_PROTO)]).stdout
    return has_table, routes.strip()


def test_outage_and_recovery(topology: Callable[..., Topology], tmp_path: Path,
                             etcd: EtcdServer) -> None:
    topo = topology()
    lab = AgentLab.make(topo, tmp_path, nodes=2, url=etcd.url)
    relay = Relay(topo, etcd, [n.netns for n in lab.nodes.values()])
    # Agents first, datastore not reachable: they wait, not ready, kernel untouched.
    for n in lab.nodes:
        lab.start_agent(n)
    wait_for("agents answer not-ready", lambda: all(
        code == 503 for code, _ in lab.http(lab.nodes, "/readiness").values()))
    _, body = lab.http(["n1"], "/readiness")["n1"]
    assert "not registered" in body
    assert tabby_state(lab, "n1") == (False, "")
    relay.start()
    lab.wait_ready()
    assert tabby_state(lab, "n1")[0]

    a = lab.add_pod("n1", "client-a", {"app": "client"})
    b = lab.add_pod("n2", "web-b", {"app": "web"})
    ProbeServer.start(b.netns, tcp=[8080], udp=[], topology=topo)
    wait_for("a -> b", lambda: probe(a.netns, b.ip, "tcp", 8080))

    # Outage: not ready, but the dataplane keeps forwarding and enforcing.
    relay.kill()
    wait_for("agents report not ready", lambda: all(
        code == 503 for code, _ in lab.http(lab.nodes, "/readiness").values()))
    status = lab.status("n2")
    assert not status["ready"] and not status["datastore"]["in_sync"]
    assert any("datastore not in sync" in r for r in status["reasons"])
    assert lab.agents["n1"].alive() and lab.agents["n2"].alive()
    assert probe(a.netns, b.ip, "tcp", 8080)
    # A change made while the agents cannot see it...
    lab.apply({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
               "metadata": {"name": "deny-web"},
               "spec": {"selector": "app == 'web'", "types": ["Ingress"],
                        "ingress": [{"action": "Deny"}]}})
    assert probe(a.netns, b.ip, "tcp", 8080)
    # ...arrives with the resync once the datastore is back.
    relay.start()
    lab.wait_ready()
    wait_for("deny enforced after resync",
             lambda: not probe(a.netns, b.ip, "tcp", 8080, timeout=0.5))
    met = lab.metrics("n2")
    assert met["tabby_datastore_resyncs_total"] >= 1
    assert met["tabby_datastore_errors_total"] >= 1
    for n in lab.nodes:
        assert "Traceback" not in lab.log(n), lab.log(n)[-3000:]


def test_typha_client_mode(topology: Callable[..., Topology], tmp_path: Path,
                           etcd: EtcdServer) -> Any:
    """`--typha`: the agent follows the datastore through a Typha on the underlay."""
    topo = topology()
    lab = AgentLab.make(topo, tmp_path, nodes=2, url=etcd.url)
    relay = Relay(topo, etcd, [n.netns for n in lab.nodes.values()])
    relay.start()
    n1 = lab.nodes["n1"]
    log = open(tmp_path / "typha.log", "ab")
    topo.spawn(n1, [sys.executable, "-m", "tabby.cli.main", "--datastore", etcd.url, "typha",
                    "--listen", f"{n1.ip}:5473", "--health-port", "0"],
               stdout=log, stderr=log)
    log.close()
    for n in lab.nodes:
        lab.start_agent(n, "--typha", f"{n1.ip}:5473")
    lab.wait_ready()
    assert lab.status("n2")["datastore"]["extra"].get("mode") == "typha"
    a = lab.add_pod("n1", "client-a")
    b = lab.add_pod("n2", "web-b")
    ProbeServer.start(b.netns, tcp=[8080], udp=[], topology=topo)
    wait_for("a -> b through typha-fed agents", lambda: probe(a.netns, b.ip, "tcp", 8080))
