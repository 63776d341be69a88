"""`tabby node status`: BGP sessions as BIRD reports them, plus what the controller left out.

    status = collect_status(default_socket("node-1"))
    print_status(status)                  # tables like `calicoctl node status`
    print_status(status, output="json")

Peers come from `show protocols all` on BIRD's control socket. The peer type comes from
the protocol's description, which the renderer writes ("route reflector client; BGPPeer
rr; node n2"), falling back to the Calico-style name (Mesh_/Global_/Node_). Configuration
issues (an invalid BGPPeer, a selector that selects nothing, a config BIRD rejected) come
from `bgp-status.json`, which the controller keeps beside the socket.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from tabby.bgp import birdctl

# Peer types, as `calicoctl node status` words them (plus the route reflector roles). The
# renderer puts the type first in each session's BIRD description.
TYPE_MESH = "node-to-node mesh"
TYPE_GLOBAL = "global"
TYPE_NODE = "node specific"
TYPE_RR_CLIENT = "route reflector client"
TYPE_RR = "route reflector"

RUN_ROOT = "/run/tabby"
SOCKET_NAME = "bird.ctl"
STATUS_FILE = "bgp-status.json"
_KNOWN_TYPES = (TYPE_MESH, TYPE_GLOBAL, TYPE_NODE, TYPE_RR_CLIENT, TYPE_RR)
_TYPE_BY_PREFIX = {"Mesh_": TYPE_MESH, "Global_": TYPE_GLOBAL, "Node_": TYPE_NODE}
# name proto table state since info; `since` is "2024-05-01 10:20:30.123" with our
# timeformat, a single token with BIRD's default one.
_PROTO_LINE = re.compile(
    r"^(?P<name>\S+)\s+(?P<proto>\S+)\s+(?P<table>\S+)\s+(?P<state>\S+)\s+"
    r"(?P<since>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?|\S+)\s*(?P<info>.*?)\s*$"
)


def default_run_dir(node_name: str) -> Path:
    """Where `tabby node run` keeps BIRD's files for a node: /run/tabby/<node>."""
    return Path(RUN_ROOT) / node_name


def default_socket(node_name: str) -> str:
    """BIRD's control socket of a node: /run/tabby/<node>/bird.ctl."""
    return str(default_run_dir(node_name) / SOCKET_NAME)


@dataclass
class Protocol:
    """One protocol of `show protocols all`."""

    name: str
    proto: str
    table: str
    state: str
    since: str
    info: str
    details: dict[str, str] = field(default_factory=dict)
    routes: dict[str, dict[str, int]] = field(default_factory=dict)  # channel -> counts


@dataclass
class PeerStatus:
    name: str
    address: str
    peer_type: str
    state: str  # BIRD protocol state: up, start, down, ...
    since: str
    info: str  # "Established", "Active Socket: Connection refused", ...
    bgp_state: str
    neighbor_as: int | None
    local_as: int | None
    description: str = ""
    last_error: str = ""
    routes_imported: int = 0
    routes_exported: int = 0

    @property
    def established(self) -> bool:
        return self.bgp_state == "Established"

    @property
    def version(self) -> int:
        return 6 if ":" in self.address else 4


@dataclass
class BgpStatus:
    socket: str
    running: bool
    error: str | None = None
    router_id: str | None = None
    version: str | None = None
    peers: list[PeerStatus] = field(default_factory=list)
    issues: list[dict[str, str]] = field(default_factory=list)
    controller: dict[str, Any] = field(default_factory=dict)

    def peer(self, name_or_address: str) -> PeerStatus | None:
        for p in self.peers:
            if name_or_address in (p.name, p.address):
                return p
        return None


def parse_protocols(replies: list[birdctl.Reply]) -> list[Protocol]:
    """`show protocols all` replies -> protocols (1002 = summary line, then details)."""
    out: list[Protocol] = []
    channel = ""
    for reply in replies:
        if reply.code == 1002:
            m = _PROTO_LINE.match(reply.text)
            if m is None:
                continue
            g = m.groupdict()
            out.append(Protocol(g["name"], g["proto"], g["table"], g["state"], g["since"],
                                g["info"]))
            channel = ""
            continue
        line = reply.text.strip()
        if not out or not line:
            continue
        proto = out[-1]
        if line.startswith("Channel "):
            channel = line.split(None, 1)[1]
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "Routes" and channel:
            counts = {}
            for part in value.split(","):
                bits = part.split()
                if len(bits) == 2 and bits[0].isdigit():
                    counts[bits[1]] = int(bits[0])
            proto.routes[channel] = counts
        elif not channel:
            proto.details.setdefault(key, value)
    return out


def _peer_type(proto: Protocol) -> str:
    first = proto.details.get("Description", "").split(";", 1)[0].strip()
    if first in _KNOWN_TYPES:
        return first
    for prefix, label in _TYPE_BY_PREFIX.items():
        if proto.name.startswith(prefix):
            return label
    return "unknown"


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def peers_from_protocols(protocols: list[Protocol]) -> list[PeerStatus]:
    peers = []
    for p in protocols:
        if p.proto != "BGP":
            continue
        routes = next(iter(p.routes.values()), {})
        peers.append(
            PeerStatus(
                name=p.name,
                address=p.details.get("Neighbor address", ""),
                peer_type=_peer_type(p),
                state=p.state,
                since=p.since,
                info=" ".join(p.info.split()),
                bgp_state=p.details.get("BGP state", ""),
                neighbor_as=_int(p.details.get("Neighbor AS")),
                local_as=_int(p.details.get("Local AS")),
                description=p.details.get("Description", ""),
                last_error=p.details.get("Last error", ""),
                routes_imported=routes.get("imported", 0),
                routes_exported=routes.get("exported", 0),
            )
        )
    return peers


def read_controller_status(run_dir: str | Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def collect_status(socket_path: str | Path, timeout: float = 5.0) -> BgpStatus:
    """Ask BIRD for its sessions. Never raises: an unreachable BIRD gives running=False and
    `error` saying why."""
    status = BgpStatus(socket=str(socket_path), running=False)
    ctl = read_controller_status(Path(socket_path).parent)
    status.controller = {k: v for k, v in ctl.items() if k != "issues"}
    status.issues = [i for i in ctl.get("issues", []) if isinstance(i, dict)]
    try:
        info = birdctl.command(socket_path, "show status", timeout)
        protocols = birdctl.command(socket_path, "show protocols all", timeout)
    except birdctl.BirdControlError as exc:
        status.error = f"BIRD is not running: {exc}"
        return status
    status.running = True
    for reply in info:
        if reply.code == 1000:
            status.version = reply.text.strip()
        elif reply.code == 1011 and reply.text.startswith("Router ID is "):
            status.router_id = reply.text[len("Router ID is ") :].strip()
    status.peers = peers_from_protocols(parse_protocols(protocols))
    return status


def status_json(status: BgpStatus) -> dict[str, Any]:
    out = asdict(status)
    for peer, data in zip(status.peers, out["peers"], strict=True):
        data["established"] = peer.established
    return out


def print_status(status: BgpStatus, output: str = "table", file: IO[str] | None = None) -> None:
    """Print like `calicoctl node status` (output="table") or as JSON (output="json")."""
    file = file or sys.stdout
    if output == "json":
        file.write(json.dumps(status_json(status), indent=2) + "\n")
        return
    if output != "table":
        raise ValueError(f"output: unknown format {output!r} (want table or json)")
    from rich import box
    from rich.console import Console
    from rich.table import Table

    # A pipe gets full lines (as calicoctl prints them), a terminal its own width.
    width = None if file.isatty() else 160
    console = Console(file=file, highlight=False, soft_wrap=True, width=width)
    if status.running:
        console.print(f"BIRD is running ({status.version or 'BIRD'}, router id {status.router_id}).")
    else:
        console.print(status.error or "BIRD is not running.")
    for version in (4, 6):
        peers = [p for p in status.peers if p.version == version]
        console.print()
        if not peers:
            console.print(f"No IPv{version} BGP peers.")
            continue
        table = Table(title=f"IPv{version} BGP status", title_justify="left", box=box.ASCII)
        for col in ("PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"):
            table.add_column(col, no_wrap=True)
        for p in peers:
            table.add_row(p.address, p.peer_type, p.state, p.since, p.info)
        console.print(table)
    if status.issues:
        console.print()
        console.print("Configuration issues:")
        for issue in status.issues:
            console.print(
                f"  {issue.get('severity', '?')}: {issue.get('source', '')}: {issue.get('message', '')}",
                markup=False,
            )
    if status.controller.get("last_error"):
        console.print()
        console.print(f"Last error: {status.controller['last_error']}", markup=False)
