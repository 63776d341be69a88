"""Shared fixtures for real-namespace tests.

`need_root` skips a test when it cannot make namespaces; `topology` is a factory for
`tabby.lab.topology.Topology` objects with a unique short prefix, always torn down, after
which no namespace with that prefix may remain; `netns_prefix` hands out such a prefix for
tests that build namespaces another way and removes leftovers by exact name.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tabby.lab.topology import Topology

ROOT_FIXTURES = {"need_root", "topology", "netns_prefix"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that asks for a root fixture is a root test, marked or not: `-m "not root"`
    # must deselect it.
    for item in items:
        if ROOT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.root)


# Worker processes in tests start from a fresh interpreter ("spawn"), never fork(): a fork
# taken while another thread is inside SQLite (a watch poller, say) copies its held mutex
# into the child, which then blocks for ever in sqlite3_open -- and multiprocessing's exit
# handler waits for every non-daemon child, so the whole run hangs after its summary.
SPAWN = multiprocessing.get_context("spawn")
CHILD_WAIT = 120.0


@pytest.fixture
def child_procs() -> Iterator[Callable[..., BaseProcess]]:
    """`start(target, *args)` runs target(*args) in a spawned daemon process and returns
    it; every child still alive at teardown is killed (and fails the test)."""
    started: list[BaseProcess] = []

    def start(target: Callable[..., object], *args: object) -> BaseProcess:
        proc = SPAWN.Process(target=target, args=args, daemon=True)
        proc.start()
        started.append(proc)
        return proc

    yield start
    alive = []
    for proc in started:
        proc.join(CHILD_WAIT if proc.exitcode is None else 0)
        if proc.is_alive():
            alive.append(proc.pid)
            proc.kill()
            proc.join()
    assert not alive, f"child processes still running at teardown (killed): {alive}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Last line of defence: a child left running would keep the interpreter from exiting.
    left = multiprocessing.active_children()
    for proc in left:
        proc.kill()
        proc.join(10)
    if left:
        print(f"\nkilled {len(left)} child process(es) left running by tests: "
              f"{[p.pid for p in left]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _root_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 ('ip' not found)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"'ip netns' unusable: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="session")
def _root_reason() -> str | None:
    return _root_missing()


@pytest.fixture
def need_root(_root_reason: str | None) -> None:
    if _root_reason:
        pytest.skip(_root_reason)


def _fresh_prefix() -> str:
    from tabby.lab.netns import list_netns

    for _ in range(100):
        prefix = "tb" + secrets.token_hex(2)
        if not list_netns(prefix + "-"):
            return prefix
    raise RuntimeError("no free namespace prefix")


def _remove_leftovers(prefix: str) -> list[str]:
    """Delete namespaces named `<prefix>-*` (ours by construction), return their names."""
    from tabby.lab import netns

    left = netns.list_netns(prefix + "-")
    for ns in left:
        for pid in netns.netns_pids(ns):
            netns.kill_pid(pid, netns.proc_starttime(pid))
        netns.del_netns(ns)
    return left


@pytest.fixture
def netns_prefix(need_root: None) -> Iterator[str]:
    """A unique short prefix ("tb" + 4 hex). Namespaces left with it fail the test."""
    prefix = _fresh_prefix()
    yield prefix
    left = _remove_leftovers(prefix)
    assert not left, f"namespaces left behind by the test: {left}"


@pytest.fixture
def topology(need_root: None, tmp_path: Path) -> Iterator[Callable[..., Topology]]:
    """Factory: `topology(subnets=2)` -> a Topology with a unique prefix and state dir in
    tmp_path. Every topology is torn down after the test and must leave no namespace."""
    from tabby.lab.topology import Topology

    made: list[Topology] = []

    def make(**kwargs: Any) -> Topology:
        prefix = kwargs.pop("prefix", None) or _fresh_prefix()
        kwargs.setdefault("state_dir", tmp_path / f"topo-{prefix}")
        topo = Topology(prefix, **kwargs)
        made.append(topo)
        return topo

    yield make
    errors = []
    for topo in reversed(made):
        try:
            topo.teardown()
        except Exception as exc:
            errors.append(f"{topo.prefix}: teardown failed: {exc}")
        left = _remove_leftovers(topo.prefix)
        if left:
            errors.append(f"{topo.prefix}: namespaces left after teardown: {left}")
    assert not errors, "; ".join(errors)
