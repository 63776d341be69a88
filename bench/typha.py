"""Typha benchmark: fan-out latency, CPU and memory, Typha vs the same number of direct watchers.

    .venv/bin/python bench/typha.py --clients 100,500 --updates 200 [--backends sqlite,etcd]

For each client count N and each backend (an sqlite file, a real etcd), in this one run:

- typha:  the real `tabby typha` process (one upstream syncer) serving N `TyphaClient`s;
- direct: N `Syncer`s, each with its own datastore connection and watch (what agents do
  without Typha).

The consumers live in `--workers` forked processes (asyncio clients, or one thread per direct
syncer). A writer in this process makes `--updates` CAS updates paced at `--rate`/s over 50
keys, on top of a snapshot of `--keys` keys. Latency of update i = (the moment the LAST of the
N consumers has it) - (the moment the write call started); clocks are CLOCK_MONOTONIC, which
is system-wide. CPU is process time (utime+stime) from the first write until every consumer
has converged, divided by the number of updates. Memory per client is the RSS growth of the
serving process (Typha, or etcd for direct etcd watchers) from before the clients connect to
after all of them are in sync, and likewise for the client processes.

The last line is `typha: clients=N p50_ms=.. p99_ms=.. mismatches=K` for the last N: latency
over the first backend, K = Typha clients (all backends) whose final state differs from the
datastore's.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tabby.datastore import open_datastore  # noqa: E402
from tabby.datastore.etcd_server import EtcdServer, etcd_binary  # noqa: E402
from tabby.datastore.syncer import Syncer, SyncItem, Update  # noqa: E402
from tabby.typha.client import TyphaClient  # noqa: E402
from tabby.typha.testing import Consumer, datastore_state  # noqa: E402

CTX = multiprocessing.get_context("fork")
PREFIX = "/tabby/v3/bench/"
HOT_KEYS = 50
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- measuring processes ---------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- consumers (in the worker processes) -------------------------------------------------------


class Arrivals:
    """Per worker: for each update sequence number, when the last consumer got it, and how
    many consumers got it."""

    def __init__(self) -> None:
        self.last: dict[int, float] = {}
        self.count: Counter[int] = Counter()
        self.lock = threading.Lock()


class BenchConsumer(Consumer):
    def __init__(self, arrivals: Arrivals) -> None:
        super().__init__()
        self.arrivals = arrivals

    def __call__(self, item: SyncItem) -> None:
        super().__call__(item)
        if isinstance(item, Update) and item.value and item.value.startswith(b"seq="):
            seq = int(item.value[4 : item.value.index(b";")])
            now = time.monotonic()
            a = self.arrivals
            with a.lock:
                if now > a.last.get(seq, 0.0):
                    a.last[seq] = now
                a.count[seq] += 1


def worker(mode: str, url: str, typha: str, n: int, conn: Any) -> None:
    """Run n consumers; answer the parent's commands over `conn`."""
    arrivals = Arrivals()
    consumers = [BenchConsumer(arrivals) for _ in range(n)]
    rss0 = proc_rss(os.getpid())

    def converged(truth: dict[str, bytes]) -> int:
        return sum(1 for c in consumers if c.values() != truth)

    async def serve(sources: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        while not all(c.in_syncs for c in consumers):
            await asyncio.sleep(0.05)
        conn.send(("ready", proc_rss(os.getpid()) - rss0))
        cmd = await loop.run_in_executor(None, conn.recv)
        assert cmd[0] == "start"
        cpu0 = self_cpu()
        cmd = await loop.run_in_executor(None, conn.recv)
        assert cmd[0] == "finish"
        truth, deadline = cmd[1], time.monotonic() + cmd[2]
        while converged(truth) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        cpu = self_cpu() - cpu0
        with arrivals.lock:
            result = (dict(arrivals.last), dict(arrivals.count))
        conn.send(("done", *result, converged(truth), cpu))
        for s in sources:
            s.stop()

    if mode == "typha":
        clients = [TyphaClient(typha, c, client_name=f"bench-{os.getpid()}-{i}")
                   for i, c in enumerate(consumers)]

        async def main() -> None:
            tasks = [asyncio.create_task(c.run()) for c in clients]
            await serve(clients)
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(main())
    else:
        syncers = [Syncer(lambda: open_datastore(url), c, name=f"direct-{i}")
                   for i, c in enumerate(consumers)]
        for s in syncers:
            s.start()
        asyncio.run(serve(syncers))
    conn.close()


# -- one measurement -----------------------------------------------------------------------------


def populate(url: str, keys: int, size: int) -> dict[str, int]:
    with open_datastore(url) as ds:
        revs = {}
        for i in range(keys):
            key = f"{PREFIX}static/{i:05d}"
            revs[key] = ds.create(key, (f'{{"i":{i},"pad":"' + "x" * size + '"}').encode())
        for i in range(HOT_KEYS):
            key = f"{PREFIX}hot/{i:02d}"
            revs[key] = ds.create(key, b"seq=-1;")
        return {k: r for k, r in revs.items() if "/hot/" in k}


def start_typha(url: str) -> tuple[subprocess.Popen[bytes], str, int]:
    port, health = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tabby.cli.main", "typha", "--datastore", url,
         "--listen", f"127.0.0.1:{port}", "--health-port", str(health),
         "--max-conns", "10000", "--log-level", "warning"],
        env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/readiness", timeout=2) as r:
                if r.status == 200:
                    return proc, f"127.0.0.1:{port}", health
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("typha did not become ready")


def measure(mode: str, backend: str, url: str, n: int, args: argparse.Namespace,
            server_pid: int | None) -> dict[str, Any]:
    """One run: N consumers of `mode` against the store at url."""
    hot = populate_or_reuse(url, args)
    typha_proc, typha_addr = None, ""
    if mode == "typha":
        typha_proc, typha_addr, _ = start_typha(url)
    serving_pid = typha_proc.pid if typha_proc else server_pid  # who holds the connections
    rss_before = proc_rss(serving_pid) if serving_pid else 0
    workers, pipes = [], []
    per = [n // args.workers + (1 if i < n % args.workers else 0) for i in range(args.workers)]
    t_setup = time.monotonic()
    for share in per:
        parent, child = CTX.Pipe()
        w = CTX.Process(target=worker, args=(mode, url, typha_addr, share, child), daemon=True)
        w.start()
        workers.append(w)
        pipes.append(parent)
    client_rss = sum(p.recv()[1] for p in pipes)
    setup_s = time.monotonic() - t_setup
    time.sleep(0.5)  # let snapshot buffers drain before reading RSS
    rss_after = proc_rss(serving_pid) if serving_pid else 0

    cpu_pids = [pid for pid in (typha_proc.pid if typha_proc else None, server_pid) if pid]
    cpu0 = {pid: proc_cpu(pid) for pid in cpu_pids}
    for p in pipes:
        p.send(("start",))
    written: dict[int, float] = {}
    with open_datastore(url) as ds:
        t0 = time.monotonic()
        for i in range(args.updates):
            key = f"{PREFIX}hot/{i % HOT_KEYS:02d}"
            pause = t0 + i / args.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            written[i] = time.monotonic()
            hot[key] = ds.update(key, b"seq=%d;" % i + b"y" * args.value_size, hot[key])
        truth = {k: v for k, (v, _) in datastore_state(ds).items()}
    for p in pipes:
        p.send(("finish", truth, 60.0))
    results = [p.recv() for p in pipes]
    cpu = {pid: proc_cpu(pid) - cpu0[pid] for pid in cpu_pids}
    for w in workers:
        w.join(30)
    if typha_proc is not None:
        typha_proc.send_signal(signal.SIGTERM)
        typha_proc.wait(30)

    last: dict[int, float] = {}
    count: Counter[int] = Counter()
    for _, arr, cnt, _, _ in results:
        for seq, t in arr.items():
            last[seq] = max(last.get(seq, 0.0), t)
        count.update(cnt)
    lat = sorted((last[i] - written[i]) * 1000 for i in written if count[i] == n)
    return {
        "mode": mode, "backend": backend, "clients": n,
        "p50_ms": statistics.median(lat) if lat else float("nan"),
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
        "max_ms": lat[-1] if lat else float("nan"),
        "incomplete": len(written) - len(lat),
        "mismatches": sum(r[3] for r in results),
        "typha_cpu_ms": cpu.get(typha_proc.pid, 0.0) * 1000 / args.updates if typha_proc else None,
        "etcd_cpu_ms": cpu.get(server_pid, 0.0) * 1000 / args.updates if server_pid else None,
        "client_cpu_ms": sum(r[4] for r in results) * 1000 / args.updates,
        "server_kib_per_client": (rss_after - rss_before) / 1024 / n if serving_pid else None,
        "client_kib_per_client": client_rss / 1024 / n,
        "setup_s": setup_s,
    }  # fmt: skip


_populated: set[str] = set()


def populate_or_reuse(url: str, args: argparse.Namespace) -> dict[str, int]:
    """The snapshot is written once per store; later runs reset its hot keys (so that the
    previous run's sequence numbers are not counted again)."""
    if url not in _populated:
        _populated.add(url)
        return populate(url, args.keys, args.value_size)
    with open_datastore(url) as ds:
        kvs, _ = ds.list(f"{PREFIX}hot/")
        return {kv.key: ds.update(kv.key, b"seq=-1;", kv.mod_revision) for kv in kvs}


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="100", help="client counts, comma-separated")
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--rate", type=float, default=50.0, help="updates per second")
    ap.add_argument("--keys", type=int, default=1000, help="keys in the snapshot")
    ap.add_argument("--value-size", type=int, default=400, help="bytes of padding per value")
    ap.add_argument("--backends", default="sqlite,etcd")
    ap.add_argument("--modes", default="typha,direct")
    ap.add_argument("--workers", type=int, default=2, help="client processes")
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    backends = args.backends.split(",")
    if "etcd" in backends and etcd_binary() is None:
        print("etcd binary not installed: skipping the etcd backend", file=sys.stderr)
        backends.remove("etcd")
    load0 = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="tabby-bench-typha-", dir="/dev/shm"))
    etcd = EtcdServer() if "etcd" in backends else None
    rows: list[dict[str, Any]] = []
    try:
        if etcd is not None:
            etcd.start()
        urls = {"sqlite": f"sqlite://{tmp / 'tabby.db'}", "etcd": etcd.url if etcd else ""}
        for n in counts:
            for backend in backends:
                for mode in args.modes.split(","):
                    print(f"measuring {mode} x{n} on {backend} ...", file=sys.stderr, flush=True)
                    pid = etcd.proc.pid if backend == "etcd" and etcd and etcd.proc else None
                    rows.append(measure(mode, backend, urls[backend], n, args, pid))
    finally:
        if etcd is not None:
            etcd.close()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()

    print(f"\n{args.updates} updates at {args.rate:g}/s over {HOT_KEYS} keys, snapshot "
          f"{args.keys} keys x ~{args.value_size} B, {args.workers} client processes, "
          f"{os.cpu_count()} CPUs, load average {load0:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end")
    head = ("| clients | backend | mode | p50 ms | p99 ms | max ms | typha CPU ms/upd "
            "| etcd CPU ms/upd | client CPU ms/upd | server KiB/client | client KiB/client "
            "| connect s | mismatches |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        incomplete = f" (incomplete {r['incomplete']})" if r["incomplete"] else ""
        print(f"| {r['clients']} | {r['backend']} | {r['mode']} | {fmt(r['p50_ms'])} | "
              f"{fmt(r['p99_ms'])} | {fmt(r['max_ms'])} | {fmt(r['typha_cpu_ms'], '.2f')} | "
              f"{fmt(r['etcd_cpu_ms'], '.2f')} | {fmt(r['client_cpu_ms'], '.2f')} | "
              f"{fmt(r['server_kib_per_client'])} | {fmt(r['client_kib_per_client'])} | "
              f"{r['setup_s']:.1f} | {r['mismatches']}{incomplete} |")
    for n in counts:
        typha = [r for r in rows if r["mode"] == "typha" and r["clients"] == n]
        direct = {r["backend"]: r for r in rows if r["mode"] == "direct" and r["clients"] == n}
        for r in typha:
            d = direct.get(r["backend"])
            if d:
                print(f"ratio x{n} {r['backend']}: direct/typha p99 = "
                      f"{d['p99_ms'] / r['p99_ms']:.1f}x, p50 = {d['p50_ms'] / r['p50_ms']:.1f}x")
    for n in counts:
        typha = [r for r in rows if r["mode"] == "typha" and r["clients"] == n]
        if typha:
            first = typha[0]
            bad = sum(r["mismatches"] + r["incomplete"] for r in typha)
            print(f"typha: clients={n} p50_ms={first['p50_ms']:.1f} p99_ms={first['p99_ms']:.1f} "
                  f"mismatches={bad}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
