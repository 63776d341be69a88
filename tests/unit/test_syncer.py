"""The syncer: snapshot at one revision, InSync, ordered watch, resync by difference."""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tabby.datastore import KV, Datastore, Event, Unavailable, Watch, open_datastore
from tabby.datastore.syncer import InSync, OutOfSync, Syncer, SyncItem, Update

WAIT = 20.0  # a bound that turns a hang into a failure; never a timing assertion
P = ("/tabby/v3/", "/tabby/ipam/v2/")


class Taker:
    """Reads syncer items from a queue in the test thread."""

    def __init__(self) -> None:
        self.q: queue.Queue[SyncItem] = queue.Queue()

    def take(self, n: int) -> list[SyncItem]:
        return [self.q.get(timeout=WAIT) for _ in range(n)]

    def until_in_sync(self) -> tuple[list[SyncItem], InSync]:
        got: list[SyncItem] = []
        while True:
            item = self.q.get(timeout=WAIT)
            if isinstance(item, InSync):
                return got, item
            got.append(item)

    def empty(self) -> bool:
        return self.q.empty()


class GatedWatch(Watch):
    """Waits for the gate before starting the real watch, so writes (and a compaction)
    can happen while the syncer is between list and watch."""

    def __init__(self, inner: Watch, owner: Wrapped) -> None:
        self.inner, self.owner = inner, owner
        self.closed = threading.Event()

    def _wait_gate(self) -> bool:
        while not self.owner.gate.wait(0.01):
            if self.closed.is_set():
                return False
        return True

    def __iter__(self) -> Iterator[Event]:
        if not self._wait_gate():
            return
        if self.owner.fail:
            raise self.owner.fail.pop(0)
        for ev in self.inner:
            if not self.owner.gate.is_set():
                self.owner.holding.set()  # an event in hand, held back
                if not self._wait_gate():
                    return
                self.owner.holding.clear()
            yield ev

    def close(self) -> None:
        self.closed.set()
        self.inner.close()


class Wrapped(Datastore):
    """A real datastore whose watches can be held back or made to fail."""

    def __init__(self, inner: Datastore) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.fail: list[BaseException] = []
        self.watches = 0
        self.watched = threading.Event()
        self.holding = threading.Event()

    def get(self, key: str) -> KV | None:
        return self.inner.get(key)

    def list(self, prefix: str, revision: int | None = None) -> tuple[list[KV], int]:
        return self.inner.list(prefix, revision)

    def create(self, key: str, value: bytes) -> int:
        return self.inner.create(key, value)

    def update(self, key: str, value: bytes, expected_revision: int) -> int:
        return self.inner.update(key, value, expected_revision)

    def delete(self, key: str, expected_revision: int | None = None) -> int:
        return self.inner.delete(key, expected_revision)

    def watch(self, prefix: str, start_revision: int) -> Watch:
        self.watches += 1
        self.watched.set()
        return GatedWatch(self.inner.watch(prefix, start_revision), self)

    def revision(self) -> int:
        return self.inner.revision()

    def compact(self, revision: int) -> None:
        self.inner.compact(revision)


@pytest.fixture
def ds(tmp_path: Path) -> Iterator[Datastore]:
    store = open_datastore(f"sqlite://{tmp_path / 'tabby.db'}")
    yield store
    store.close()


@pytest.fixture
def run_syncer() -> Iterator[Callable[..., tuple[Syncer, Taker]]]:
    made: list[Syncer] = []

    def start(store: Datastore | Callable[[], Datastore], **kw: object) -> tuple[Syncer, Taker]:
        taker = Taker()
        s = Syncer(store, taker.q, **kw)  # type: ignore[arg-type]
        made.append(s)
        return s.start(), taker

    yield start
    for s in made:
        s.stop()
        assert not s.running


def put(ds: Datastore, key: str, value: str) -> int:
    kv = ds.get(key)
    if kv is None:
        return ds.create(key, value.encode())
    return ds.update(key, value.encode(), kv.mod_revision)


def test_snapshot_then_in_sync_then_ordered_events(ds: Datastore, run_syncer: Callable) -> None:
    put(ds, "/tabby/v3/ippools/a", "pool-a")
    put(ds, "/tabby/ipam/v2/blocks/x", "block-x")
    put(ds, "/tabby/other/ignored", "no")
    put(ds, "/tabby/v3/nodes/n1", "node-1")
    rev = ds.revision()
    s, t = run_syncer(ds, prefixes=P)
    got, insync = t.until_in_sync()
    assert insync == InSync(rev)
    assert {(u.key, u.value) for u in got} == {
        ("/tabby/v3/ippools/a", b"pool-a"),
        ("/tabby/v3/nodes/n1", b"node-1"),
        ("/tabby/ipam/v2/blocks/x", b"block-x"),
    }
    assert all(isinstance(u, Update) and u.revision <= rev for u in got)
    assert s.status.in_sync and s.status.synced_once and s.status.keys == 3

    r1 = put(ds, "/tabby/v3/nodes/n2", "node-2")
    put(ds, "/tabby/other/ignored", "still no")
    r2 = put(ds, "/tabby/v3/ippools/a", "pool-a2")
    r3 = ds.delete("/tabby/v3/nodes/n1")
    assert t.take(3) == [
        Update("/tabby/v3/nodes/n2", b"node-2", r1),
        Update("/tabby/v3/ippools/a", b"pool-a2", r2),
        Update("/tabby/v3/nodes/n1", None, r3),
    ]
    ds.create("/tabby/v3/nodes/n9", b"x")  # a marker: nothing else came before it
    (marker,) = t.take(1)
    assert isinstance(marker, Update) and marker.key == "/tabby/v3/nodes/n9"
    assert s.status.revision == marker.revision


def test_exclude_and_callable_sink(ds: Datastore) -> None:
    got: list[SyncItem] = []
    done = threading.Event()

    def sink(item: SyncItem) -> None:
        got.append(item)
        if isinstance(item, Update) and item.key.endswith("/last"):
            done.set()

    put(ds, "/tabby/ipam/v2/handles/h1", "handle")
    put(ds, "/tabby/ipam/v2/blocks/b1", "block")
    s = Syncer(ds, sink, prefixes=P, exclude=("/tabby/ipam/v2/handles/",)).start()
    try:
        put(ds, "/tabby/ipam/v2/handles/h2", "handle")
        put(ds, "/tabby/v3/x/last", "1")
        assert done.wait(WAIT)
    finally:
        s.stop()
    # (the snapshot may or may not already hold the later writes: compare as a set)
    keys = sorted(i.key for i in got if isinstance(i, Update))
    assert keys == ["/tabby/ipam/v2/blocks/b1", "/tabby/v3/x/last"]
    assert sum(isinstance(i, InSync) for i in got) == 1


def test_compacted_resync_delivers_only_the_difference(ds: Datastore,
                                                      run_syncer: Callable) -> None:
    for name in ("same", "changed", "deleted", "recreated"):
        put(ds, f"/tabby/v3/k/{name}", name)
    w = Wrapped(ds)
    w.gate.clear()  # hold the watch back: the syncer misses everything below
    s, t = run_syncer(w, prefixes=P)
    got, first = t.until_in_sync()
    assert len(got) == 4
    assert w.watched.wait(WAIT)
    put(ds, "/tabby/v3/k/changed", "changed-2")
    ds.delete("/tabby/v3/k/deleted")
    ds.delete("/tabby/v3/k/recreated")
    put(ds, "/tabby/v3/k/recreated", "recreated")  # same bytes, new revision
    put(ds, "/tabby/v3/k/new", "new")
    put(ds, "/tabby/v3/k/gone-again", "x")
    ds.delete("/tabby/v3/k/gone-again")  # never seen by the syncer: no delete for it
    ds.compact(ds.revision())
    w.gate.set()

    items, second = t.until_in_sync()
    assert isinstance(items[0], OutOfSync) and "Compacted" in items[0].reason
    diff = {(u.key, u.value) for u in items[1:] if isinstance(u, Update)}
    assert diff == {
        ("/tabby/v3/k/changed", b"changed-2"),
        ("/tabby/v3/k/deleted", None),
        ("/tabby/v3/k/recreated", b"recreated"),
        ("/tabby/v3/k/new", b"new"),
    }
    assert len(items) == 5
    assert second.revision == ds.revision() and second.revision > first.revision
    st = s.status
    assert st.in_sync and st.resyncs == 1 and st.errors == 1 and "Compacted" in st.last_error
    # ...and the stream goes on after the resync.
    r = put(ds, "/tabby/v3/k/same", "same-2")
    assert t.take(1) == [Update("/tabby/v3/k/same", b"same-2", r)]


def test_unavailable_backs_off_reopens_and_resyncs(tmp_path: Path,
                                                   run_syncer: Callable) -> None:
    url = f"sqlite://{tmp_path / 'tabby.db'}"
    writer = open_datastore(url)
    put(writer, "/tabby/v3/k/a", "a")
    opened: list[Wrapped] = []
    failures = [2]  # the first two opens fail: the store is "down" at start

    def factory() -> Datastore:
        if failures[0]:
            failures[0] -= 1
            raise Unavailable("connection refused (test)")
        w = Wrapped(open_datastore(url))
        if not opened:
            w.fail.append(Unavailable("lost the stream (test)"))
            w.gate.clear()
        opened.append(w)
        return w

    s, t = run_syncer(factory, prefixes=P, backoff_initial=0.01, backoff_max=0.05)
    got, _ = t.until_in_sync()
    assert [u.key for u in got] == ["/tabby/v3/k/a"]  # type: ignore[union-attr]
    assert s.status.errors == 2
    put(writer, "/tabby/v3/k/b", "b")
    writer.delete("/tabby/v3/k/a")
    opened[0].gate.set()  # now the watch fails with Unavailable
    items, _ = t.until_in_sync()
    assert isinstance(items[0], OutOfSync) and "lost the stream" in items[0].reason
    assert {(u.key, u.value) for u in items[1:]} == {  # type: ignore[union-attr]
        ("/tabby/v3/k/b", b"b"), ("/tabby/v3/k/a", None)}
    assert len(opened) == 2  # reopened after Unavailable
    assert s.status.in_sync and s.status.errors == 3
    writer.close()


def test_stop_is_prompt_while_watching_and_while_down(ds: Datastore) -> None:
    s = Syncer(ds, queue.Queue(), prefixes=P).start()
    while not s.status.in_sync:
        threading.Event().wait(0.01)
    s.stop(timeout=WAIT)
    assert not s.running and s.status.state == "stopped"

    def never() -> Datastore:
        raise Unavailable("down (test)")

    s2 = Syncer(never, queue.Queue(), backoff_initial=30, backoff_max=30).start()
    while s2.status.errors == 0:
        threading.Event().wait(0.01)
    s2.stop(timeout=WAIT)  # interrupts the 30 s backoff
    assert not s2.running


def test_validation() -> None:
    with pytest.raises(ValueError, match="prefixes"):
        Syncer(lambda: None, queue.Queue(), prefixes=[""])  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="sink"):
        Syncer(lambda: None, 42)  # type: ignore[arg-type,return-value]


def test_replay_equals_store_through_random_compactions(ds: Datastore,
                                                       run_syncer: Callable) -> None:
    """Applying the stream to a dict always reproduces the store, whatever was missed."""
    rng = random.Random(7)
    w = Wrapped(ds)
    s, t = run_syncer(w, prefixes=P)
    mirror: dict[str, bytes] = {}

    def drain_until_in_sync() -> None:
        while True:
            item = t.q.get(timeout=WAIT)
            if isinstance(item, Update):
                if item.value is None:
                    assert item.key in mirror, f"delete of unknown key {item.key}"
                    mirror.pop(item.key)
                else:
                    mirror[item.key] = item.value
            elif isinstance(item, InSync):
                return

    drain_until_in_sync()
    for round_ in range(6):
        if round_ % 2:
            # Hold the watch with an event in hand; everything after it will be
            # compacted away before the watch reads on.
            w.gate.clear()
            put(ds, "/tabby/v3/pre", str(round_))
            assert w.holding.wait(WAIT)
        for _ in range(40):
            key = f"/tabby/{rng.choice(['v3', 'ipam/v2', 'zz'])}/k{rng.randrange(12)}"
            if ds.get(key) is not None and rng.random() < 0.4:
                ds.delete(key)
            else:
                put(ds, key, str(rng.random()))
        if round_ % 2:
            ds.compact(ds.revision())
            w.gate.set()
            drain_until_in_sync()  # OutOfSync, the difference, InSync
        marker = put(ds, "/tabby/v3/marker", str(round_))
        while True:
            item = t.q.get(timeout=WAIT)
            if isinstance(item, Update):
                if item.value is None:
                    mirror.pop(item.key)
                else:
                    mirror[item.key] = item.value
                if item.revision == marker:
                    break
        want = {kv.key: kv.value for p in P for kv in ds.list(p)[0]}
        assert mirror == want
    assert s.status.resyncs == 3


def test_both_backends(datastore: Datastore, ds_prefix: str, run_syncer: Callable) -> None:
    """The same stream from sqlite and a real etcd (the session etcd, own prefix)."""
    prefixes = (ds_prefix + "v3/", ds_prefix + "ipam/")
    put(datastore, ds_prefix + "v3/a", "a")
    put(datastore, ds_prefix + "other", "ignored")
    s, t = run_syncer(datastore, prefixes=prefixes)
    got, _ = t.until_in_sync()
    assert [(u.key, u.value) for u in got] == [(ds_prefix + "v3/a", b"a")]  # type: ignore[union-attr]
    r1 = put(datastore, ds_prefix + "ipam/b", "b")
    r2 = datastore.delete(ds_prefix + "v3/a")
    assert t.take(2) == [Update(ds_prefix + "ipam/b", b"b", r1), Update(ds_prefix + "v3/a", None, r2)]
