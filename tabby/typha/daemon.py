"""`tabby typha` as a library: the upstream syncer, the server and the health/metrics port.

    daemon = TyphaDaemon(lambda: open_datastore(url), ServerConfig(port=5473), health_port=9098)
    await daemon.start()
    ...
    await daemon.stop()

Liveness: the event loop answers and the upstream syncer thread is running. Readiness: also
listening and the snapshot is in sync with the datastore (a Typha that is not in sync still
serves, so that its clients' consumers hear OutOfSync rather than nothing, but a load balancer
should prefer a ready one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from tabby.datastore.base import Datastore
from tabby.datastore.syncer import DEFAULT_PREFIXES

from .cache import SnapshotCache
from .http import PROMETHEUS_TYPE, HttpEndpoint, MetricFamily, render_metrics, text_route
from .protocol import DEFAULT_SYNCER_TYPE
from .server import ServerConfig, TyphaServer
from .upstream import SyncerFeed

log = logging.getLogger(__name__)


class TyphaDaemon:
    def __init__(
        self,
        datastore: Callable[[], Datastore],
        config: ServerConfig | None = None,
        *,
        syncer_type: str = DEFAULT_SYNCER_TYPE,
        prefixes: Iterable[str] = DEFAULT_PREFIXES,
        health_host: str = "127.0.0.1",
        health_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        metrics_port: int | None = None,
        revision_poll_interval: float = 5.0,
    ) -> None:
        self.cache = SnapshotCache(syncer_type)
        self.feed = SyncerFeed(self.cache, datastore, prefixes=prefixes,
                               revision_poll_interval=revision_poll_interval)
        self.server = TyphaServer(self.cache, config)
        self.endpoints: list[HttpEndpoint] = []
        routes = {
            "/liveness": text_route(self.liveness),
            "/readiness": text_route(self.readiness),
            "/metrics": self._metrics_route,
        }
        # One endpoint when both name the same fixed port (port 0 = two random ports).
        if health_port and health_port == metrics_port and health_host == metrics_host:
            self.endpoints.append(HttpEndpoint(health_host, health_port, routes))
        else:
            if health_port is not None:
                self.endpoints.append(HttpEndpoint(health_host, health_port, {
                    k: v for k, v in routes.items() if k != "/metrics"}))
            if metrics_port is not None:
                self.endpoints.append(HttpEndpoint(metrics_host, metrics_port,
                                                   {"/metrics": self._metrics_route}))

    async def start(self) -> None:
        # Serve before the first sync: clients get the snapshot as it fills and their InSync
        # when ours comes, instead of connection refused.
        await self.server.start()
        for ep in self.endpoints:
            await ep.start()
        self.feed.start(asyncio.get_running_loop())

    async def stop(self, graceful: bool = True) -> None:
        await asyncio.to_thread(self.feed.stop)
        for ep in self.endpoints:
            await ep.stop()
        await self.server.stop(graceful=graceful)

    async def serve_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # -- health and metrics ----------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        if not self.feed.alive:
            return False, "upstream syncer thread is not running"
        return True, "alive"

    def readiness(self) -> tuple[bool, str]:
        ok, detail = self.liveness()
        if not ok:
            return ok, detail
        if not self.server.listening:
            return False, "not listening"
        if not self.cache.in_sync:
            return False, "snapshot not in sync with the datastore"
        return True, (f"ready: {len(self.server.connections)} clients, {len(self.cache.data)} keys"
                      f" at revision {self.cache.revision}")

    def metric_families(self) -> list[MetricFamily]:
        return self.server.metric_families() + self.feed.metric_families()

    def _metrics_route(self) -> tuple[int, str, bytes]:
        return 200, PROMETHEUS_TYPE, render_metrics(self.metric_families())
