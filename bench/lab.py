"""Lab benchmark: `tabby lab up` to ready with 3 and 10 nodes, memory per node, `down`.

    sudo .venv/bin/python bench/lab.py [--nodes 3,10] [--workloads-per-node 2] [--encap none]

For each size: the wall time of `up` until ready (every agent ready, every BGP session
Established, every pair of workloads connecting as policy says), split by step; the RSS of
each node's processes (the agent and the BIRD it runs) and of the probe servers; the time
of `down`. Baseline, measured in the same run: the same namespaces and veths built by
hand with `tabby.lab.topology` (nodes and raw workloads, no agent, datastore or CNI), so
the ratio shows what the real components cost on top of the plumbing. Labs live in a temp
directory and are removed at the end (also on failure).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tabby.lab import cluster  # noqa: E402
from tabby.lab import netns as nsops  # noqa: E402
from tabby.lab.state import LabState  # noqa: E402
from tabby.lab.topology import Topology  # noqa: E402


class StepTimer(cluster.Reporter):
    """Records when each step of `up` finished."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.done: dict[str, float] = {}

    def finish(self, step: str, text: str | None = None) -> None:
        self.done[step] = time.monotonic() - self.t0


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def node_memory(state: LabState) -> dict[str, float]:
    """Average MiB per node: agent (python processes) and BIRD, from the node namespaces."""
    agent = bird = other = 0
    for node in state.nodes:
        for pid in nsops.netns_pids(node.netns):
            kib = rss_kib(pid)
            name = comm(pid)
            if name == "bird":
                bird += kib
            elif name.startswith("python") or name == "tabby":
                agent += kib
            else:
                other += kib
    n = max(1, len(state.nodes))
    probes = sum(rss_kib(w.pid) for w in state.workloads if w.pid)
    return {
        "agent": agent / n / 1024,
        "bird": bird / n / 1024,
        "other": other / n / 1024,
        "probe_server": probes / max(1, len(state.workloads)) / 1024,
    }


def baseline(nodes: int, per_node: int) -> float:
    """The plumbing alone: underlay, node namespaces, raw workloads, same counts."""
    prefix = "tlb" + secrets.token_hex(2)
    t0 = time.monotonic()
    with Topology(prefix) as topo:
        ns = [topo.add_node(f"node{i + 1}") for i in range(nodes)]
        for k in range(nodes * per_node):
            topo.add_workload(ns[k % nodes], f"w{k}", f"10.66.{k // 250}.{k % 250 + 1}")
        took = time.monotonic() - t0
    return took


def one(nodes: int, per_node: int, encap: str) -> dict[str, Any]:
    name = "lb" + secrets.token_hex(2)
    opts = cluster.UpOptions(name=name, nodes=nodes, workloads_per_node=per_node, encap=encap,
                             timeout=300)
    timer = StepTimer()
    try:
        state = cluster.up(opts, timer)
        up_s = time.monotonic() - timer.t0
        mem = node_memory(state)
        t = time.monotonic()
        report = cluster.down(name)
        down_s = time.monotonic() - t
        if report.left:
            raise RuntimeError(f"left after down: {report.left}")
    finally:
        cluster.down(name)
    return {"nodes": nodes, "workloads": nodes * per_node, "up": up_s, "down": down_s,
            "steps": timer.done, "mem": mem}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="3,10", help="comma-separated lab sizes (default 3,10)")
    ap.add_argument("--workloads-per-node", type=int, default=2)
    ap.add_argument("--encap", default="none")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/lab.py needs root (network namespaces)", file=sys.stderr)
        return 1
    labs = tempfile.mkdtemp(prefix="tabby-bench-lab-")
    os.environ["TABBY_LAB_DIR"] = labs
    try:
        return run(args)
    finally:
        shutil.rmtree(labs, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.nodes.split(",") if s]
    print(f"lab benchmark: encap {args.encap}, {args.workloads_per_node} workloads per node, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    rows = []
    for n in sizes:
        base = baseline(n, args.workloads_per_node)
        r = one(n, args.workloads_per_node, args.encap)
        r["baseline"] = base
        rows.append(r)
        steps = r["steps"]
        order = sorted(steps, key=steps.get)  # agents start, workloads are wired, then ready
        prev, split = 0.0, []
        for s in order:
            split.append(f"{s} {steps[s] - prev:.1f}s")
            prev = steps[s]
        m = r["mem"]
        print(f"\n{n} nodes, {r['workloads']} workloads")
        print(f"  up to ready      {r['up']:6.1f} s   ({', '.join(split)})")
        print(f"  baseline         {base:6.1f} s   (namespaces + veths by hand)  "
              f"ratio {r['up'] / base:.1f}x")
        print(f"  down             {r['down']:6.1f} s")
        print(f"  memory per node  agent {m['agent']:.1f} MiB + BIRD {m['bird']:.1f} MiB"
              f" = {m['agent'] + m['bird']:.1f} MiB (other {m['other']:.1f} MiB);"
              f" probe server {m['probe_server']:.1f} MiB each")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"\nup: {b['nodes']} nodes / {a['nodes']} nodes = {b['up'] / a['up']:.2f}x "
              f"time for {b['nodes'] / a['nodes']:.1f}x nodes")
    print(f"\nlab: sizes={','.join(map(str, sizes))} "
          + " ".join(f"up{r['nodes']}_s={r['up']:.1f}" for r in rows)
          + f" mem_per_node_mib={rows[-1]['mem']['agent'] + rows[-1]['mem']['bird']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
