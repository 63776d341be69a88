"""etcd-only behaviour: failover, restarts under a live watch, paging."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tabby.datastore import Compacted, Event, Unavailable, open_datastore
from tabby.datastore import etcd as etcd_mod
from tabby.datastore.etcd_server import EtcdServer, etcd_binary

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.skipif(
        etcd_binary() is None, reason="etcd binary not installed (Debian package etcd-server)"
    ),
]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def own_etcd() -> Iterator[EtcdServer]:
    """An etcd these tests may stop and restart without disturbing the session one."""
    with EtcdServer() as server:
        yield server


@pytest.fixture
def running_etcd(own_etcd: EtcdServer) -> EtcdServer:
    own_etcd.start()  # a previous test may have left it stopped
    return own_etcd


def test_failover_to_next_endpoint(etcd_server: EtcdServer, ds_prefix: str) -> None:
    url = f"etcd://127.0.0.1:{_dead_port()},127.0.0.1:{etcd_server.client_port}"
    with open_datastore(url) as ds:
        rev = ds.create(ds_prefix + "a", b"1")
        assert ds.get(ds_prefix + "a").mod_revision == rev  # type: ignore[union-attr]
        with ds.watch(ds_prefix, rev) as w:
            assert next(iter(w)) == Event("put", ds_prefix + "a", b"1", rev)


def test_list_pages_at_one_revision(
    etcd_server: EtcdServer, ds_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(etcd_mod, "PAGE", 3)
    with open_datastore(etcd_server.url) as ds:
        for i in range(10):
            ds.create(ds_prefix + f"{i:02d}", b"%d" % i)
        kvs, rev = ds.list(ds_prefix)
        assert [kv.value for kv in kvs] == [b"%d" % i for i in range(10)]
        ds.delete(ds_prefix + "05")
        old, _ = ds.list(ds_prefix, revision=rev)
        assert old == kvs


@pytest.mark.timeout(60)
def test_watch_rewatches_after_etcd_restart(running_etcd: EtcdServer, ds_prefix: str) -> None:
    with open_datastore(running_etcd.url) as ds:
        r1 = ds.create(ds_prefix + "a", b"1")
        with ds.watch(ds_prefix, r1) as w:
            events = iter(w)
            assert next(events) == Event("put", ds_prefix + "a", b"1", r1)
            running_etcd.stop()
            with pytest.raises(Unavailable):
                ds.get(ds_prefix + "a")
            running_etcd.start()
            r2 = ds.update(ds_prefix + "a", b"2", r1)  # unary calls reconnect too
            r3 = ds.delete(ds_prefix + "a")
            # The stream died with the server; iteration re-watches from r1 + 1.
            assert [next(events), next(events)] == [
                Event("put", ds_prefix + "a", b"2", r2),
                Event("delete", ds_prefix + "a", None, r3),
            ]


@pytest.mark.timeout(60)
def test_rewatch_into_compacted_history_raises(running_etcd: EtcdServer, ds_prefix: str) -> None:
    with open_datastore(running_etcd.url) as ds:
        r1 = ds.create(ds_prefix + "a", b"1")
        with ds.watch(ds_prefix, r1) as w:
            events = iter(w)
            assert next(events).revision == r1
            running_etcd.stop()
            running_etcd.start()
            ds.update(ds_prefix + "a", b"2", r1)
            ds.compact(ds.create(ds_prefix + "b", b"3"))
            with pytest.raises(Compacted):
                next(events)


@pytest.mark.timeout(60)
def test_watch_gives_up_when_etcd_stays_down(
    running_etcd: EtcdServer, ds_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(etcd_mod, "RECONNECT_TIMEOUT", 0.3)
    with open_datastore(running_etcd.url) as ds:
        w = ds.watch(ds_prefix, ds.revision() + 1)
        running_etcd.stop()
        with pytest.raises(Unavailable, match="not re-established"):
            next(iter(w))
        w.close()
    running_etcd.start()


def test_closed_store_refuses_calls(etcd_server: EtcdServer) -> None:
    ds = open_datastore(etcd_server.url)
    ds.close()
    with pytest.raises(Exception, match="closed"):
        ds.get("/x")


def test_server_restart_keeps_data_and_url(running_etcd: EtcdServer, ds_prefix: str) -> None:
    url = running_etcd.url
    with open_datastore(url) as ds:
        rev = ds.create(ds_prefix + "kept", b"v")
    running_etcd.stop()
    running_etcd.start()
    assert running_etcd.url == url
    with open_datastore(url) as ds:
        assert ds.get(ds_prefix + "kept").mod_revision == rev  # type: ignore[union-attr]


class _LoseAnswers:
    """Wraps the client's _post: the next `n` txn requests are sent and applied (or, with
    apply=False, dropped before sending), and then their answer is lost, as when etcd
    answers after REQUEST_TIMEOUT."""

    def __init__(self, ds: object, n: int, apply: bool = True) -> None:
        self.client = ds._client  # type: ignore[attr-defined]
        self.real = self.client._post
        self.left, self.apply = n, apply
        self.client._post = self

    def __call__(self, idx: int, path: str, body: bytes) -> tuple[int, bytes]:
        if path == "/v3/kv/txn" and self.left:
            self.left -= 1
            if self.apply:
                self.real(idx, path, body)
            raise etcd_mod._NoAnswer("answer lost (test)")
        return self.real(idx, path, body)


@pytest.mark.parametrize("apply", [True, False], ids=["applied", "not-applied"])
def test_a_write_whose_answer_is_lost_is_settled_by_reading_back(
    etcd_server: EtcdServer, ds_prefix: str, apply: bool
) -> None:
    from tabby.datastore import AlreadyExists, Conflict

    key = ds_prefix + "k"
    with open_datastore(etcd_server.url) as ds:
        _LoseAnswers(ds, 1, apply)
        r1 = ds.create(key, b"1")
        assert ds.get(key) == etcd_mod.KV(key, b"1", r1, r1)  # once, at the revision returned
        _LoseAnswers(ds, 1, apply)
        r2 = ds.update(key, b"2", r1)
        assert r2 > r1 and ds.get(key).mod_revision == r2  # type: ignore[union-attr]
        with pytest.raises(Conflict):  # a stale revision still conflicts
            _LoseAnswers(ds, 1, apply)
            ds.update(key, b"3", r1)
        _LoseAnswers(ds, 1, apply)
        ds.delete(key, r2)
        assert ds.get(key) is None
        ds.create(key, b"other")
        with pytest.raises(AlreadyExists):
            _LoseAnswers(ds, 1, apply)
            ds.create(key, b"mine")


def test_an_answer_lost_twice_stays_unknown(etcd_server: EtcdServer, ds_prefix: str) -> None:
    key = ds_prefix + "k"
    with open_datastore(etcd_server.url) as ds:
        r1 = ds.create(key, b"1")
        _LoseAnswers(ds, 2, apply=False)  # not applied, and the resend is lost too
        with pytest.raises(Unavailable, match="outcome of a write is unknown"):
            ds.update(key, b"2", r1)
        assert ds.get(key).value == b"1"  # type: ignore[union-attr]
