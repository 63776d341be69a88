"""Datastore fixtures: one real etcd per test session, a fresh sqlite file per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tabby.datastore import Datastore, open_datastore
from tabby.datastore.etcd_server import EtcdServer, etcd_binary

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("etcd", id="etcd", marks=pytest.mark.etcd),
]


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """A real etcd for the whole session (skips when the binary is missing)."""
    if etcd_binary() is None:
        pytest.skip("etcd binary not installed (Debian package etcd-server)")
    with EtcdServer() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def datastore_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty-enough store: a new sqlite file, or the session etcd (tests use
    their own key prefix there, see `ds_prefix`)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'tabby.db'}"
    server: EtcdServer = request.getfixturevalue("etcd_server")
    return server.url


@pytest.fixture
def datastore(datastore_url: str) -> Iterator[Datastore]:
    ds = open_datastore(datastore_url)
    try:
        yield ds
    finally:
        ds.close()


@pytest.fixture
def ds_prefix() -> str:
    """A key prefix no other test uses (the session etcd is shared)."""
    return f"/tabby-test/{uuid.uuid4().hex[:12]}/"
