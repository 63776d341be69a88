"""Typha end to end on loopback: many clients, failover, slow clients, bad peers, resync.

Each test runs one event loop holding the Typha server(s) and the clients (asyncio clients
via `TyphaClient.run()`); the datastore is an sqlite file written from a worker thread.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from tabby.datastore import open_datastore
from tabby.typha import protocol as p
from tabby.typha.client import TyphaClient
from tabby.typha.daemon import TyphaDaemon
from tabby.typha.server import ServerConfig
from tabby.typha.testing import Consumer, datastore_state, mixed_writes, wait_for

pytestmark = pytest.mark.timeout(120)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


async def start_daemon(url: str, **config: Any) -> TyphaDaemon:
    daemon = TyphaDaemon(lambda: open_datastore(url), ServerConfig(port=0, **config),
                         revision_poll_interval=0.1)
    await daemon.start()
    return daemon


def addr(daemon: TyphaDaemon) -> tuple[str, int]:
    return ("127.0.0.1", daemon.server.port)


class Fleet:
    """N consumers, each behind its own TyphaClient, all on the running loop."""

    def __init__(self, n: int, addresses: list[tuple[str, int]], **kwargs: Any) -> None:
        self.consumers = [Consumer(f"agent-{i}") for i in range(n)]
        self.clients = [TyphaClient(addresses, c, client_name=c.name, backoff_max=0.5, **kwargs)
                        for c in self.consumers]
        self.tasks = [asyncio.create_task(c.run()) for c in self.clients]

    def converged(self, truth: dict) -> bool:
        return all(c.view == truth and c.in_syncs > c.out_of_syncs for c in self.consumers)

    def mismatches(self, truth: dict) -> list[str]:
        return [c.name for c in self.consumers if c.view != truth]

    async def stop(self) -> None:
        for c in self.clients:
            c.stop()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def test_200_clients_see_exactly_the_final_state(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'tabby.db'}"

    async def main() -> None:
        with open_datastore(url) as ds:
            # 300 writes before anyone connects (they travel in the snapshot), 700 while
            # the clients connect and after (they travel as deltas, or in later snapshots).
            await asyncio.to_thread(mixed_writes, ds, 300, seed=1)
            ds.create("/tabby/ipam/v2/assignment/ipv4/block/10.0.0.0-26", b'{"a":1}')
            ds.create("/tabby/k8s/namespaces/default", b'{"ns":1}')
            ds.create("/tabby/elsewhere/not-synced", b"x")
            daemon = await start_daemon(url)
            fleet = Fleet(200, [addr(daemon)])
            await asyncio.to_thread(mixed_writes, ds, 697, seed=2)
            truth = datastore_state(ds)
            assert len(truth) > 100 and "/tabby/elsewhere/not-synced" not in truth
            ok = await wait_for(lambda: fleet.converged(truth), 60)
            assert ok, f"clients not converged: {fleet.mismatches(truth)[:5]}"
            for c in fleet.consumers:
                assert (c.in_syncs, c.out_of_syncs, c.noops) == (1, 0, 0), c.name
                assert c.items[-1] in ("I", "U")
            # Every client got its snapshot; the server counted them and its metrics agree.
            assert daemon.server.stats.snapshots_sent == 200
            metrics = daemon._metrics_route()[2].decode()
            assert "typha_connections_active 200" in metrics
            assert f'typha_snapshot_keys{{syncer="felix"}} {len(truth)}' in metrics
            await fleet.stop()
            await daemon.stop()

    run(main())


def test_killing_one_typha_moves_its_clients_to_the_other(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'tabby.db'}"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = await start_daemon(url), await start_daemon(url)
        with open_datastore(url) as ds:
            await asyncio.to_thread(mixed_writes, ds, 100, seed=3)
            fleet = Fleet(40, [addr(a), addr(b)])
            assert await wait_for(lambda: all(c.status.in_sync for c in fleet.clients), 30)
            on_a = [i for i, c in enumerate(fleet.clients) if c.server == a.server.address]
            assert on_a, "clients start at a random address: some should be on the first"

            def kill_a_midstream(i: int) -> None:
                if i == 200:  # from the writer thread, while writes keep coming
                    asyncio.run_coroutine_threadsafe(a.stop(graceful=False), loop).result(10)

            await asyncio.to_thread(mixed_writes, ds, 500, seed=4, pause=kill_a_midstream)
            truth = datastore_state(ds)
            ok = await wait_for(lambda: fleet.converged(truth), 60)
            assert ok, f"clients not converged: {fleet.mismatches(truth)[:5]}"
            for i in on_a:
                c, consumer = fleet.clients[i], fleet.consumers[i]
                assert c.server == b.server.address
                # The consumer heard the break and the recovery, and got only real changes:
                # no reset, no replay of what it already had.
                assert consumer.out_of_syncs == 1 and consumer.in_syncs == 2
                assert consumer.noops == 0
                assert c.status.resyncs == 1
            assert b.server.stats.accepted == 40
            await fleet.stop()
            await b.stop()

    run(main())


async def _raw_connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def _read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


def test_a_client_that_stops_reading_is_dropped_and_the_others_keep_going(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'tabby.db'}"

    async def main() -> None:
        daemon = await start_daemon(url, max_buffer_bytes=64 * 1024 * 1024,
                                    send_buffer_bytes=32 * 1024)
        server = daemon.server
        fleet = Fleet(20, [addr(daemon)])
        stalled = await _raw_connect(server.port, rcvbuf=4096)
        await asyncio.get_running_loop().sock_sendall(
            stalled, p.encode(p.Hello("stalled", p.PROTOCOL_VERSION)))
        assert await wait_for(lambda: any(c.name == "stalled" for c in server.connections), 10)
        (slow,) = [c for c in server.connections if c.name == "stalled"]
        with open_datastore(url) as ds:
            # 1. About 2.5 MB of changes while the stalled client reads nothing: everyone
            # else converges, while the server still holds the stalled client's backlog.
            await asyncio.to_thread(mixed_writes, ds, 1000, seed=5, value_size=2500)
            truth = datastore_state(ds)
            ok = await wait_for(lambda: fleet.converged(truth), 60)
            assert ok, f"clients not converged: {fleet.mismatches(truth)[:5]}"
            assert slow in server.connections and not slow.closed
            assert slow.transport.get_write_buffer_size() > 1024 * 1024
            # 2. Over its bound (lowered here), the stalled client is cut off at the next
            # change; the others carry on.
            server.config.max_buffer_bytes = 512 * 1024
            await asyncio.to_thread(mixed_writes, ds, 20, seed=13)
            truth = datastore_state(ds)
        assert await wait_for(lambda: fleet.converged(truth), 30)
        assert slow.closed and slow not in server.connections
        assert server.stats.disconnects["slow"] == 1
        received = await _read_until_closed(stalled)  # what its kernel buffer held, then EOF
        assert 0 < len(received) < 1024 * 1024
        stalled.close()
        metrics = daemon._metrics_route()[2].decode()
        assert "typha_client_slow_disconnects_total 1" in metrics
        assert all(c.noops == 0 and c.out_of_syncs == 0 for c in fleet.consumers)
        await fleet.stop()
        await daemon.stop()

    run(main())


@pytest.mark.parametrize(
    ("sent", "expect_goodbye"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, id="http-garbage"),
        pytest.param(struct.pack(">I", 9) + b"not json!", True, id="bad-json"),
        pytest.param(p.encode(p.Hello("old", 99)), True, id="wrong-version"),
        pytest.param(p.encode(p.Hello("odd", 1, "no-such-syncer")), True, id="unknown-syncer"),
        pytest.param(p.encode(p.Ping(1.0)), True, id="no-hello"),
        pytest.param(b"", True, id="silent"),
    ],
)
def test_bad_peers_are_closed_and_the_server_keeps_serving(
    tmp_path: Path, sent: bytes, expect_goodbye: bool
) -> None:
    url = f"sqlite://{tmp_path / 'tabby.db'}"

    async def main() -> None:
        daemon = await start_daemon(url, handshake_timeout=0.5)
        fleet = Fleet(3, [addr(daemon)])
        with open_datastore(url) as ds:
            await asyncio.to_thread(mixed_writes, ds, 50, seed=6)
            bad = await _raw_connect(daemon.server.port)
            if sent:
                await asyncio.get_running_loop().sock_sendall(bad, sent)
            data = await _read_until_closed(bad)
            bad.close()
            msgs = p.FrameReader().feed(data)
            if expect_goodbye:
                assert len(msgs) == 1 and isinstance(msgs[0], p.Goodbye), msgs
            else:
                assert msgs == [] or isinstance(msgs[0], p.Goodbye)
            assert daemon.server.stats.disconnects["protocol"] == 1
            await asyncio.to_thread(mixed_writes, ds, 50, seed=7)
            truth = datastore_state(ds)
        assert await wait_for(lambda: fleet.converged(truth), 30)
        assert len(daemon.server.connections) == 3
        await fleet.stop()
        await daemon.stop()

    run(main())


def test_compaction_under_typha_resyncs_and_clients_converge(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'tabby.db'}"

    async def main() -> None:
        daemon = TyphaDaemon(lambda: open_datastore(url), ServerConfig(port=0))
        # Hold the upstream syncer inside its sink while the history it needs is compacted.
        gate, blocked = threading.Event(), threading.Event()
        gate.set()
        sink = daemon.feed._sink

        def gated(item: Any) -> None:
            if not gate.is_set():
                blocked.set()
                gate.wait()
            sink(item)

        daemon.feed._sink = gated  # type: ignore[method-assign]
        await daemon.start()
        with open_datastore(url) as ds:
            await asyncio.to_thread(mixed_writes, ds, 200, seed=8)
            fleet = Fleet(10, [addr(daemon)])
            assert await wait_for(lambda: all(c.status.in_sync for c in fleet.clients), 20)
            gate.clear()
            await asyncio.to_thread(mixed_writes, ds, 1, seed=9, prefix="/tabby/v3/a/")
            assert await asyncio.to_thread(blocked.wait, 10)
            await asyncio.to_thread(mixed_writes, ds, 300, seed=10)
            ds.compact(ds.revision())
            gate.set()
            truth = datastore_state(ds)
            ok = await wait_for(lambda: fleet.converged(truth), 30)
            assert ok, f"clients not converged: {fleet.mismatches(truth)[:5]}"
        syncer = daemon.feed.syncer
        assert syncer is not None and syncer.status.resyncs >= 1
        for c in fleet.consumers:
            # OutOfSync, then only the difference, then InSync again.
            assert c.out_of_syncs >= 1 and c.in_syncs == c.out_of_syncs + 1
            assert c.noops == 0
        await fleet.stop()
        await daemon.stop()

    run(main())


def test_max_connections_refuses_new_and_sheds_after_a_scale_down(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'tabby.db'}"

    async def main() -> None:
        daemon = await start_daemon(url, max_conns=4, shed_per_second=50.0,
                                    housekeeping_interval=0.05)
        fleet = Fleet(4, [addr(daemon)])
        assert await wait_for(lambda: all(c.status.in_sync for c in fleet.clients), 20)
        extra = await _raw_connect(daemon.server.port)
        msgs = p.FrameReader().feed(await _read_until_closed(extra))
        extra.close()
        assert len(msgs) == 1 and "max connections" in msgs[0].reason  # type: ignore[union-attr]
        assert daemon.server.stats.disconnects["refused"] == 1
        # Scale down: the server drops connections until it is under the limit again (the
        # clients reconnect and are refused while it is full).
        daemon.server.set_max_conns(2)
        assert await wait_for(lambda: daemon.server.stats.disconnects["shed"] >= 2, 10)
        assert await wait_for(lambda: len(daemon.server.connections) <= 2, 10)
        metrics = daemon._metrics_route()[2].decode()
        assert "typha_connections_shed_total 2" in metrics or "shed_total 3" in metrics
        await fleet.stop()
        await daemon.stop()

    run(main())


@pytest.mark.etcd
def test_etcd_restart_under_typha_resyncs_and_clients_converge() -> None:
    from tabby.datastore.etcd_server import EtcdServer, etcd_binary

    if etcd_binary() is None:
        pytest.skip("etcd binary not installed (Debian package etcd-server)")

    async def main(etcd: EtcdServer) -> None:
        url = etcd.url
        daemon = await start_daemon(url)
        with open_datastore(url) as ds:
            await asyncio.to_thread(mixed_writes, ds, 100, seed=11)
        fleet = Fleet(10, [addr(daemon)])
        assert await wait_for(lambda: all(c.status.in_sync for c in fleet.clients), 30)
        await asyncio.to_thread(etcd.stop)
        # Typha keeps serving its last snapshot; its clients' consumers hear OutOfSync.
        assert await wait_for(lambda: all(c.out_of_syncs == 1 for c in fleet.consumers), 60)
        assert len(daemon.server.connections) == 10
        await asyncio.to_thread(etcd.start)
        with open_datastore(url) as ds:
            await asyncio.to_thread(mixed_writes, ds, 100, seed=12)
            truth = datastore_state(ds)
        ok = await wait_for(lambda: fleet.converged(truth), 60)
        assert ok, f"clients not converged: {fleet.mismatches(truth)[:5]}"
        for c in fleet.consumers:
            assert (c.in_syncs, c.out_of_syncs, c.noops) == (2, 1, 0)
        await fleet.stop()
        await daemon.stop()

    with EtcdServer() as etcd:
        run(main(etcd))
