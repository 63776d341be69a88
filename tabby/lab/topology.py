"""A throwaway test network made of namespaces: underlay bridge, nodes, router, raw workloads.

Layout for `Topology("tb1a2b", subnets=2)`::

    tb1a2b-ul   bridges tb1a2bbr0, tb1a2bbr1 (L2 only; this is the "switch")
    tb1a2b-rtr  legs tb1a2br0 = 172.31.0.1/24, tb1a2br1 = 172.31.1.1/24, ip_forward=1
    tb1a2b-n1   tb1a2bu0 = 172.31.0.10/24, default via 172.31.0.1
    tb1a2b-n2   tb1a2bu1 = 172.31.1.10/24, default via 172.31.1.1
    tb1a2b-w1   eth0 = 10.65.0.1/32, default via 169.254.1.1 (host side cali... in tb1a2b-n1)

With `ipv6=True` every subnet also gets a ULA /64 (`fd00:<hash of the prefix>:<subnet>::/64`,
gateway `::1`, node `::a` beside `.10`), added with `nodad` so that BIRD can bind at once.

With one subnet there is no router and the bridge itself holds the gateway address: the
node's default route exists only so that proxy ARP answers for 169.254.1.1 (see
kernel-notes.md). Nothing is ever created in the root namespace: veths are created inside
one namespace with their peer placed directly in the other.

Every namespace, PID and file is written to `<state_dir>/topology.json` *before* it is
created, so `Topology.load(state_dir).teardown()` cleans up after a crashed process.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tabby.lab import netns as nsops
from tabby.lab.netns import NsProcess

STATE_FILE = "topology.json"
STATE_VERSION = 1
CALICO_GATEWAY = "169.254.1.1"  # the fixed next hop every Calico workload routes via
CALICO_HOST_MAC = "ee:ee:ee:ee:ee:ee"  # Calico gives every host-side veth this MAC
RESERVED_NAMES = ("ul", "rtr")
FIRST_NODE_HOST = 10  # node addresses start at .10; .1 is the gateway
IFA_F_NODAD = 0x02  # an underlay address usable at once: no duplicate address detection

# Sysctls a Calico node relies on. rp_filter is pinned to 0 at the namespace level (new
# namespaces inherit the host's value) so the agent's per-interface setting decides.
NODE_SYSCTLS: dict[str, str | int] = {
    "net.ipv4.ip_forward": 1,
    "net.ipv4.conf.all.forwarding": 1,
    "net.ipv4.conf.default.forwarding": 1,
    "net.ipv6.conf.all.forwarding": 1,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
}

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


class TopologyError(RuntimeError):
    """Building or loading a topology failed; the message names the object."""


@dataclass(frozen=True)
class Node:
    """A node namespace attached to the underlay."""

    name: str
    netns: str
    underlay_if: str
    ip: str
    prefixlen: int
    subnet: int  # index into Topology.subnets
    cidr: str
    gateway: str
    index: int
    ip6: str | None = None  # with an IPv6 underlay: the node's ULA address
    prefixlen6: int | None = None

    @property
    def ip_cidr(self) -> str:
        return f"{self.ip}/{self.prefixlen}"

    @property
    def ip6_cidr(self) -> str | None:
        return f"{self.ip6}/{self.prefixlen6}" if self.ip6 else None


@dataclass(frozen=True)
class Workload:
    """A workload namespace wired Calico-style to a node (without the CNI plugin)."""

    name: str
    netns: str
    node: str
    ip: str
    host_if: str
    iface: str = "eth0"
    mtu: int = 1500


Target = Node | Workload | str


def _short_id(prefix: str) -> str:
    """A <= 6 character id for link names: the prefix itself when it is short enough."""
    if re.fullmatch(r"[a-z0-9]{1,6}", prefix):
        return prefix
    return "t" + hashlib.sha1(prefix.encode()).hexdigest()[:5]


def workload_host_ifname(key: str) -> str:
    """Calico-style host-side name: 'cali' + 11 hex chars of a hash of the workload key."""
    return "cali" + hashlib.sha1(key.encode()).hexdigest()[:11]


class Topology:
    """Builds (and tears down) a namespace network. Use as a context manager or call
    `teardown()`; both are safe to repeat."""

    def __init__(
        self,
        prefix: str,
        *,
        subnets: int | Sequence[str] = 1,
        state_dir: str | os.PathLike[str] | None = None,
        mtu: int = 1500,
        node_sysctls: Mapping[str, str | int] | None = None,
        ipv6: bool = False,
    ) -> None:
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise ValueError(f"prefix: invalid topology prefix {prefix!r} (use [a-z0-9-], <= 31)")
        cidrs = _subnet_cidrs(subnets)
        if not 576 <= mtu <= 9000:
            raise ValueError(f"mtu: {mtu} out of range 576-9000")
        in_use = nsops.list_netns(prefix + "-")
        if in_use:
            raise TopologyError(f"prefix {prefix!r}: namespaces already exist: {in_use}")
        owns_dir = state_dir is None
        sdir = Path(tempfile.mkdtemp(prefix=f"tabby-{prefix}-")) if owns_dir else Path(state_dir)  # type: ignore[arg-type]
        sdir.mkdir(parents=True, exist_ok=True)
        if (sdir / STATE_FILE).exists():
            raise TopologyError(
                f"state_dir {str(sdir)!r}: holds a live topology; tear it down first"
            )
        self.prefix = prefix
        self.sid = _short_id(prefix)
        self.state_dir = sdir
        self.subnets = cidrs
        self.subnets6 = [ula_subnet(prefix, s) for s in range(len(cidrs))] if ipv6 else []
        self.mtu = mtu
        self.node_sysctls = dict(NODE_SYSCTLS if node_sysctls is None else node_sysctls)
        self.nodes: dict[str, Node] = {}
        self.workloads: dict[str, Workload] = {}
        self.namespaces: list[str] = []
        self.processes: list[dict[str, Any]] = []
        self.files: list[str] = []
        self.dirs: list[str] = [str(sdir)] if owns_dir else []
        self._next_port = 0
        self._lock = threading.RLock()
        self._procs: list[NsProcess] = []  # our children: terminate() also reaps and closes pipes
        self._live = True
        self._save()
        try:
            self._build_underlay()
        except BaseException:
            self.teardown()
            raise

    # --- names ---------------------------------------------------------------------

    @property
    def underlay_netns(self) -> str:
        return f"{self.prefix}-ul"

    @property
    def router_netns(self) -> str | None:
        return f"{self.prefix}-rtr" if len(self.subnets) > 1 else None

    def netns_name(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def gateway(self, subnet: int) -> str:
        return str(ipaddress.ip_network(self.subnets[subnet])[1])

    def gateway6(self, subnet: int) -> str | None:
        return str(ipaddress.ip_network(self.subnets6[subnet])[1]) if self.subnets6 else None

    def netns_of(self, target: Target) -> str:
        """Namespace of a Node, Workload, node/workload name, 'ul'/'rtr' or our netns name."""
        if isinstance(target, (Node, Workload)):
            return target.netns
        if target in self.nodes:
            return self.nodes[target].netns
        if target in self.workloads:
            return self.workloads[target].netns
        if target in RESERVED_NAMES and self.netns_name(target) in self.namespaces:
            return self.netns_name(target)
        if target in self.namespaces:
            return target
        raise KeyError(f"target: no node, workload or namespace {target!r} in {self.prefix}")

    def node(self, target: Node | Workload | str) -> Node:
        if isinstance(target, Node):
            return target
        if isinstance(target, Workload):
            return self.nodes[target.node]
        if target in self.nodes:
            return self.nodes[target]
        raise KeyError(f"node: no node {target!r} in {self.prefix}")

    def _check_new_name(self, field: str, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED_NAMES:
            raise ValueError(f"{field}: invalid name {name!r} (use [a-z0-9-], not ul/rtr)")
        if name in self.nodes or name in self.workloads or self.netns_name(name) in self.namespaces:
            raise ValueError(f"{field}: name {name!r} already used in {self.prefix}")

    # --- building ------------------------------------------------------------------

    def _new_netns(self, name: str) -> str:
        ns = self.netns_name(name)
        nsops.check_netns_name(ns)
        if nsops.netns_exists(ns):
            raise TopologyError(f"netns {ns}: already exists (not ours, not touched)")
        self.namespaces.append(ns)
        self._save()  # recorded before creation: a crash right after still cleans it up
        try:
            nsops.add_netns(ns)
        except BaseException:
            if not nsops.netns_exists(ns):
                self.namespaces.remove(ns)
                self._save()
            raise
        return ns

    def add_namespace(self, name: str) -> str:
        """A bare tracked namespace `<prefix>-<name>` (lo up, nothing else)."""
        self._check_new_name("name", name)
        return self._new_netns(name)

    def _build_underlay(self) -> None:
        ul = self._new_netns("ul")
        with nsops.ipr(ul) as ip:
            for s in range(len(self.subnets)):
                br = f"{self.sid}br{s}"
                ip.link("add", ifname=br, kind="bridge", mtu=self.mtu)
                idx = nsops.link_index(ip, br)
                ip.link("set", index=idx, state="up")
                if len(self.subnets) == 1:  # no router: the bridge holds the gateway
                    ip.addr("add", index=idx, address=self.gateway(0), prefixlen=self._plen(0))
                    if self.subnets6:
                        ip.addr("add", index=idx, address=self.gateway6(0), prefixlen=64,
                                flags=IFA_F_NODAD)
        if len(self.subnets) > 1:
            rtr = self._new_netns("rtr")
            for s in range(len(self.subnets)):
                leg, port = f"{self.sid}r{s}", f"{self.sid}q{s}"
                self._attach(rtr, leg, port, s, self.gateway(s), self._plen(s), self.gateway6(s))
            off = {"net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0}
            v6 = {"net.ipv6.conf.all.forwarding": 1} if self.subnets6 else {}
            nsops.set_sysctls(rtr, {"net.ipv4.ip_forward": 1, **off, **v6})

    def _plen(self, subnet: int) -> int:
        return ipaddress.ip_network(self.subnets[subnet]).prefixlen

    def _attach(
        self, ns: str, ifname: str, port: str, subnet: int, addr: str, plen: int,
        addr6: str | None = None,
    ) -> None:
        """veth: `port` enslaved to subnet's bridge in the underlay, `ifname` in `ns`
        (with `addr6`/64 too, when given)."""
        with nsops.ipr(self.underlay_netns) as ip:
            peer = {"ifname": ifname, "net_ns_fd": ns, "mtu": self.mtu}
            ip.link("add", ifname=port, kind="veth", mtu=self.mtu, peer=peer)
            pidx = nsops.link_index(ip, port)
            ip.link("set", index=pidx, master=nsops.link_index(ip, f"{self.sid}br{subnet}"))
            ip.link("set", index=pidx, state="up")
        with nsops.ipr(ns) as ip:
            idx = nsops.link_index(ip, ifname)
            ip.link("set", index=idx, state="up")
            ip.addr("add", index=idx, address=addr, prefixlen=plen)
            if addr6 is not None:
                ip.addr("add", index=idx, address=addr6, prefixlen=64, flags=IFA_F_NODAD)

    def add_node(self, name: str, *, subnet: int | None = None, ip: str | None = None) -> Node:
        """A node namespace `<prefix>-<name>` on the underlay, with a default route and
        Calico's node sysctls. Nodes alternate between subnets unless `subnet` is given."""
        self._check_new_name("node", name)
        index = self._next_port
        if subnet is None:
            subnet = len(self.nodes) % len(self.subnets)
        if not 0 <= subnet < len(self.subnets):
            raise ValueError(f"subnet: {subnet} out of range 0-{len(self.subnets) - 1}")
        net = ipaddress.ip_network(self.subnets[subnet])
        addr = self._pick_node_ip(net, ip)
        addr6 = None
        if self.subnets6:  # the same host number in the subnet's ULA /64
            net6 = ipaddress.ip_network(self.subnets6[subnet])
            addr6 = str(net6[int(ipaddress.ip_address(addr)) - int(net.network_address)])
        ns = self._new_netns(name)
        self._next_port += 1
        node = Node(
            name=name,
            netns=ns,
            underlay_if=f"{self.sid}u{index}",
            ip=addr,
            prefixlen=net.prefixlen,
            subnet=subnet,
            cidr=str(net),
            gateway=self.gateway(subnet),
            index=index,
            ip6=addr6,
            prefixlen6=64 if addr6 else None,
        )
        self._attach(ns, node.underlay_if, f"{self.sid}p{index}", subnet, addr, net.prefixlen,
                     addr6)
        with nsops.ipr(ns) as ipr:
            ipr.route("add", dst="0.0.0.0/0", gateway=node.gateway)
            if addr6 is not None:
                ipr.route("add", dst="::/0", gateway=self.gateway6(subnet))
        nsops.set_sysctls(ns, self.node_sysctls)
        self.nodes[name] = node
        self._save()
        return node

    def _pick_node_ip(
        self, net: ipaddress.IPv4Network | ipaddress.IPv6Network, ip: str | None
    ) -> str:
        used = {n.ip for n in self.nodes.values()} | {str(net[1])}
        if ip is not None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                raise ValueError(f"ip: invalid address {ip!r}") from None
            if addr not in net or addr in (net.network_address, net.broadcast_address):
                raise ValueError(f"ip: {ip} is not a host address of {net}")
            if str(addr) in used:
                raise ValueError(f"ip: {ip} already used in {self.prefix}")
            return str(addr)
        for host_n, host in enumerate(net.hosts(), start=1):
            if host_n >= FIRST_NODE_HOST and str(host) not in used:
                return str(host)
        raise TopologyError(f"subnet {net}: no free node address")

    def add_workload(
        self, node: Node | str, name: str, ip: str, *, mtu: int | None = None
    ) -> Workload:
        """A workload namespace `<prefix>-<name>` wired like Calico's CNI plugin does, but
        by hand: /32 on eth0, 169.254.1.1 gateway, proxy ARP host side, /32 host route."""
        host = self.node(node)
        self._check_new_name("workload", name)
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"ip: invalid workload address {ip!r}") from None
        if addr.version != 4:
            raise ValueError(f"ip: {ip} is not IPv4 (raw workloads are IPv4-only)")
        if any(w.ip == str(addr) for w in self.workloads.values()):
            raise ValueError(f"ip: {ip} already used by another workload")
        mtu = self.mtu if mtu is None else mtu
        ns = self._new_netns(name)
        wl = Workload(
            name=name,
            netns=ns,
            node=host.name,
            ip=str(addr),
            host_if=workload_host_ifname(f"{self.prefix}/{name}"),
            mtu=mtu,
        )
        with nsops.ipr(host.netns) as ipr:
            ipr.link(
                "add",
                ifname=wl.host_if,
                kind="veth",
                mtu=mtu,
                address=CALICO_HOST_MAC,
                peer={"ifname": wl.iface, "net_ns_fd": ns, "mtu": mtu},
            )
            hidx = nsops.link_index(ipr, wl.host_if)
            ipr.link("set", index=hidx, state="up")
            ipr.route("add", dst=f"{addr}/32", oif=hidx, scope=253)  # scope link
        # proxy_arp must be on before the workload's eth0 comes up and ARPs for 169.254.1.1.
        nsops.set_sysctls(
            host.netns,
            {
                f"net.ipv4.conf.{wl.host_if}.proxy_arp": 1,
                f"net.ipv4.neigh.{wl.host_if}.proxy_delay": 0,
                f"net.ipv4.conf.{wl.host_if}.forwarding": 1,
            },
        )
        with nsops.ipr(ns) as ipr:
            idx = nsops.link_index(ipr, wl.iface)
            ipr.link("set", index=idx, state="up")
            ipr.addr("add", index=idx, address=str(addr), prefixlen=32)
            ipr.route("add", dst=f"{CALICO_GATEWAY}/32", oif=idx, scope=253)
            ipr.route("add", dst="0.0.0.0/0", gateway=CALICO_GATEWAY, oif=idx)
        self.workloads[name] = wl
        self._save()
        return wl

    # --- routes ----------------------------------------------------------------------

    def add_route(
        self,
        target: Target,
        cidr: str,
        via: str | None = None,
        *,
        dev: str | None = None,
        type: str = "unicast",
        onlink: bool = False,
    ) -> None:
        """Add (or replace) a route in `target`'s namespace. `type` may be 'unicast',
        'blackhole', 'unreachable' or 'prohibit'."""
        ns = self.netns_of(target)
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"cidr: invalid destination {cidr!r}") from None
        if type not in ("unicast", "blackhole", "unreachable", "prohibit"):
            raise ValueError(f"type: unsupported route type {type!r}")
        spec: dict[str, Any] = {"dst": str(net), "type": type}
        with nsops.ipr(ns) as ipr:
            if type == "unicast":
                if via is None and dev is None:
                    raise ValueError("via: a unicast route needs via or dev")
                if via is not None:
                    try:
                        spec["gateway"] = str(ipaddress.ip_address(via))
                    except ValueError:
                        raise ValueError(f"via: invalid next hop {via!r}") from None
                if dev is not None:
                    spec["oif"] = nsops.link_index(ipr, dev)
                    if via is None:
                        spec["scope"] = 253
                if onlink:
                    spec["flags"] = 4  # RTNH_F_ONLINK
            ipr.route("replace", **spec)

    def add_blackhole(self, target: Target, cidr: str) -> None:
        self.add_route(target, cidr, type="blackhole")

    def del_route(self, target: Target, cidr: str) -> None:
        """Delete the route to `cidr` (any type or scope) from `target`'s main table."""
        ns = self.netns_of(target)
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"cidr: invalid destination {cidr!r}") from None
        with nsops.ipr(ns) as ipr:
            for route in ipr.route("dump", family=2 if net.version == 4 else 10):
                table = route.get_attr("RTA_TABLE") or route["table"]
                dst = route.get_attr("RTA_DST") or ("0.0.0.0" if net.version == 4 else "::")
                if table != 254 or route["dst_len"] != net.prefixlen or \
                        dst != str(net.network_address):
                    continue
                # Scope 255 ("nowhere", as `ip route del` sends) matches any scope; the
                # pyroute2 default (universe) never matches a scope-link route.
                ipr.route("del", dst=str(net), type=route["type"], table=table, scope=255)
                return
        raise nsops.NetnsError(f"route {cidr}: not found in {ns}")

    def install_static_routes(self) -> None:
        """Route every workload from every other node without BGP: `<wl>/32 via <its node>`
        between nodes on one subnet, and on the router for nodes on other subnets."""
        for wl in self.workloads.values():
            home = self.nodes[wl.node]
            for node in self.nodes.values():
                if node.name != home.name and node.subnet == home.subnet:
                    self.add_route(node, f"{wl.ip}/32", via=home.ip)
            if self.router_netns is not None:
                self.add_route("rtr", f"{wl.ip}/32", via=home.ip)

    # --- processes and files -----------------------------------------------------------

    def run(self, target: Target, argv: Sequence[str], **kwargs: Any) -> Any:
        """`netns.run` inside `target`'s namespace."""
        return nsops.run(self.netns_of(target), argv, **kwargs)

    def spawn(self, target: Target, argv: Sequence[str], **kwargs: Any) -> NsProcess:
        """`netns.spawn` inside `target`'s namespace; the PID is recorded for teardown."""
        proc = nsops.spawn(self.netns_of(target), argv, **kwargs)
        self._procs.append(proc)
        self.record_process(proc.pid, proc.starttime, proc.netns, proc.argv)
        return proc

    def record_process(
        self,
        pid: int,
        starttime: int | None = None,
        netns: str | None = None,
        argv: Iterable[str] = (),
    ) -> None:
        """Track a process to stop at teardown (only if its start time still matches)."""
        if starttime is None:
            starttime = nsops.proc_starttime(pid)
        with self._lock:
            self.processes.append(
                {"pid": pid, "starttime": starttime, "netns": netns, "argv": list(argv)}
            )
            self._save()

    def record_file(self, path: str | os.PathLike[str]) -> None:
        """Track a file (config, socket, pidfile) to delete at teardown."""
        with self._lock:
            self.files.append(str(Path(path).absolute()))
            self._save()

    # --- teardown and state --------------------------------------------------------------

    def teardown(self) -> None:
        """Stop recorded processes, kill anything left in our namespaces, delete the
        namespaces (their links go with them), files and temp dirs. Safe to repeat."""
        errors: list[str] = []
        for proc in reversed(self._procs):
            proc.terminate()
        self._procs = []
        for p in reversed(self.processes):
            nsops.kill_pid(int(p["pid"]), p.get("starttime"))
        for ns in reversed(self.namespaces):
            try:
                # Daemons that fork (bird) are not in self.processes; whatever lives in a
                # namespace we created is ours.
                for pid in nsops.netns_pids(ns):
                    if pid != os.getpid():
                        nsops.kill_pid(pid, nsops.proc_starttime(pid))
                nsops.del_netns(ns)
            except Exception as exc:  # keep going: remove as much as possible
                errors.append(f"{ns}: {exc}")
        for f in self.files:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(f)
        left = [ns for ns in self.namespaces if nsops.netns_exists(ns)]
        self.processes, self.files = [], []
        self.namespaces = left
        self.nodes, self.workloads = {}, {}
        if left:
            self._save()
            raise TopologyError(f"teardown {self.prefix}: could not remove {left}: {errors}")
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / STATE_FILE).unlink()
        for d in self.dirs:
            if Path(d).name.startswith("tabby-"):  # only our own mkdtemp dirs
                shutil.rmtree(d, ignore_errors=True)
        self.dirs = []
        self._live = False

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def _state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "prefix": self.prefix,
            "sid": self.sid,
            "subnets": self.subnets,
            "subnets6": self.subnets6,
            "mtu": self.mtu,
            "next_port": self._next_port,
            "namespaces": self.namespaces,
            "processes": self.processes,
            "files": self.files,
            "dirs": self.dirs,
            "nodes": [asdict(n) for n in self.nodes.values()],
            "workloads": [asdict(w) for w in self.workloads.values()],
            "node_sysctls": self.node_sysctls,
        }

    def _save(self) -> None:
        if not getattr(self, "_live", False):
            return
        with self._lock:
            path = self.state_dir / STATE_FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._state(), indent=1))
            os.replace(tmp, path)

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str]) -> Topology:
        """Re-open a topology from its state file (e.g. after a crash) to use or tear down."""
        path = Path(state_dir) / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"state_dir: no topology state at {path}") from None
        except json.JSONDecodeError as exc:
            raise TopologyError(f"state_dir: corrupt topology state {path}: {exc}") from None
        if data.get("version") != STATE_VERSION:
            raise TopologyError(f"state_dir: unsupported state version {data.get('version')!r}")
        self = cls.__new__(cls)
        self.prefix = data["prefix"]
        self.sid = data["sid"]
        self.state_dir = Path(state_dir)
        self.subnets = list(data["subnets"])
        self.subnets6 = list(data.get("subnets6") or [])
        self.mtu = int(data["mtu"])
        self.node_sysctls = dict(data.get("node_sysctls", NODE_SYSCTLS))
        self._next_port = int(data["next_port"])
        # Only names of our own shape are acted on, whatever the file says.
        self.namespaces = [
            n for n in data["namespaces"] if isinstance(n, str) and n.startswith(self.prefix + "-")
        ]
        for n in self.namespaces:
            nsops.check_netns_name(n)
        self.processes = list(data["processes"])
        self.files = list(data["files"])
        self.dirs = list(data["dirs"])
        self.nodes = {n["name"]: Node(**n) for n in data["nodes"]}
        self.workloads = {w["name"]: Workload(**w) for w in data["workloads"]}
        self._lock = threading.RLock()
        self._procs = []
        self._live = True
        return self


def ula_subnet(prefix: str, subnet: int) -> str:
    """The IPv6 underlay of a subnet: a ULA /64 whose global ID comes from the topology
    prefix, so two labs on one machine never share one (fd00:hhhh:hhhh:<subnet>::/64)."""
    h = hashlib.sha1(f"tabby-ula/{prefix}".encode()).hexdigest()
    return str(ipaddress.ip_network(f"fd00:{h[:4]}:{h[4:8]}:{subnet:x}::/64"))


def _subnet_cidrs(subnets: int | Sequence[str]) -> list[str]:
    if isinstance(subnets, int):
        if not 1 <= subnets <= 16:
            raise ValueError(f"subnets: {subnets} out of range 1-16")
        return [f"172.31.{i}.0/24" for i in range(subnets)]
    if isinstance(subnets, str) or not subnets:
        raise ValueError(f"subnets: expected a count or a list of CIDRs, got {subnets!r}")
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for c in subnets:
        try:
            net = ipaddress.ip_network(c)
        except ValueError:
            raise ValueError(f"subnets: invalid CIDR {c!r}") from None
        if net.version != 4 or net.prefixlen > 28:
            raise ValueError(f"subnets: {c} must be IPv4 and /28 or larger")
        if any(net.overlaps(n) for n in nets):
            raise ValueError(f"subnets: {c} overlaps another subnet")
        nets.append(net)
    return [str(n) for n in nets]
