"""IpipDataplane: the agent's IP-in-IP driver, on kernels with or without the ipip module.

    dp = IpipDataplane("tb12-n1", "eth0", "172.31.0.10")          # implementation="auto"
    dp.implementation                 # "kernel" or "bpf": put it on the Node resource
    for msg in messages: dp.on_update(msg)                          # cheap, no I/O
    dp.apply()                        # one batch of kernel changes (after InSync)

Messages it uses: RouteUpdate / RouteRemove (routes with encap "ipip" to remote blocks,
workloads and tunnel addresses; every remote route's node IP and "remote-host" routes
for the allowed-sender list; a "local-tunnel" route for tunl0's address), IPPoolUpdate /
IPPoolRemove (ipipMode, for CrossSubnet and for whether IP-in-IP is on at all), InSync.
Anything else is ignored, so the agent may feed it every message.

Nothing is written before InSync. Routes are in the main table with protocol 81
(IPIP_ROUTE_PROTO); the BPF programs are tc filters named tabby-ipip-* on the underlay.
`close()` releases this process's handles and leaves the dataplane forwarding (a new
IpipDataplane takes over without a gap); `remove()` takes everything of ours away.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from tabby.dataplane.ipip import kernel_path, kernel_support, paths
from tabby.dataplane.ipip import routes as rt
from tabby.dataplane.ipip.bpf_path import TcPrograms, check_ipv4, detach_all
from tabby.dataplane.ipip.libbpf import BpfError
from tabby.dataplane.ipip.model import DesiredRoute, IpipState, RouteSpec, lpm_entries, plan

log = logging.getLogger(__name__)

IPIP_OVERHEAD = 20  # one outer IPv4 header, no options
ANNOTATION = "tabby.dev/ipip-implementation"


class IpipError(RuntimeError):
    """IP-in-IP cannot work as asked; the message is one line and says why."""


@dataclass
class IpipStatus:
    implementation: str
    active: bool
    in_sync: bool
    routes: int = 0
    encap_routes: int = 0
    nodes: int = 0
    filter_only: bool = False  # kernel path: the BPF program only filters senders
    program_ids: dict[str, int] = field(default_factory=dict)
    map_ids: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class IpipDataplane:
    def __init__(
        self,
        netns: str | None,
        underlay_if: str,
        local_ip: str,
        implementation: str = "auto",
        *,
        tunnel_address: str | None = None,
        object_path: str | Path | None = None,
        route_protocol: int = rt.IPIP_ROUTE_PROTO,
        wait_for_sync: bool = True,
    ) -> None:
        if implementation not in ("auto", *kernel_support.IMPLEMENTATIONS):
            raise IpipError(
                f"implementation: expected auto, kernel or bpf, got {implementation!r}"
            )
        if not isinstance(underlay_if, str) or not 0 < len(underlay_if) <= 15:
            raise IpipError(f"underlay_if: invalid interface name {underlay_if!r}")
        try:
            self.local_ip = check_ipv4(local_ip, "local_ip")
            self.tunnel_address = (
                check_ipv4(tunnel_address, "tunnel_address") if tunnel_address else None
            )
        except ValueError as exc:
            raise IpipError(str(exc)) from None
        self.netns = netns
        self.underlay_if = underlay_if
        self.route_protocol = route_protocol
        self.wait_for_sync = wait_for_sync
        self.object_path = Path(object_path) if object_path else paths.object_path()
        ks = kernel_support
        chosen = ks.detect() if implementation == "auto" else implementation
        if chosen == "kernel" and not (ks.module_loaded() or ks.module_available()):
            raise IpipError(f"implementation 'kernel': {ks.why_no_kernel()}; use 'bpf'")
        if chosen == "bpf" and not self.object_path.is_file():
            raise IpipError(
                f"implementation 'bpf': no BPF object at {self.object_path}; build it with "
                "`python -m tabby.dataplane.ipip.build` (needs clang, libbpf-dev)"
            )
        self.implementation = chosen
        self.state = IpipState(self.local_ip)
        # BPF: the programs do the work. Kernel: tunl0 does, the ingress program (if the
        # object is built) only keeps non-nodes from sending us protocol 4.
        self._programs: TcPrograms | None = None
        if chosen == "bpf" or self.object_path.is_file():
            self._programs = TcPrograms(
                underlay_if, self.local_ip, self.object_path, decap=(chosen == "bpf")
            )
        self._dirty = True
        self._active = False
        self._errors: list[str] = []
        self._closed = False

    # --- messages ---------------------------------------------------------------------

    def on_update(self, msg: object) -> None:
        """Record a calc-graph message. Cheap: no kernel access."""
        if self.state.update(msg):
            self._dirty = True

    def set_peers(self, node_ips: Iterable[str]) -> None:
        """Node addresses allowed to send IP-in-IP besides those the routes name (e.g. the
        whole Node list, so a node without blocks may still reach our workloads)."""
        try:
            changed = self.state.set_peers(node_ips)
        except ValueError as exc:
            raise IpipError(f"node_ips: {exc}") from None
        self._dirty |= changed

    @property
    def pending(self) -> bool:
        return self._dirty

    # --- applying -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _ipr(self) -> Iterator[IPRoute]:
        # flags=0: never create the namespace, only enter an existing one.
        try:
            ipr = IPRoute(**({"netns": self.netns, "flags": 0} if self.netns else {}))
        except OSError as exc:
            raise IpipError(f"netns {self.netns}: cannot open: {exc}") from None
        with ipr:
            yield ipr

    def apply(self) -> bool:
        """Write what changed since the last apply, in a safe order. Returns True if it
        did any work. Per-route failures are logged and retried at the next apply."""
        if self._closed:
            raise IpipError("apply: this IpipDataplane was closed")
        if not self._dirty or (self.wait_for_sync and not self.state.in_sync):
            return False
        self._errors = []
        with self._ipr() as ipr:
            if self.state.active():
                self._apply_active(ipr)
            elif self._active or self._ours_present(ipr):
                self._deactivate(ipr)
        self._dirty = bool(self._errors)
        return True

    def resync(self) -> None:
        """Force the next apply to compare everything with the kernel again."""
        self._dirty = True

    def _apply_active(self, ipr: IPRoute) -> None:
        desired = self.state.desired_routes()
        try:
            mtu = rt.link_mtu(ipr, self.underlay_if)
        except rt.RouteError as exc:
            raise IpipError(str(exc)) from None
        if self.implementation == "kernel":
            try:
                kernel_path.ensure_tunl0(
                    ipr, mtu - IPIP_OVERHEAD, self.state.tunnel_address() or self.tunnel_address
                )
            except kernel_path.TunnelError as exc:
                raise IpipError(str(exc)) from None
        actual = rt.read_routes(ipr, self.route_protocol)
        specs = self._route_specs(ipr, desired, mtu, actual)
        progs = self._programs
        if progs is not None:
            try:
                progs.load()
            except BpfError as exc:
                if self.implementation == "bpf":
                    raise IpipError(f"ipip: cannot load {self.object_path}: {exc}") from None
                log.warning("ipip: sender filter unavailable, tunl0 accepts any node: %s", exc)
                self._programs = progs = None
        lpm = lpm_entries(desired, self.local_ip) if self.implementation == "bpf" else {}
        ops = plan(
            routes=specs,
            actual_routes=actual,
            lpm=lpm,
            actual_lpm=progs.lpm if progs else {},
            nodes=self.state.allowed_nodes() if progs else (),
            actual_nodes=progs.nodes if progs else (),
        )
        # Maps before the programs that read them; programs before the routes that send
        # traffic to them; old routes gone before their map entries.
        for op in ops:
            if op.kind == "allow-node" and progs:
                progs.allow_node(op.key)
            elif op.kind == "lpm-set" and progs and isinstance(op.value, tuple):
                progs.lpm_set(op.key, op.value)
        if progs is not None and not (progs.attached and progs.is_attached(ipr)):
            progs.attach(ipr)
        route_ops = [
            ("set" if op.kind == "route-set" else "del", op.value)
            for op in ops
            if op.kind in ("route-set", "route-del") and isinstance(op.value, RouteSpec)
        ]
        failed = rt.write_batch(self.netns, route_ops, self.route_protocol)
        for text in failed.values():
            self._error(text)
        kept = set(failed)  # a route we failed to delete keeps its map entry
        for op in ops:
            if op.kind == "lpm-del" and progs and op.key not in kept:
                progs.lpm_del(op.key)
            elif op.kind == "forget-node" and progs:
                progs.forget_node(op.key)
        self._active = True

    def _route_specs(
        self,
        ipr: IPRoute,
        desired: dict[str, DesiredRoute],
        mtu: int,
        actual: dict[str, RouteSpec],
    ) -> dict[str, RouteSpec]:
        specs: dict[str, RouteSpec] = {}
        hops: dict[str, tuple[str | None, str]] = {}
        for dst, r in sorted(desired.items()):
            if r.encap and self.implementation == "kernel":
                specs[dst] = RouteSpec(dst, r.node_ip, kernel_path.TUNNEL_IF, onlink=True)
                continue
            try:
                if r.node_ip not in hops:
                    hops[r.node_ip] = rt.resolve_next_hop(ipr, r.node_ip)
                gateway, ifname = hops[r.node_ip]
                if ifname != self.underlay_if:
                    raise rt.RouteError(
                        f"node {r.node_ip} is reached via {ifname or '?'}, "
                        f"not the underlay {self.underlay_if}"
                    )
            except rt.RouteError as exc:
                # Keep what the kernel has (a transient failure must not cut traffic).
                self._error(f"route {dst}: {exc}")
                if dst in actual:
                    specs[dst] = actual[dst]
                continue
            if r.encap:
                # L2 next hop: the node itself, or the router towards it; the outer
                # destination comes from the LPM map, so only the MAC depends on this.
                specs[dst] = RouteSpec(
                    dst, gateway or r.node_ip, self.underlay_if, onlink=True,
                    mtu=mtu - IPIP_OVERHEAD,
                )
            else:
                specs[dst] = RouteSpec(dst, gateway or r.node_ip, self.underlay_if)
        return specs

    def _ours_present(self, ipr: IPRoute) -> bool:
        # After a restart the previous process's routes and filters may still be there.
        from tabby.dataplane.ipip import tc

        if rt.read_routes(ipr, self.route_protocol):
            return True
        idx = ipr.link_lookup(ifname=self.underlay_if)
        return bool(idx) and any(f.ours for f in tc.list_filters(ipr, idx[0]))

    def _deactivate(self, ipr: IPRoute) -> None:
        ours = rt.read_routes(ipr, self.route_protocol).values()
        failed = rt.write_batch(self.netns, [("del", s) for s in ours], self.route_protocol)
        for text in failed.values():
            self._error(text)
        detach_all(ipr, self.underlay_if)
        if self._programs is not None:
            self._programs.close()
        if self.implementation == "kernel":
            kernel_path.teardown_tunl0(ipr)
        self._active = False

    def _error(self, text: str) -> None:
        log.warning("ipip: %s", text)
        self._errors.append(text)

    # --- life cycle and status ------------------------------------------------------------

    def remove(self) -> None:
        """Take every route, program and map of ours away (IP-in-IP off on this node)."""
        with self._ipr() as ipr:
            self._errors = []
            self._deactivate(ipr)
        self._dirty = True

    def close(self) -> None:
        """Release this process's handles; the kernel keeps forwarding as programmed."""
        if self._programs is not None:
            self._programs.close()
        self._closed = True

    def __enter__(self) -> IpipDataplane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counters(self) -> dict[str, int]:
        """Packet counters of the BPF programs (summed over CPUs), e.g. for metrics:
        encap_packets, decap_packets, drop_unknown_source, drop_bad_inner, drop_ecn,
        encap_errors, decap_errors. Empty while nothing is loaded."""
        return self._programs.counters() if self._programs is not None else {}

    def status(self) -> IpipStatus:
        desired = self.state.desired_routes()
        progs = self._programs
        return IpipStatus(
            implementation=self.implementation,
            active=self._active,
            in_sync=self.state.in_sync,
            routes=len(desired),
            encap_routes=sum(1 for r in desired.values() if r.encap),
            nodes=len(self.state.allowed_nodes()),
            filter_only=self.implementation == "kernel" and progs is not None,
            program_ids=progs.program_ids() if progs is not None else {},
            map_ids=progs.map_ids() if progs is not None else {},
            counters=self.counters(),
            errors=list(self._errors),
        )

    def annotations(self) -> dict[str, str]:
        """What the agent should put on this node's Node resource."""
        return {ANNOTATION: self.implementation}

    def debug_maps(self) -> dict[str, Any]:
        """The BPF maps as the kernel holds them (tests, `tabby node status -v`)."""
        if self._programs is None or self._programs.obj is None:
            return {"routes": {}, "nodes": []}
        lpm, nodes = self._programs.read_maps()
        return {"routes": lpm, "nodes": sorted(nodes, key=ipaddress.IPv4Address)}
