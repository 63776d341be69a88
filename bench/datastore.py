"""Datastore benchmark: CAS write rate and cross-process watch latency, sqlite vs etcd.

    .venv/bin/python bench/datastore.py [--duration 3] [--samples 500] [--tmpfs]

Every figure is measured in this run for both backends and printed with the ratio
etcd / sqlite. Writers and the watched writer are separate processes (fork), as in real use
(CLI, CNI plugin and agents are separate processes). Files and etcd's data dir live on the
same filesystem: a temporary directory on disk, or /dev/shm with --tmpfs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tabby.datastore import Conflict, open_datastore  # noqa: E402
from tabby.datastore.etcd_server import EtcdServer, etcd_binary  # noqa: E402

CTX = multiprocessing.get_context("fork")


# -- workers (run in child processes) ----------------------------------------------------


def _blind_cas_writer(url: str, key: str, duration: float, go: Any, out: Any) -> None:
    """Chain of CAS updates on a key this writer owns: no conflicts, pure write cost."""
    with open_datastore(url) as ds:
        rev = ds.create(key, b"0")
        go.wait()
        n, end = 0, time.monotonic() + duration
        while time.monotonic() < end:
            rev = ds.update(key, b"%d" % n, rev)
            n += 1
        out.put((n, 0))


def _increment_writer(url: str, key: str, duration: float, go: Any, out: Any) -> None:
    """Read-modify-write increments on a shared key, retrying on Conflict."""
    with open_datastore(url) as ds:
        go.wait()
        n = conflicts = 0
        end = time.monotonic() + duration
        while time.monotonic() < end:
            kv = ds.get(key)
            assert kv is not None
            try:
                ds.update(key, b"%d" % (int(kv.value) + 1), kv.mod_revision)
                n += 1
            except Conflict:
                conflicts += 1
        out.put((n, conflicts))


def _paced_writer(url: str, prefix: str, samples: int, rate: float, go: Any) -> None:
    """Writes `samples` keys at `rate`/s, each carrying its send time (CLOCK_MONOTONIC is
    system-wide on Linux, so the watcher's process can subtract it)."""
    with open_datastore(url) as ds:
        go.wait()
        start = time.monotonic()
        for i in range(samples):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ds.create(f"{prefix}{i:06d}", repr(time.monotonic()).encode())


# -- measurements ------------------------------------------------------------------------


def _run_writers(
    target: Callable[..., None], url: str, keys: list[str], duration: float
) -> tuple[float, float]:
    go, out = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=target, args=(url, k, duration, go, out)) for k in keys]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let every writer connect before the clock starts
    go.set()
    results = [out.get(timeout=duration + 60) for _ in procs]
    for p in procs:
        p.join(30)
        if p.exitcode != 0:
            raise RuntimeError(f"writer exited with {p.exitcode}")
    done = sum(r[0] for r in results)
    conflicts = sum(r[1] for r in results)
    return done / duration, conflicts / max(done + conflicts, 1)


def cas_rates(url: str, duration: float, tag: str) -> dict[str, float]:
    with open_datastore(url) as ds:
        ds.create(f"/bench/{tag}/shared", b"0")
    one, _ = _run_writers(_blind_cas_writer, url, [f"/bench/{tag}/one"], duration)
    eight, _ = _run_writers(
        _blind_cas_writer, url, [f"/bench/{tag}/own{i}" for i in range(8)], duration
    )
    shared, conflict_rate = _run_writers(
        _increment_writer, url, [f"/bench/{tag}/shared"] * 8, duration
    )
    return {
        "cas_1w": one,
        "cas_8w": eight,
        "inc_8w_shared": shared,
        "conflict_share": conflict_rate,
    }


def watch_latency(url: str, samples: int, rate: float, tag: str) -> dict[str, float]:
    prefix = f"/bench/{tag}/watch/"
    latencies: list[float] = []
    with open_datastore(url) as ds:
        watch = ds.watch(prefix, ds.revision() + 1)
        done = threading.Event()

        def consume() -> None:
            for ev in watch:
                latencies.append(time.monotonic() - float(ev.value or b"0"))
                if len(latencies) >= samples:
                    break
            done.set()

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        go = CTX.Event()
        writer = CTX.Process(target=_paced_writer, args=(url, prefix, samples, rate, go))
        writer.start()
        time.sleep(0.5)
        go.set()
        done.wait(samples / rate + 60)
        watch.close()
        writer.join(30)
    if len(latencies) < samples:
        raise RuntimeError(f"watch delivered {len(latencies)} of {samples} events")
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "watch_p50_ms": q[49] * 1e3,
        "watch_p99_ms": q[98] * 1e3,
        "watch_max_ms": max(latencies) * 1e3,
    }


# -- driver ------------------------------------------------------------------------------

ROWS = [
    ("cas_1w", "CAS writes/s, 1 writer process", "{:,.0f}"),
    ("cas_8w", "CAS writes/s, 8 writer processes (own keys)", "{:,.0f}"),
    ("inc_8w_shared", "increments/s, 8 processes on 1 key (get+CAS, retry)", "{:,.0f}"),
    ("conflict_share", "  share of CAS attempts that hit Conflict", "{:.0%}"),
    ("watch_p50_ms", "watch delivery p50 (ms, other process)", "{:.2f}"),
    ("watch_p99_ms", "watch delivery p99 (ms, other process)", "{:.2f}"),
    ("watch_max_ms", "watch delivery max (ms)", "{:.2f}"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per write test")
    parser.add_argument("--samples", type=int, default=500, help="watch latency samples")
    parser.add_argument("--rate", type=float, default=100.0, help="watched writes per second")
    parser.add_argument("--tmpfs", action="store_true", help="put both stores on /dev/shm")
    parser.add_argument("--json", action="store_true", help="also print results as JSON")
    args = parser.parse_args()
    if etcd_binary() is None:
        print("etcd binary not installed (Debian etcd-server): cannot compare", file=sys.stderr)
        return 1

    parent = "/dev/shm" if args.tmpfs else os.environ.get("TMPDIR", "/var/tmp")
    workdir = Path(tempfile.mkdtemp(prefix="tabby-bench-", dir=parent))
    results: dict[str, dict[str, float]] = {}
    try:
        with EtcdServer(data_parent=str(workdir)) as server:
            for name, url in [("sqlite", f"sqlite://{workdir}/bench.db"), ("etcd", server.url)]:
                print(f"measuring {name} ...", file=sys.stderr)
                res = cas_rates(url, args.duration, name)
                res |= watch_latency(url, args.samples, args.rate, name)
                results[name] = res
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"# {time.strftime('%Y-%m-%d')} {platform.node()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, store on {'tmpfs' if args.tmpfs else 'disk'}"
    )
    print(f"| {'metric':<52} | {'sqlite':>10} | {'etcd':>10} | {'etcd/sqlite':>11} |")
    print(f"|{'-' * 54}|{'-' * 12}|{'-' * 12}|{'-' * 13}|")
    for key, label, fmt in ROWS:
        s, e = results["sqlite"][key], results["etcd"][key]
        ratio = f"{e / s:.2f}x" if s else "-"
        print(f"| {label:<52} | {fmt.format(s):>10} | {fmt.format(e):>10} | {ratio:>11} |")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
