"""The route dataplane: workload routes, VXLAN tunnel, VTEPs and remote block routes.

    dp = RouteDataplane("n1", underlay_if="eth0", underlay_ip="172.31.0.10")
    dp.on_update(msg) ...        # cheap: RouteUpdate/RouteRemove/VTEPUpdate/VTEPRemove/IPPool*
    dp.apply()                   # kernel writes; raises RouteApplyError (state kept, retry)

What it programs (all routes in the main table carry Tabby's route protocol, ROUTE_PROTO,
so they are recognisable after a restart with no memory):

* local workloads: `<ip>/32 dev cali... scope link` (the CNI plugin makes the same route;
  the agent re-asserts it and owns its removal);
* local blocks of VXLAN pools: `blackhole <block>` - traffic to an unallocated address of
  our own block must not leave by the default route;
* VXLAN: the `vxlan.tabby` device (vxlan.py); per remote node a permanent neighbour
  (tunnel IP -> VTEP MAC) and an FDB entry (VTEP MAC -> underlay IP); per remote block
  `<block> via <tunnel ip> dev vxlan.tabby onlink`;
* CrossSubnet peers on our subnet: `<block> via <node ip>` (no encapsulation).

Unencapsulated routes of pools without VXLAN belong to BIRD when BGP runs; with
`program_unencapsulated` (agent started with --no-bgp) the agent programs them itself.
IPIP routes belong to the IPIP dataplane; without one they are reported as a problem.

`apply()` computes desired vs actual and writes the difference in a fixed order: device,
route removals, VTEP removals, VTEP additions, route additions, device removal - so a
route never points at a missing VTEP. "Actual" is the kernel as read at the first apply
(and at every refresh, and after any failure), kept up to date by our own writes in
between. Stale Tabby routes on workload interfaces are removed only after a grace period:
the CNI plugin creates a workload's route a moment before it writes the endpoint. A route
whose interface does not exist yet is deferred (retried), not an error; so is one whose
destination still holds another Tabby driver's route (`yield_protos`: IPIP's, mid-handover).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from tabby.calc import messages as m
from tabby.cni.constants import ROUTE_PROTO
from tabby.dataplane import sysctls
from tabby.dataplane.vxlan import (
    DEVICE,
    VxlanDevice,
    ensure_device,
    read_device,
    remove_device,
    tunnel_mtu,
)

log = logging.getLogger(__name__)

MAIN_TABLE = 254
RTN_UNICAST, RTN_BLACKHOLE = 1, 6
RTNH_F_ONLINK = 4
SCOPE_LINK = 253
SCOPE_NOWHERE = 255
NUD_PERMANENT = ndmsg.states["permanent"]
DEFERRABLE = {errno.ENODEV, errno.ENETDOWN}  # the interface is not there (or not up) yet
GRACE = 10.0  # seconds before a stale route on a workload interface is removed
RETRY_DEFERRED = 1.0
REFRESH = 60.0  # re-read the kernel this often (someone may have touched our routes)


class RouteApplyError(RuntimeError):
    """Some kernel writes failed; the rest were made. Pending state is kept for a retry."""


@dataclass(frozen=True)
class KernelRoute:
    """One route as Tabby programs it (and as read back from the kernel)."""

    dst: str
    type: str = "unicast"  # unicast | blackhole
    gateway: str | None = None
    ifname: str | None = None
    onlink: bool = False

    def __str__(self) -> str:
        text = f"blackhole {self.dst}" if self.type == "blackhole" else self.dst
        if self.gateway:
            text += f" via {self.gateway}"
        if self.ifname:
            text += f" dev {self.ifname}"
        return text + (" onlink" if self.onlink else "")


@dataclass
class RouteApplyResult:
    mode: str  # waiting | noop | delta | full
    seconds: float = 0.0
    changes: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)


class RouteDataplane:
    name = "routes"

    def __init__(
        self,
        node_name: str,
        *,
        underlay_if: str,
        underlay_ip: str,
        underlay_mtu: int | None = None,
        netns: str | None = None,
        program_unencapsulated: bool = False,
        ipip_handled: bool = False,
        ipip_reason: str | None = None,
        require_in_sync: bool = True,
        workload_prefixes: tuple[str, ...] = ("cali",),
        grace: float = GRACE,
        refresh: float = REFRESH,
        proto: int = ROUTE_PROTO,
        yield_protos: Collection[int] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        ipaddress.IPv4Address(underlay_ip)
        self.node_name = node_name
        self.underlay_if = underlay_if
        self.underlay_ip = underlay_ip
        self.underlay_mtu = underlay_mtu
        self.netns = netns
        self.program_unencapsulated = program_unencapsulated
        self.ipip_handled = ipip_handled
        self.ipip_reason = ipip_reason
        self.in_sync = not require_in_sync
        self.workload_prefixes = workload_prefixes
        self.grace = grace
        self.refresh = refresh
        self.proto = proto
        # Route protocols of Tabby's other drivers (IPIP: 81). Their route on one of our
        # destinations is a handover in progress (a pool's encapsulation changed), not a
        # conflict: retried with the deferred routes instead of at the next refresh.
        self.yield_protos = frozenset(yield_protos)
        self.clock = clock
        # Desired state, from messages.
        self.routes: dict[str, m.RouteUpdate] = {}
        self.vteps: dict[str, m.VTEPUpdate] = {}
        self.pools: dict[str, m.IPPoolUpdate] = {}
        self.local_tunnel_ip: str | None = None
        self.local_mac: str | None = None
        self._dirty = True
        # Actual state (what the kernel has, as far as we know).
        self._ipr: Any = None
        self._known = False  # False: read the kernel before the next diff
        self._next_refresh = 0.0
        self._last_apply = 0.0
        self._kroutes: dict[str, KernelRoute] = {}
        self._neigh: dict[str, str] = {}  # tunnel ip -> mac on our device
        self._fdb: dict[str, str] = {}  # mac -> underlay ip on our device
        self._device: VxlanDevice | None = None
        self._stale_since: dict[str, float] = {}
        self._deferred: dict[str, str] = {}
        self._conflicts: dict[str, str] = {}  # dst -> why (retried at the next refresh)
        self._problems: dict[str, str] = {}
        self._configured_ifaces: set[str] = set()
        self._ifindex: dict[str, int] = {}  # link name -> index, from the last read
        self._node_sysctls_done = False
        self._ipv6_sysctls_done = False

    # --- messages -----------------------------------------------------------------------

    def set_local_vtep(self, tunnel_ip: str | None, mac: str | None) -> None:
        """This node's tunnel address and VTEP MAC (from registration)."""
        if (tunnel_ip, mac) != (self.local_tunnel_ip, self.local_mac):
            self.local_tunnel_ip = str(ipaddress.IPv4Address(tunnel_ip)) if tunnel_ip else None
            self.local_mac = mac.lower() if mac else None
            self._dirty = True

    def on_update(self, msg: Any) -> None:
        """Record `msg` (no kernel I/O). Messages for other drivers are ignored."""
        if isinstance(msg, m.RouteUpdate):
            if self.routes.get(msg.dst) != msg:
                self.routes[msg.dst] = msg
                self._dirty = True
        elif isinstance(msg, m.RouteRemove):
            if self.routes.pop(msg.dst, None) is not None:
                self._dirty = True
        elif isinstance(msg, m.VTEPUpdate):
            if msg.node == self.node_name:
                self.set_local_vtep(msg.tunnel_ip, msg.mac)
            elif self.vteps.get(msg.node) != msg:
                self.vteps[msg.node] = msg
                self._dirty = True
        elif isinstance(msg, m.VTEPRemove):
            if self.vteps.pop(msg.node, None) is not None:
                self._dirty = True
        elif isinstance(msg, m.IPPoolUpdate):
            if self.pools.get(msg.cidr) != msg:
                self.pools[msg.cidr] = msg
                self._dirty = True
        elif isinstance(msg, m.IPPoolRemove):
            if self.pools.pop(msg.cidr, None) is not None:
                self._dirty = True
        elif isinstance(msg, m.InSync):
            self.in_sync = True

    @property
    def pending(self) -> bool:
        return self._dirty or not self._known

    def wake_at(self) -> float | None:
        """When apply() should run again without new messages (deferred work, grace
        periods, the periodic refresh); None when it need not."""
        if not self.in_sync:
            return None
        times = [self._next_refresh]
        if self._deferred:
            times.append(self._last_apply + RETRY_DEFERRED)
        times += [t + self.grace for t in self._stale_since.values()]
        return min(times)

    def problems(self) -> dict[str, str]:
        return dict(self._problems)

    def stats(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for r in self.routes.values():
            if r.dst in self._kroutes:
                kinds[r.kind] = kinds.get(r.kind, 0) + 1
        return {"routes": kinds, "vteps": len(self._neigh), "deferred": len(self._deferred),
                "device": self._device is not None}

    # --- desired state ------------------------------------------------------------------

    def _pool_of(self, dst: str) -> m.IPPoolUpdate | None:
        net = ipaddress.ip_network(dst)
        for pool in self.pools.values():
            p = ipaddress.ip_network(pool.cidr)
            if p.version == net.version and net.subnet_of(p):  # type: ignore[arg-type]
                return pool
        return None

    def vxlan_wanted(self) -> bool:
        if any(p.vxlan_mode != "Never" for p in self.pools.values()):
            return True
        return any(r.encap == "vxlan" for r in self.routes.values())

    def _desired_device(self, parent_index: int | None) -> tuple[VxlanDevice | None, str | None]:
        if not self.vxlan_wanted():
            return None, None
        if not (self.local_tunnel_ip and self.local_mac):
            return None, "this node has no VXLAN tunnel address yet"
        if parent_index is None:
            return None, f"underlay interface {self.underlay_if} not found"
        mtu = tunnel_mtu(self.underlay_mtu or 1500)
        return VxlanDevice(self.underlay_ip, parent_index, mtu, self.local_mac,
                           self.local_tunnel_ip), None

    def _route_for(self, r: m.RouteUpdate, vxlan_up: bool) -> tuple[KernelRoute | None, str | None]:
        """The kernel route for a RouteUpdate, or (None, why not) / (None, None) = not ours."""
        if r.kind == "local-workload":
            if not r.ifname:
                return None, "local workload route without an interface"
            return KernelRoute(r.dst, ifname=r.ifname), None
        pool = self._pool_of(r.dst)
        if r.kind == "local-block":
            if (pool is not None and pool.vxlan_mode != "Never") or self.program_unencapsulated:
                return KernelRoute(r.dst, type="blackhole"), None
            return None, None
        if r.kind not in ("remote-block", "remote-workload"):
            return None, None  # host and tunnel addresses: informational
        if r.encap == "vxlan":
            vtep = self.vteps.get(r.dst_node or "")
            if not vxlan_up:
                return None, "waiting for the local VXLAN device"
            if vtep is None:
                return None, f"no VTEP for node {r.dst_node!r} yet"
            return KernelRoute(r.dst, gateway=r.next_hop or vtep.tunnel_ip, ifname=DEVICE,
                               onlink=True), None
        if r.encap == "ipip":
            if self.ipip_handled:
                return None, None
            return None, ("IPIP encapsulation is not available here"
                          + (f" ({self.ipip_reason})" if self.ipip_reason else "")
                          + ": use vxlanMode instead")
        cross_subnet = pool is not None and "CrossSubnet" in (pool.vxlan_mode, pool.ipip_mode)
        if not (cross_subnet or self.program_unencapsulated):
            return None, None  # BIRD's route
        gw = r.next_hop or r.dst_node_ip
        if gw is None:
            return None, "remote route without a next hop"
        return KernelRoute(r.dst, gateway=gw), None

    # --- apply --------------------------------------------------------------------------

    def _open(self) -> Any:
        if self._ipr is None:
            self._ipr = IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            try:
                self._ipr.close()
            finally:
                self._ipr = None

    def apply(self, *, full: bool = False) -> RouteApplyResult:
        if not self.in_sync:
            return RouteApplyResult("waiting")
        now = self.clock()
        refresh = full or not self._known or now >= self._next_refresh
        due_stale = any(now - t >= self.grace for t in self._stale_since.values())
        if not (refresh or self._dirty or self._deferred or due_stale):
            return RouteApplyResult("noop")
        t0 = time.perf_counter()
        self._last_apply = now
        res = RouteApplyResult("full" if refresh else "delta")
        failures: list[str] = []
        try:
            ipr = self._open()
            if refresh:
                self._read_kernel(ipr)
            self._apply(ipr, res, failures)
        except (NetlinkError, OSError) as exc:
            failures.append(f"netlink: {exc}")
            self.close()
        res.seconds = time.perf_counter() - t0
        res.problems = dict(self._problems)
        if failures:
            self._known = False  # re-read the kernel before trying again
            raise RouteApplyError("; ".join(failures[:5])
                                  + (f" (+{len(failures) - 5} more)" if len(failures) > 5 else ""))
        self._dirty = False
        if refresh:
            self._next_refresh = now + self.refresh
        return res

    def _link_index(self, ipr: Any, ifname: str) -> int | None:
        idx = self._ifindex.get(ifname)
        if idx is None:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                return None
            idx = self._ifindex[ifname] = int(found[0])
        return idx

    def _link_names(self, ipr: Any) -> dict[int, str]:
        """Index -> name of every link. `ip -o link` does it in a few ms where pyroute2
        parses 2,000 links (1,000 workloads: both veth ends) in over a second."""
        argv = ["ip", *(["-n", self.netns] if self.netns else []), "-o", "link", "show"]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                 check=True).stdout
            names = {}
            for line in out.splitlines():
                index, name = line.split(":", 2)[:2]
                names[int(index)] = name.strip().split("@", 1)[0]
            return names
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            log.debug("ip -o link failed (%s), asking netlink", exc)
            return {int(link["index"]): link.get_attr("IFLA_IFNAME") for link in ipr.link("dump")}

    def _read_kernel(self, ipr: Any) -> None:
        names = self._link_names(ipr)
        self._ifindex = {name: idx for idx, name in names.items()}
        kroutes: dict[str, KernelRoute] = {}
        for r in ipr.route("dump", family=2, proto=self.proto):
            table = r.get_attr("RTA_TABLE") or r["table"]
            if table != MAIN_TABLE or r["proto"] != self.proto:
                continue
            dst = f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}"
            oif = r.get_attr("RTA_OIF")
            kroutes[dst] = KernelRoute(
                dst=str(ipaddress.ip_network(dst)),
                type="blackhole" if r["type"] == RTN_BLACKHOLE else "unicast",
                gateway=r.get_attr("RTA_GATEWAY"),
                ifname=names.get(int(oif)) if oif else None,
                onlink=bool(r["flags"] & RTNH_F_ONLINK),
            )
        self._kroutes = kroutes
        self._neigh, self._fdb, self._device = {}, {}, None
        vx = self._link_index(ipr, DEVICE)
        if vx is not None:
            self._device, _up = read_device(ipr, DEVICE)
            for n in ipr.neigh("dump", ifindex=vx, family=2):
                if n["state"] & NUD_PERMANENT and n.get_attr("NDA_DST"):
                    self._neigh[n.get_attr("NDA_DST")] = str(n.get_attr("NDA_LLADDR")).lower()
            for f in ipr.fdb("dump", ifindex=vx):
                if f["ifindex"] == vx and f.get_attr("NDA_DST") and f["state"] & NUD_PERMANENT:
                    self._fdb[str(f.get_attr("NDA_LLADDR")).lower()] = f.get_attr("NDA_DST")
        self._known = True

    def _apply(self, ipr: Any, res: RouteApplyResult, failures: list[str]) -> None:
        now = self.clock()
        problems: dict[str, str] = {}
        # 0. Node sysctls, once; IPv6 forwarding once an IPv6 pool exists (Felix sets it with
        # IPv6 support; it also stops the host accepting router advertisements, so not for
        # IPv4-only clusters).
        if not self._node_sysctls_done:
            try:
                sysctls.write_sysctls(sysctls.NODE_SYSCTLS, self.netns)
                self._node_sysctls_done = True
            except (sysctls.SysctlError, OSError) as exc:
                failures.append(str(exc))
        if not self._ipv6_sysctls_done and any(":" in p.cidr for p in self.pools.values()):
            try:
                sysctls.write_sysctls(sysctls.NODE_SYSCTLS_V6, self.netns)
                self._ipv6_sysctls_done = True
            except (sysctls.SysctlError, OSError) as exc:
                failures.append(str(exc))
        # 1. The VXLAN device.
        want_dev, why = self._desired_device(self._link_index(ipr, self.underlay_if))
        if why and self.vxlan_wanted():
            problems["vxlan"] = why
        if want_dev is not None and (self._device != want_dev or res.mode == "full"):
            try:
                self._ifindex[DEVICE], changes = ensure_device(ipr, want_dev)
                if changes:
                    res.changes.append(f"{DEVICE}: {', '.join(changes)}")
                if "created" in changes or "recreated" in changes:
                    self._neigh, self._fdb = {}, {}
                    self._kroutes = {d: k for d, k in self._kroutes.items() if k.ifname != DEVICE}
                self._device = want_dev
            except NetlinkError as exc:
                failures.append(f"{DEVICE}: {exc}")
                want_dev = None
        vxlan_up = want_dev is not None and self._device == want_dev
        # Desired routes and VTEPs.
        desired: dict[str, KernelRoute] = {}
        for dst, r in self.routes.items():
            kr, why = self._route_for(r, vxlan_up)
            if kr is not None:
                desired[dst] = kr
            elif why:
                problems[f"route {dst}"] = why
        neigh: dict[str, str] = {}
        fdb: dict[str, str] = {}
        if vxlan_up:
            for v in self.vteps.values():
                if v.mac in fdb and fdb[v.mac] != v.underlay_ip:
                    problems[f"vtep {v.node}"] = f"VTEP MAC {v.mac} is used by another node"
                    continue
                neigh[v.tunnel_ip] = v.mac
                fdb[v.mac] = v.underlay_ip
        # 2. Route removals (and replacements of routes that must be deleted first).
        for dst, have in sorted(self._kroutes.items()):
            if dst in desired:
                continue
            if have.ifname and have.ifname.startswith(self.workload_prefixes):
                first = self._stale_since.setdefault(dst, now)
                if now - first < self.grace:
                    continue  # maybe the CNI plugin's, its endpoint not written yet
            self._del_route(ipr, have, res, failures)
        self._stale_since = {d: t for d, t in self._stale_since.items()
                             if d in self._kroutes and d not in desired}
        # 3. VTEP removals, then 4. additions (FDB before the neighbour that uses it).
        if self._device is not None:
            vx = self._link_index(ipr, DEVICE)
            for ip, mac in list(self._neigh.items()):
                if neigh.get(ip) != mac:
                    if self._nl(failures, f"neigh del {ip}", ipr.neigh, "del", dst=ip,
                                lladdr=mac, ifindex=vx):
                        del self._neigh[ip]
                        res.changes.append(f"neigh del {ip}")
            for mac, ul in list(self._fdb.items()):
                if fdb.get(mac) != ul:
                    if self._nl(failures, f"fdb del {mac}", ipr.fdb, "del", lladdr=mac,
                                dst=ul, ifindex=vx):
                        del self._fdb[mac]
                        res.changes.append(f"fdb del {mac}")
            for mac, ul in fdb.items():
                if self._fdb.get(mac) != ul and self._nl(
                        failures, f"fdb {mac}", ipr.fdb, "replace", lladdr=mac, dst=ul,
                        ifindex=vx, state=NUD_PERMANENT | ndmsg.states["noarp"],
                        flags=ndmsg.flags["self"]):
                    self._fdb[mac] = ul
                    res.changes.append(f"fdb {mac} dst {ul}")
            for ip, mac in neigh.items():
                if self._neigh.get(ip) != mac and self._nl(
                        failures, f"neigh {ip}", ipr.neigh, "replace", dst=ip, lladdr=mac,
                        ifindex=vx, state=NUD_PERMANENT):
                    self._neigh[ip] = mac
                    res.changes.append(f"neigh {ip} lladdr {mac}")
        # 5. Route additions and changes.
        self._deferred = {}
        if res.mode == "full":
            self._conflicts = {}
        new_ifaces: list[str] = []
        for dst, want in sorted(desired.items()):
            if self._kroutes.get(dst) == want or dst in self._conflicts:
                continue
            self._add_route(ipr, want, res, failures)
            if want.ifname and want.ifname.startswith(self.workload_prefixes) \
                    and dst in self._kroutes and want.ifname not in self._configured_ifaces:
                new_ifaces.append(want.ifname)
        if new_ifaces:
            values: dict[str, str | int] = {}
            for ifname in new_ifaces:
                values.update(sysctls.workload_sysctls(ifname))
            try:
                sysctls.write_sysctls(values, self.netns)
                self._configured_ifaces.update(new_ifaces)
            except (sysctls.SysctlError, OSError) as exc:
                log.warning("workload sysctls: %s", exc)  # the interface may be gone again
        # 6. The device, when no pool wants VXLAN any more.
        if want_dev is None and not self.vxlan_wanted() and self._device is not None:
            try:
                if remove_device(ipr, DEVICE):
                    res.changes.append(f"{DEVICE}: removed")
                self._ifindex.pop(DEVICE, None)
                self._device, self._neigh, self._fdb = None, {}, {}
            except NetlinkError as exc:
                failures.append(f"{DEVICE} del: {exc}")
        for dst, why in (*self._deferred.items(), *self._conflicts.items()):
            problems.setdefault(f"route {dst}", why)
        res.deferred = sorted(self._deferred)
        self._problems = problems

    @staticmethod
    def _nl(failures: list[str], what: str, fn: Callable[..., Any], *args: Any,
            **kwargs: Any) -> bool:
        try:
            fn(*args, **kwargs)
            return True
        except NetlinkError as exc:
            if args and args[0] == "del" and exc.code in (errno.ENOENT, errno.ESRCH):
                return True  # already gone
            failures.append(f"{what}: {exc}")
            return False

    def _route_args(self, ipr: Any, r: KernelRoute) -> dict[str, Any] | None:
        args: dict[str, Any] = {"dst": r.dst, "table": MAIN_TABLE, "proto": self.proto}
        if r.type == "blackhole":
            args["type"] = "blackhole"
            return args
        if r.ifname:
            idx = self._link_index(ipr, r.ifname)
            if idx is None:
                return None
            args["oif"] = idx
        if r.gateway:
            args["gateway"] = r.gateway
        else:
            args["scope"] = SCOPE_LINK
        if r.onlink:
            args["flags"] = RTNH_F_ONLINK
        return args

    def _add_route(self, ipr: Any, want: KernelRoute, res: RouteApplyResult,
                   failures: list[str]) -> None:
        args = self._route_args(ipr, want)
        if args is None:
            self._deferred[want.dst] = f"waiting for interface {want.ifname}"
            return
        ours = want.dst in self._kroutes
        try:
            ipr.route("replace" if ours else "add", **args)
        except NetlinkError as exc:
            if exc.code in DEFERRABLE:
                if want.ifname:
                    self._ifindex.pop(want.ifname, None)  # maybe made again, new index
                self._deferred[want.dst] = f"waiting for interface {want.ifname} ({exc})"
                return
            if exc.code != errno.EEXIST:
                failures.append(f"route {want}: {exc}")
                return
            # Someone else's route for the same destination (BIRD's, an operator's):
            # leave it, and say so.
            owner = self._owner(ipr, want.dst)
            if owner in self.yield_protos:
                self._deferred[want.dst] = f"waiting for the proto {owner} route to go"
                return
            if owner != self.proto:
                self._conflicts[want.dst] = f"another route (proto {owner}) has this destination"
                return
            try:
                ipr.route("replace", **args)
            except NetlinkError as exc2:
                failures.append(f"route {want}: {exc2}")
                return
        self._kroutes[want.dst] = want
        res.changes.append(f"route {want}")

    def _owner(self, ipr: Any, dst: str) -> int | None:
        net = ipaddress.ip_network(dst)
        for r in ipr.route("dump", family=2, table=MAIN_TABLE):
            if r["dst_len"] == net.prefixlen and (r.get_attr("RTA_DST") or "0.0.0.0") == str(
                    net.network_address):
                return int(r["proto"])
        return None

    def _del_route(self, ipr: Any, have: KernelRoute, res: RouteApplyResult,
                   failures: list[str]) -> None:
        # Scope "nowhere" matches any scope: pyroute2 would send "universe", which the
        # kernel compares, so a scope-link route would never match.
        args = {"dst": have.dst, "table": MAIN_TABLE, "proto": self.proto,
                "scope": SCOPE_NOWHERE,
                "type": "blackhole" if have.type == "blackhole" else "unicast"}
        if self._nl(failures, f"route del {have}", ipr.route, "del", **args):
            self._kroutes.pop(have.dst, None)
            self._stale_since.pop(have.dst, None)
            res.changes.append(f"route del {have}")

    # --- introspection ------------------------------------------------------------------

    def kernel_routes(self) -> dict[str, KernelRoute]:
        """Tabby's routes as last read or written (what `tabby node status` can show)."""
        return dict(self._kroutes)
