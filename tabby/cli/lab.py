"""`tabby lab up|down|status|probe|exec|env|list`: a whole cluster on this machine."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.table import Table
from rich.text import Text

from tabby.cli.common import CLIError, console, err_console, print_data
from tabby.lab.progress import Reporter


def register(sub: argparse._SubParsersAction) -> None:
    from tabby.lab.state import DATASTORES, DEFAULT_NAME, ENCAPS

    group = sub.add_parser("lab", help="a whole cluster of namespaces on this machine")
    verbs = group.add_subparsers(dest="lab_command", metavar="COMMAND")
    group.set_defaults(func=lambda args: _usage(group))

    def named(name: str, **kw: Any) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, **kw)
        p.add_argument("--name", default=DEFAULT_NAME, help=f"lab name (default {DEFAULT_NAME})")
        return p

    p = named("up", help="build and start a lab",
              description="Nodes as namespaces running the agent and BIRD, workloads wired by "
                          "tabby-cni, a datastore; returns when everything is ready.")
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--workloads-per-node", type=int, default=2,
                   help="workloads on each node (default 2): frontend, backend, db (namespace "
                        "shop) and client (namespace tools), in turn")
    p.add_argument("--encap", choices=ENCAPS, default="none",
                   help="none (BGP routes), vxlan, ipip, or *-crosssubnet (two subnets and a "
                        "router; encapsulated only across them). Default none")
    p.add_argument("--datastore", dest="lab_datastore", choices=DATASTORES, default="sqlite",
                   help="sqlite (a file in the lab's directory) or etcd (a real etcd)")
    p.add_argument("--typha", action="store_true", help="agents follow the datastore via Typha")
    p.add_argument("--ipv6", action="store_true",
                   help="dual stack: IPv6 underlay, pool and workload addresses beside IPv4, "
                        "routed by BGP (needs --encap none)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for agents, BGP and connectivity (default 120)")
    p.set_defaults(func=_cmd_up)

    p = named("down", help="remove everything a lab made (safe to repeat)")
    p.set_defaults(func=_cmd_down)

    p = named("status", help="nodes, agent health, BGP sessions, workloads",
              description="Exit 3 when an agent is not ready or a lab process is gone.")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_status)

    p = named("probe", help="real connections between every pair of workloads",
              description="JSON is keyed like `tabby policy matrix -o json`; the table marks "
                          "pairs where the probe and the policy matrix disagree (exit 4). A "
                          "connection, UDP echo or refusal counts as Allow (the packet got "
                          "there); a timeout as Deny.")
    p.add_argument("--port", type=int, metavar="N", help="destination port (default 80)")
    p.add_argument("--protocol", default="TCP", help="TCP, UDP or ICMP (default TCP)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds per probe (default 1)")
    p.add_argument("--ip-version", type=int, choices=(4, 6),
                   help="probe the workloads' addresses of this family only (table default: "
                        "every family of the lab; JSON default: 4, as `tabby policy matrix`)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_probe)

    p = named("exec", help="run a command inside a workload's (or node's) namespace",
              usage="tabby lab exec [--name NAME] WORKLOAD -- CMD [ARG ...]")
    p.add_argument("workload", metavar="WORKLOAD",
                   help="workload (frontend-1, shop/frontend-1) or node (node1)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD")
    p.set_defaults(func=_cmd_exec)

    p = named("env", help="print `export TABBY_DATASTORE=...` for eval")
    p.set_defaults(func=_cmd_env)

    p = verbs.add_parser("list", help="labs on this machine")
    p.set_defaults(func=_cmd_list)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1


@contextmanager
def _lab_errors() -> Iterator[None]:
    from tabby.lab.state import LabError
    from tabby.lab.topology import TopologyError

    try:
        yield
    except (LabError, TopologyError) as exc:
        raise CLIError(str(exc)) from None


def _load(name: str) -> Any:
    from tabby.lab.state import LabState

    with _lab_errors():
        return LabState.load(name)


# --- up ----------------------------------------------------------------------------------------


class RichReporter(Reporter):
    """Live progress on a terminal; one line per finished step otherwise."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
        )

        self.live = err_console.is_terminal
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("[dim]{task.elapsed:.1f}s"),
            console=err_console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.t0 = time.monotonic()

    def __enter__(self) -> RichReporter:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def start(self, step: str, text: str, total: int | None = None) -> None:
        if self.live:
            self.tasks[step] = self.progress.add_task(text, total=total)

    def update(self, step: str, completed: int, text: str | None = None) -> None:
        if self.live and step in self.tasks:
            kw: dict[str, Any] = {"completed": completed}
            if text:
                kw["description"] = text
            self.progress.update(self.tasks[step], **kw)

    def finish(self, step: str, text: str | None = None) -> None:
        if self.live:
            task = self.tasks.get(step)
            if task is None:
                task = self.tasks[step] = self.progress.add_task(text or step, total=1)
            total = self.progress.tasks[task].total or 1
            self.progress.update(task, total=total, completed=total,
                                 description=text or self.progress.tasks[task].description)
            self.progress.stop_task(task)  # its elapsed time stops here
        else:
            err_console.print(f"[{time.monotonic() - self.t0:5.1f}s] {text or step}",
                              markup=False, highlight=False)


_OWNER_PID = os.getpid()


def _raise_interrupt(signum: int, frame: Any) -> None:
    # pyroute2 forks helpers that inherit this handler; in one of them, die as by default
    # rather than unwind a copy of `up` (whose clean-up would remove the lab under us).
    if os.getpid() != _OWNER_PID:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt


def _cmd_up(args: argparse.Namespace) -> int:
    from tabby.lab import cluster

    opts = cluster.UpOptions(
        name=args.name, nodes=args.nodes, workloads_per_node=args.workloads_per_node,
        encap=args.encap, datastore=args.lab_datastore, typha=args.typha, ipv6=args.ipv6,
        timeout=args.timeout,
    )  # fmt: skip
    # SIGTERM/SIGHUP behave like Ctrl-C: `up` removes what it made, then exits.
    global _OWNER_PID
    _OWNER_PID = os.getpid()
    old = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    t0 = time.monotonic()
    try:
        with _lab_errors(), RichReporter() as rep:
            try:
                state = cluster.up(opts, rep)
            except KeyboardInterrupt:
                err_console.print(f"interrupted: lab {args.name!r} removed", markup=False)
                return 130
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    console.print(f"lab {state.name!r} is ready in {time.monotonic() - t0:.1f}s", markup=False)
    _print_status(_status_data(state))
    n = "" if state.name == "tabby" else f" --name {state.name}"
    console.print(
        f"\nnext:  eval \"$(tabby lab env{n})\"; tabby get workloadendpoints -A\n"
        f"       tabby lab probe{n}     tabby lab exec{n} frontend-1 -- ip addr\n"
        f"       tabby lab down{n}",
        markup=False, highlight=False,
    )
    return 0


# --- down, env, exec, list ------------------------------------------------------------------------


def _cmd_down(args: argparse.Namespace) -> int:
    from tabby.lab import cluster
    from tabby.lab.state import lab_dir

    with _lab_errors():
        report = cluster.down(args.name)
    for warning in report.warnings:
        err_console.print(f"warning: {warning}", markup=False, highlight=False)
    if not report.existed and report.left:
        raise CLIError(
            f"lab {args.name!r}: no state in {lab_dir(args.name)}, yet {', '.join(report.left)} "
            f"exist: not touched (made with another $TABBY_LAB_DIR, or not a lab's?)"
        )
    if report.left:
        raise CLIError(f"lab {args.name!r}: still present after down: {', '.join(report.left)}")
    if not report.existed:
        console.print(f"lab {args.name!r} is not up: nothing to remove", markup=False)
        return 0
    console.print(
        f"lab {args.name!r} removed: {len(set(report.namespaces))} namespaces, "
        f"{report.processes} processes, {report.removed_dir}; verified nothing is left",
        markup=False, highlight=False,
    )
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    state = _load(args.name)
    print(f"export TABBY_DATASTORE={shlex.quote(state.datastore_url)}")
    print(f"# lab {state.name}: undo with `unset TABBY_DATASTORE`")
    return 0


def _cmd_exec(args: argparse.Namespace) -> int:
    from tabby.lab.state import LabError

    state = _load(args.name)
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise CLIError("CMD: missing command (tabby lab exec WORKLOAD -- CMD ...)")
    try:
        netns = state.find_workload(args.workload).netns
    except LabError as exc:
        nodes = {n.name: n.netns for n in state.nodes}
        if args.workload not in nodes:
            raise CLIError(str(exc)) from None
        netns = nodes[args.workload]
    try:
        return subprocess.run(["ip", "netns", "exec", netns, *cmd]).returncode
    except KeyboardInterrupt:
        return 130


def _cmd_list(args: argparse.Namespace) -> int:
    from tabby.lab.state import LabError, LabState, list_labs

    names = list_labs()
    if not names:
        console.print("no labs", markup=False)
        return 0
    table = Table("NAME", "PHASE", "NODES", "WORKLOADS", "ENCAP", "DATASTORE")
    for name in names:
        try:
            s = LabState.load(name)
        except LabError as exc:
            table.add_row(name, f"unreadable: {exc}", "", "", "", "")
            continue
        encap = s.encap + (" (dual stack)" if len(s.families) > 1 else "")
        table.add_row(name, s.phase, str(len(s.nodes)), str(len(s.workloads)), encap,
                      s.datastore_url)
    console.print(table)
    return 0


# --- status ----------------------------------------------------------------------------------------


def _status_data(state: Any) -> dict[str, Any]:
    from tabby.lab import health
    from tabby.lab import netns as nsops

    hs = {h.node: h for h in health.agent_health(state.nodes)}
    details = dict(zip((n.name for n in state.nodes), health.agent_status(state.nodes),
                       strict=True))
    nodes = []
    for n in state.nodes:
        h = hs[n.name]
        bgp = health.bgp_status(n)
        nodes.append({
            "name": n.name, "netns": n.netns, "ip": n.ip, "ip6": n.ip6, "subnet": n.cidr,
            "agent": {"pid": n.pid, "running": h.alive, "ready": h.ready, "detail": h.detail,
                      **details[n.name]},
            "bgp": {"error": bgp.error or None, "sessions": [
                {"name": s.name, "peer": s.peer, "state": s.state, "info": s.info}
                for s in bgp.sessions]},
        })  # fmt: skip
    workloads = [{
        "name": w.name, "key": w.key, "namespace": w.namespace, "node": w.node,
        "netns": w.netns, "ip": w.ip, "ip6": w.ip6, "labels": w.labels,
        "probeServer": bool(w.pid and nsops.pid_alive(w.pid, w.starttime)),
    } for w in state.workloads]  # fmt: skip
    procs = [{"role": p.role, "pid": p.pid, "address": p.address,
              "running": nsops.pid_alive(p.pid, p.starttime)} for p in state.processes]
    return {
        "name": state.name, "phase": state.phase, "encap": state.encap,
        "datastore": state.datastore_url, "pool": state.pool_cidr, "pool6": state.pool6_cidr,
        "mtu": state.mtu,
        "typha": state.typha, "dir": state.dir, "nodes": nodes, "workloads": workloads,
        "processes": procs,
    }  # fmt: skip


def _yes(ok: bool, yes: str = "yes", no: str = "no") -> Text:
    return Text(yes, style="green") if ok else Text(no, style="bold red")


def _print_status(data: dict[str, Any]) -> None:
    console.print(
        f"lab {data['name']} ({data['phase']}): encap {data['encap']}, pool {data['pool']}"
        + (f" and {data['pool6']}" if data.get("pool6") else "") + ", "
        f"MTU {data['mtu']}, datastore {data['datastore']}"
        + (f", Typha {data['typha']}" if data["typha"] else ""),
        markup=False, highlight=False,
    )
    nodes = Table("NODE", "UNDERLAY IP", "AGENT", "READY", "DATASTORE", "BGP PEERS",
                  title="nodes")
    for n in data["nodes"]:
        sessions = n["bgp"]["sessions"]
        est = sum(s["info"].startswith("Established") for s in sessions)
        if sessions:
            peers = Text(f"{est}/{len(sessions)} Established",
                         style="green" if est == len(sessions) else "bold red")
        else:
            peers = Text(n["bgp"]["error"] and "BIRD not answering" or "none", style="dim")
        agent = _yes(n["agent"]["running"], f"pid {n['agent']['pid']}", "not running")
        ready = _yes(n["agent"]["ready"], "ready", n["agent"]["detail"] or "not ready")
        via = n["agent"].get("datastore") or "-"
        if n["agent"].get("typha"):
            via += f" {n['agent']['typha']}"
        ip = f"{n['ip']} ({n['subnet']})" + (f"\n{n['ip6']}" if n.get("ip6") else "")
        nodes.add_row(n["name"], ip, agent, ready, via, peers)
    console.print(nodes)
    sess = Table("NODE", "PEER", "SESSION", "STATE", "INFO", title="BGP sessions")
    for n in data["nodes"]:
        for s in n["bgp"]["sessions"]:
            sess.add_row(n["name"], s["peer"], s["name"], s["state"],
                         _yes(s["info"].startswith("Established"), s["info"], s["info"] or "-"))
    if sess.row_count:
        console.print(sess)
    if data["workloads"]:
        wls = Table("WORKLOAD", "ENDPOINT (namespace/name)", "NODE", "IP", "LABELS", "PROBE",
                    title="workloads")
        for w in data["workloads"]:
            labels = ",".join(f"{k}={v}" for k, v in w["labels"].items())
            ip = (w["ip"] or "-") + (f"\n{w['ip6']}" if w.get("ip6") else "")
            wls.add_row(w["name"], w["key"], w["node"], ip, labels,
                        _yes(w["probeServer"], "serving", "down"))
        console.print(wls)
    dead = [p for p in data["processes"] if not p["running"]]
    for p in dead:
        console.print(Text(f"{p['role']} (pid {p['pid']}) is not running", style="bold red"))


def _cmd_status(args: argparse.Namespace) -> int:
    state = _load(args.name)
    data = _status_data(state)
    if args.output == "json":
        print_data(data, "json")
    else:
        _print_status(data)
    healthy = all(n["agent"]["ready"] for n in data["nodes"]) and all(
        p["running"] for p in data["processes"]
    )
    return 0 if healthy else 3


# --- probe -----------------------------------------------------------------------------------------


def _cmd_probe(args: argparse.Namespace) -> int:
    from tabby.lab import matrix

    state = _load(args.name)
    with _lab_errors():
        proto, port = matrix.normalise(args.protocol, args.port)
        if args.ip_version is not None:
            matrix.check_ip_version(state, args.ip_version)
        if args.output == "json":
            # One family, keyed and defaulted as `tabby policy matrix -o json`.
            real, _ = matrix.probe(state, proto, port, args.timeout, args.ip_version or 4)
            print(json.dumps(real, indent=2))
            return 0
        versions = [args.ip_version] if args.ip_version else list(state.families)
        cmps = [matrix.compare(state, proto, port, args.timeout, v) for v in versions]
    for cmp in cmps:
        print_comparison(cmp, family=len(state.families) > 1)
    return 0 if all(cmp.agree for cmp in cmps) else 4


def print_comparison(cmp: Any, title: str | None = None, family: bool = False) -> None:
    """The probe matrix: Allow green, Deny red; a '!' where `policy matrix` disagrees.
    The title names the IP family for IPv6, or for either with `family`."""
    keys = list(cmp.probe)
    short = {k: k.split("/", 1)[0] + "/" + _short(k) for k in keys}
    over = f" over IPv{cmp.ip_version}" if family or cmp.ip_version != 4 else ""
    head = title or (f"{cmp.protocol.upper()}" + (f" port {cmp.port}" if cmp.port else "")
                     + f"{over} probe (rows: from, columns: to)")
    table = Table(title=head)
    table.add_column("from \\ to", style="bold")
    for k in keys:
        table.add_column(short[k], justify="center")
    for s in keys:
        cells = []
        for d in keys:
            if s == d:
                cells.append(Text("-", style="dim"))
                continue
            real, pol = cmp.probe[s][d], cmp.policy.get(s, {}).get(d)
            cell = Text(real, style="green" if real == "Allow" else "bold red")
            if pol != real:
                cell = Text(f"{real}!", style="bold yellow on red")
            cells.append(cell)
        table.add_row(short[s], *cells)
    console.print(table)
    allowed, total = cmp.counts()
    bad = cmp.mismatches
    line = Text(f"{allowed} of {total} pairs connect; ")
    if bad:
        line.append(f"{len(bad)} differ from `tabby policy matrix` (marked !)", style="bold red")
    else:
        line.append("probe == policy matrix for every pair", style="bold green")
    console.print(line)
    if bad:
        for s, d in bad[:10]:
            res = cmp.details[(s, d)]
            console.print(f"  {s} -> {d}: probe {cmp.probe[s][d]} ({res.outcome}: {res.detail}),"
                          f" policy {cmp.policy.get(s, {}).get(d)}", markup=False)


def _short(key: str) -> str:
    """`shop/node1-k8s-frontend--1-eth0` -> `frontend-1` for table headers."""
    name = key.split("/", 1)[1]
    parts = name.split("-k8s-", 1)
    if len(parts) == 2 and parts[1].endswith("-eth0"):
        return parts[1][: -len("-eth0")].replace("--", "-")
    return name
