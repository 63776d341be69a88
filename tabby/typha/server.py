"""The Typha server: accepts agents, hands each one the snapshot, then fans out every change.

    cache = SnapshotCache("felix")
    server = TyphaServer(cache, ServerConfig(port=5473))
    await server.start()          # then feed the cache (see upstream.py)

One housekeeping task per server (not per client) sends keepalive pings, drops clients that
went silent and sheds connections above `max_conns` at a bounded rate, so that a scale-down
does not make every agent reconnect at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from .cache import SnapshotCache
from .connection import REFUSED, SHED, SHUTDOWN, TLS, ServerConnection
from .http import MetricFamily
from .protocol import Goodbye, encode
from .tls import PeerIdentity

log = logging.getLogger(__name__)

DEFAULT_PORT = 5473  # Calico's Typha port


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    server_name: str = field(default_factory=socket.gethostname)
    max_conns: int = 1000
    shed_per_second: float = 20.0  # connections dropped per second while over max_conns
    ping_interval: float = 10.0  # keepalive from the server when a client is live
    read_timeout: float = 60.0  # a live client silent this long is dropped
    handshake_timeout: float = 10.0  # hello must arrive within this
    write_timeout: float = 60.0  # one snapshot chunk must drain within this
    max_buffer_bytes: int = 16 * 1024 * 1024  # unsent bytes per client before it is "slow"
    max_pending_frames: int = 20_000  # frames queued behind a snapshot before "slow"
    max_frame_in: int = 64 * 1024  # clients only send hello/ping/pong/goodbye
    send_buffer_bytes: int | None = None  # SO_SNDBUF per client socket (None = kernel autotune)
    ssl_context: ssl.SSLContext | None = None
    client_identity: PeerIdentity = field(default_factory=PeerIdentity)
    housekeeping_interval: float = 1.0


@dataclass
class ServerStats:
    accepted: int = 0
    snapshots_sent: int = 0
    bytes_sent: int = 0
    disconnects: Counter[str] = field(default_factory=Counter)


class TyphaServer:
    def __init__(
        self,
        caches: SnapshotCache | Mapping[str, SnapshotCache],
        config: ServerConfig | None = None,
    ) -> None:
        if isinstance(caches, SnapshotCache):
            caches = {caches.syncer_type: caches}
        self.caches: dict[str, SnapshotCache] = dict(caches)
        self.config = config or ServerConfig()
        self.stats = ServerStats()
        self.connections: dict[ServerConnection, None] = {}  # insertion-ordered set
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._shed_credit = 0.0

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        cfg = self.config
        self._server = await asyncio.start_server(
            self._on_connect, cfg.host, cfg.port, ssl=cfg.ssl_context, backlog=1024,
            ssl_handshake_timeout=cfg.handshake_timeout if cfg.ssl_context else None,
        )
        cfg.port = self._server.sockets[0].getsockname()[1]
        self._housekeeping = asyncio.create_task(self._housekeep(), name="typha-housekeeping")
        log.info("typha: listening on %s (%s, max %d connections)", self.address,
                 "TLS" if cfg.ssl_context else "plain TCP", cfg.max_conns)

    async def stop(self, graceful: bool = True) -> None:
        """Stop listening and end every connection: with a Goodbye when graceful, else by
        cutting the sockets (what a crash looks like to the clients)."""
        if self._server is not None:
            self._server.close()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        for conn in list(self.connections):
            if graceful:
                conn.close(SHUTDOWN, "server stopping", goodbye="server stopping")
            else:
                conn.drop(SHUTDOWN, "server killed")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def set_max_conns(self, n: int) -> None:
        """Change the limit at run time; connections over it are shed gradually."""
        if n < 0:
            raise ValueError(f"max_conns must be >= 0, got {n}")
        self.config.max_conns = n

    # -- connections -------------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ServerConnection(self, reader, writer)
        cfg = self.config
        sock = writer.get_extra_info("socket")
        if cfg.send_buffer_bytes is not None and sock is not None:
            # Bounds what the kernel holds for a stalled client too, so that slowness shows
            # up in our own buffer after this much, not after the autotuned maximum (MBs).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.send_buffer_bytes)
        if cfg.ssl_context is not None:
            why = cfg.client_identity.check(writer.get_extra_info("peercert"))
            if why is not None:
                # The client gets nothing at all: not even a reason.
                self.stats.disconnects[TLS] += 1
                log.warning("typha: refusing %s: %s", conn.peer, why)
                writer.transport.abort()
                return
        if len(self.connections) >= cfg.max_conns:
            self.stats.disconnects[REFUSED] += 1
            log.warning("typha: refusing %s: at max connections (%d)", conn.peer, cfg.max_conns)
            writer.write(encode(Goodbye(f"server at max connections ({cfg.max_conns})")))
            writer.close()
            return
        self.stats.accepted += 1
        self.connections[conn] = None
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await conn.run()
        except asyncio.CancelledError:
            # End quietly: asyncio.streams (3.11) logs a traceback for a cancelled handler.
            pass
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]

    def connection_ended(self, conn: ServerConnection, reason: str) -> None:
        if self.connections.pop(conn, False) is not False:
            self.stats.disconnects[reason] += 1

    async def _housekeep(self) -> None:
        cfg = self.config
        last = time.monotonic()
        while True:
            await asyncio.sleep(cfg.housekeeping_interval)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.tick(now)
            self._shed(now - last)
            last = now

    def _shed(self, elapsed: float) -> None:
        excess = len(self.connections) - self.config.max_conns
        if excess <= 0:
            self._shed_credit = 0.0
            return
        self._shed_credit = min(self._shed_credit + elapsed * self.config.shed_per_second, excess)
        count = int(self._shed_credit)
        if count <= 0:
            return
        self._shed_credit -= count
        # Newest first: they have had the least time to settle.
        for conn in list(reversed(self.connections))[:count]:
            conn.close(SHED, f"over max connections ({self.config.max_conns})",
                       goodbye="server shedding load: reconnect elsewhere")

    # -- metrics -----------------------------------------------------------------------------

    def metric_families(self) -> list[MetricFamily]:
        live = sum(1 for c in self.connections if c.live)
        fams = [
            MetricFamily("typha_connections_active", "gauge",
                         "Client connections open now (including ones still getting a snapshot).",
                         [({}, len(self.connections))]),
            MetricFamily("typha_connections_streaming", "gauge",
                         "Clients that have their snapshot and get live deltas.", [({}, live)]),
            MetricFamily("typha_connections_max", "gauge", "Configured connection limit.",
                         [({}, self.config.max_conns)]),
            MetricFamily("typha_connections_accepted_total", "counter",
                         "Client connections accepted.", [({}, self.stats.accepted)]),
            MetricFamily("typha_snapshots_sent_total", "counter",
                         "Complete snapshots sent to clients.", [({}, self.stats.snapshots_sent)]),
            MetricFamily("typha_bytes_sent_total", "counter",
                         "Bytes written to client connections.", [({}, self.stats.bytes_sent)]),
            MetricFamily("typha_client_disconnects_total", "counter",
                         "Client connections ended, by reason.",
                         [({"reason": r}, n) for r, n in sorted(self.stats.disconnects.items())]),
            MetricFamily("typha_client_slow_disconnects_total", "counter",
                         "Clients dropped because they fell too far behind.",
                         [({}, self.stats.disconnects["slow"])]),
            MetricFamily("typha_connections_shed_total", "counter",
                         "Connections dropped to get back under the connection limit.",
                         [({}, self.stats.disconnects[SHED])]),
            MetricFamily("typha_connections_refused_total", "counter",
                         "New connections refused at the connection limit.",
                         [({}, self.stats.disconnects[REFUSED])]),
        ]
        caches = sorted(self.caches.items())
        per_cache = (
            ("typha_snapshot_keys", "gauge", "Keys in the snapshot.", lambda c: len(c.data)),
            ("typha_snapshot_bytes", "gauge", "Bytes of keys and values in the snapshot.",
             lambda c: c.nbytes),
            ("typha_snapshot_revision", "gauge", "Newest datastore revision sent to clients.",
             lambda c: c.revision),
            ("typha_in_sync", "gauge", "1 when the snapshot is a complete view of the datastore.",
             lambda c: int(c.in_sync)),
            ("typha_updates_total", "counter", "Changes fanned out to clients.",
             lambda c: c.updates_applied),
        )
        for metric, kind, text, value in per_cache:
            fams.append(MetricFamily(metric, kind, text,
                                     [({"syncer": n}, value(c)) for n, c in caches]))
        return fams
