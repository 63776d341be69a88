"""BGP benchmarks on real namespaces (root): route propagation and a large external table.

    .venv/bin/python bench/bgp.py [--only propagation|external] [--nodes 3 10]
        [--samples 60] [--routes 10000] [--json]

propagation: N nodes in a full mesh, each running `python -m tabby.bgp.run` (the
BgpController fed by a datastore watch) with its BIRD. One sample = claim a new block for
node A in the datastore (IPAM's affinity claim: pending affinity, block, confirm) and wait
until the block's route shows up in node C's kernel (`ip monitor route` in C). Baseline,
same run, same nodes: BIRD alone carrying a new route - a /32 added to a workload interface
in A's kernel (BIRD learns it, announces it, C installs it), no datastore and no controller.

external: one node peers with an external BIRD that announces --routes /24s (a static
protocol, session enabled at t0); time until all of them are in the node's kernel. Baseline:
the same number of routes written into a namespace's kernel with one `ip -batch`.

Every figure is printed next to its baseline with the ratio.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tabby.bgp.testing import BgpLab, wait_for  # noqa: E402
from tabby.ipam import affinity as aff_ops  # noqa: E402
from tabby.ipam.store import Store  # noqa: E402
from tabby.lab.netns import list_netns  # noqa: E402
from tabby.lab.topology import Topology  # noqa: E402

Row = dict[str, Any]
POOL = "10.65.0.0/16"
_ROUTE = re.compile(r"^(?:Deleted )?(\S+)")


def pct(values: list[float], q: float) -> float:
    vs = sorted(values)
    return vs[min(len(vs) - 1, max(0, round(q / 100 * (len(vs) - 1))))]


def fresh_prefix() -> str:
    for _ in range(100):
        prefix = "tbb" + secrets.token_hex(2)
        if not list_netns(prefix + "-"):
            return prefix
    raise RuntimeError("no free namespace prefix")


class RouteMonitor:
    """`ip monitor route` in a namespace; records when each destination first appears."""

    def __init__(self, netns: str) -> None:
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(["ip", "-n", netns, "-4", "monitor", "route"],
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            if line.startswith("Deleted"):
                continue
            m = _ROUTE.match(line.replace("blackhole ", "").replace("unreachable ", ""))
            if m:
                dst = m.group(1)
                if "/" not in dst:
                    dst += "/32"
                with self.cond:
                    self.seen.setdefault(dst, now)
                    self.cond.notify_all()

    def wait(self, dst: str, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while dst not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"route {dst} not seen within {timeout} s")
                self.cond.wait(left)
            return self.seen[dst]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def build_mesh(n: int, workdir: Path) -> tuple[Topology, BgpLab]:
    topo = Topology(fresh_prefix(), state_dir=workdir / "topo")
    lab = BgpLab(topo, workdir / "bgp")
    lab.add_pool(POOL)
    for i in range(1, n + 1):
        lab.add_node(topo.add_node(f"n{i}"))
    for i in range(1, n + 1):
        lab.start(f"n{i}")
    for i in range(1, n + 1):
        lab.wait_established(f"n{i}", n - 1, timeout=60)
    return topo, lab


def propagation(n: int, samples: int, workdir: Path) -> list[Row]:
    topo, lab = build_mesh(n, workdir)
    try:
        src, dst = "n1", f"n{n}"
        # a workload on the source node: BIRD-alone baseline routes sit on its interface
        wl = topo.add_workload(src, "wa", "10.65.255.1")
        mon = RouteMonitor(topo.netns_of(dst))
        store = Store(lab.ds)
        blocks = list(ipaddress.IPv4Network(POOL).subnets(new_prefix=26))[1:]
        tabby_lat, bird_lat, apply_s = [], [], []
        try:
            for i in range(samples):
                block = blocks[i]
                t0 = time.monotonic()
                aff_ops.try_claim(store, src, block)
                tabby_lat.append(mon.wait(str(block)) - t0)
                ctl = json.loads((lab.run_dir(src) / "bgp-status.json").read_text())
                if ctl.get("last_apply_seconds"):
                    apply_s.append(ctl["last_apply_seconds"])
                time.sleep(0.05)
                addr = f"10.65.254.{i + 1}/32"
                t0 = time.monotonic()
                topo.run(src, ["ip", "route", "add", addr, "dev", wl.host_if])
                bird_lat.append(mon.wait(addr) - t0)
                time.sleep(0.05)
        finally:
            mon.close()
        ms = 1000.0
        return [
            {"metric": f"{n} nodes: block claimed on {src} -> route in {dst}'s kernel, p50",
             "value": pct(tabby_lat, 50) * ms, "unit": "ms",
             "baseline": "BIRD alone (kernel route on A -> C's kernel), p50",
             "baseline_value": pct(bird_lat, 50) * ms},
            {"metric": f"{n} nodes: block claimed -> route, p99",
             "value": pct(tabby_lat, 99) * ms, "unit": "ms",
             "baseline": "BIRD alone, p99", "baseline_value": pct(bird_lat, 99) * ms},
            {"metric": f"{n} nodes: block claimed -> route, max",
             "value": max(tabby_lat) * ms, "unit": "ms",
             "baseline": "BIRD alone, max", "baseline_value": max(bird_lat) * ms},
            {"metric": f"{n} nodes: controller render + bird -p + configure, median",
             "value": statistics.median(apply_s) * ms if apply_s else float("nan"),
             "unit": "ms", "baseline": "", "baseline_value": None},
        ]
    finally:
        lab.close()
        topo.teardown()


EXT_AS = 65000


def external(routes: int, workdir: Path) -> list[Row]:
    topo = Topology(fresh_prefix(), state_dir=workdir / "topo")
    lab = BgpLab(topo, workdir / "bgp")
    try:
        lab.add_pool(POOL)
        node = topo.add_node("n1")
        ext = topo.add_node("ext")
        lab.add_node(node)
        lab.apply({"kind": "BGPPeer", "metadata": {"name": "ext"},
                   "spec": {"peerIP": ext.ip, "asNumber": EXT_AS}})
        prefixes = list(ipaddress.ip_network("100.64.0.0/10").subnets(new_prefix=24))[:routes]
        conf = workdir / "ext-bird.conf"
        lines = [f"router id {ext.ip};", "protocol device {}",
                 "protocol static feed {", "  ipv4;"]
        lines += [f"  route {p} blackhole;" for p in prefixes]
        lines += ["}", "protocol bgp to_node {", f"  local {ext.ip} as {EXT_AS};",
                  f"  neighbor {node.ip} as 64512;", "  disabled;",
                  "  ipv4 { import none; export all; };", "}"]
        conf.write_text("\n".join(lines) + "\n")
        sock = workdir / "ext-bird.ctl"
        topo.spawn(ext, ["bird", "-f", "-c", str(conf), "-s", str(sock),
                         "-P", str(workdir / "ext-bird.pid")])
        wait_for(lambda: sock.exists(), 10, 0.05, "external BIRD socket")
        lab.start("n1")
        wait_for(lambda: lab.status("n1").running, 20, 0.1, "node BIRD")
        time.sleep(1.0)

        mon = RouteMonitor(topo.netns_of(node))
        wanted = {str(p) for p in prefixes}
        try:
            t0 = time.monotonic()
            subprocess.run(["birdc", "-s", str(sock), "enable", "to_node"], check=True,
                           capture_output=True)

            def all_seen() -> bool:
                with mon.cond:
                    return wanted <= mon.seen.keys()

            wait_for(all_seen, 120, 0.05, f"{routes} routes in the kernel")
            with mon.cond:
                times = [mon.seen[p] for p in wanted]
        finally:
            mon.close()
        t_first, t_all = min(times), max(times)
        # Baseline: the same routes written straight into a namespace's kernel.
        base = topo.add_namespace("kb")
        batch = workdir / "routes.batch"
        batch.write_text("".join(f"route add blackhole {p}\n" for p in prefixes))
        b0 = time.monotonic()
        subprocess.run(["ip", "-n", base, "-batch", str(batch)], check=True)
        b1 = time.monotonic()
        return [
            {"metric": f"{routes} external routes: session enabled -> all in the kernel",
             "value": t_all - t0, "unit": "s",
             "baseline": f"ip -batch of {routes} routes", "baseline_value": b1 - b0},
            {"metric": "  of which: session up and first route installed", "value": t_first - t0,
             "unit": "s", "baseline": "", "baseline_value": None},
            {"metric": "  of which: first to last route installed", "value": t_all - t_first,
             "unit": "s", "baseline": f"ip -batch of {routes} routes",
             "baseline_value": b1 - b0},
        ]
    finally:
        lab.close()
        topo.teardown()


def print_table(rows: list[Row]) -> None:
    for r in rows:
        value = r["value"]
        line = f"  {r['metric']}: {value:,.1f} {r['unit']}"
        if r.get("baseline_value"):
            ratio = value / r["baseline_value"] if r["baseline_value"] else float("nan")
            line += f"  | {r['baseline']}: {r['baseline_value']:,.2f} {r['unit']}  ({ratio:.1f}x)"
        print(line, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["propagation", "external"], action="append")
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/bgp.py needs root (network namespaces)", file=sys.stderr)
        return 2
    print(f"{date.today()} | Python {platform.python_version()} | {os.cpu_count()} cores | "
          f"{platform.system()} {platform.release()} | load {os.getloadavg()[0]:.1f}")
    results: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="tabby-bench-bgp-") as tmp:
        if not args.only or "propagation" in args.only:
            for n in args.nodes:
                print(f"propagation, {n} nodes, {args.samples} samples", flush=True)
                rows = propagation(n, args.samples, Path(tmp) / f"prop{n}")
                print_table(rows)
                results[f"propagation-{n}"] = rows
        if not args.only or "external" in args.only:
            print(f"external table, {args.routes} routes", flush=True)
            rows = external(args.routes, Path(tmp) / "ext")
            print_table(rows)
            results["external"] = rows
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
