"""Datastore URLs: parsing, defaults and the environment variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from tabby.datastore import Unavailable, open_datastore, parse_url
from tabby.datastore.sqlite import SqliteDatastore
from tabby.datastore.url import EtcdURL, SqliteURL


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///var/lib/tabby/tabby.db", SqliteURL(Path("/var/lib/tabby/tabby.db"))),
        ("SQLITE:///x.db", SqliteURL(Path("/x.db"))),
        ("sqlite:///x.db?history=0", SqliteURL(Path("/x.db"), history=0)),
        ("sqlite:///x.db?history=500", SqliteURL(Path("/x.db"), history=500)),
        ("etcd://127.0.0.1:2379", EtcdURL((("127.0.0.1", 2379),))),
        ("etcd://h1:1,h2:2", EtcdURL((("h1", 1), ("h2", 2)))),
        ("etcd://h1", EtcdURL((("h1", 2379),))),
        ("etcd://h1:23/", EtcdURL((("h1", 23),))),
        ("etcd://[::1]:2380,[fd00::2]", EtcdURL((("::1", 2380), ("fd00::2", 2379)))),
    ],
)
def test_parse_good(url: str, expected: object) -> None:
    assert parse_url(url) == expected


def test_sqlite_relative_path_is_from_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_url("sqlite://data/t.db") == SqliteURL(tmp_path / "data" / "t.db")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "expected sqlite"),
        ("/var/lib/tabby.db", "expected sqlite"),
        ("mysql://h/db", "unknown scheme 'mysql'"),
        ("sqlite://", "missing database file path"),
        ("sqlite:///", "missing database file path"),
        ("sqlite:///var/lib/", "directory"),
        ("sqlite:///x.db?mode=ro", "unknown option 'mode'"),
        ("sqlite:///x.db?history=lots", "history='lots'"),
        ("sqlite:///x.db?history=-1", "history='-1'"),
        ("etcd://", "empty endpoint"),
        ("etcd://h1:2379,", "empty endpoint"),
        ("etcd://h1:port", "bad port 'port'"),
        ("etcd://h1:0", "bad port '0'"),
        ("etcd://h1:70000", "bad port '70000'"),
        ("etcd://:2379", "has no host"),
        ("etcd://::1:2379", "in brackets"),
        ("etcd://[::1", "bad IPv6"),
        ("etcd://h1:2379/prefix", "no path"),
    ],
)
def test_parse_bad_names_the_url(url: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_url(url)
    message = str(info.value)
    assert repr(url) in message and why in message and "\n" not in message
    with pytest.raises(ValueError, match="invalid datastore URL"):
        open_datastore(url or "x")


def test_default_is_per_user_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TABBY_DATASTORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with open_datastore() as ds:
        assert isinstance(ds, SqliteDatastore)
        assert ds.path == tmp_path / "xdg" / "tabby" / "tabby.db"
        ds.create("/k", b"v")
    assert (tmp_path / "xdg" / "tabby" / "tabby.db").is_file()


def test_default_without_xdg_uses_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TABBY_DATASTORE", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with open_datastore() as ds:
        assert ds.path == tmp_path / ".local" / "share" / "tabby" / "tabby.db"  # type: ignore[attr-defined]


def test_env_var_then_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TABBY_DATASTORE", f"sqlite://{tmp_path}/env.db")
    with open_datastore() as ds:
        assert ds.path == tmp_path / "env.db"  # type: ignore[attr-defined]
    with open_datastore(f"sqlite://{tmp_path}/arg.db") as ds:
        assert ds.path == tmp_path / "arg.db"  # type: ignore[attr-defined]
    monkeypatch.setenv("TABBY_DATASTORE", "bogus")
    with pytest.raises(ValueError, match="'bogus'"):
        open_datastore()


def test_history_option_reaches_the_backend(tmp_path: Path) -> None:
    with open_datastore(f"sqlite://{tmp_path}/h.db?history=123") as ds:
        assert ds.history == 123  # type: ignore[attr-defined]


@pytest.mark.timeout(10)
def test_unreachable_etcd_is_unavailable_quickly() -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
        open_datastore(f"etcd://127.0.0.1:{port}")
