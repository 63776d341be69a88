"""IP-in-IP benchmark: BPF IP-in-IP vs no encapsulation vs VXLAN, in one run.

    sudo .venv/bin/python bench/ipip.py [--seconds 4] [--rounds 3] [--json]

Three two-node clusters (namespaces, one underlay bridge, one workload per node, Calico
wiring), identical but for how node 1's workload reaches node 2's block:

    plain   `<block> via <node ip> dev <underlay>`: no encapsulation (MTU 1500)
    ipip    tabby's IpipDataplane, BPF implementation (tc programs, routes MTU 1480,
            workload MTU 1480 as the CNI plugin sets it on an IP-in-IP pool)
    vxlan   a kernel vxlan device set up as Calico does (VNI 4096, port 4789, device MTU
            1450, permanent neighbour + FDB per peer, `<block> via <tunnel ip> onlink`)

Figures: TCP throughput (iperf3, one stream, with its retransmit count) and
request/response rate on one TCP connection: from sockperf's median round trip (64-byte
ping-pong) when `sockperf` is installed, else a 1-byte Python ping-pong (noisier). The
variants are measured round-robin, `--rounds` times each, and the median is reported, so
background load hits all of them alike. Ratios are against `plain` from the same run.
Because the machine is shared, `--concurrent` rounds also run the three variants *at the
same time* (one stream each): every variant then sees the same background load, and the
per-round ratio to `plain` compares the cost per byte / per transaction of each path.
Then the control plane: IpipDataplane.apply() for `--blocks` extra remote blocks (routes
and LPM entries) added at once, and removed at once.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tabby.calc.messages import InSync, IPPoolUpdate, RouteRemove, RouteUpdate  # noqa: E402
from tabby.dataplane.ipip import IpipDataplane  # noqa: E402
from tabby.dataplane.ipip import build as ipip_build  # noqa: E402
from tabby.lab.topology import Topology  # noqa: E402

VARIANTS = ("plain", "ipip", "vxlan")
SOCKPERF = shutil.which("sockperf") is not None
MTU = 1500
WL_MTU = {"plain": MTU, "ipip": MTU - 20, "vxlan": MTU - 50}
BLOCKS = ("10.65.0.0/26", "10.65.1.0/26")
RR_PORT = 9000

RR_SERVER = r"""
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(8)
print("READY", flush=True)
while True:
    c, _ = srv.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        b = c.recv(1)
        if not b:
            break
        c.sendall(b)
    c.close()
"""

RR_CLIENT = r"""
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((host, port), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(100):
        s.sendall(b"x"); s.recv(1)
    n += 100
print(n / seconds)
"""


class Cluster:
    def __init__(self, variant: str, prefix: str) -> None:
        self.variant = variant
        self.topo = Topology(prefix, subnets=1, mtu=MTU)
        self.dps: list[IpipDataplane] = []
        self.procs: list[Any] = []
        try:
            self.n = [self.topo.add_node(f"n{i}") for i in (1, 2)]
            self.w = [
                self.topo.add_workload(self.n[i], f"w{i + 1}", f"10.65.{i}.1", mtu=WL_MTU[variant])
                for i in (0, 1)
            ]
            getattr(self, f"_wire_{variant}")()
        except BaseException:
            self.close()
            raise

    def _wire_plain(self) -> None:
        for i, j in ((0, 1), (1, 0)):
            self.topo.add_route(self.n[i], BLOCKS[j], via=self.n[j].ip)

    def _wire_ipip(self) -> None:
        for i, j in ((0, 1), (1, 0)):
            node, peer = self.n[i], self.n[j]
            dp = IpipDataplane(node.netns, node.underlay_if, node.ip, "bpf")
            self.dps.append(dp)
            dp.on_update(IPPoolUpdate("10.65.0.0/16", ipip_mode="Always"))
            dp.on_update(RouteUpdate(BLOCKS[j], "remote-block", dst_node=peer.name,
                                     dst_node_ip=peer.ip, encap="ipip", same_subnet=True))
            dp.on_update(InSync())
            dp.apply()

    def _wire_vxlan(self) -> None:
        macs = ["66:74:61:62:00:01", "66:74:61:62:00:02"]
        tun = ["10.65.0.0", "10.65.1.0"]  # the tunnel address comes from the node's block
        for i, j in ((0, 1), (1, 0)):
            node, peer = self.n[i], self.n[j]
            run = self._runner(node)
            run(["ip", "link", "add", "vxlan.calico", "address", macs[i], "type", "vxlan",
                 "id", "4096", "dstport", "4789", "nolearning", "local", node.ip,
                 "dev", node.underlay_if])
            run(["ip", "link", "set", "vxlan.calico", "mtu", str(MTU - 50), "up"])
            run(["ip", "addr", "add", f"{tun[i]}/32", "dev", "vxlan.calico"])
            run(["ip", "neigh", "add", tun[j], "lladdr", macs[j], "dev", "vxlan.calico",
                 "nud", "permanent"])
            run(["bridge", "fdb", "add", macs[j], "dev", "vxlan.calico", "dst", peer.ip])
            run(["ip", "route", "add", BLOCKS[j], "via", tun[j], "dev", "vxlan.calico",
                 "onlink"])

    def _runner(self, node: Any) -> Callable[[list[str]], None]:
        def run(argv: list[str]) -> None:
            self.topo.run(node, argv)

        return run

    # --- measurements ---------------------------------------------------------------------

    def iperf(self, seconds: float) -> tuple[float, int]:
        """(Gbit/s received, retransmitted segments), one TCP stream w1 -> w2."""
        srv = self.topo.spawn(self.w[1], ["iperf3", "-s", "-1"])
        last = ""
        try:
            for _ in range(50):
                proc = self.topo.run(
                    self.w[0], ["iperf3", "-c", self.w[1].ip, "-t", str(seconds), "-J"],
                    check=False, timeout=seconds + 30,
                )
                data = json.loads(proc.stdout or "{}")
                received = data.get("end", {}).get("sum_received")
                if proc.returncode == 0 and received:
                    sent = data["end"].get("sum_sent", {})
                    return float(received["bits_per_second"]) / 1e9, int(
                        sent.get("retransmits", 0))
                last = data.get("error") or proc.stderr.strip()
                time.sleep(0.1)  # server not listening yet
            raise RuntimeError(f"{self.variant}: iperf3 failed: {last}")
        finally:
            srv.terminate()

    def rr(self, seconds: float) -> float:
        """Request/response transactions per second on one TCP connection. With sockperf
        (C, Debian package `sockperf`): 1e6 / median round trip of 64-byte ping-pong, which
        shared-machine noise disturbs far less; else 1-byte ping-pong in Python."""
        if not self.procs:
            if SOCKPERF:
                argv = ["sockperf", "server", "--tcp", "-i", self.w[1].ip, "-p", str(RR_PORT)]
                self.procs.append(self.topo.spawn(self.w[1], argv))
                time.sleep(0.3)
            else:
                srv = self.topo.spawn(self.w[1], [sys.executable, "-I", "-S", "-c", RR_SERVER,
                                                 str(RR_PORT)], stdout=subprocess.PIPE)
                assert srv.stdout is not None and srv.stdout.readline().startswith(b"READY")
                self.procs.append(srv)
        if SOCKPERF:
            for _ in range(20):
                proc = self.topo.run(self.w[0], [
                    "sockperf", "ping-pong", "--tcp", "-i", self.w[1].ip, "-p", str(RR_PORT),
                    "-t", str(max(1, round(seconds))), "-m", "64",
                ], check=False, timeout=seconds + 30)
                m = re.search(r"percentile 50\.000 =\s+([\d.]+)", proc.stdout)
                if m:
                    return 1e6 / (2 * float(m.group(1)))  # sockperf reports RTT / 2
                time.sleep(0.2)  # server not up yet
            raise RuntimeError(f"{self.variant}: sockperf failed: {proc.stderr[-300:]}")
        proc = self.topo.run(
            self.w[0], [sys.executable, "-I", "-S", "-c", RR_CLIENT, self.w[1].ip,
                        str(RR_PORT), str(seconds)], timeout=seconds + 30,
        )
        return float(proc.stdout.strip())

    def apply_time(self, blocks: int) -> tuple[float, float]:
        """Seconds for one apply() adding `blocks` remote blocks, and one removing them."""
        dp, peer = self.dps[0], self.n[1]
        dsts = [f"10.{100 + i // 256}.{i % 256}.0/26" for i in range(blocks)]
        for d in dsts:
            dp.on_update(RouteUpdate(d, "remote-block", dst_node=peer.name, dst_node_ip=peer.ip,
                                     encap="ipip", same_subnet=True))
        t0 = time.perf_counter()
        dp.apply()
        added = time.perf_counter() - t0
        if len(dp.debug_maps()["routes"]) != blocks + 1:
            raise RuntimeError("ipip: LPM map does not hold the new blocks")
        for d in dsts:
            dp.on_update(RouteRemove(d))
        t0 = time.perf_counter()
        dp.apply()
        return added, time.perf_counter() - t0

    def encap_counter(self) -> int:
        return sum(dp.counters().get("encap_packets", 0) for dp in self.dps)

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for dp in self.dps:
            try:
                dp.remove()
            finally:
                dp.close()
        self.topo.teardown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="per iperf3 / RR measurement")
    ap.add_argument("--rounds", type=int, default=3, help="round-robin rounds per variant")
    ap.add_argument("--concurrent", type=int, default=3,
                    help="rounds with the three variants measured at the same time")
    ap.add_argument("--blocks", type=int, default=1000, help="remote blocks for apply timing")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    ipip_build.build()
    tag = secrets.token_hex(2)
    clusters: dict[str, Cluster] = {}
    results: dict[str, dict[str, list[float]]] = {
        v: {"gbps": [], "retrans": [], "rr": []} for v in VARIANTS
    }
    try:
        for v in VARIANTS:
            clusters[v] = Cluster(v, f"tbb{tag}{v[0]}")
        for c in clusters.values():  # warm up: ARP, neighbours, first connection
            c.topo.run(c.w[0], ["ping", "-c", "3", "-i", "0.2", "-W", "1", c.w[1].ip])
        for r in range(args.rounds):
            for v, c in clusters.items():
                gbps, retrans = c.iperf(args.seconds)
                results[v]["gbps"].append(gbps)
                results[v]["retrans"].append(retrans)
                results[v]["rr"].append(c.rr(args.seconds))
                print(f"round {r + 1} {v:6s} {gbps:6.2f} Gbit/s ({retrans} retransmits) "
                      f"{results[v]['rr'][-1]:9.0f} rr/s", file=sys.stderr)
        together: dict[str, dict[str, list[float]]] = {
            v: {"gbps": [], "rr": []} for v in VARIANTS
        }
        with ThreadPoolExecutor(max_workers=len(VARIANTS)) as pool:
            for r in range(args.concurrent):
                tcp = {v: pool.submit(c.iperf, args.seconds) for v, c in clusters.items()}
                for v, f in tcp.items():
                    together[v]["gbps"].append(f.result()[0])
                rr = {v: pool.submit(c.rr, args.seconds) for v, c in clusters.items()}
                for v, f in rr.items():
                    together[v]["rr"].append(f.result())
                print("concurrent round", r + 1, {v: (round(t["gbps"][-1], 2), round(t["rr"][-1]))
                                                  for v, t in together.items()}, file=sys.stderr)
        encapsulated = clusters["ipip"].encap_counter()
        add_s, del_s = clusters["ipip"].apply_time(args.blocks)
    finally:
        for c in clusters.values():
            c.close()
    med = {v: {k: statistics.median(xs) for k, xs in m.items()} for v, m in results.items()}
    # Concurrent rounds: the median of the per-round ratios to plain.
    share = {
        v: {k: statistics.median(a / b for a, b in zip(xs, together["plain"][k], strict=True))
            if xs else float("nan") for k, xs in t.items()}
        for v, t in together.items()
    }
    if args.json:
        print(json.dumps({"median": med, "runs": results, "concurrent": together,
                          "concurrent_ratio": share, "ipip_encap_packets": encapsulated,
                          "apply_add_s": add_s, "apply_remove_s": del_s}))
        return 0
    base = med["plain"]
    print(f"{'variant':8s} {'TCP Gbit/s':>11s} {'ratio':>6s} {'retrans':>8s} {'RR/s':>9s} "
          f"{'ratio':>6s}")
    for v in VARIANTS:
        m = med[v]
        print(f"{v:8s} {m['gbps']:11.2f} {m['gbps'] / base['gbps']:6.2f} {m['retrans']:8.0f} "
              f"{m['rr']:9.0f} {m['rr'] / base['rr']:6.2f}")
    if args.concurrent:
        print(f"\nall three at once ({args.concurrent} rounds), median ratio to plain:")
        for v in VARIANTS:
            print(f"{v:8s} TCP {share[v]['gbps']:5.2f}   RR {share[v]['rr']:5.2f}")
    print(f"(RR: {'sockperf median RTT' if SOCKPERF else 'Python 1-byte ping-pong'}; "
          f"median of {args.rounds} rounds x {args.seconds:g} s; ipip encapsulated "
          f"{encapsulated} packets, so the BPF path carried the traffic)")
    print(f"apply(): {args.blocks} remote blocks added in {add_s * 1000:.0f} ms, "
          f"removed in {del_s * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
