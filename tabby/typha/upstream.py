"""Typha's single upstream: one `Syncer` (tabby.datastore.syncer) feeding the snapshot cache.

The syncer runs in its own thread and calls our sink for every item. The sink only appends
to a list and, if the loop has not been woken yet, wakes it; the loop then takes everything
that has accumulated and applies it as ONE batch (one frame per batch to every client). So
under a burst of writes the batches grow and the per-update cost falls, and an idle system
pays one wake-up per change.

A second, tiny thread polls the datastore's current revision so that the revision lag
(datastore revision minus the newest revision sent to clients) can be exported.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable

from tabby.datastore.base import Datastore, DatastoreError
from tabby.datastore.syncer import DEFAULT_PREFIXES, InSync, OutOfSync, Syncer, SyncItem, Update

from .cache import SnapshotCache
from .http import MetricFamily
from .protocol import Delta

log = logging.getLogger(__name__)


class SyncerFeed:
    def __init__(
        self,
        cache: SnapshotCache,
        datastore: Callable[[], Datastore],
        *,
        prefixes: Iterable[str] = DEFAULT_PREFIXES,
        revision_poll_interval: float = 5.0,
    ) -> None:
        self.cache = cache
        self._factory = datastore
        self.prefixes = tuple(prefixes)
        self.revision_poll_interval = revision_poll_interval
        self.datastore_revision = 0  # from the poller; 0 = not known yet
        self.batches = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._items: list[SyncItem] = []
        self._scheduled = False
        self._stop = threading.Event()
        self._syncer: Syncer | None = None
        self._poller: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._syncer = Syncer(self._factory, self._sink, prefixes=self.prefixes,
                              name=f"typha-syncer-{self.cache.syncer_type}")
        self._syncer.start()
        if self.revision_poll_interval > 0:
            self._poller = threading.Thread(target=self._poll_revision, daemon=True,
                                            name="typha-revision-poll")
            self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._syncer is not None:
            self._syncer.stop()
        if self._poller is not None:
            self._poller.join(5.0)

    @property
    def syncer(self) -> Syncer | None:
        return self._syncer

    @property
    def alive(self) -> bool:
        return self._syncer is not None and self._syncer.running

    # -- syncer thread ---------------------------------------------------------------------

    def _sink(self, item: SyncItem) -> None:
        with self._lock:
            self._items.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # loop closed: we are shutting down
            pass

    # -- event loop --------------------------------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        self.batches += 1
        batch: list[Delta] = []
        for item in items:
            if isinstance(item, Update):
                batch.append(Delta(item.key, item.value, item.revision))
                continue
            if batch:
                self.cache.apply(batch)
                batch = []
            if isinstance(item, InSync):
                self.cache.set_in_sync(item.revision)
            elif isinstance(item, OutOfSync):
                self.cache.set_out_of_sync(item.reason)
        if batch:
            self.cache.apply(batch)

    # -- revision poller -----------------------------------------------------------------------

    def _poll_revision(self) -> None:
        ds: Datastore | None = None
        while not self._stop.is_set():
            try:
                if ds is None:
                    ds = self._factory()
                self.datastore_revision = ds.revision()
            except (DatastoreError, OSError) as exc:
                log.debug("typha: revision poll failed: %s", exc)
                if ds is not None:
                    try:
                        ds.close()
                    except Exception:
                        log.debug("typha: closing poller datastore failed", exc_info=True)
                    ds = None
            self._stop.wait(self.revision_poll_interval)
        if ds is not None:
            ds.close()

    def metric_families(self) -> list[MetricFamily]:
        labels = {"syncer": self.cache.syncer_type}
        lag = max(0, self.datastore_revision - self.cache.revision) if self.datastore_revision else 0
        st = self._syncer.status if self._syncer is not None else None
        return [
            MetricFamily("typha_datastore_revision", "gauge",
                         "Datastore revision, polled every few seconds.",
                         [(labels, self.datastore_revision)]),
            MetricFamily("typha_revision_lag", "gauge",
                         "Datastore revision minus the newest revision sent to clients "
                         "(writes outside the synced prefixes count until the next change).",
                         [(labels, lag)]),
            MetricFamily("typha_upstream_resyncs_total", "counter",
                         "Times the upstream syncer listed the datastore again.",
                         [(labels, st.resyncs if st else 0)]),
            MetricFamily("typha_upstream_errors_total", "counter",
                         "Upstream datastore stream failures.", [(labels, st.errors if st else 0)]),
            MetricFamily("typha_upstream_batches_total", "counter",
                         "Batches of upstream changes applied to the snapshot.",
                         [(labels, self.batches)]),
        ]
