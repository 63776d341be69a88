"""Routes and VXLAN tunnel endpoints (Felix's route resolver and VXLAN resolver).

* Every local workload address gets a `local-workload` route (`/32` or `/128`) to its
  host-side interface; every node with an IPv4 underlay address a `local-host` /
  `remote-host` /32 (informational: the IPIP dataplane accepts tunnels from them).
* Every IPAM block in a pool gets a route, chosen by the pool's encapsulation:
  - affine to this node: `local-block` (the route dataplane blackholes it for VXLAN
    pools, so an unallocated address of ours never leaves by the default route);
  - affine to another node, `vxlanMode: Always`: `remote-block` via that node's VXLAN
    tunnel address (encap "vxlan"); the node's VTEP (tunnel address, MAC, underlay
    address) is sent too, always before the routes that use it;
  - `CrossSubnet` (VXLAN or IPIP): encapsulated only when the remote node's underlay
    address is outside our own subnet (our `bgp.ipv4Address` prefix); otherwise a plain
    route via its underlay address (`same_subnet=True`);
  - `ipipMode: Always`: via the remote node's underlay address (encap "ipip");
  - `Never` for both: a plain route via the underlay address (encap "none"). Felix
    leaves these to BIRD, and so does the route dataplane while BGP runs; it programs
    them only when the agent runs without BGP.
  A block route waits until the pool, the node and (for VXLAN) its VTEP are all known;
  blocks with no affinity get none.
* IPv6 blocks and borrowed addresses (a workload address from a block affine to another
  node) are left out; see docs/design/calc.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tabby.calc import messages as m
from tabby.calc import sequencer as sq
from tabby.ipam.block import AFFINITY_PREFIX

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class NodeInfo:
    underlay: str | None  # IPv4 address other nodes reach it on
    subnet: ipaddress.IPv4Network | None  # from bgp.ipv4Address
    vxlan_ip: str | None
    vxlan_mac: str | None


@dataclass(frozen=True, slots=True)
class PoolInfo:
    network: IPNetwork
    vxlan_mode: str
    ipip_mode: str
    nat_outgoing: bool


def node_info(doc: Mapping[str, Any]) -> NodeInfo:
    spec = doc.get("spec") or {}
    bgp = spec.get("bgp") or {}
    underlay: str | None = None
    subnet = None
    if bgp.get("ipv4Address"):
        v4 = ipaddress.IPv4Interface(bgp["ipv4Address"])
        underlay, subnet = str(v4.ip), v4.network
    else:
        for entry in spec.get("addresses") or ():
            iface = ipaddress.ip_interface(entry.get("address", ""))
            if iface.version == 4:
                underlay = str(iface.ip)
                break
    mac = spec.get("vxlanTunnelMACAddr")
    return NodeInfo(underlay, subnet, spec.get("ipv4VXLANTunnelAddr"),
                    mac.lower() if mac else None)


def pool_info(doc: Mapping[str, Any]) -> PoolInfo:
    spec = doc.get("spec") or {}
    return PoolInfo(ipaddress.ip_network(spec["cidr"]), spec.get("vxlanMode") or "Never",
                    spec.get("ipipMode") or "Never", bool(spec.get("natOutgoing")))


class RouteCalculator:
    def __init__(self, node_name: str, seq: sq.EventSequencer) -> None:
        self._me = node_name
        self._seq = seq
        self._nodes: dict[str, NodeInfo] = {}
        self._pools: dict[str, PoolInfo] = {}
        self._blocks: dict[str, tuple[IPNetwork, str | None]] = {}  # key -> (cidr, node)
        self._blocks_by_node: dict[str, set[str]] = {}
        self._block_routes: set[str] = set()  # dsts of block routes we put
        self._local: dict[str, str] = {}  # local workload route dst -> endpoint key
        self._local_by_ep: dict[str, tuple[str, ...]] = {}
        self._vteps: set[str] = set()  # nodes whose VTEP we put
        self._host_routes: dict[str, str] = {}  # node -> dst of its host route
        self._dirty_blocks: set[str] = set()
        self._dirty_nodes: set[str] = set()
        self._all_dirty = False

    # -- inputs --------------------------------------------------------------------------

    def set_node(self, name: str, doc: Mapping[str, Any] | None) -> None:
        info = None if doc is None else node_info(doc)
        if self._nodes.get(name) == info:
            return
        if info is None:
            del self._nodes[name]
        else:
            self._nodes[name] = info
        if name == self._me:
            self._all_dirty = True  # our subnet decides CrossSubnet for every block
        else:
            self._dirty_nodes.add(name)

    def set_pool(self, name: str, doc: Mapping[str, Any] | None) -> None:
        info = None if doc is None else pool_info(doc)
        if self._pools.get(name) == info:
            return
        if info is None:
            del self._pools[name]
        else:
            self._pools[name] = info
        self._all_dirty = True  # pools are few and change rarely

    def set_block(self, key: str, doc: Mapping[str, Any] | None) -> None:
        old = self._blocks.pop(key, None)
        if old is not None and old[1] is not None:
            bucket = self._blocks_by_node[old[1]]
            bucket.discard(key)
            if not bucket:
                del self._blocks_by_node[old[1]]
        if doc is not None:
            affinity = doc.get("affinity") or ""
            node = affinity[len(AFFINITY_PREFIX):] if affinity.startswith(AFFINITY_PREFIX) else None
            self._blocks[key] = (ipaddress.ip_network(doc["cidr"]), node)
            if node is not None:
                self._blocks_by_node.setdefault(node, set()).add(key)
        self._dirty_blocks.add(key)
        if old is not None and (doc is None or self._blocks[key][0] != old[0]):
            self._remove_block_route(str(old[0]))

    def set_local_workload(self, key: str, ips: tuple[Any, ...], ifname: str) -> None:
        """A local workload's addresses and interface (no addresses = gone)."""
        new = tuple(f"{ip}/{ip.max_prefixlen}" for ip in ips)
        for dst in self._local_by_ep.pop(key, ()):
            if dst not in new and self._local.get(dst) == key:
                del self._local[dst]
                self._seq.remove(sq.ROUTE, dst)
        if not new:
            return
        self._local_by_ep[key] = new
        for dst in new:
            self._local[dst] = key
            self._seq.put(sq.ROUTE, dst, m.RouteUpdate(
                dst, "local-workload", dst_node=self._me, ifname=ifname))

    # -- flush ---------------------------------------------------------------------------

    def flush(self) -> None:
        if self._all_dirty:
            blocks: set[str] | Any = self._blocks.keys()
            nodes: set[str] | Any = self._nodes.keys() | self._vteps | self._host_routes.keys()
        else:
            if not (self._dirty_blocks or self._dirty_nodes):
                return
            blocks = set(self._dirty_blocks)
            for node in self._dirty_nodes:
                blocks |= self._blocks_by_node.get(node, set())
            nodes = self._dirty_nodes
        vxlan = any(p.vxlan_mode != "Never" and p.network.version == 4
                    for p in self._pools.values())
        for node in list(nodes):
            self._node_routes(node, vxlan)
        for key in list(blocks):
            self._block(key)
        self._all_dirty = False
        self._dirty_blocks.clear()
        self._dirty_nodes.clear()

    def _node_routes(self, node: str, vxlan: bool) -> None:
        """The node's VTEP and its host route (`local-host` / `remote-host`)."""
        info = self._nodes.get(node)
        if (vxlan and node != self._me and info is not None and info.vxlan_ip
                and info.vxlan_mac and info.underlay):
            self._vteps.add(node)
            self._seq.put(sq.VTEP, node, m.VTEPUpdate(node, info.vxlan_ip, info.vxlan_mac,
                                                      info.underlay))
        elif node in self._vteps:
            self._vteps.discard(node)
            self._seq.remove(sq.VTEP, node)
        old = self._host_routes.pop(node, None)
        dst = f"{info.underlay}/32" if info is not None and info.underlay else None
        if old is not None and old != dst and old not in self._local:
            self._seq.remove(sq.ROUTE, old)
        if dst is not None and info is not None:
            self._host_routes[node] = dst
            self._seq.put(sq.ROUTE, dst, m.RouteUpdate(
                dst, "local-host" if node == self._me else "remote-host", dst_node=node,
                dst_node_ip=info.underlay))

    def _remove_block_route(self, dst: str) -> None:
        if dst in self._block_routes:
            self._block_routes.discard(dst)
            if dst not in self._local:
                self._seq.remove(sq.ROUTE, dst)

    def _block(self, key: str) -> None:
        got = self._blocks.get(key)
        if got is None:
            return
        cidr, owner = got
        dst = str(cidr)
        msg = self._block_route(cidr, owner)
        if msg is None:
            self._remove_block_route(dst)
        else:
            self._block_routes.add(dst)
            self._seq.put(sq.ROUTE, dst, msg)

    def _block_route(self, cidr: IPNetwork, owner: str | None) -> m.RouteUpdate | None:
        if owner is None or cidr.version != 4:
            return None
        pool = next((p for p in self._pools.values()
                     if p.network.version == 4 and cidr.subnet_of(p.network)), None)  # type: ignore[arg-type]
        if pool is None:
            return None
        if owner == self._me:
            # The route dataplane blackholes it (VXLAN pools): an unallocated address of
            # our block must not leave by the default route.
            return m.RouteUpdate(str(cidr), "local-block", dst_node=owner,
                                 nat_outgoing=pool.nat_outgoing)
        node = self._nodes.get(owner)
        if node is None or not node.underlay:
            return None
        if pool.vxlan_mode != "Never":
            mode, encap = pool.vxlan_mode, "vxlan"
        elif pool.ipip_mode != "Never":
            mode, encap = pool.ipip_mode, "ipip"
        else:
            # Unencapsulated: BIRD's route when BGP runs (the route dataplane then leaves
            # it alone); the route dataplane programs it itself without BGP.
            mode, encap = "Never", "none"

        def route(next_hop: str | None, encap: str = "none",
                  same_subnet: bool = False) -> m.RouteUpdate:
            return m.RouteUpdate(str(cidr), "remote-block", dst_node=owner,
                                 dst_node_ip=node.underlay, next_hop=next_hop, encap=encap,
                                 same_subnet=same_subnet, nat_outgoing=pool.nat_outgoing)

        same = self._same_subnet(node.underlay)
        if mode in ("CrossSubnet", "Never") and (same or mode == "Never"):
            return route(node.underlay, same_subnet=same)
        if encap == "vxlan":
            if owner not in self._vteps:
                return None  # no VTEP, no route through it
            return route(node.vxlan_ip, "vxlan")
        return route(node.underlay, "ipip")

    def _same_subnet(self, address: str) -> bool:
        mine = self._nodes.get(self._me)
        if mine is None or mine.subnet is None:
            return False  # unknown: encapsulate, which works either way
        return ipaddress.IPv4Address(address) in mine.subnet
