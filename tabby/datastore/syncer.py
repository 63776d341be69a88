"""The syncer: a consistent snapshot of some key prefixes, then every change, forever.

    syncer = Syncer(lambda: open_datastore(url), queue)   # or any callable sink
    syncer.start()
    ... queue.get() -> Update(key, value, revision) | InSync(revision) | OutOfSync(reason)
    syncer.stop()

Protocol (what a consumer sees, in order):

1. `Update` for every key under the prefixes, all read at ONE revision, then `InSync`;
2. then `Update` for every watched change, in revision order (value None = deleted);
3. when the watch breaks (`Compacted`, `Unavailable`) the syncer sends `OutOfSync`, backs
   off, lists again and sends only the DIFFERENCE against what it has already delivered:
   updates for keys that changed, deletes for keys that vanished. Consumers never see a
   reset; after the difference comes `InSync` again. This is what lets an agent keep
   enforcing its last state through a datastore outage.

`status` (a SyncStatus: state, in_sync, synced_once, revision, keys, resyncs, errors,
last_error) is updated before the item it describes is delivered, so a consumer holding
an InSync finds `status.in_sync` true. Typha's client offers the same sink, items, order
and status, so an agent takes either.

One watch covers all prefixes (on their longest common prefix, filtered here), so events
of different prefixes arrive in one total order. The syncer runs in its own thread;
`stop()` from any thread closes the live watch, so it returns promptly. Typha will serve
the same stream to many agents.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from tabby.datastore.base import Compacted, Datastore, DatastoreError, Unavailable, Watch

log = logging.getLogger(__name__)

DEFAULT_PREFIXES = ("/tabby/v3/", "/tabby/k8s/", "/tabby/ipam/v2/")
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0


class Update(NamedTuple):
    """One key's new value (None = deleted) and the revision that wrote it."""

    key: str
    value: bytes | None
    revision: int


@dataclass(frozen=True, slots=True)
class InSync:
    """Everything up to `revision` has been delivered (first sync, or after a resync)."""

    revision: int


@dataclass(frozen=True, slots=True)
class OutOfSync:
    """The stream broke; updates may be missing until the next InSync."""

    reason: str


SyncItem = Update | InSync | OutOfSync
Sink = Callable[[SyncItem], None] | queue.Queue


@dataclass(frozen=True)
class SyncStatus:
    state: str = "starting"  # starting | listing | in-sync | out-of-sync | stopped
    in_sync: bool = False
    synced_once: bool = False
    revision: int = 0  # last revision delivered
    keys: int = 0  # keys currently known (delivered and not deleted)
    resyncs: int = 0  # lists after the first
    errors: int = 0
    last_error: str | None = None
    last_error_at: float | None = None  # time.time()
    updates: int = 0  # Update items delivered
    extra: dict[str, object] = field(default_factory=dict)


def _common_prefix(prefixes: Iterable[str]) -> str:
    return os.path.commonprefix(list(prefixes))


def sink_delivery(sink: Sink) -> Callable[[SyncItem], None]:
    """The function that hands one item to `sink` (a callable, or a queue.Queue's put)."""
    if isinstance(sink, queue.Queue):
        return sink.put
    if callable(sink):
        return sink
    raise TypeError(f"sink: expected a callable or a queue.Queue, got {sink!r}")


class _Stopped(Exception):
    pass


class Syncer:
    """List + watch with resync-by-difference, in a daemon thread.

    `datastore` is a Datastore, or a callable that opens one: with a callable the syncer
    reopens the store after it became unavailable (and opens it lazily, retrying until
    the store is reachable)."""

    def __init__(
        self,
        datastore: Datastore | Callable[[], Datastore],
        sink: Sink,
        *,
        prefixes: Iterable[str] = DEFAULT_PREFIXES,
        exclude: Iterable[str] = (),
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        name: str = "syncer",
    ) -> None:
        self.prefixes = tuple(prefixes)
        if not self.prefixes or not all(isinstance(p, str) and p for p in self.prefixes):
            raise ValueError(f"prefixes: expected non-empty strings, got {self.prefixes!r}")
        self.exclude = tuple(exclude)
        self.watch_prefix = _common_prefix(self.prefixes)
        if isinstance(datastore, Datastore):
            self._ds: Datastore | None = datastore
            self._factory: Callable[[], Datastore] | None = None
        else:
            self._ds, self._factory = None, datastore
        self._deliver = sink_delivery(sink)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.name = name
        self._known: dict[str, tuple[int, int]] = {}  # key -> (mod_revision, hash(value))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None
        self._status = SyncStatus()

    # --- control ------------------------------------------------------------------------

    def start(self) -> Syncer:
        if self._thread is not None:
            raise RuntimeError("syncer already started")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop from any thread; returns when the thread has ended (or after timeout)."""
        self._stop.set()
        with self._lock:
            watch = self._watch
        if watch is not None:
            watch.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._set(state="stopped", in_sync=False)
        if self._factory is not None and self._ds is not None:
            try:
                self._ds.close()
            except Exception:  # closing a broken store must not mask the stop
                log.debug("closing datastore failed", exc_info=True)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def status(self) -> SyncStatus:
        with self._lock:
            return self._status

    def _set(self, **changes: object) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)  # type: ignore[arg-type]

    # --- the loop -----------------------------------------------------------------------

    def _wanted(self, key: str) -> bool:
        return key.startswith(self.prefixes) and not (self.exclude and key.startswith(self.exclude))

    def _run(self) -> None:
        delay = self.backoff_initial
        while not self._stop.is_set():
            try:
                ds = self._datastore()
                revision = self._resync(ds)
                delay = self.backoff_initial  # a good list resets the backoff
                self._follow(ds, revision)
            except _Stopped:
                break
            except (Compacted, Unavailable, DatastoreError, OSError) as exc:
                if self._stop.is_set():
                    break
                self._broken(exc)
                if isinstance(exc, Compacted):
                    continue  # history is gone, the store is fine: list again at once
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)
            except Exception as exc:  # a bug must not kill the thread silently
                if self._stop.is_set():
                    break
                log.exception("syncer: unexpected error")
                self._broken(exc)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)
        self._set(state="stopped", in_sync=False)

    def _datastore(self) -> Datastore:
        if self._ds is None:
            assert self._factory is not None
            self._ds = self._factory()
        return self._ds

    def _broken(self, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        st = self.status
        if st.in_sync or st.state == "starting":
            log.warning("syncer: datastore stream broken, will resync: %s", reason)
        else:
            log.info("syncer: still cannot sync: %s", reason)
        was_in_sync = st.in_sync
        self._set(state="out-of-sync", in_sync=False, errors=st.errors + 1, last_error=reason,
                  last_error_at=time.time())
        if was_in_sync:
            self._deliver(OutOfSync(reason))
        if self._factory is not None and isinstance(exc, Unavailable) and self._ds is not None:
            # A fresh connection on the next try (the old one may be wedged).
            try:
                self._ds.close()
            except Exception:
                log.debug("closing broken datastore failed", exc_info=True)
            self._ds = None

    def _resync(self, ds: Datastore) -> int:
        """List every prefix at one revision; deliver the difference; then InSync."""
        st = self.status
        self._set(state="listing")
        kvs, revision = ds.list(self.prefixes[0])
        items = list(kvs)
        for prefix in self.prefixes[1:]:
            more, _ = ds.list(prefix, revision=revision)
            items.extend(more)
        if self._stop.is_set():
            raise _Stopped
        seen: set[str] = set()
        sent = 0
        for kv in items:
            if not self._wanted(kv.key) or kv.key in seen:
                continue
            seen.add(kv.key)
            ident = (kv.mod_revision, hash(kv.value))
            if self._known.get(kv.key) != ident:
                self._known[kv.key] = ident
                self._deliver(Update(kv.key, kv.value, kv.mod_revision))
                sent += 1
        for key in sorted(k for k in self._known if k not in seen):
            del self._known[key]
            self._deliver(Update(key, None, revision))
            sent += 1
        # Status first: a consumer that has received InSync finds the status saying so.
        resyncs = st.resyncs + (1 if st.synced_once else 0)
        self._set(state="in-sync", in_sync=True, synced_once=True, revision=revision,
                  keys=len(self._known), resyncs=resyncs, updates=st.updates + sent)
        log.info("syncer: in sync at revision %d (%d keys, %d updates sent%s)", revision,
                 len(self._known), sent, ", resync" if st.synced_once else "")
        self._deliver(InSync(revision))
        return revision

    def _follow(self, ds: Datastore, revision: int) -> None:
        watch = ds.watch(self.watch_prefix, revision + 1)
        with self._lock:
            self._watch = watch
        try:
            if self._stop.is_set():  # stop() ran before the watch was published
                raise _Stopped
            for ev in watch:
                if self._stop.is_set():
                    raise _Stopped
                if not self._wanted(ev.key):
                    continue
                if ev.type == "put" and ev.value is not None:
                    self._known[ev.key] = (ev.revision, hash(ev.value))
                    item = Update(ev.key, ev.value, ev.revision)
                elif self._known.pop(ev.key, None) is not None:
                    item = Update(ev.key, None, ev.revision)
                else:
                    continue  # a delete of a key we never delivered (created+deleted unseen)
                with self._lock:
                    self._status = replace(self._status, revision=ev.revision,
                                           keys=len(self._known),
                                           updates=self._status.updates + 1)
                self._deliver(item)
            if self._stop.is_set():
                raise _Stopped
            # A watch that ends by itself lost its stream: treat like unavailability.
            raise Unavailable("watch ended")
        finally:
            with self._lock:
                self._watch = None
            watch.close()
