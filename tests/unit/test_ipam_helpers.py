"""Shared fixtures and helpers of the IPAM tests (no tests here).

IPAM uses fixed keys (/tabby/ipam/v2/..., /tabby/v3/ippools/...), so on the session's shared
etcd each test starts and ends by removing them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tabby.datastore import Datastore
from tabby.ipam.allocator import IPAM

WIPE_PREFIXES = ("/tabby/ipam/", "/tabby/v3/")


def wipe(ds: Datastore) -> None:
    for prefix in WIPE_PREFIXES:
        kvs, _ = ds.list(prefix)
        for kv in kvs:
            ds.delete(kv.key)


@pytest.fixture(name="ds")
def ds_fixture(datastore: Datastore) -> Iterator[Datastore]:
    """The conftest's datastore (both backends), with IPAM's keys wiped before and after."""
    wipe(datastore)
    try:
        yield datastore
    finally:
        wipe(datastore)


@pytest.fixture(name="ipam")
def ipam_fixture(ds: Datastore) -> IPAM:
    return IPAM(ds)


def put_pool(ds: Datastore, name: str, cidr: str, **spec: Any) -> None:
    """Store an IPPool as the resource layer does (JSON, defaults materialised)."""
    v6 = ":" in cidr
    full = {
        "cidr": cidr,
        "vxlanMode": "Never",
        "ipipMode": "Never",
        "natOutgoing": False,
        "disabled": False,
        "disableBGPExport": False,
        "blockSize": 122 if v6 else 26,
        "nodeSelector": "all()",
        "allowedUses": ["Workload", "Tunnel"],
        "assignmentMode": "Automatic",
        **spec,
    }
    doc = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": full,
    }
    key = f"/tabby/v3/ippools/{name}"
    value = json.dumps(doc).encode()
    kv = ds.get(key)
    if kv is None:
        ds.create(key, value)
    else:
        ds.update(key, value, kv.mod_revision)


def put_node(ds: Datastore, name: str, labels: dict[str, str] | None = None) -> None:
    doc = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {},
    }
    ds.create(f"/tabby/v3/nodes/{name}", json.dumps(doc).encode())
