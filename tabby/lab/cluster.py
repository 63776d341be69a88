"""`tabby lab up|down|status`: a whole cluster out of network namespaces on one machine.

    underlay   <lab>-ul        a bridge (two, and a router <lab>-rtr, for *-crosssubnet)
    nodes      <lab>-node<i>   each runs `tabby node run` (agent + BIRD), health on :9099
    datastore  <dir>/tabby.db  (or a real etcd on 127.0.0.1, relayed into every node)
    workloads  <lab>-<app>-<n> wired by the real tabby-cni, each with a probe server

Everything is written to the lab's state (lab.json, topology.json) *before* it is made, so
`down` - after a crash too - finds and removes it all. `up` is ready only when every agent
answers /readiness, every expected BGP session is Established and every pair of workloads
connects as `tabby policy matrix` says it should.

`--ipv6` (encapsulation none only) makes the lab dual stack: a ULA /64 beside the IPv4
underlay, an IPv6 pool, `spec.bgp.ipv6Address` on every Node, workloads with both
families; IPv6 between nodes is routed by BIRD's IPv6 sessions (see docs/design/lab.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabby.lab import checks, health
from tabby.lab import matrix as labmatrix
from tabby.lab import netns as nsops
from tabby.lab import workloads as wlops
from tabby.lab.progress import Reporter
from tabby.lab.state import (
    DATASTORES,
    DEFAULT_NAME,
    ENCAPS,
    STATE_FILE,
    LabError,
    LabState,
    NodeState,
    ProcessState,
    check_lab_name,
    lab_dir,
)
from tabby.lab.topology import STATE_FILE as TOPOLOGY_FILE
from tabby.lab.topology import Topology, TopologyError

POOL_NAME = "default-ipv4-ippool"
POOL_CIDR = "10.65.0.0/16"
POOL6_NAME = "default-ipv6-ippool"
POOL6_CIDR = "fd65::/112"  # ULA; /122 blocks, as Calico's default IPv6 pool
HEALTH_PORT = 9099  # Felix's health port; every node namespace has its own loopback
TYPHA_PORT = 5473
TYPHA_HEALTH_PORT = 9098
UNDERLAY_MTU = 1500
ENCAP_OVERHEAD = {"none": 0, "vxlan": 50, "ipip": 20}
RELAY = [sys.executable, "-I", "-S", str(Path(__file__).with_name("relay.py"))]
MAX_NODES = 32


@dataclass
class UpOptions:
    name: str = DEFAULT_NAME
    nodes: int = 3
    workloads_per_node: int = 2
    encap: str = "none"
    datastore: str = "sqlite"
    typha: bool = False
    ipv6: bool = False  # dual stack (encapsulation none only)
    timeout: float = 120.0  # for agents, BGP and connectivity together


def validate(opts: UpOptions) -> None:
    check_lab_name(opts.name)
    if not 1 <= opts.nodes <= MAX_NODES:
        raise LabError(f"--nodes: {opts.nodes} out of range 1-{MAX_NODES}")
    if not 0 <= opts.workloads_per_node <= 16:
        raise LabError(f"--workloads-per-node: {opts.workloads_per_node} out of range 0-16")
    if opts.encap not in ENCAPS:
        raise LabError(f"--encap: unknown mode {opts.encap!r} (one of {', '.join(ENCAPS)})")
    if opts.datastore not in DATASTORES:
        raise LabError(f"--datastore: unknown {opts.datastore!r} (sqlite or etcd)")
    if opts.encap.startswith("ipip"):
        reason = checks.ipip_unsupported_reason()
        if reason:
            raise LabError(reason)
    if opts.ipv6 and opts.encap != "none":
        # The agent programs no IPv6 tunnel routes or VTEPs: only BGP routes IPv6 here.
        raise LabError(f"--ipv6: needs --encap none, not {opts.encap!r} (IPv6 between nodes "
                       f"is routed by BGP only)")


def pool_modes(encap: str) -> dict[str, str]:
    kind, _, cross = encap.partition("-")
    mode = "CrossSubnet" if cross else "Always"
    return {
        "vxlanMode": mode if kind == "vxlan" else "Never",
        "ipipMode": mode if kind == "ipip" else "Never",
    }


# --- up --------------------------------------------------------------------------------------


def up(opts: UpOptions, reporter: Reporter | None = None) -> LabState:
    """Build the lab; on any failure or interrupt remove everything made so far, re-raise."""
    rep = reporter or Reporter()
    validate(opts)
    checks.check_system(opts.datastore)
    d = lab_dir(opts.name)
    in_use = nsops.list_netns(opts.name + "-")
    if in_use and not (d / "lab.json").exists():
        raise LabError(
            f"lab name {opts.name!r} is in use: namespaces {', '.join(in_use[:4])} exist "
            f"(not from a lab this machine knows); pick another --name"
        )
    mtu = UNDERLAY_MTU - ENCAP_OVERHEAD[opts.encap.partition("-")[0]]
    state = LabState.create(
        name=opts.name,
        dir=str(d),
        encap=opts.encap,
        datastore=opts.datastore,
        datastore_url="",
        pool_cidr=POOL_CIDR,
        pool6_cidr=POOL6_CIDR if opts.ipv6 else None,
        mtu=mtu,
    )
    owner = os.getpid()
    try:
        _build(state, opts, rep)
    except BaseException:
        if os.getpid() != owner:  # a forked helper (pyroute2) unwinding a copy of us
            os._exit(1)
        with contextlib.suppress(Exception):
            state.phase = "failed"
            state.save()
        rep.finish("teardown", "removing what was made")
        with _shielded():
            down(opts.name)
        raise
    return state


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """No second Ctrl-C/SIGTERM in the middle of the clean-up (main thread only)."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _build(state: LabState, opts: UpOptions, rep: Reporter) -> None:
    d = Path(state.dir)
    (d / "logs").mkdir(exist_ok=True)
    deadline = time.monotonic() + opts.timeout

    rep.start("underlay", "underlay network")
    topo = Topology(opts.name, subnets=2 if state.crosssubnet else 1, state_dir=d,
                    ipv6=opts.ipv6)
    rep.finish("underlay", f"underlay {', '.join(topo.subnets + topo.subnets6)}")

    rep.start("nodes", "node namespaces", opts.nodes)
    for i in range(1, opts.nodes + 1):
        n = topo.add_node(f"node{i}")
        run_dir = d / "nodes" / n.name
        run_dir.mkdir(parents=True, exist_ok=True)
        state.nodes.append(
            NodeState(
                name=n.name, netns=n.netns, ip=n.ip, cidr=n.cidr, subnet=n.subnet,
                health_port=HEALTH_PORT, run_dir=str(run_dir),
                log=str(d / "logs" / f"{n.name}.log"), ip6=n.ip6,
            )
        )  # fmt: skip
        state.save()
        rep.update("nodes", i)
    rep.finish("nodes", f"{opts.nodes} nodes")

    rep.start("datastore", f"datastore ({opts.datastore})")
    _start_datastore(state, topo)
    _bootstrap(state)
    rep.finish("datastore", f"datastore {state.datastore_url}")

    if opts.typha:
        rep.start("typha", "Typha")
        _start_typha(state, topo)
        rep.finish("typha", f"Typha on {state.typha}")

    rep.start("agents", "agents starting", opts.nodes)
    for node in state.nodes:
        _start_agent(state, topo, node)
    # Workloads are wired while the agents start (the CNI plugin needs only the datastore,
    # and an agent picks up endpoints that exist before it, as after a restart).
    wls = wlops.plan(opts.name, state.nodes, opts.workloads_per_node)
    if wls:
        rep.start("workloads", "workloads (tabby-cni ADD)", len(wls))
        _add_workloads(state, topo, wls, rep)
        rep.finish("workloads", f"{len(wls)} workloads")
    _wait(state, rep, deadline, need_bgp=False)
    rep.finish("agents", f"{opts.nodes} agents ready")

    if any(n.pid for n in state.nodes):
        rep.start("bgp", "BGP sessions")
        _wait(state, rep, deadline, need_bgp=True)
        rep.finish("bgp", _bgp_summary(state))

    if len(state.workloads) >= 2:
        rep.start("connectivity", "connectivity = policy")
        _wait_connectivity(state, rep, deadline)
        rep.finish("connectivity", "every pair connects as policy says")
    state.phase = "ready"
    state.save()


def _start_datastore(state: LabState, topo: Topology) -> None:
    d = Path(state.dir)
    if state.datastore == "sqlite":
        state.datastore_url = f"sqlite://{d / 'tabby.db'}"
        state.save()
        return
    from tabby.datastore.etcd_server import EtcdServer

    # Detached (no parent-death signal, own session): the lab's etcd outlives `lab up`.
    server = EtcdServer(data_parent=str(d), die_with_parent=False, name=f"lab-{state.name}")
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    assert server.proc is not None and server.tmpdir is not None
    pid = server.proc.pid
    st = nsops.proc_starttime(pid)
    topo.record_process(pid, st, None, ["etcd", server.url])
    state.datastore_url = server.url
    addr = f"127.0.0.1:{server.client_port}"
    state.processes.append(ProcessState("etcd", pid, st, None, addr, str(server.tmpdir)))
    state.save()
    # The nodes reach the same URL through a relay into each node namespace's loopback.
    argv = RELAY + ["--target", addr, "--port", str(server.client_port),
                    "--netns", ",".join(n.netns for n in state.nodes)]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    st = nsops.proc_starttime(proc.pid)
    topo.record_process(proc.pid, st, None, argv)
    state.processes.append(ProcessState("relay", proc.pid, st, None, addr))
    state.save()
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    proc.stdout.close()
    if not line.startswith(b"READY"):
        err = proc.stderr.read().decode(errors="replace").strip()[-300:]
        raise LabError(f"datastore relay into the node namespaces failed: {err}")
    proc.stderr.close()


def _bootstrap(state: LabState) -> None:
    """The IP pool for the encapsulation, and the Kubernetes namespaces of the workloads."""
    from tabby.datastore import open_datastore
    from tabby.datastore.client import ResourceClient
    from tabby.resources import from_dict

    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": POOL_NAME},
            "spec": {"cidr": state.pool_cidr, "blockSize": 26, "natOutgoing": False,
                     "nodeSelector": "all()", **pool_modes(state.encap)},
        }
    ]  # fmt: skip
    if state.pool6_cidr:
        docs.append({
            "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": POOL6_NAME},
            "spec": {"cidr": state.pool6_cidr, "blockSize": 122, "natOutgoing": False,
                     "nodeSelector": "all()", "vxlanMode": "Never", "ipipMode": "Never"},
        })  # fmt: skip
    for n in state.nodes:
        # What calico/node's IP autodetection would find; the agent keeps it up to date
        # (and registers bgp.ipv6Address itself: dual-stack agents run with --ip6 autodetect).
        plen = n.cidr.split("/")[1]
        bgp = {"ipv4Address": f"{n.ip}/{plen}"}
        docs.append({
            "apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": n.name},
            "spec": {"bgp": bgp, "addresses": [{"address": n.ip, "type": "InternalIP"}]},
        })  # fmt: skip
    for ns in dict.fromkeys(ns for ns, _ in wlops.APPS):
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    ds = open_datastore(state.datastore_url)
    try:
        client = ResourceClient(ds)
        for doc in docs:
            client.create(from_dict(doc))
    finally:
        ds.close()
    from tabby.cni.install import install

    install(
        bin_dir=str(Path(state.dir) / "bin"),
        conf_dir=str(Path(state.dir) / "net.d"),
        datastore=state.datastore_url,
        name=wlops.NETWORK_NAME,
        mtu=state.mtu,
        ipv6=6 in state.families,
    )


def agent_argv(state: LabState, node: NodeState) -> list[str]:
    argv = [sys.executable, "-m", "tabby.cli.main", "--datastore", state.datastore_url,
            "node", "run", "--name", node.name, "--health-port", str(node.health_port),
            "--run-dir", node.run_dir]  # fmt: skip
    if 6 in state.families:
        argv += ["--ip6", "autodetect"]
    if state.typha:
        argv += ["--typha", state.typha]
    return argv


def _start_agent(state: LabState, topo: Topology, node: NodeState) -> None:
    env = {**os.environ, "TABBY_DATASTORE": state.datastore_url, "PYTHONUNBUFFERED": "1"}
    with open(node.log, "ab") as log:
        proc = topo.spawn(node.netns, agent_argv(state, node), stdout=log, stderr=log, env=env)
    node.pid, node.starttime = proc.pid, proc.starttime
    state.save()


def _start_typha(state: LabState, topo: Topology) -> None:
    """Typha runs on node1's namespace (as a host-network pod would) on the underlay."""
    node = state.nodes[0]
    log = Path(state.dir) / "logs" / "typha.log"
    argv = [sys.executable, "-m", "tabby.cli.main", "--datastore", state.datastore_url,
            "typha", "--listen", f"0.0.0.0:{TYPHA_PORT}",
            "--health-port", str(TYPHA_HEALTH_PORT)]  # fmt: skip
    env = {**os.environ, "TABBY_DATASTORE": state.datastore_url, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as f:
        proc = topo.spawn(node.netns, argv, stdout=f, stderr=f, env=env)
    state.typha = f"{node.ip}:{TYPHA_PORT}"
    state.processes.append(
        ProcessState("typha", proc.pid, proc.starttime, node.netns, state.typha)
    )
    state.save()
    target = f"{node.netns}:{TYPHA_HEALTH_PORT}:/readiness"
    end = time.monotonic() + 30
    while health.http_status([target])[0] != 200:
        if not proc.alive():
            raise LabError(f"Typha exited; last lines of its log: {_log_tail(str(log))}")
        if time.monotonic() > end:
            raise LabError(f"Typha not ready after 30s; last lines of its log: {_log_tail(str(log))}")
        time.sleep(0.2)


def _log_tail(path: str, lines: int = 8) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def _expected_sessions(state: LabState) -> int:
    """Full mesh: one session per other node and IP family."""
    return (len(state.nodes) - 1) * len(state.families) if state.uses_bgp else 0


def _wait(state: LabState, rep: Reporter, deadline: float, need_bgp: bool) -> None:
    """Until every agent is ready (and, with need_bgp, every BGP session Established)."""
    while True:
        hs = health.agent_health(state.nodes)
        for h in hs:
            if not h.alive:
                node = state.node(h.node)
                raise LabError(f"agent on {h.node} exited; last lines of its log: {_log_tail(node.log)}")
        ready = sum(h.ready for h in hs)
        if not need_bgp:
            rep.update("agents", ready, f"agents ready {ready}/{len(hs)}")
            if ready == len(hs):
                return
            waiting = ", ".join(f"{h.node}: {h.detail or 'not ready'}" for h in hs if not h.ready)
        else:
            bgp = [health.bgp_status(n) for n in state.nodes]
            want = _expected_sessions(state)
            up_ = sum(b.established for b in bgp)
            total = sum(max(len(b.sessions), want) for b in bgp)
            rep.update("bgp", up_, f"BGP sessions Established {up_}/{total}")
            if ready == len(hs) and all(
                b.established == len(b.sessions) and len(b.sessions) >= want for b in bgp
            ):
                return
            waiting = ", ".join(
                f"{b.node}: {b.established}/{max(len(b.sessions), want)} Established"
                + (f" ({b.error})" if b.error else "")
                for b in bgp
                if b.established < max(len(b.sessions), want)
            )
        if time.monotonic() > deadline:
            what = "BGP sessions" if need_bgp else "agents"
            raise LabError(f"{what} not ready in time: {waiting}")
        time.sleep(0.25)


def _bgp_summary(state: LabState) -> str:
    bgp = [health.bgp_status(n) for n in state.nodes]
    total = sum(len(b.sessions) for b in bgp)
    if not total:
        return "no BGP sessions (routes programmed by the agents)"
    return f"{sum(b.established for b in bgp)}/{total} BGP sessions Established"


def _add_workloads(state: LabState, topo: Topology, wls: list[Any], rep: Reporter) -> None:
    for wl in wls:
        topo.add_namespace(wl.netns[len(state.name) + 1 :])
        state.workloads.append(wl)
    state.save()
    done = 0
    with ThreadPoolExecutor(max_workers=min(8, len(wls))) as pool:
        for wl, (ip, ip6) in zip(wls, pool.map(lambda w: wlops.cni_add(state, w), wls),
                                 strict=True):
            wl.ip, wl.ip6 = ip, ip6
            done += 1
            rep.update("workloads", done, f"workloads wired {done}/{len(wls)}")
    state.save()
    from tabby.datastore import open_datastore
    from tabby.datastore.client import ResourceClient

    ds = open_datastore(state.datastore_url)
    try:
        wlops.find_endpoints(ResourceClient(ds), wls)
    finally:
        ds.close()
    with ThreadPoolExecutor(max_workers=min(8, len(wls))) as pool:
        for wl, (pid, st) in zip(
            wls, pool.map(lambda w: wlops.start_probe_server(topo, w), wls), strict=True
        ):
            wl.pid, wl.starttime = pid, st
    state.save()


def _wait_connectivity(state: LabState, rep: Reporter, deadline: float) -> None:
    """Routes and rules take a moment after the CNI ADDs: probe until reality = policy, in
    every IP family of the lab."""
    while True:
        cmps = [labmatrix.compare(state, "tcp", 80, timeout=0.5, ip_version=v)
                for v in state.families]
        allowed = sum(c.counts()[0] for c in cmps)
        total = sum(c.counts()[1] for c in cmps)
        rep.update("connectivity", allowed, f"connectivity: {allowed}/{total} pairs connect")
        if all(c.agree for c in cmps):
            return
        if time.monotonic() > deadline:
            bad = [
                f"{s} -> {d} (IPv{c.ip_version}): probe {c.probe[s][d]}, policy {c.policy[s][d]}"
                for c in cmps for s, d in c.mismatches
            ]
            raise LabError(f"connectivity differs from policy after the timeout: "
                           f"{', '.join(bad[:4])}")
        time.sleep(0.3)


# --- down ------------------------------------------------------------------------------------


@dataclass
class DownReport:
    name: str
    existed: bool
    namespaces: list[str] = field(default_factory=list)
    processes: int = 0
    removed_dir: str | None = None
    warnings: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # what verification found still there


def down(name: str) -> DownReport:
    """Remove everything lab `name` made, driven by its persisted state: processes (by PID
    and start time), namespaces (their links go with them), files. Safe to repeat, and
    after a crash; a damaged state file still lets it remove the lab by name."""
    check_lab_name(name)
    d = lab_dir(name)
    report = DownReport(name, existed=d.exists())
    owned = (d / STATE_FILE).exists() or (d / TOPOLOGY_FILE).exists()
    recorded = _recorded_processes(d)
    report.processes = _stop_all(recorded)
    topo = None
    if (d / TOPOLOGY_FILE).exists():
        try:
            topo = Topology.load(d)
        except (TopologyError, ValueError, KeyError, TypeError) as exc:
            report.warnings.append(f"topology state unreadable ({exc}): removing by name")
        else:
            report.namespaces = list(topo.namespaces)
            try:
                topo.teardown()
            except Exception as exc:  # keep going: the sweep below retries by name
                report.warnings.append(str(exc))
    if owned:
        for pid, st in recorded:  # any that ignored SIGTERM
            nsops.kill_pid(pid, st)
        # Whatever is named <lab>-* is ours (lab names have no '-'): a crash between
        # recording and creating cannot leave an unnamed leftover.
        for ns in nsops.list_netns(name + "-"):
            for pid in nsops.netns_pids(ns):
                nsops.kill_pid(pid, nsops.proc_starttime(pid))
            nsops.del_netns(ns)
            report.namespaces.append(ns)
        shutil.rmtree(d, ignore_errors=True)
        report.removed_dir = str(d)
        report.existed = True
    report.left += verify_gone(name, topo)
    report.left += [f"process {p}" for p, st in recorded if nsops.pid_alive(p, st)]
    return report


def _recorded_processes(d: Path) -> list[tuple[int, int | None]]:
    """(PID, start time) of every process the lab's state files name, read defensively."""
    out: dict[int, int | None] = {}
    for fname, paths in ((TOPOLOGY_FILE, ("processes",)),
                         (STATE_FILE, ("nodes", "workloads", "processes"))):  # fmt: skip
        try:
            data = json.loads((d / fname).read_text())
        except (OSError, ValueError):
            continue
        for key in paths:
            for item in data.get(key) or []:
                if isinstance(item, dict) and isinstance(item.get("pid"), int):
                    out.setdefault(item["pid"], item.get("starttime"))
    return list(out.items())


def _stop_all(processes: list[tuple[int, int | None]], timeout: float = 5.0) -> int:
    """SIGTERM every recorded process at once, then wait for all: one wait, not one each."""
    live = [(pid, st) for pid, st in processes if nsops.pid_alive(pid, st)]
    for pid, _ in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(nsops.pid_alive(p, s) for p, s in live):
        for pid, _ in live:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return len(live)


def verify_gone(name: str, topo: Topology | None = None) -> list[str]:
    """What of lab `name` still exists: namespaces, recorded processes, root links, files."""
    left = [f"netns {ns}" for ns in nsops.list_netns(name + "-")]
    if topo is not None:
        # The lab never makes a link here; one with its underlay names would be a leak.
        ours = re.compile(rf"^{re.escape(topo.sid)}(br|u|p|r|q)\d+$")
        with contextlib.suppress(FileNotFoundError):
            left += [f"link {li}" for li in os.listdir("/sys/class/net") if ours.match(li)]
    d = lab_dir(name)
    if d.exists():
        left.append(f"dir {d}")
    return left
