"""Is the lab alive? Agent health (HTTP inside each node namespace) and BGP sessions (BIRD's
control socket, a file, so readable from here)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabby.lab import netns as nsops
from tabby.lab.state import NodeState

NSCHECK = [sys.executable, "-I", "-S", str(Path(__file__).with_name("nscheck.py"))]


@dataclass
class AgentHealth:
    node: str
    alive: bool  # the agent process (by PID and start time)
    ready: bool  # /readiness answered 200
    detail: str = ""


@dataclass
class Session:
    name: str
    peer: str
    state: str  # BIRD's protocol state: up/start/down
    info: str  # Established, Active, Connect, ...

    @property
    def established(self) -> bool:
        return self.info.startswith("Established")


@dataclass
class BGPStatus:
    node: str
    sessions: list[Session] = field(default_factory=list)
    error: str = ""

    @property
    def established(self) -> int:
        return sum(s.established for s in self.sessions)


def http_status(targets: Sequence[str]) -> list[int | None]:
    """HTTP status of GET NS:PORT:PATH for each target (None: no answer)."""
    try:
        proc = subprocess.run(NSCHECK + list(targets), capture_output=True, text=True, timeout=15)
        return [r.get("status") for r in json.loads(proc.stdout)]
    except (subprocess.TimeoutExpired, ValueError):
        return [None] * len(targets)


def agent_status(nodes: Sequence[NodeState]) -> list[dict[str, Any]]:
    """Each agent's /status summarised: datastore mode (direct or typha), IP-in-IP
    implementation, calc counts; {} for an agent that does not answer."""
    targets = [f"{n.netns}:{n.health_port}:/status" for n in nodes]
    try:
        proc = subprocess.run(NSCHECK + targets, capture_output=True, text=True, timeout=15)
        results = json.loads(proc.stdout)
    except (subprocess.TimeoutExpired, ValueError):
        return [{} for _ in nodes]
    out: list[dict[str, Any]] = []
    for r in results:
        try:
            data = json.loads(r.get("body") or "")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            out.append({})
            continue
        ds = data.get("datastore") or {}
        extra = ds.get("extra") or {}
        ipip = (data.get("dataplanes") or {}).get("ipip") or {}
        out.append({
            "datastore": extra.get("mode") or "direct",
            "typha": extra.get("server"),
            "revision": ds.get("revision"),
            "ipip": ipip.get("implementation"),
            "localEndpoints": (data.get("calc") or {}).get("local_endpoints"),
            "activePolicies": (data.get("calc") or {}).get("active_policies"),
        })  # fmt: skip
    return out


def agent_health(nodes: Sequence[NodeState]) -> list[AgentHealth]:
    """One process checks every node's /readiness in parallel."""
    out = [
        AgentHealth(n.name, n.pid is not None and nsops.pid_alive(n.pid, n.starttime), False)
        for n in nodes
    ]
    targets = [f"{n.netns}:{n.health_port}:/readiness" for n in nodes]
    if not targets:
        return out
    try:
        proc = subprocess.run(NSCHECK + targets, capture_output=True, text=True, timeout=15)
        results = json.loads(proc.stdout)
    except (subprocess.TimeoutExpired, ValueError) as exc:
        for h in out:
            h.detail = f"health check failed: {exc}"
        return out
    for h, r in zip(out, results, strict=True):
        h.ready = r.get("status") == 200
        if not h.alive:
            h.detail = "agent not running"
        elif r.get("status") is None:
            h.detail = str(r.get("error", "no answer"))
        elif not h.ready:
            h.detail = _reason(r.get("body", ""), int(r["status"]))
    return out


def _reason(body: str, status: int) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return f"HTTP {status}"
    if isinstance(data, dict):
        for key in ("reason", "detail", "error", "state"):
            if data.get(key):
                return str(data[key])
    return f"HTTP {status}"


def bgp_status(node: NodeState) -> BGPStatus:
    """The node's BGP sessions, from its BIRD control socket (never raises)."""
    from tabby.bgp.status import collect_status

    st = collect_status(node.bird_socket, timeout=2.0)
    sessions = [Session(p.name, p.address, p.state, p.bgp_state or p.info) for p in st.peers]
    return BGPStatus(node.name, sessions, st.error or "")
