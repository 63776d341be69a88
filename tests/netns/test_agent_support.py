"""Shared set-up for the agent's namespace tests: node namespaces on an underlay, a sqlite
datastore, `tabby node run` as a real process in each node namespace (spawned through the
topology, so teardown kills it), workloads attached by the real `tabby-cni`, and helpers
that poll for convergence (readiness, then probes) up to a deadline. Holds no tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabby.datastore import open_datastore
from tabby.datastore.base import NotFound
from tabby.datastore.client import ResourceClient
from tabby.lab import netns as nsops
from tabby.lab.netns import NsProcess
from tabby.lab.topology import Node, Topology
from tabby.resources import from_dict

BIN = Path(sys.executable).parent
CNI = str(BIN / "tabby-cni")
NSCHECK = [sys.executable, "-I", "-S",
           str(Path(nsops.__file__).with_name("nscheck.py"))]
HEALTH_PORT = 9099
METRICS_PORT = 9091
DEADLINE = 60.0  # convergence bound: turns a hang into a failure, never a timing assertion
POOL = "10.65.0.0/16"

# A TCP echo server for long-lived connections (one line in, the same line out).
ECHO_SERVER = r"""
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
print("READY", flush=True)
def serve(c):
    f = c.makefile("rwb", buffering=0)
    for line in f:
        f.write(line)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# One connection, a line every 20 ms; prints "ok N" per echo, "error ..." and exits when the
# connection breaks. Reads "stop" on stdin to end cleanly.
ECHO_CLIENT = r"""
import select, socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.settimeout(5)
f = c.makefile("rwb", buffering=0)
n = 0
while True:
    r, _, _ = select.select([sys.stdin], [], [], 0.02)
    if r and sys.stdin.readline().strip() == "stop":
        print("stopped", n, flush=True); break
    n += 1
    try:
        f.write(f"{n}\n".encode())
        got = f.readline()
    except OSError as exc:
        print("error", n, exc, flush=True); sys.exit(1)
    if got.strip() != str(n).encode():
        print("error", n, "got", got, flush=True); sys.exit(1)
    print("ok", n, flush=True)
"""


def wait_for(what: str, fn: Callable[[], Any], deadline: float = DEADLINE,
             interval: float = 0.1) -> Any:
    """Poll fn until it returns something truthy; fail naming `what` at the deadline."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not reached within {deadline:.0f} s (last: {last!r})")


@dataclass
class Pod:
    name: str
    namespace: str
    netns: str
    node: str
    ip: str
    endpoint: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class AgentLab:
    topo: Topology
    tmp: Path
    url: str = ""
    nodes: dict[str, Node] = field(default_factory=dict)
    agents: dict[str, NsProcess] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)
    namespaces: set[str] = field(default_factory=set)

    @classmethod
    def make(cls, topo: Topology, tmp: Path, nodes: int = 2, *, url: str | None = None,
             pool: dict[str, Any] | None = None, subnets: Iterable[int] | None = None) -> AgentLab:
        lab = cls(topo, tmp)
        lab.url = url or f"sqlite://{tmp / 'tabby.db'}"
        subnet_list = list(subnets) if subnets is not None else [None] * nodes
        for i in range(1, nodes + 1):
            lab.nodes[f"n{i}"] = topo.add_node(f"n{i}", subnet=subnet_list[i - 1])
        if pool is not False:
            lab.apply({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                       "metadata": {"name": "default-ipv4-ippool"},
                       "spec": {"cidr": POOL, "vxlanMode": "Always", **(pool or {})}})
        return lab

    # --- datastore ----------------------------------------------------------------------

    def client(self) -> tuple[Any, ResourceClient]:
        ds = open_datastore(self.url)
        return ds, ResourceClient(ds)

    def apply(self, *docs: dict[str, Any]) -> None:
        ds, rc = self.client()
        try:
            for doc in docs:
                rc.apply(from_dict(doc))
        finally:
            ds.close()

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        ds, rc = self.client()
        try:
            rc.delete(kind, name, namespace)
        except NotFound:
            pass
        finally:
            ds.close()

    def get(self, kind: str, name: str) -> Any:
        ds, rc = self.client()
        try:
            return rc.get(kind, name)
        finally:
            ds.close()

    # --- agents -------------------------------------------------------------------------

    def start_agent(self, node: str, *extra: str) -> NsProcess:
        log = open(self.tmp / f"agent-{node}.log", "ab")
        argv = [sys.executable, "-m", "tabby.cli.main", "--datastore", self.url, "node", "run",
                "--name", node, "--no-bgp", "--health-port", str(HEALTH_PORT),
                "--metrics-port", str(METRICS_PORT), *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = self.topo.spawn(self.nodes[node], argv, stdout=log, stderr=log, env=env)
        log.close()
        self.agents[node] = proc
        return proc

    def stop_agent(self, node: str, sig: int = signal.SIGTERM) -> int | None:
        proc = self.agents.pop(node)
        proc.popen.send_signal(sig)
        try:
            return proc.popen.wait(30)
        finally:
            proc.terminate()

    def log(self, node: str) -> str:
        return (self.tmp / f"agent-{node}.log").read_text(errors="replace")

    def http(self, nodes: Iterable[str], path: str, port: int = HEALTH_PORT) -> dict[str, Any]:
        """GET path on each node's loopback (one process for all): node -> (status, body)."""
        names = list(nodes)
        targets = [f"{self.nodes[n].netns}:{port}:{path}" for n in names]
        proc = subprocess.run(NSCHECK + targets, capture_output=True, text=True, timeout=30)
        out = json.loads(proc.stdout or "[]")
        return {n: (r.get("status"), r.get("body") or r.get("error")) for n, r in
                zip(names, out, strict=True)}

    def ready(self, nodes: Iterable[str] | None = None) -> bool:
        got = self.http(nodes or self.agents, "/readiness")
        return all(status == 200 for status, _ in got.values())

    def wait_ready(self, nodes: Iterable[str] | None = None, deadline: float = DEADLINE) -> None:
        names = list(nodes or self.agents)
        for n in names:
            if not self.agents[n].alive():
                raise AssertionError(f"agent on {n} exited: {self.log(n)[-2000:]}")
        try:
            wait_for(f"agents {names} ready", lambda: self.ready(names), deadline, 0.2)
        except AssertionError:
            logs = "\n".join(f"--- {n}\n{self.log(n)[-1500:]}" for n in names)
            raise AssertionError(f"agents not ready: {self.http(names, '/readiness')}\n{logs}") \
                from None

    def fetch(self, node: str, path: str, port: int = HEALTH_PORT) -> str:
        """A whole response body (nscheck keeps only the first 4 kB)."""
        code = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                f"'http://127.0.0.1:{port}{path}', timeout=10).read().decode())")
        return nsops.run(self.nodes[node].netns, [sys.executable, "-c", code], timeout=30).stdout

    def status(self, node: str) -> dict[str, Any]:
        return json.loads(self.fetch(node, "/status"))

    def metrics(self, node: str) -> dict[str, float]:
        body = self.fetch(node, "/metrics", METRICS_PORT)
        out: dict[str, float] = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    # --- workloads ----------------------------------------------------------------------

    def ensure_namespace(self, namespace: str, labels: dict[str, str] | None = None) -> None:
        if namespace in self.namespaces and labels is None:
            return
        doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": namespace}}
        if labels:
            doc["metadata"]["labels"] = labels
        self.apply(doc)
        self.namespaces.add(namespace)

    def add_pod(self, node: str, name: str, labels: dict[str, str] | None = None,
                namespace: str = "default") -> Pod:
        self.ensure_namespace(namespace)
        netns = self.topo.add_namespace(name)
        conf = {
            "cniVersion": "1.0.0", "name": "tabby", "type": "tabby-cni",
            "datastore": self.url, "nodename": node, "mtu": 1450,
            "ipam": {"type": "tabby-ipam", "assign_ipv4": True, "assign_ipv6": False},
            "args": {"tabby": {"labels": dict(labels or {})}},
        }
        env = {
            "CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"cid-{name}",
            "CNI_NETNS": f"/run/netns/{netns}", "CNI_IFNAME": "eth0",
            "CNI_PATH": f"{BIN}:/usr/lib/cni",
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}",
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        }
        proc = nsops.run(self.nodes[node].netns, [CNI], input=json.dumps(conf), env=env,
                         timeout=60, check=False)
        assert proc.returncode == 0, f"tabby-cni ADD {name}: {proc.stdout} {proc.stderr}"
        ip = json.loads(proc.stdout)["ips"][0]["address"].split("/")[0]
        ds, rc = self.client()
        try:
            (wep,) = [w for w in rc.list("WorkloadEndpoint", namespace)
                      if w.spec.containerID == f"cid-{name}"]
        finally:
            ds.close()
        pod = Pod(name, namespace, netns, node, ip, wep.metadata.name, dict(labels or {}))
        self.pods[name] = pod
        return pod

    def set_labels(self, pod: Pod, labels: dict[str, str]) -> None:
        """Relabel a workload endpoint (as Calico's Kubernetes controller would)."""
        ds, rc = self.client()
        try:
            wep = rc.get("WorkloadEndpoint", pod.endpoint, pod.namespace)
            keep = {k: v for k, v in (wep.metadata.labels or {}).items()
                    if k.startswith("projectcalico.org/")}
            meta = wep.metadata.model_copy(update={"labels": {**keep, **labels}})
            rc.update(wep.model_copy(update={"metadata": meta}))
        finally:
            ds.close()
        pod.labels = dict(labels)

    def spawn_in(self, netns: str, script: str, *args: str, **kw: Any) -> NsProcess:
        return self.topo.spawn(netns, [sys.executable, "-c", script, *args], **kw)


def converge(lab: AgentLab, deadline: float = DEADLINE) -> int:
    """Wait until every agent is ready and its kernel reflects the datastore's current
    revision (readiness reports `applied_revision`); returns that revision."""
    ds, _ = lab.client()
    try:
        want = ds.revision()
    finally:
        ds.close()

    def done() -> bool:
        got = lab.http(lab.agents, "/readiness")
        for code, body in got.values():
            if code != 200:
                return False
            if json.loads(body).get("applied_revision", 0) < want:
                return False
        return True

    wait_for(f"agents applied revision {want}", done, deadline, 0.1)
    return want


PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1}


def oracle(lab: AgentLab, pods: list[Pod], proto: str, port: int | None) -> dict[tuple[str, str], bool]:
    """The policy engine's verdict for every ordered pair of pods (tabby policy matrix)."""
    from tabby.policy import PolicySet, reachability

    ds, rc = lab.client()
    try:
        resources, _ = rc.snapshot()
    finally:
        ds.close()
    ps = PolicySet.from_resources(resources)
    by_key = {f"{p.namespace}/{p.endpoint}": p for p in pods}
    eps = [e for e in ps.workload_endpoints(None) if e.key in by_key]
    assert len(eps) == len(pods), f"endpoints missing from the policy set: {sorted(by_key)}"
    got = reachability(ps, eps, protocol=PROTOCOLS[proto],
                       port=None if proto == "icmp" else port)
    return {(by_key[s].name, by_key[d].name): ok for s, row in got.items() for d, ok in row.items()}


def observed(pods: list[Pod], proto: str, port: int | None) -> dict[tuple[str, str], bool]:
    from tabby.lab.probe import probe_matrix

    pairs = [(p.netns, q.ip) for p in pods for q in pods if p is not q]
    names = {p.netns: p.name for p in pods}
    ips = {p.ip: p.name for p in pods}
    got = probe_matrix(pairs, proto, port, timeout=0.5)
    return {(names[s], ips[d]): ok for (s, d), ok in got.items()}


def assert_dataplane_is_oracle(lab: AgentLab, pods: list[Pod],
                               checks: Iterable[tuple[str, int | None]],
                               deadline: float = 30.0) -> dict[str, dict[tuple[str, str], bool]]:
    """After convergence, every real probe outcome equals the policy engine's verdict.
    Probes are retried up to a deadline (first packets may wait for ARP)."""
    converge(lab)
    out = {}
    for proto, port in checks:
        want = oracle(lab, pods, proto, port)
        end = time.monotonic() + deadline
        while True:
            seen = observed(pods, proto, port)
            if seen == want or time.monotonic() > end:
                break
        diff = {k: f"kernel {'allows' if seen[k] else 'denies'}, policy says "
                   f"{'allow' if want[k] else 'deny'}" for k in want if seen.get(k) != want[k]}
        assert not diff, f"{proto}/{port}: dataplane differs from the policy engine: {diff}"
        out[f"{proto}/{port}"] = want
    return out
