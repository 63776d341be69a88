"""The agent's side of Typha: a drop-in replacement for `tabby.datastore.syncer.Syncer`.

    client = TyphaClient("10.0.0.5:5473,10.0.0.6:5473", queue)   # or any callable sink
    client.start()
    ... queue.get() -> Update(key, value, revision) | InSync(revision) | OutOfSync(reason)
    client.stop()

Same sink, same items, same order rules and the same `status` (a `SyncStatus`) as the
Syncer: every key, then InSync; then each change; when the stream breaks, OutOfSync, and
after reconnecting only the DIFFERENCE, then InSync again (see merge.py). start() runs the
client in its own thread with its own event loop; `await client.run()` runs it on the
caller's loop instead (many clients on one loop: tests and benchmarks).

Which server: the addresses are tried in turn, starting at a random one so that agents
spread over the Typhas; after a connection ends the NEXT address is tried first (the
server that dropped us may be gone or shedding load). A whole round of failures backs off
exponentially. With `fallback` (a Datastore or a function opening one), a client that has
had no Typha for `fallback_after` seconds follows the datastore directly with a Syncer, and
keeps trying Typha; the first Typha that answers takes over again - both switches without
a reset, by the same difference.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from tabby.datastore.base import Datastore
from tabby.datastore.syncer import (
    DEFAULT_PREFIXES,
    InSync,
    OutOfSync,
    Sink,
    Syncer,
    SyncItem,
    SyncStatus,
    Update,
    sink_delivery,
)

from . import protocol as p
from .merge import ResyncMerger
from .tls import PeerIdentity

log = logging.getLogger(__name__)

Address = tuple[str, int]
DEFAULT_TYPHA_PORT = 5473


class TyphaUnavailable(Exception):
    """This server cannot serve us now (refused, wrong identity, gone)."""


def parse_addresses(text: str | Iterable[str]) -> list[Address]:
    """"HOST:PORT[,HOST:PORT]" (IPv6 as [addr]:port) -> [(host, port)]; ValueError names
    the bad part."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    out: list[Address] = []
    for raw in parts:
        part = raw.strip()
        if not part:
            raise ValueError(f"--typha: empty address in {text!r} (expected HOST:PORT[,HOST:PORT])")
        if part.startswith("["):
            host, bracket, rest = part[1:].partition("]")
            if not bracket or not host or (rest and not rest.startswith(":")):
                raise ValueError(f"--typha: bad address {part!r} (IPv6 as [addr]:port)")
            port_text = rest[1:]
        else:
            if part.count(":") > 1:
                raise ValueError(f"--typha: IPv6 address {part!r} must be in brackets: [addr]:port")
            host, _, port_text = part.partition(":")
        if not host:
            raise ValueError(f"--typha: address {part!r} has no host")
        port = DEFAULT_TYPHA_PORT
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"--typha: bad port {port_text!r} in {part!r}")
            port = int(port_text)
        out.append((host, port))
    if not out:
        raise ValueError("--typha: no address given")
    return out


class TyphaClient:
    def __init__(
        self,
        addresses: str | Sequence[str] | Sequence[Address],
        sink: Sink,
        *,
        client_name: str | None = None,
        syncer_type: str = p.DEFAULT_SYNCER_TYPE,
        info: str = "tabby-agent",
        ssl_context: ssl.SSLContext | None = None,
        server_identity: PeerIdentity | None = None,
        fallback: Datastore | Callable[[], Datastore] | None = None,
        fallback_after: float = 30.0,
        prefixes: Iterable[str] = DEFAULT_PREFIXES,
        connect_timeout: float = 5.0,
        ping_interval: float = 10.0,
        read_timeout: float = 60.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        name: str = "typha-client",
    ) -> None:
        if isinstance(addresses, str):
            self.addresses = parse_addresses(addresses)
        else:
            self.addresses = []
            for a in addresses:
                self.addresses += [(a[0], int(a[1]))] if isinstance(a, tuple) else parse_addresses(a)
            if not self.addresses:
                raise ValueError("--typha: no address given")
        self._deliver = sink_delivery(sink)
        self.client_name = client_name or socket.gethostname()
        self.syncer_type = syncer_type
        self.info = info
        self.ssl_context = ssl_context
        self.server_identity = server_identity or PeerIdentity()
        self.fallback = fallback
        self.fallback_after = fallback_after
        self.prefixes = tuple(prefixes)
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.read_timeout = read_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.name = name
        self.connects = 0  # sessions that got a HelloAck
        self.server: str | None = None  # address of the current Typha
        self.merger = ResyncMerger(self._deliver_item)
        self._lock = threading.Lock()
        self._status = SyncStatus(extra={"mode": "typha", "server": None})
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._phase = "hello"  # of the current session, per protocol.SERVER_MESSAGES
        self._direct: Syncer | None = None
        self._direct_gen = 0
        self._next = random.randrange(len(self.addresses))

    # -- Syncer-compatible control ------------------------------------------------------------

    def start(self) -> TyphaClient:
        if self._thread is not None or self._task is not None:
            raise RuntimeError("typha client already started")
        ready = threading.Event()

        def main() -> None:
            async def body() -> None:
                self._loop = asyncio.get_running_loop()
                self._task = asyncio.current_task()  # type: ignore[assignment]
                ready.set()
                await self._run()

            try:
                asyncio.run(body())
            except asyncio.CancelledError:
                pass
            finally:
                ready.set()

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()
        return self

    async def run(self) -> None:
        """Run on the caller's event loop until stop() (or cancellation)."""
        if self._thread is not None or self._task is not None:
            raise RuntimeError("typha client already started")
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()  # type: ignore[assignment]
        try:
            await self._run()
        except asyncio.CancelledError:
            if not self._stopping:
                raise

    def stop(self, timeout: float = 5.0) -> None:
        """Stop from any thread (or from the client's own loop); returns when stopped."""
        self._stopping = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._set(state="stopped", in_sync=False)

    @property
    def running(self) -> bool:
        if self._thread is not None:
            return self._thread.is_alive()
        return self._task is not None and not self._task.done()

    @property
    def status(self) -> SyncStatus:
        m = self.merger
        with self._lock:
            return replace(self._status, revision=m.revision, keys=len(m.delivered),
                           updates=m.updates, resyncs=m.resyncs, synced_once=m.synced_once)

    def _set(self, **changes: object) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)  # type: ignore[arg-type]

    def _deliver_item(self, item: SyncItem) -> None:
        if isinstance(item, InSync):
            self._set(state="in-sync", in_sync=True)
        elif isinstance(item, OutOfSync):
            self._set(state="out-of-sync", in_sync=False)
        self._deliver(item)

    def _source_in_sync(self, revision: int) -> None:
        self.merger.source_in_sync(revision)
        # Also after a quiet switch of source (no OutOfSync, so no new InSync item).
        self._set(state="in-sync", in_sync=True)

    def _error(self, reason: str) -> None:
        st = self.status
        self._set(errors=st.errors + 1, last_error=reason, last_error_at=time.time())

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.backoff_initial
        down_since: float | None = None
        try:
            task = asyncio.current_task()
            while not self._stopping:
                failures = 0
                for _ in range(len(self.addresses)):
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError  # a cancellation something swallowed
                    addr = self.addresses[self._next]
                    self._next = (self._next + 1) % len(self.addresses)
                    served = await self._try_server(addr)
                    if self._stopping:
                        return
                    if served:  # it got us in sync: no backoff before the next server
                        delay, down_since = self.backoff_initial, None
                        break  # straight on to the next address
                    failures += 1
                if failures < len(self.addresses):
                    continue
                # Every Typha failed this round.
                now = time.monotonic()
                down_since = down_since or now
                if (self.fallback is not None and self._direct is None
                        and now - down_since >= self.fallback_after):
                    self._start_direct()
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff_max)
        finally:
            self._stop_direct(lost=False)

    async def _try_server(self, addr: Address) -> bool:
        """One session with one server; True when it got us in sync (a server that accepts
        and then fails before that counts as a failure, so the round backs off)."""
        label = f"{addr[0]}:{addr[1]}"
        served = acked = cancelled = False
        writer: asyncio.StreamWriter | None = None
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # races with completion, and stop() relies on cancellation.
            async with asyncio.timeout(self.connect_timeout):
                reader, opened = await asyncio.open_connection(
                    addr[0], addr[1], ssl=self.ssl_context
                )
            writer = opened
            if self.ssl_context is not None:
                why = self.server_identity.check(opened.get_extra_info("peercert"))
                if why is not None:
                    raise TyphaUnavailable(f"server identity: {why}")
            opened.write(p.encode(p.Hello(self.client_name, p.PROTOCOL_VERSION,
                                          self.syncer_type, self.info)))
            async with asyncio.timeout(self.read_timeout):
                msg = await p.read_message(reader)
            self._phase = p.next_phase(p.SERVER_MESSAGES, "hello", msg)
            if isinstance(msg, p.Goodbye):
                raise TyphaUnavailable(f"server refused: {msg.reason}")
            assert isinstance(msg, p.HelloAck)
            acked = True
            await self._session(label, msg, reader, opened)
        except asyncio.CancelledError:
            cancelled = True  # stop(): the consumer hears nothing more, like from a Syncer
            raise
        except (OSError, TimeoutError, asyncio.IncompleteReadError, p.ProtocolError,
                TyphaUnavailable, ssl.SSLError) as exc:
            reason = _describe(exc)
            self._error(f"typha {label}: {reason}")
            (log.warning if acked else log.info)("typha client: %s: %s", label, reason)
        finally:
            if writer is not None:
                writer.transport.abort()
            if acked and not cancelled:
                served = self.merger.live
                self.merger.source_lost(f"lost typha {label}")
            self.server = None
        return served

    async def _session(self, label: str, ack: p.HelloAck, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        if self._direct is not None:  # a Typha answers: it takes over from the datastore
            direct = self._direct
            self._stop_direct(lost=False, join=False)
            await asyncio.to_thread(direct.stop, 2.0)
        self.connects += 1
        self.server = label
        log.info("typha client: connected to %s (server %s)", label, ack.server_name)
        self._set(state="listing", extra={"mode": "typha", "server": label})
        self.merger.start_source()
        last_rx = [time.monotonic()]
        watchdog = asyncio.create_task(self._keepalive(writer, last_rx))
        frames = p.FrameReader()
        try:
            while True:
                # Whatever has arrived, decoded in one go: one wake-up per read, not per frame.
                data = await reader.read(256 * 1024)
                if not data:
                    raise asyncio.IncompleteReadError(b"", None)
                last_rx[0] = time.monotonic()
                for msg in frames.feed(data):
                    self._handle(label, msg, writer)
        finally:
            watchdog.cancel()

    def _handle(self, label: str, msg: p.Message, writer: asyncio.StreamWriter) -> None:
        self._phase = p.next_phase(p.SERVER_MESSAGES, self._phase, msg)
        merger = self.merger
        if isinstance(msg, p.Deltas):
            for d in msg.deltas:
                merger.put(d.key, d.value, d.revision)
        elif isinstance(msg, p.SnapshotChunk):
            for key, value, rev in msg.kvs:
                merger.put(key, value, rev)
        elif isinstance(msg, p.InSync):
            self._source_in_sync(msg.revision)
        elif isinstance(msg, p.OutOfSync):
            merger.source_out_of_sync(f"typha {label}: {msg.reason}")
            self._set(state="out-of-sync")
        elif isinstance(msg, p.Ping):
            writer.write(p.encode(p.Pong(msg.timestamp)))
        elif isinstance(msg, p.Goodbye):
            raise TyphaUnavailable(f"server said goodbye: {msg.reason}")

    async def _keepalive(self, writer: asyncio.StreamWriter, last_rx: list[float]) -> None:
        """Ping the server; cut the connection when it has been silent too long."""
        step = min(self.ping_interval, max(self.read_timeout / 4, 0.05))
        last_ping = time.monotonic()
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            if now - last_rx[0] > self.read_timeout:
                log.warning("typha client: %s silent for %.1fs, reconnecting", self.server,
                            now - last_rx[0])
                writer.transport.abort()
                return
            if now - last_ping >= self.ping_interval:
                last_ping = now
                writer.write(p.encode(p.Ping(time.time())))

    # -- fallback: the datastore directly ----------------------------------------------------

    def _start_direct(self) -> None:
        assert self.fallback is not None and self._loop is not None
        log.warning("typha client: no Typha reachable for %.0fs, following the datastore "
                    "directly", self.fallback_after)
        self._direct_gen += 1
        gen, loop = self._direct_gen, self._loop
        self.merger.start_source()
        self._set(state="listing", extra={"mode": "direct", "server": None})

        def sink(item: SyncItem) -> None:  # the direct syncer's thread
            try:
                loop.call_soon_threadsafe(self._direct_item, gen, item)
            except RuntimeError:
                pass

        self._direct = Syncer(self.fallback, sink, prefixes=self.prefixes,
                              name=f"{self.name}-direct").start()

    def _direct_item(self, gen: int, item: SyncItem) -> None:
        if gen != self._direct_gen or self._direct is None:
            return  # from a direct syncer that has since been replaced by a Typha
        if isinstance(item, Update):
            self.merger.put(item.key, item.value, item.revision)
        elif isinstance(item, InSync):
            self._source_in_sync(item.revision)
        elif isinstance(item, OutOfSync):
            self.merger.source_out_of_sync(f"datastore: {item.reason}")
            self._set(state="out-of-sync")

    def _stop_direct(self, lost: bool, join: bool = True) -> None:
        direct, self._direct = self._direct, None
        if direct is None:
            return
        self._direct_gen += 1  # items it may still post are dropped by the generation check
        if join:
            direct.stop(timeout=2.0)  # it closes its watch, so this returns promptly
        if lost:
            self.merger.source_lost("left direct datastore mode")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed by the server"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, TyphaUnavailable) else str(exc)
