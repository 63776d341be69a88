"""IPAM throughput for benchmarks (bench/cni.py calls `bench_allocations`).

Runs against whatever datastore it is given, in a pool of its own (198.18.0.0/16, the
benchmarking range of RFC 2544) that it creates and removes, so it neither uses nor
disturbs the store's real pools.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from tabby.datastore.base import Datastore, NotFound
from tabby.ipam.allocator import IPAM

BENCH_POOL = "tabby-bench-pool"
BENCH_CIDR = "198.18.0.0/16"


def _create_pool(ds: Datastore) -> None:
    from tabby.datastore.client import ResourceClient
    from tabby.resources import from_dict

    pool = from_dict({
        "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": BENCH_POOL},
        "spec": {"cidr": BENCH_CIDR, "blockSize": 26, "nodeSelector": "!all()"},
    })
    ResourceClient(ds).apply(pool)


def _delete_pool(ds: Datastore) -> None:
    from tabby.datastore.client import ResourceClient

    try:
        ResourceClient(ds).delete("IPPool", BENCH_POOL)
    except NotFound:
        pass


def bench_allocations_detail(ds: Datastore, n: int, node: str | None = None) -> dict[str, Any]:
    """Allocate n addresses one by one (one handle each, as n CNI ADDs would), then release
    them by handle. Returns rates and the CAS conflict/exhaustion counts."""
    node = node or f"bench-{uuid.uuid4().hex[:8]}"
    ipam = IPAM(ds)
    _create_pool(ds)
    handles = [f"bench.{node}.{i}" for i in range(n)]
    try:
        start = time.perf_counter()
        for h in handles:
            ipam.auto_assign(h, node, attrs={"node": node}, pools=[BENCH_POOL])
        assign_s = time.perf_counter() - start
        start = time.perf_counter()
        for h in handles:
            ipam.release_by_handle(h)
        release_s = time.perf_counter() - start
    finally:
        for h in handles:
            ipam.release_by_handle(h)
        ipam.release_host_affinities(node)
        _delete_pool(ds)
    return {
        "allocations": n,
        "allocationsPerSecond": n / assign_s if assign_s else float("inf"),
        "releasesPerSecond": n / release_s if release_s else float("inf"),
        **ipam.stats,
    }


def bench_allocations(ds: Datastore, n: int) -> float:
    """Sequential IPAM auto-assignments per second on this datastore."""
    return float(bench_allocations_detail(ds, n)["allocationsPerSecond"])
