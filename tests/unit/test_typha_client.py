"""The Typha client as the agent uses it: Syncer-compatible thread mode, failover past dead
or silent servers, fallback to the datastore and back, health/metrics and the CLI."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tabby.datastore import open_datastore
from tabby.datastore.syncer import SyncStatus
from tabby.typha import protocol as p
from tabby.typha.client import TyphaClient, parse_addresses
from tabby.typha.daemon import TyphaDaemon
from tabby.typha.server import ServerConfig
from tabby.typha.testing import Consumer, datastore_state, mixed_writes, wait_for

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _daemon(url: str, port: int = 0, **kw: Any) -> TyphaDaemon:
    daemon = TyphaDaemon(lambda: open_datastore(url), ServerConfig(port=port), **kw)
    await daemon.start()
    return daemon


def test_parse_addresses() -> None:
    assert parse_addresses("10.0.0.1:5473, typha.local:6000,[::1]:7000,h") == [
        ("10.0.0.1", 5473), ("typha.local", 6000), ("::1", 7000), ("h", 5473)]
    for bad, why in [("", "empty address"), ("a:1,,b:2", "empty address"),
                     (":80", "has no host"), ("h:99999", "bad port '99999'"),
                     ("::1:80", "must be in brackets"), ("[::1", "bad address")]:
        with pytest.raises(ValueError, match=why):
            parse_addresses(bad)


def test_thread_mode_is_a_drop_in_for_the_syncer(tmp_path: Path) -> None:
    """start()/stop()/status/queue sink, exactly as the agent drives a Syncer."""
    url = f"sqlite://{tmp_path / 'tabby.db'}"

    async def main() -> None:
        with open_datastore(url) as ds:
            await asyncio.to_thread(mixed_writes, ds, 200, seed=1)
            daemon = await _daemon(url)
            q: queue.Queue = queue.Queue()
            client = TyphaClient(f"127.0.0.1:{daemon.server.port}", q, client_name="node-1")
            assert client.start() is client and client.running
            consumer = Consumer()

            def drained() -> bool:
                while not q.empty():
                    consumer(q.get_nowait())
                return consumer.view == truth

            truth = datastore_state(ds)
            assert await wait_for(drained, 20)
            await asyncio.to_thread(mixed_writes, ds, 100, seed=2)
            truth = datastore_state(ds)
            assert await wait_for(drained, 20)
            st = client.status
            assert isinstance(st, SyncStatus)
            assert (st.state, st.in_sync, st.synced_once, st.keys) == ("in-sync", True, True,
                                                                      len(truth))
            assert st.extra == {"mode": "typha", "server": daemon.server.address}
            assert consumer.items[:2] == ["U", "I"] and consumer.in_syncs == 1
            await asyncio.to_thread(client.stop)
            assert not client.running and client.status.state == "stopped"
            await daemon.stop()

    asyncio.run(main())


async def _silent_server(after_snapshot: bool) -> asyncio.Server:
    """A 'Typha' that hangs: before its HelloAck, or after sending an empty snapshot."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await p.read_message(reader)
        if after_snapshot:
            writer.write(p.encode(p.HelloAck("hung", p.PROTOCOL_VERSION, "felix")))
            writer.write(p.encode(p.SnapshotDone(1, 0)) + p.encode(p.InSync(1)))
        await asyncio.sleep(3600)

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_failover_past_dead_and_hung_servers(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'tabby.db'}"

    async def main() -> None:
        with open_datastore(url) as ds:
            await asyncio.to_thread(mixed_writes, ds, 100, seed=3)
            truth = datastore_state(ds)
        hung_early, hung_late = await _silent_server(False), await _silent_server(True)
        daemon = await _daemon(url)
        addrs = [("127.0.0.1", _free_port()),  # nobody listens
                 ("127.0.0.1", hung_early.sockets[0].getsockname()[1]),
                 ("127.0.0.1", hung_late.sockets[0].getsockname()[1]),
                 ("127.0.0.1", daemon.server.port)]
        consumers = [Consumer(f"c{i}") for i in range(8)]
        clients = [TyphaClient(addrs, c, read_timeout=0.3, ping_interval=0.1, backoff_max=0.2)
                   for c in consumers]
        tasks = [asyncio.create_task(c.run()) for c in clients]
        assert await wait_for(lambda: all(c.view == truth for c in consumers), 30)
        assert await wait_for(
            lambda: all(c.server == daemon.server.address for c in clients), 30)
        for c in consumers:
            # A hung server's empty snapshot may have looked in sync for a moment; the real
            # one then supplied the difference. Never a redundant update.
            assert c.noops == 0 and c.in_syncs == c.out_of_syncs + 1
        for c in clients:
            c.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in (hung_early, hung_late):
            s.close()
        await daemon.stop()

    asyncio.run(main())


def test_fallback_to_the_datastore_and_back_to_typha(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'tabby.db'}"

    async def main() -> None:
        port = _free_port()
        consumer = Consumer()
        client = TyphaClient([("127.0.0.1", port)], consumer, fallback=lambda: open_datastore(url),
                             fallback_after=0.0, backoff_max=0.2)
        task = asyncio.create_task(client.run())
        with open_datastore(url) as ds:
            await asyncio.to_thread(mixed_writes, ds, 100, seed=4)
            truth = datastore_state(ds)
            assert await wait_for(lambda: consumer.view == truth, 20)
            assert client.status.extra["mode"] == "direct"
            daemon = await _daemon(url, port=port)  # Typha comes (back) up
            assert await wait_for(lambda: client.status.extra["mode"] == "typha", 20)
            await asyncio.to_thread(mixed_writes, ds, 100, seed=5)
            truth = datastore_state(ds)
            assert await wait_for(lambda: consumer.view == truth, 20)
        # Both switches were invisible: one InSync, nothing replayed.
        assert (consumer.in_syncs, consumer.out_of_syncs, consumer.noops) == (1, 0, 0)
        st = client.status
        assert (st.state, st.in_sync, st.resyncs) == ("in-sync", True, 1)
        client.stop()
        await task
        await daemon.stop()

    asyncio.run(main())


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_and_metrics_endpoints(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'tabby.db'}"

    async def main() -> None:
        daemon = await _daemon(url, health_port=0, metrics_port=0, revision_poll_interval=0.05)
        health = f"http://127.0.0.1:{daemon.endpoints[0].port}"
        metrics = f"http://127.0.0.1:{daemon.endpoints[1].port}/metrics"
        assert await wait_for(lambda: daemon.cache.in_sync, 20)
        with open_datastore(url) as ds:
            await asyncio.to_thread(mixed_writes, ds, 20, seed=6)
            rev = ds.revision()
        assert await wait_for(lambda: daemon.feed.datastore_revision == rev
                              and daemon.cache.revision == rev, 20)
        assert await asyncio.to_thread(_get, health + "/liveness") == (200, "alive\n")
        status, body = await asyncio.to_thread(_get, health + "/readiness")
        assert status == 200 and body.startswith("ready: 0 clients")
        assert (await asyncio.to_thread(_get, health + "/nope"))[0] == 404
        status, text = await asyncio.to_thread(_get, metrics)
        assert status == 200
        for line in ('typha_in_sync{syncer="felix"} 1', 'typha_revision_lag{syncer="felix"} 0',
                     "typha_connections_active 0", "# TYPE typha_bytes_sent_total counter"):
            assert line in text.splitlines(), line
        await daemon.stop()

    asyncio.run(main())


def _tabby(*args: str, **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "tabby.cli.main", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize(("args", "message"), [
    (["--listen", "nonsense"], "--listen: bad address 'nonsense'"),
    (["--listen", "127.0.0.1:70000"], "--listen: bad port '70000'"),
    (["--tls-cert", "c.pem"], "TLS needs --tls-key, --tls-ca"),
    (["--client-cn", "x"], "needs --tls-cert"),
    (["--max-conns", "-1"], "--max-conns: must be >= 0"),
])
def test_cli_bad_options(tmp_path: Path, args: list[str], message: str,
                         capsys: pytest.CaptureFixture[str]) -> None:
    from tabby.cli.main import main

    assert main(["typha", "--datastore", f"sqlite://{tmp_path / 'x.db'}", *args]) == 1
    err = capsys.readouterr().err
    assert message in err.replace("\n", " ")


def test_cli_serves_agents_and_stops_on_sigterm(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'tabby.db'}"
    port, health = _free_port(), _free_port()
    proc = _tabby("typha", "--datastore", url, "--listen", f"127.0.0.1:{port}",
                  "--health-port", str(health), "--metrics-port", str(health))
    try:
        deadline = time.monotonic() + 30
        while _probe(f"http://127.0.0.1:{health}/readiness") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        q: queue.Queue = queue.Queue()
        client = TyphaClient(f"127.0.0.1:{port}", q).start()
        with open_datastore(url) as ds:
            mixed_writes(ds, 50, seed=7)
            truth = datastore_state(ds)
        consumer = Consumer()
        while consumer.view != truth:
            consumer(q.get(timeout=20))
        client.stop()
        status, text = _get(f"http://127.0.0.1:{health}/metrics")
        assert status == 200 and "typha_snapshots_sent_total 1" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def _probe(url: str) -> int:
    try:
        return _get(url)[0]
    except OSError:
        return 0
