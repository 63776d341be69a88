"""What a lab is made of, persisted in `<lab dir>/lab.json` so that every later command
(`status`, `probe`, `exec`, `env`, `down`) - in another process, after a crash - knows it.

The lab directory holds everything the lab writes outside the kernel: `lab.json` (this
module), `topology.json` (`tabby.lab.topology`: namespaces, PIDs, files), the sqlite
datastore or the etcd data directory, the installed CNI plugins and the logs. Removing the
lab removes the directory, after the processes and namespaces it lists.

Lab names are short and have no '-': namespaces are `<name>-<node|workload>` and a lab
called `a` must never look like the owner of lab `a-b`'s namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

STATE_FILE = "lab.json"
STATE_VERSION = 1
LABS_DIR_ENV = "TABBY_LAB_DIR"  # where labs live (tests point it at a temp dir)
DEFAULT_NAME = "tabby"
ENCAPS = ("none", "vxlan", "ipip", "vxlan-crosssubnet", "ipip-crosssubnet")
DATASTORES = ("sqlite", "etcd")

_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")


class LabError(RuntimeError):
    """A lab operation failed; the message says what and what to do (one line)."""


def check_lab_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise LabError(
            f"--name: invalid lab name {name!r} (1-12 of a-z and 0-9, starting with a letter)"
        )
    return name


def labs_root() -> Path:
    """$TABBY_LAB_DIR, else /var/lib/tabby/labs for root, else ~/.local/share/tabby/labs."""
    env = os.environ.get(LABS_DIR_ENV)
    if env:
        return Path(env).absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/tabby/labs")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(base) / "tabby" / "labs"


def lab_dir(name: str) -> Path:
    return labs_root() / check_lab_name(name)


@dataclass
class NodeState:
    name: str
    netns: str
    ip: str  # underlay address
    cidr: str  # underlay subnet
    subnet: int
    health_port: int
    run_dir: str  # agent's and BIRD's files (config, control socket, logs)
    log: str
    pid: int | None = None
    starttime: int | None = None
    ip6: str | None = None  # IPv6 underlay address (dual-stack labs)

    @property
    def bird_socket(self) -> str:
        return os.path.join(self.run_dir, "bird.ctl")


@dataclass
class WorkloadState:
    name: str  # short name, e.g. frontend-1 (its namespace is <lab>-<name>)
    netns: str
    node: str
    namespace: str  # Kubernetes-style namespace of its WorkloadEndpoint
    labels: dict[str, str]
    container_id: str
    ip: str | None = None
    endpoint: str | None = None  # WorkloadEndpoint name (the CNI plugin's)
    pid: int | None = None  # probe server
    starttime: int | None = None
    ip6: str | None = None  # dual-stack labs: the workload's IPv6 address

    def address(self, version: int) -> str | None:
        return self.ip if version == 4 else self.ip6

    @property
    def key(self) -> str:
        """namespace/name of the WorkloadEndpoint, as `tabby policy matrix` keys it."""
        return f"{self.namespace}/{self.endpoint or self.name}"


@dataclass
class ProcessState:
    """A lab process outside the node namespaces' agents (etcd, relay, Typha)."""

    role: str
    pid: int
    starttime: int | None
    netns: str | None = None
    address: str | None = None  # what it serves, e.g. 127.0.0.1:2379
    data_dir: str | None = None


@dataclass
class LabState:
    name: str
    dir: str
    encap: str
    datastore: str  # sqlite | etcd
    datastore_url: str
    pool_cidr: str
    mtu: int
    typha: str | None = None  # host:port the agents use
    pool6_cidr: str | None = None  # dual stack (`--ipv6`): the IPv6 pool
    phase: str = "creating"  # creating -> ready; failed
    created: float = field(default_factory=time.time)
    nodes: list[NodeState] = field(default_factory=list)
    workloads: list[WorkloadState] = field(default_factory=list)
    processes: list[ProcessState] = field(default_factory=list)
    version: int = STATE_VERSION

    @property
    def path(self) -> Path:
        return Path(self.dir) / STATE_FILE

    @property
    def uses_bgp(self) -> bool:
        """Modes whose cross-node routes come from BGP (every node's BIRD in a full mesh)."""
        return self.encap in ("none", "ipip", "ipip-crosssubnet")

    @property
    def families(self) -> tuple[int, ...]:
        """IP versions the workloads have addresses of: (4,) or, dual stack, (4, 6)."""
        return (4, 6) if self.pool6_cidr else (4,)

    @property
    def crosssubnet(self) -> bool:
        return self.encap.endswith("-crosssubnet")

    def node(self, name: str) -> NodeState:
        for n in self.nodes:
            if n.name == name:
                return n
        raise LabError(f"node: no node {name!r} in lab {self.name!r}")

    def find_workload(self, ref: str) -> WorkloadState:
        """By short name (frontend-1), namespace/short name, or namespace/endpoint name."""
        for w in self.workloads:
            if ref in (w.name, w.key, f"{w.namespace}/{w.name}", w.netns):
                return w
        names = ", ".join(w.name for w in self.workloads) or "none"
        raise LabError(f"workload: no workload {ref!r} in lab {self.name!r} (have: {names})")

    def process(self, role: str) -> ProcessState | None:
        for p in self.processes:
            if p.role == role:
                return p
        return None

    def save(self) -> None:
        path = self.path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def create(cls, **kwargs: Any) -> LabState:
        """A new state file; fails if one exists (two `lab up` of one name race here)."""
        state = cls(**kwargs)
        Path(state.dir).mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(state.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise LabError(
                f"lab {state.name!r} already exists ({state.dir}): remove it with "
                f"`tabby lab down --name {state.name}` or pick another --name"
            ) from None
        os.close(fd)
        state.save()
        return state

    @classmethod
    def load(cls, name: str) -> LabState:
        path = lab_dir(name) / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(
                f"lab {name!r} is not up (no {path}); start it with `tabby lab up --name {name}`"
            ) from None
        except json.JSONDecodeError as exc:
            raise LabError(f"lab {name!r}: corrupt state {path}: {exc}") from None
        if data.get("version") != STATE_VERSION:
            raise LabError(f"lab {name!r}: unsupported state version {data.get('version')!r}")
        data["nodes"] = [_build(NodeState, n) for n in data.get("nodes", [])]
        data["workloads"] = [_build(WorkloadState, w) for w in data.get("workloads", [])]
        data["processes"] = [_build(ProcessState, p) for p in data.get("processes", [])]
        return _build(cls, data)


def _build(cls: Any, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def list_labs() -> list[str]:
    """Names of the labs with a state file."""
    root = labs_root()
    with contextlib.suppress(FileNotFoundError):
        return sorted(
            p.name for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).exists()
        )
    return []
