"""sqlite-only behaviour: bounded history, shared first open, lock timeouts, bad paths."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tabby.datastore import Compacted, Event, Unavailable, open_datastore
from tabby.datastore.sqlite import SqliteDatastore, prefix_range


def test_prefix_range() -> None:
    assert prefix_range("/a/") == ("/a/", "/a0")
    assert prefix_range("") == ("", None)
    assert prefix_range("x\U0010ffff") == ("x\U0010ffff", "y")


def test_history_is_bounded_by_auto_compaction(tmp_path: Path) -> None:
    ds = SqliteDatastore(tmp_path / "t.db", history=20, compact_every=10)
    revs = {}
    for i in range(300):
        key = f"/k/{i % 7}"
        kv = ds.get(key)
        if kv is None:
            revs[i] = ds.create(key, b"%d" % i)
        else:
            revs[i] = ds.update(key, b"%d" % i, kv.mod_revision)
    ds.create("/k/gone", b"")
    ds.delete("/k/gone")
    current = ds.revision()
    compact_rev = ds.compact_revision()
    assert current - 30 <= compact_rev <= current - 20
    raw = sqlite3.connect(tmp_path / "t.db")
    rows = raw.execute("SELECT COUNT(*) FROM history").fetchone()[0]
    raw.close()
    assert rows <= 30 + 7  # the window plus one retained put per live key
    with pytest.raises(Compacted):
        ds.list("/k/", revision=compact_rev - 1)
    # The oldest retained revision still lists every key correctly ...
    kvs, _ = ds.list("/k/", revision=compact_rev)
    assert len(kvs) == 7
    # ... and matches a list made of the full current state replayed back.
    now, rev = ds.list("/k/")
    assert ds.list("/k/", revision=rev) == (now, rev)
    with ds.watch("/k/", compact_rev) as w:
        first = next(iter(w))
        assert first.revision == compact_rev or first.revision > compact_rev
    ds.close()


def test_history_zero_keeps_everything(tmp_path: Path) -> None:
    with open_datastore(f"sqlite://{tmp_path}/t.db?history=0") as ds:
        r1 = ds.create("/a", b"1")
        for _ in range(1200):
            ds.update("/a", b"x", ds.get("/a").mod_revision)  # type: ignore[union-attr]
        assert ds.list("/", revision=r1)[0][0].value == b"1"


def _open_and_create(path: str, i: int, go: Any) -> None:
    go.wait(30)
    with open_datastore(f"sqlite://{path}") as ds:
        ds.create(f"/p/{i}", b"")


def test_first_open_by_many_processes(tmp_path: Path, child_procs: Any) -> None:
    path = str(tmp_path / "sub" / "fresh.db")
    go = multiprocessing.get_context("spawn").Event()  # all open the fresh file at once: switching it to WAL races
    procs = [child_procs(_open_and_create, path, i, go) for i in range(8)]
    go.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    with open_datastore(f"sqlite://{path}") as ds:
        kvs, rev = ds.list("/p/")
        assert len(kvs) == 8 and rev == 9
        assert sorted(kv.mod_revision for kv in kvs) == list(range(2, 10))


def test_lock_held_too_long_is_unavailable(tmp_path: Path) -> None:
    ds = SqliteDatastore(tmp_path / "t.db", busy_timeout=0.2)
    ds.create("/a", b"")
    hog = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    hog.execute("BEGIN IMMEDIATE")
    with pytest.raises(Unavailable, match="locked"):
        ds.create("/b", b"")
    assert ds.get("/a") is not None  # readers are not blocked under WAL
    hog.execute("ROLLBACK")
    hog.close()
    ds.create("/b", b"")
    ds.close()


def test_unusable_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(Unavailable, match="cannot open sqlite datastore"):
        open_datastore(f"sqlite://{tmp_path}/file/t.db")


def test_close_ends_watches_and_refuses_calls(tmp_path: Path) -> None:
    ds = open_datastore(f"sqlite://{tmp_path}/t.db")
    rev = ds.create("/a", b"")
    w = ds.watch("/", rev)
    it = iter(w)
    assert next(it) == Event("put", "/a", b"", rev)
    ds.close()
    assert list(it) == []
    with pytest.raises(Exception, match="closed"):
        ds.get("/a")


def test_wal_mode_on_disk(tmp_path: Path) -> None:
    open_datastore(f"sqlite://{tmp_path}/t.db").close()
    raw = sqlite3.connect(tmp_path / "t.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
