"""Whole-lab fixtures: a private labs directory, a unique short lab name, and a finalizer
that runs `down` and fails the test if anything of the lab is left."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import recorded_pids

from tabby.lab import netns as nsops


@pytest.fixture
def labs_dir(need_root: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "labs"
    monkeypatch.setenv("TABBY_LAB_DIR", str(path))
    return path


@pytest.fixture
def lab_name(labs_dir: Path) -> Iterator[str]:
    """"lt" + 4 hex (short: the topology derives link names from it). Torn down after."""
    from tabby.lab import cluster

    for _ in range(100):
        name = "lt" + secrets.token_hex(2)
        if not nsops.list_netns(name + "-") and not (labs_dir / name).exists():
            break
    yield name
    pids = recorded_pids(labs_dir / name)
    report = cluster.down(name)
    left = report.left + [f"process {p}" for p, st in pids if nsops.pid_alive(p, st)]
    left += nsops.list_netns(name + "-")
    assert not left, f"left behind by lab {name}: {left}"
