"""The datastore contract: every test runs unchanged against sqlite and a real etcd."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tabby.datastore import (
    KV,
    AlreadyExists,
    Compacted,
    Conflict,
    Datastore,
    Event,
    NotFound,
    Watch,
    open_datastore,
)

WAIT = 20.0  # generous bound so a broken watch fails the test instead of hanging it


class Collector:
    """Iterates a watch in a thread (as callers do) and hands events over a queue."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.events: queue.Queue[Event | BaseException] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for ev in self.watch:
                self.events.put(ev)
        except BaseException as exc:  # handed to the test thread
            self.events.put(exc)

    def take(self, n: int) -> list[Event]:
        out: list[Event] = []
        for _ in range(n):
            item = self.events.get(timeout=WAIT)
            if isinstance(item, BaseException):
                raise item
            out.append(item)
        return out

    def close(self) -> None:
        self.watch.close()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "watch iteration did not end after close()"


@contextlib.contextmanager
def _collect(ds: Datastore, prefix: str, start: int) -> Iterator[Collector]:
    c = Collector(ds.watch(prefix, start))
    try:
        yield c
    finally:
        c.close()


# -- reads and writes -------------------------------------------------------------------


def test_create_get_and_revision(datastore: Datastore, ds_prefix: str) -> None:
    key = ds_prefix + "a"
    assert datastore.get(key) is None
    before = datastore.revision()
    rev = datastore.create(key, b"one")
    assert rev > before
    assert datastore.revision() == rev
    assert datastore.get(key) == KV(key, b"one", mod_revision=rev, create_revision=rev)
    with pytest.raises(AlreadyExists):
        datastore.create(key, b"two")
    assert datastore.get(key) == KV(key, b"one", rev, rev)


def test_revision_is_global_and_increasing(datastore: Datastore, ds_prefix: str) -> None:
    revs = [datastore.create(ds_prefix + f"k{i}", b"") for i in range(5)]
    revs.append(datastore.update(ds_prefix + "k0", b"x", revs[0]))
    revs.append(datastore.delete(ds_prefix + "k1"))
    assert revs == sorted(revs) and len(set(revs)) == len(revs)
    assert datastore.revision() == revs[-1]


def test_update_is_compare_and_swap(datastore: Datastore, ds_prefix: str) -> None:
    key = ds_prefix + "cas"
    created = datastore.create(key, b"v1")
    updated = datastore.update(key, b"v2", created)
    assert updated > created
    assert datastore.get(key) == KV(key, b"v2", mod_revision=updated, create_revision=created)
    with pytest.raises(Conflict):
        datastore.update(key, b"stale", created)
    with pytest.raises(Conflict):
        datastore.update(key, b"zero", 0)
    assert datastore.get(key) == KV(key, b"v2", updated, created)
    with pytest.raises(NotFound):
        datastore.update(ds_prefix + "missing", b"x", updated)
    with pytest.raises(NotFound):
        datastore.update(ds_prefix + "missing", b"x", 0)
    assert datastore.get(ds_prefix + "missing") is None


def test_delete_plain_and_cas(datastore: Datastore, ds_prefix: str) -> None:
    a, b = ds_prefix + "a", ds_prefix + "b"
    ra = datastore.create(a, b"1")
    rb = datastore.create(b, b"2")
    with pytest.raises(NotFound):
        datastore.delete(ds_prefix + "missing")
    with pytest.raises(Conflict):
        datastore.delete(a, expected_revision=rb)
    assert datastore.get(a) is not None
    rd = datastore.delete(a, expected_revision=ra)
    assert rd > rb and datastore.get(a) is None
    assert datastore.delete(b) > rd
    with pytest.raises(NotFound):
        datastore.delete(b)
    # A recreated key starts a new life: create_revision is the new one.
    rc = datastore.create(a, b"again")
    assert datastore.get(a) == KV(a, b"again", rc, rc)


def test_values_are_bytes_and_keys_unicode(datastore: Datastore, ds_prefix: str) -> None:
    blob = bytes(range(256))
    key = ds_prefix + "ключ/ü/🐈"
    datastore.create(key, blob)
    datastore.create(ds_prefix + "empty", b"")
    assert datastore.get(key).value == blob  # type: ignore[union-attr]
    assert datastore.get(ds_prefix + "empty").value == b""  # type: ignore[union-attr]
    assert [kv.key for kv in datastore.list(ds_prefix)[0]] == [ds_prefix + "empty", key]


def test_list_prefix_sorted_and_bounded(datastore: Datastore, ds_prefix: str) -> None:
    base = ds_prefix.rstrip("/")
    for key in ["/p/b", "/p/a", "/p/ab", "/p/a/x", "/pa", "/p", "/q/a"]:
        datastore.create(base + key, key.encode())
    kvs, rev = datastore.list(base + "/p/")
    assert [kv.key for kv in kvs] == [base + k for k in ["/p/a", "/p/a/x", "/p/ab", "/p/b"]]
    assert rev == datastore.revision()
    assert [kv.key for kv in datastore.list(base + "/p/a")[0]] == [
        base + k for k in ["/p/a", "/p/a/x", "/p/ab"]
    ]
    assert datastore.list(base + "/none/")[0] == []
    everything, _ = datastore.list("")
    assert {base + k for k in ["/p", "/pa", "/q/a"]} <= {kv.key for kv in everything}
    assert [kv.key for kv in everything] == sorted(kv.key for kv in everything)


def test_list_at_past_revision(datastore: Datastore, ds_prefix: str) -> None:
    a, b, c = (ds_prefix + k for k in "abc")
    r1 = datastore.create(a, b"a1")
    r2 = datastore.create(b, b"b1")
    r3 = datastore.update(a, b"a2", r1)
    r4 = datastore.delete(b)
    r5 = datastore.create(c, b"c1")
    r6 = datastore.create(b, b"b2")
    datastore.create(ds_prefix.rstrip("/") + "-other", b"")  # outside the prefix

    def at(rev: int) -> list[tuple[str, bytes, int, int]]:
        kvs, got = datastore.list(ds_prefix, revision=rev)
        assert got == rev
        return [(kv.key, kv.value, kv.mod_revision, kv.create_revision) for kv in kvs]

    assert at(r1) == [(a, b"a1", r1, r1)]
    assert at(r2) == [(a, b"a1", r1, r1), (b, b"b1", r2, r2)]
    assert at(r3) == [(a, b"a2", r3, r1), (b, b"b1", r2, r2)]
    assert at(r4) == [(a, b"a2", r3, r1)]
    assert at(r5) == [(a, b"a2", r3, r1), (c, b"c1", r5, r5)]
    assert at(r6) == [(a, b"a2", r3, r1), (b, b"b2", r6, r6), (c, b"c1", r5, r5)]
    assert at(r1 - 1) == []
    now, rev = datastore.list(ds_prefix)
    assert at(rev) == [(kv.key, kv.value, kv.mod_revision, kv.create_revision) for kv in now]


def test_list_bad_revisions(datastore: Datastore, ds_prefix: str) -> None:
    rev = datastore.create(ds_prefix + "a", b"")
    with pytest.raises(ValueError):
        datastore.list(ds_prefix, revision=rev + 1000)
    with pytest.raises(ValueError):
        datastore.list(ds_prefix, revision=0)


def test_bad_keys_rejected(datastore: Datastore) -> None:
    with pytest.raises(ValueError):
        datastore.create("", b"x")
    with pytest.raises(ValueError):
        datastore.get("")


# -- watch --------------------------------------------------------------------------------


def test_watch_replays_history_in_order(datastore: Datastore, ds_prefix: str) -> None:
    a, b = ds_prefix + "a", ds_prefix + "b"
    r1 = datastore.create(a, b"1")
    datastore.create(ds_prefix.rstrip("/") + "x/other", b"")  # not under the prefix
    r2 = datastore.update(a, b"2", r1)
    r3 = datastore.create(b, b"3")
    r4 = datastore.delete(a)
    expected = [
        Event("put", a, b"1", r1),
        Event("put", a, b"2", r2),
        Event("put", b, b"3", r3),
        Event("delete", a, None, r4),
    ]
    for start, skip in [(r1, 0), (r1 + 1, 1), (r3, 2), (r4, 3)]:
        with _collect(datastore, ds_prefix, start) as c:
            assert c.take(len(expected) - skip) == expected[skip:]
            # ... and then live events, in order.
            live = ds_prefix + f"live{start}"
            expected.append(Event("put", live, b"5", datastore.create(live, b"5")))
            assert c.take(1) == expected[-1:]


def test_watch_live_events_and_resume(datastore: Datastore, ds_prefix: str) -> None:
    """A watcher that stops and resumes from its last revision + 1 misses nothing and sees
    nothing twice, even with writes made while it was away."""
    start = datastore.revision() + 1
    seen: list[Event] = []
    written: list[Event] = []

    def write(i: int) -> None:
        key = ds_prefix + f"k{i % 3}"
        kv = datastore.get(key)
        if kv is None:
            written.append(Event("put", key, b"%d" % i, datastore.create(key, b"%d" % i)))
        elif i % 4 == 0:
            written.append(Event("delete", key, None, datastore.delete(key, kv.mod_revision)))
        else:
            rev = datastore.update(key, b"%d" % i, kv.mod_revision)
            written.append(Event("put", key, b"%d" % i, rev))

    i = 0
    for round_ in range(3):
        resume = seen[-1].revision + 1 if seen else start
        with _collect(datastore, ds_prefix, resume) as c:
            for _ in range(5):
                write(i)
                i += 1
            seen.extend(c.take(len(written) - len(seen)))
        for _ in range(round_ + 2):  # written while nobody watches
            write(i)
            i += 1
    with _collect(datastore, ds_prefix, seen[-1].revision + 1) as c:
        seen.extend(c.take(len(written) - len(seen)))
    assert seen == written


def test_watch_close_from_another_thread_ends_iteration(
    datastore: Datastore, ds_prefix: str
) -> None:
    w = datastore.watch(ds_prefix, datastore.revision() + 1)
    c = Collector(w)
    rev = datastore.create(ds_prefix + "a", b"")
    assert c.take(1) == [Event("put", ds_prefix + "a", b"", rev)]
    c.close()  # asserts the iterating thread ended
    w.close()  # idempotent
    unused = datastore.watch(ds_prefix, 1)
    unused.close()  # closing a never-iterated watch releases it
    assert list(unused) == []


def test_watch_from_another_process(
    datastore_url: str, datastore: Datastore, ds_prefix: str, child_procs: Any
) -> None:
    start = datastore.revision() + 1
    with _collect(datastore, ds_prefix, start) as c:
        child = child_procs(_write_keys, datastore_url, ds_prefix, 20)
        events = c.take(20)
        child.join(WAIT)
        assert child.exitcode == 0
    assert [e.key for e in events] == [ds_prefix + f"{i:03d}" for i in range(20)]
    assert [e.value for e in events] == [b"%d" % i for i in range(20)]
    assert all(e.type == "put" for e in events)
    assert [e.revision for e in events] == sorted({e.revision for e in events})


def _write_keys(url: str, prefix: str, n: int) -> None:
    with open_datastore(url) as ds:
        for i in range(n):
            ds.create(prefix + f"{i:03d}", b"%d" % i)


# -- compaction ---------------------------------------------------------------------------


def test_compaction(datastore: Datastore, ds_prefix: str) -> None:
    a = ds_prefix + "a"
    r1 = datastore.create(a, b"1")
    r2 = datastore.update(a, b"2", r1)
    r3 = datastore.create(ds_prefix + "b", b"3")
    r4 = datastore.update(a, b"4", r2)
    datastore.compact(r3)
    datastore.compact(r3)  # again: nothing to do
    datastore.compact(r2)  # older than the compact revision: nothing to do
    with pytest.raises(Compacted):
        datastore.list(ds_prefix, revision=r2)
    kvs, _ = datastore.list(ds_prefix, revision=r3)
    assert [(kv.key, kv.value) for kv in kvs] == [(a, b"2"), (ds_prefix + "b", b"3")]
    with pytest.raises(Compacted):
        with datastore.watch(ds_prefix, r2) as w:
            next(iter(w))
    # From the compact revision on, history is intact.
    with _collect(datastore, ds_prefix, r3) as c:
        assert c.take(2) == [
            Event("put", ds_prefix + "b", b"3", r3),
            Event("put", a, b"4", r4),
        ]
    with pytest.raises(ValueError):
        datastore.compact(datastore.revision() + 100)


# -- concurrency ----------------------------------------------------------------------------


def _increment(ds: Datastore, key: str) -> int:
    """Read-modify-write through CAS, retrying on Conflict; returns the conflicts seen."""
    conflicts = 0
    while True:
        kv = ds.get(key)
        assert kv is not None
        try:
            ds.update(key, b"%d" % (int(kv.value) + 1), kv.mod_revision)
            return conflicts
        except Conflict:
            conflicts += 1


def _increment_worker(url: str, key: str, n: int) -> None:
    with open_datastore(url) as ds:
        for _ in range(n):
            _increment(ds, key)


def test_cas_increments_from_8_processes_lose_nothing(
    datastore_url: str, datastore: Datastore, ds_prefix: str, child_procs: Any
) -> None:
    key = ds_prefix + "counter"
    datastore.create(key, b"0")
    procs = [child_procs(_increment_worker, datastore_url, key, 50) for _ in range(8)]
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 8
    assert datastore.get(key).value == b"400"  # type: ignore[union-attr]


def test_one_store_shared_by_threads(datastore: Datastore, ds_prefix: str) -> None:
    key = ds_prefix + "counter"
    datastore.create(key, b"0")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                _increment(datastore, key)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    assert errors == []
    assert datastore.get(key).value == b"100"  # type: ignore[union-attr]


def _fork_and_use_inherited(url: str, prefix: str) -> None:
    # Runs in a fresh single-threaded interpreter, so the fork below is the one under test
    # and no other thread can be holding a lock at that moment.
    with open_datastore(url) as ds:
        ds.create(prefix + "parent", b"")
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ds.create(prefix + "child", b"from child")
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the forked child could not write"
        ds.create(prefix + "parent-again", b"")  # the parent's connection still works


def test_store_opened_before_fork_works_in_child(
    datastore_url: str, datastore: Datastore, ds_prefix: str, child_procs: Any
) -> None:
    """A forked child (a CNI plugin helper, a test worker) gets its own connections."""
    proc = child_procs(_fork_and_use_inherited, datastore_url, ds_prefix)
    proc.join(WAIT)
    assert proc.exitcode == 0
    assert datastore.get(ds_prefix + "child").value == b"from child"  # type: ignore[union-attr]
    assert len(datastore.list(ds_prefix)[0]) == 3
