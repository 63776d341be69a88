"""What every CNI plugin exec relies on when it opens the store: an existing store opens
without the write lock, a missing schema piece is still created, the lazily imported names
and the hand-written KV/Event keep the behaviour of frozen dataclasses."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import tabby.datastore as datastore_pkg
from tabby.datastore import KV, Event, open_datastore, parse_url
from tabby.datastore.sqlite import SqliteDatastore
from tabby.datastore.url import EtcdURL, SqliteURL

ROOT = Path(__file__).resolve().parents[2]


def test_existing_store_opens_while_another_writer_holds_the_lock(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    SqliteDatastore(db).close()
    hog = sqlite3.connect(db, isolation_level=None)
    hog.execute("BEGIN IMMEDIATE")  # a writer in the middle of its transaction
    try:
        ds = SqliteDatastore(db, busy_timeout=0.2)  # would time out if opening took the lock
        assert ds.get("/nothing") is None
        assert ds.revision() == 1
        ds.close()
    finally:
        hog.execute("ROLLBACK")
        hog.close()


def test_missing_schema_pieces_are_created(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with SqliteDatastore(db) as ds:
        ds.create("/a", b"1")
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("DROP INDEX history_key_revision")
    raw.execute("DELETE FROM meta WHERE name = 'schema'")
    raw.close()
    with SqliteDatastore(db) as ds:
        assert ds.get("/a") is not None and ds.revision() == 2
    raw = sqlite3.connect(db)
    names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
    assert "history_key_revision" in names
    assert raw.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone() == (1,)
    raw.close()


def test_list_revision_matches_with_and_without_rows(tmp_path: Path) -> None:
    with SqliteDatastore(tmp_path / "t.db") as ds:
        assert ds.list("/p/") == ([], 1)
        r1 = ds.create("/p/a", b"1")
        ds.create("/q/b", b"2")
        kvs, rev = ds.list("/p/")
        assert rev == r1 + 1 == ds.revision()
        assert kvs == [KV("/p/a", b"1", r1, r1)]
        assert ds.list("/none/") == ([], rev)


@pytest.mark.parametrize(
    "text",
    ["/abs/t.db", "rel/t.db", "t.db", "./t.db", "a//b/t.db", "/x/./t.db", "/x/../t.db", "~/t.db"],
)
def test_open_datastore_path_is_parse_urls(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "x").mkdir()
    if text.startswith("/"):
        text = str(tmp_path) + text
    url = f"sqlite://{text}"
    with open_datastore(url) as ds:
        assert isinstance(ds, SqliteDatastore)
        parsed = parse_url(url)
        assert isinstance(parsed, SqliteURL)
        assert ds.path == parsed.path
        assert isinstance(ds.path, Path)
        assert repr(ds) == f"SqliteDatastore({str(parsed.path)!r})"


def test_sqlite_datastore_path_is_normalised_like_pathlib(tmp_path: Path) -> None:
    for given in (tmp_path / "a.db", f"{tmp_path}//b.db", f"{tmp_path}/./c.db"):
        ds = SqliteDatastore(given)
        assert ds.path == Path(given)
        assert repr(ds) == f"SqliteDatastore({str(Path(given))!r})"
        ds.close()


@pytest.mark.parametrize(
    "value",
    [KV("/k", b"v", 3, 2), Event("put", "/k", b"v", 3), Event("delete", "/k", None, 4),
     SqliteURL(Path("/x.db")), SqliteURL(Path("/x.db"), history=5), EtcdURL((("h", 1),)),
     EtcdURL()],
)
def test_values_behave_as_frozen_dataclasses(value: object) -> None:
    cls = type(value)
    fields = cls.__match_args__  # type: ignore[attr-defined]
    same = cls(*(getattr(value, f) for f in fields))
    assert same == value and hash(same) == hash(value) and same is not value
    assert value != tuple(getattr(value, f) for f in fields)
    assert repr(value) == (
        f"{cls.__qualname__}(" + ", ".join(f"{f}={getattr(value, f)!r}" for f in fields) + ")"
    )
    assert pickle.loads(pickle.dumps(value)) == value
    assert copy.deepcopy(value) == value
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.key = "x"  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del value.key  # type: ignore[attr-defined]


def test_event_pattern_matching() -> None:
    match Event("put", "/a", b"1", 7):
        case Event("put", key, value, revision):
            assert (key, value, revision) == ("/a", b"1", 7)
        case _:
            pytest.fail("no match")


def test_package_names_load_on_first_use() -> None:
    assert datastore_pkg.open_datastore is open_datastore
    assert set(datastore_pkg.__all__) <= set(dir(datastore_pkg))
    with pytest.raises(AttributeError, match="no_such_name"):
        datastore_pkg.no_such_name  # noqa: B018
    from tabby.datastore import etcd, sqlite  # submodules still import as such

    assert sqlite.SqliteDatastore is SqliteDatastore
    assert etcd.EtcdDatastore.__name__ == "EtcdDatastore"


def test_plugin_imports_stay_light() -> None:
    """What the installed plugin imports (tabby-cni's main path, an ADD's modules) must not
    pull in the heavy modules this was trimmed of."""
    code = (
        "import sys\n"
        "import tabby.cni.plugin, tabby.cni.skel, tabby.cni.ipam_plugin\n"
        "import tabby.ipam.allocator, tabby.datastore.url, tabby.datastore.sqlite\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
         + code],
        capture_output=True, text=True, check=True, env={**os.environ},
    ).stdout.split()
    heavy = {"typing", "dataclasses", "inspect", "pathlib", "urllib.parse", "sqlite3",
             "threading", "weakref", "contextlib", "logging", "subprocess", "datetime",
             "pydantic", "pyroute2", "tabby.resources", "tabby.ipam.check"}
    assert heavy.isdisjoint(out), heavy & set(out)
