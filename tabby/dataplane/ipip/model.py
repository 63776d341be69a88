"""What the IP-in-IP dataplane should look like, from the calc graph's messages (pure).

`IpipState` takes the messages (`update(msg)`, cheap, no I/O) and answers with the
desired state: which remote destinations are routed over IP-in-IP (and to which node),
which are plain routes (CrossSubnet peers on our subnet), which node addresses may send
us protocol-4 packets, and whether IP-in-IP is in use at all. `plan()` turns desired and
actual state into an ordered list of operations that never encapsulates to a stale node:

    1. allow new peer nodes        (decap map: a new peer may start sending at once)
    2. add / change LPM entries    (encap map before the route that sends traffic to it)
    3. add / change routes
    4. delete routes               (route gone before its LPM entry)
    5. delete LPM entries
    6. forget old peer nodes
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tabby.calc.messages import (
    InSync,
    IPPoolRemove,
    IPPoolUpdate,
    RouteRemove,
    RouteUpdate,
)

REMOTE_KINDS = ("remote-block", "remote-workload", "remote-tunnel")


@dataclass(frozen=True, order=True)
class DesiredRoute:
    """One remote destination handled by the IP-in-IP dataplane."""

    dst: str
    node_ip: str  # the remote node's underlay address (outer destination)
    encap: bool  # False: a CrossSubnet peer on our subnet, plain route via the underlay


@dataclass(frozen=True, order=True)
class RouteSpec:
    """A kernel route as we program it and as we read it back (main table, our proto)."""

    dst: str
    gateway: str | None
    ifname: str
    onlink: bool = False
    mtu: int | None = None


@dataclass(frozen=True)
class Op:
    """One step of a plan. `kind`: allow-node, lpm-set, route-set, route-del, lpm-del,
    forget-node. `value` is the LPM value (remote, local) or the RouteSpec to write."""

    kind: str
    key: str
    value: tuple[str, str] | RouteSpec | None = None


@dataclass
class IpipState:
    """The calc graph's view, reduced to what IP-in-IP needs. Feed it every RouteUpdate,
    RouteRemove, IPPoolUpdate, IPPoolRemove and InSync; other messages are ignored."""

    local_ip: str
    routes: dict[str, RouteUpdate] = field(default_factory=dict)
    pools: dict[str, IPPoolUpdate] = field(default_factory=dict)
    peers: frozenset[str] = frozenset()  # extra node addresses (e.g. from the Node list)
    in_sync: bool = False

    def update(self, msg: object) -> bool:
        """Record `msg`; True if it may change the desired state."""
        if isinstance(msg, RouteUpdate):
            if ipaddress.ip_network(msg.dst).version != 4:
                return False
            if self.routes.get(msg.dst) == msg:
                return False
            self.routes[msg.dst] = msg
            return True
        if isinstance(msg, RouteRemove):
            return self.routes.pop(msg.dst, None) is not None
        if isinstance(msg, IPPoolUpdate):
            if ipaddress.ip_network(msg.cidr).version != 4 or self.pools.get(msg.cidr) == msg:
                return False
            self.pools[msg.cidr] = msg
            return True
        if isinstance(msg, IPPoolRemove):
            return self.pools.pop(msg.cidr, None) is not None
        if isinstance(msg, InSync):
            changed = not self.in_sync
            self.in_sync = True
            return changed
        return False

    def set_peers(self, ips: Iterable[str]) -> bool:
        new = frozenset(str(ipaddress.IPv4Address(ip)) for ip in ips)
        changed = new != self.peers
        self.peers = new
        return changed

    # --- derived state -------------------------------------------------------------

    def pool_mode(self, dst: str) -> str:
        """ipipMode of the most specific pool containing `dst` ("Always" if none is known:
        the calc graph said "ipip", so encapsulate)."""
        net = ipaddress.ip_network(dst)
        best: tuple[int, str] | None = None
        for cidr, pool in self.pools.items():
            pnet = ipaddress.ip_network(cidr)
            if pnet.version == net.version and net.subnet_of(pnet):  # type: ignore[arg-type]
                if best is None or pnet.prefixlen > best[0]:
                    best = (pnet.prefixlen, pool.ipip_mode)
        return best[1] if best is not None else "Always"

    def desired_routes(self) -> dict[str, DesiredRoute]:
        out: dict[str, DesiredRoute] = {}
        for r in self.routes.values():
            if r.encap != "ipip" or r.kind not in REMOTE_KINDS:
                continue
            node_ip = r.dst_node_ip or r.next_hop
            if node_ip is None or ipaddress.ip_address(node_ip).version != 4:
                continue
            if node_ip == self.local_ip:
                continue  # never tunnel to ourselves
            plain = r.same_subnet and self.pool_mode(r.dst) == "CrossSubnet"
            out[r.dst] = DesiredRoute(r.dst, node_ip, encap=not plain)
        return out

    def allowed_nodes(self) -> frozenset[str]:
        """Node addresses that may send us IP-in-IP: every node we route to, every remote
        host route, plus the explicit peers."""
        ips: set[str] = set(self.peers)
        for r in self.routes.values():
            if r.kind == "remote-host":
                net = ipaddress.ip_network(r.dst)
                if net.num_addresses == 1:
                    ips.add(str(net.network_address))
            elif r.kind in REMOTE_KINDS:
                node_ip = r.dst_node_ip or (r.next_hop if r.encap == "ipip" else None)
                if node_ip is not None:
                    ips.add(node_ip)
        ips.discard(self.local_ip)
        return frozenset(ip for ip in ips if ipaddress.ip_address(ip).version == 4)

    def tunnel_address(self) -> str | None:
        """This node's IP-in-IP tunnel address (for tunl0), if the calc graph sent one."""
        for r in self.routes.values():
            if r.kind == "local-tunnel" and r.encap == "ipip":
                net = ipaddress.ip_network(r.dst)
                if net.version == 4 and net.num_addresses == 1:
                    return str(net.network_address)
        return None

    def active(self) -> bool:
        """IP-in-IP is in use: an IPv4 pool has ipipMode != Never, or a route needs it."""
        if any(p.ipip_mode != "Never" for p in self.pools.values()):
            return True
        return bool(self.desired_routes())


def lpm_entries(desired: Mapping[str, DesiredRoute], local_ip: str) -> dict[str, tuple[str, str]]:
    """Encap map contents: dst -> (remote node IP, local IP), only for encapsulated routes."""
    return {d: (r.node_ip, local_ip) for d, r in desired.items() if r.encap}


def plan(
    *,
    routes: Mapping[str, RouteSpec],
    actual_routes: Mapping[str, RouteSpec],
    lpm: Mapping[str, tuple[str, str]],
    actual_lpm: Mapping[str, tuple[str, str]],
    nodes: Iterable[str],
    actual_nodes: Iterable[str],
) -> list[Op]:
    """The ordered operations that take the actual state to the desired one."""
    want_nodes, have_nodes = set(nodes), set(actual_nodes)
    ops = [Op("allow-node", ip) for ip in sorted(want_nodes - have_nodes)]
    ops += [Op("lpm-set", d, v) for d, v in sorted(lpm.items()) if actual_lpm.get(d) != v]
    ops += [Op("route-set", d, s) for d, s in sorted(routes.items()) if actual_routes.get(d) != s]
    ops += [Op("route-del", d, s) for d, s in sorted(actual_routes.items()) if d not in routes]
    ops += [Op("lpm-del", d) for d in sorted(actual_lpm) if d not in lpm]
    ops += [Op("forget-node", ip) for ip in sorted(have_nodes - want_nodes)]
    return ops
