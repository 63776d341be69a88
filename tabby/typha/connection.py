"""One client connection on the server side: hello, snapshot, then live deltas.

Writes never wait for the client. Until the snapshot has been written, deltas for this client
queue in `pending` (bounded by count and bytes); after that (`live`), each frame goes
straight to the transport, whose buffer is bounded by bytes. A client that overflows either
bound is too slow: it is cut off (it will reconnect and get a fresh snapshot), so it can
never hold up the fan-out to everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from .cache import SnapshotCache
from .protocol import (
    CLIENT_MESSAGES,
    PROTOCOL_VERSION,
    Goodbye,
    Hello,
    HelloAck,
    InSync,
    Message,
    Ping,
    Pong,
    ProtocolError,
    SnapshotDone,
    encode,
    next_phase,
    read_message,
)

if TYPE_CHECKING:
    from .server import TyphaServer

log = logging.getLogger(__name__)

CLOSE_GRACE = 5.0  # seconds a closing connection may take to flush its last frames

# Why a connection ended, as counted in typha_client_disconnects_total{reason=...}.
SLOW, SILENT, PROTOCOL, SHED, REFUSED, PEER_CLOSED, SHUTDOWN, TLS = (
    "slow", "silent", "protocol", "shed", "refused", "peer-closed", "shutdown", "tls-identity"
)  # fmt: skip


class ServerConnection:
    def __init__(
        self, server: TyphaServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.cfg = server.config
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.name = "?"  # client name, from its Hello
        self.cache: SnapshotCache | None = None
        self.live = False
        self.closed = False
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.bytes_sent = 0
        now = time.monotonic()
        self.connected_at = now
        self.last_rx = now
        self.last_ping = now
        self.rtt: float | None = None

    def __repr__(self) -> str:
        return f"client {self.name!r} ({self.peer})"

    # -- sending (never awaits) ------------------------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        if self.closed:
            return
        if self.live:
            self._write(frame)
            buffered = self.transport.get_write_buffer_size()
            if buffered > self.cfg.max_buffer_bytes:
                self.drop(SLOW, f"{buffered} bytes unsent (limit {self.cfg.max_buffer_bytes})")
            return
        self.pending.append(frame)
        self.pending_bytes += len(frame)
        if len(self.pending) > self.cfg.max_pending_frames:
            self.drop(SLOW, f"{len(self.pending)} frames queued behind its snapshot")
        elif self.pending_bytes > self.cfg.max_buffer_bytes:
            self.drop(SLOW, f"{self.pending_bytes} bytes queued behind its snapshot")

    def _write(self, frame: bytes) -> None:
        self.transport.write(frame)
        self.bytes_sent += len(frame)
        self.server.stats.bytes_sent += len(frame)

    def drop(self, reason: str, detail: str) -> None:
        """Cut the connection at once (no flush): used when the peer cannot or must not be
        talked to any more."""
        if self.closed:
            return
        self._finish(reason, detail)
        self.transport.abort()

    def close(self, reason: str, detail: str, goodbye: str | None = None) -> None:
        """End the connection after flushing what is queued (and a Goodbye)."""
        if self.closed:
            return
        if goodbye is not None:
            with contextlib.suppress(Exception):
                self._write(encode(Goodbye(goodbye)))
        self._finish(reason, detail)
        self.writer.close()
        # close() waits for the buffer to drain; a client that never reads must not keep
        # the socket (and its buffer) forever.
        asyncio.get_running_loop().call_later(CLOSE_GRACE, self.transport.abort)

    def _finish(self, reason: str, detail: str) -> None:
        self.closed = True
        self.pending.clear()
        if self.cache is not None:
            self.cache.unsubscribe(self)
        self.server.connection_ended(self, reason)
        level = logging.INFO if reason in (PEER_CLOSED, SHUTDOWN) else logging.WARNING
        log.log(level, "typha: dropping %r: %s: %s", self, reason, detail)

    # -- the conversation ------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._serve()
        except asyncio.IncompleteReadError:
            self.close(PEER_CLOSED, "connection closed by the client")
        except ProtocolError as exc:
            self.close(PROTOCOL, str(exc), goodbye=f"protocol error: {exc}")
        except TimeoutError:
            self.drop(SLOW, "timed out writing the snapshot")
        except (ConnectionError, OSError) as exc:
            self.drop(PEER_CLOSED, f"connection error: {exc}")
        except asyncio.CancelledError:
            self.drop(SHUTDOWN, "server stopping")
            raise
        finally:
            if not self.closed:  # pragma: no cover - every path above finishes
                self.drop(SHUTDOWN, "connection handler ended")

    async def _serve(self) -> None:
        cfg = self.cfg
        try:
            async with asyncio.timeout(cfg.handshake_timeout):
                msg = await read_message(self.reader, cfg.max_frame_in)
        except TimeoutError:
            raise ProtocolError(f"no hello within {cfg.handshake_timeout:g}s") from None
        next_phase(CLIENT_MESSAGES, "hello", msg)
        assert isinstance(msg, Hello)
        self.name = msg.client_name
        if msg.version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"unsupported protocol version {msg.version} (this server speaks {PROTOCOL_VERSION})"
            )
        cache = self.server.caches.get(msg.syncer_type)
        if cache is None:
            raise ProtocolError(
                f"unknown syncer type {msg.syncer_type!r} (serving {sorted(self.server.caches)})"
            )
        self._write(encode(HelloAck(cfg.server_name, PROTOCOL_VERSION, cache.syncer_type)))
        # Snapshot + subscription in one synchronous step: deltas after it queue in pending.
        self.cache = cache
        view = cache.subscribe(self)
        started = time.monotonic()
        for frame in view.frames:
            self._write(frame)
            async with asyncio.timeout(cfg.write_timeout):
                await self.writer.drain()
            if self.closed:
                return
        self._write(encode(SnapshotDone(view.revision, view.keys)))
        if view.in_sync:
            self._write(encode(InSync(view.revision)))
        while self.pending:  # no await in this loop: nothing can be appended meanwhile
            self._write(self.pending.popleft())
        self.pending_bytes = 0
        self.live = True
        self.last_rx = self.last_ping = time.monotonic()
        self.server.stats.snapshots_sent += 1
        log.info("typha: %r: sent snapshot of %d keys at revision %d in %.3fs", self,
                 view.keys, view.revision, time.monotonic() - started)
        await self._read_loop()

    async def _read_loop(self) -> None:
        while not self.closed:
            msg: Message = await read_message(self.reader, self.cfg.max_frame_in)
            self.last_rx = time.monotonic()
            next_phase(CLIENT_MESSAGES, "serving", msg)
            if isinstance(msg, Ping):
                self.send_frame(encode(Pong(msg.timestamp)))
            elif isinstance(msg, Pong):
                self.rtt = max(0.0, time.time() - msg.timestamp)
            elif isinstance(msg, Goodbye):
                self.close(PEER_CLOSED, f"client said goodbye: {msg.reason}")

    # -- keepalive (called by the server's housekeeping task) --------------------------------

    def tick(self, now: float) -> None:
        if not self.live or self.closed:
            return
        if now - self.last_rx > self.cfg.read_timeout:
            self.drop(SILENT, f"nothing received for {now - self.last_rx:.1f}s")
        elif now - self.last_ping >= self.cfg.ping_interval:
            self.last_ping = now
            self.send_frame(encode(Ping(time.time())))
