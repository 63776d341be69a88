"""Helpers shared by the lab tests (imported by name; holds no tests)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def recorded_pids(d: Path) -> list[tuple[int, int | None]]:
    """Every PID the lab's topology state records (read before `down` clears it)."""
    try:
        data = json.loads((d / "topology.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [(int(p["pid"]), p.get("starttime")) for p in data.get("processes", [])]


def wait_until(fn: Any, timeout: float = 30.0, interval: float = 0.3) -> Any:
    """Poll `fn()` until it returns something truthy; return the last value either way."""
    end = time.monotonic() + timeout
    value = fn()
    while not value and time.monotonic() < end:
        time.sleep(interval)
        value = fn()
    return value
