"""Many allocator processes at once never hand out one address twice (both backends)."""

from __future__ import annotations

import multiprocessing
import traceback
from typing import Any

import pytest
from test_ipam_helpers import ds_fixture, put_pool  # noqa: F401

from tabby.datastore import Datastore, open_datastore
from tabby.ipam.allocator import IPAM

PROCS = 8
PER_PROC = 25
WAIT = 120.0


def _worker(url: str, proc: int, node: str, barrier: Any, out: Any, release_every: int) -> None:
    try:
        ds = open_datastore(url)
        ipam = IPAM(ds)
        held: dict[str, list[str]] = {}
        released: list[str] = []
        barrier.wait(WAIT)
        for i in range(PER_PROC):
            handle = f"k8s-pod-network.p{proc}-{i}"
            r = ipam.auto_assign(handle, node, attrs={"pod": f"p{proc}-{i}", "node": node})
            held[handle] = [str(x.ip) for x in r.v4]
            if release_every and i % release_every == 0:
                released.extend(str(x) for x in ipam.release_by_handle(handle))
                del held[handle]
        out.put(("ok", proc, held, released, ipam.stats))
        ds.close()
    except BaseException:  # report to the parent instead of dying silently
        out.put(("error", proc, traceback.format_exc(), [], {}))


def _run(start: Any, url: str, nodes: list[str], release_every: int = 0) -> list[tuple[Any, ...]]:
    ctx = multiprocessing.get_context("spawn")  # see `child_procs`: never fork in tests
    barrier, out = ctx.Barrier(PROCS), ctx.Queue()
    for p in range(PROCS):
        start(_worker, url, p, nodes[p % len(nodes)], barrier, out, release_every)
    results = [out.get(timeout=WAIT) for _ in range(PROCS)]
    errors = [r[2] for r in results if r[0] == "error"]
    assert not errors, errors[0]
    return results


def _check(ds: Datastore, results: list[tuple[Any, ...]], expect_held: int) -> IPAM:
    ipam = IPAM(ds)
    held = {h: ips for r in results for h, ips in r[2].items()}
    all_ips = [ip for ips in held.values() for ip in ips]
    assert len(all_ips) == expect_held
    assert len(set(all_ips)) == len(all_ips), "an address was handed out twice"
    assert sum(r[4]["exhausted"] for r in results) == 0  # no CAS retry exhaustion
    # The datastore agrees with what the workers were told, handle by handle.
    allocs = ipam.allocations()
    assert sorted(a["ip"] for a in allocs) == sorted(all_ips)
    for handle, ips in held.items():
        assert [str(x) for x in ipam.ips_by_handle(handle)] == ips
    assert set(ipam.store.list_handles()) == set(held)
    assert ipam.repair(dry_run=True) == []  # no half-done claims left behind
    return ipam


@pytest.mark.slow
def test_many_processes_one_node(ds: Datastore, datastore_url: str, child_procs: Any) -> None:
    put_pool(ds, "p1", "10.70.0.0/22")
    results = _run(child_procs, datastore_url, ["node-a"])
    ipam = _check(ds, results, PROCS * PER_PROC)
    owned = [b for b, _ in ipam.store.list_blocks()]
    assert all(b.host == "node-a" for b in owned)
    assert len(owned) == 4  # 200 addresses fill 4 /26 blocks, no block wasted


@pytest.mark.slow
def test_many_processes_many_nodes(ds: Datastore, datastore_url: str, child_procs: Any) -> None:
    put_pool(ds, "p1", "10.70.0.0/22")
    nodes = [f"node-{i}" for i in range(PROCS)]
    results = _run(child_procs, datastore_url, nodes)
    ipam = _check(ds, results, PROCS * PER_PROC)
    by_node = {b.host: b.in_use for b, _ in ipam.store.list_blocks()}
    assert by_node == dict.fromkeys(nodes, PER_PROC)  # each node filled its own block


@pytest.mark.slow
def test_concurrent_assign_and_release(ds: Datastore, datastore_url: str, child_procs: Any) -> None:
    # A small pool under churn: 4 nodes share 4 blocks, releases interleave with claims.
    put_pool(ds, "p1", "10.70.0.0/24")
    results = _run(child_procs, datastore_url, ["node-a", "node-b", "node-c", "node-d"], release_every=3)
    released = [ip for r in results for ip in r[3]]
    assert len(released) == PROCS * 9  # i = 0, 3, ..., 24
    _check(ds, results, PROCS * (PER_PROC - 9))
