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
* Borrowed addresses: an IPv4 address of a workload on another node that is in no block,
  or in a block affine to some other node (IPAM borrowed it: strictAffinity off, the
  node's blocks full), gets a `remote-workload` /32 to the workload's node, encapsulated
  exactly as a block of that node would be. It is more specific than the block owner's
  route (and than the owner's own blackhole), so traffic goes straight to the workload.
  With encap "none" it is BIRD's route while BGP runs (BIRD announces borrowed /32s).
  Only the few borrowed workloads are kept with their routes; for the rest there is a
  block -> workloads index, so an affinity change re-checks just that block's workloads
  and a new block just the workloads that had no block.
* A dst has one route: a local workload's first, then a block's, then a borrowed one's.
* IPv6 blocks and borrowed IPv6 addresses are left out; see docs/design/calc.md.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Iterable, Mapping
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
        # Every remote workload with an IPv4 address: its addresses (the tuple the graph
        # also gives the IP set index) and, once classified, one entry per address in the
        # index of the block holding it, or in _unblocked. Nothing more for the many whose
        # addresses are in their own node's blocks.
        self._remote: dict[str, tuple[str, ...]] = {}
        self._members: dict[str, dict[str, str]] = {}  # block key -> {workload: its node}
        self._unblocked: dict[str, str] = {}  # workload -> node: an IPv4 address in no block
        self._by_prefix: dict[int, dict[int, str]] = {}  # prefix len -> {network: block key}
        self._one_size: tuple[int, dict[int, str]] | None = None  # (shift, table): one size
        # To classify at the next flush (out of the index meanwhile): workload -> node.
        self._dirty_wls: dict[str, str] = {}
        # Borrowed workloads only: node and /32s; who wants each /32 (last comer first).
        self._borrowed: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._borrowed_by_node: dict[str, set[str]] = {}
        self._claims: dict[str, dict[str, m.RouteUpdate | None]] = {}

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
        new: tuple[IPNetwork, str | None] | None = None
        if doc is not None:
            affinity = doc.get("affinity") or ""
            node = (sys.intern(affinity[len(AFFINITY_PREFIX):])
                    if affinity.startswith(AFFINITY_PREFIX) else None)
            new = (ipaddress.ip_network(doc["cidr"]), node)
        old = self._blocks.get(key)
        if old != new:
            self._requeue_block(key, new)  # while the index still matches the old layout
        if old is not None:
            del self._blocks[key]
            self._index_block(key, old[0], add=False)
            if old[1] is not None:
                bucket = self._blocks_by_node[old[1]]
                bucket.discard(key)
                if not bucket:
                    del self._blocks_by_node[old[1]]
        if new is not None:
            self._blocks[key] = new
            self._index_block(key, new[0], add=True)
            if new[1] is not None:
                self._blocks_by_node.setdefault(new[1], set()).add(key)
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
                if dst in self._claims:
                    self._sync_workload_route(dst)  # a borrowed /32 it was hiding
        if not new:
            return
        self._local_by_ep[key] = new
        for dst in new:
            self._local[dst] = key
            self._seq.put(sq.ROUTE, dst, m.RouteUpdate(
                dst, "local-workload", dst_node=self._me, ifname=ifname))

    def set_remote_workload(self, key: str, node: str, ips: tuple[str, ...]) -> None:
        """A workload on another node: its node and addresses (no addresses = gone, or
        now local). Classified (borrowed or not) at the next flush."""
        old = self._remote.get(key)
        if old is not None:
            if ips == old and key not in self._dirty_wls and self._indexed_node(key, old) == node:
                self._remote[key] = ips  # a label change: nothing for routes
                return
            self._unindex(key, old)
        if _has_v4(ips):
            self._remote[key] = ips
        elif old is not None:
            del self._remote[key]
        elif key not in self._dirty_wls:
            return  # never had an IPv4 address here
        self._dirty_wls[key] = sys.intern(node) if node else ""

    # -- flush ---------------------------------------------------------------------------

    def flush(self) -> None:
        nodes: set[str] | Any = ()
        if self._all_dirty or self._dirty_blocks or self._dirty_nodes:
            nodes = self._flush_nodes_and_blocks()
        elif not self._dirty_wls:
            return
        # Borrowed addresses: classify the changed workloads, then re-route the borrowed
        # ones whose node (VTEP, address) or encapsulation inputs changed.
        if self._dirty_wls:
            self._classify(self._dirty_wls)
            self._dirty_wls.clear()
        if self._all_dirty:
            rerouted: Iterable[str] = list(self._borrowed)
        else:
            rerouted = [k for n in nodes for k in self._borrowed_by_node.get(n, ())]
        for key in rerouted:
            node, dsts = self._borrowed[key]
            for dst in dsts:
                self._claim(dst, key, node)
        self._all_dirty = False
        self._dirty_nodes.clear()

    def _flush_nodes_and_blocks(self) -> set[str] | Any:
        """VTEPs, host and block routes of what changed; returns the nodes looked at."""
        if self._all_dirty:
            blocks: set[str] | Any = self._blocks.keys()
            nodes: set[str] | Any = self._nodes.keys() | self._vteps | self._host_routes.keys()
        else:
            blocks = set(self._dirty_blocks)
            for node in self._dirty_nodes:
                blocks |= self._blocks_by_node.get(node, set())
            nodes = set(self._dirty_nodes)
        vxlan = any(p.vxlan_mode != "Never" and p.network.version == 4
                    for p in self._pools.values())
        for node in list(nodes):
            self._node_routes(node, vxlan)
        for key in list(blocks):
            self._block(key)
        self._dirty_blocks.clear()
        return nodes

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
                if dst in self._claims:
                    self._sync_workload_route(dst)

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

    def _pool_for(self, cidr: IPNetwork) -> PoolInfo | None:
        return next((p for p in self._pools.values()
                     if p.network.version == 4 and cidr.subnet_of(p.network)), None)  # type: ignore[arg-type]

    def _block_route(self, cidr: IPNetwork, owner: str | None) -> m.RouteUpdate | None:
        if owner is None or cidr.version != 4:
            return None
        pool = self._pool_for(cidr)
        if pool is None:
            return None
        if owner == self._me:
            # The route dataplane blackholes it (VXLAN pools): an unallocated address of
            # our block must not leave by the default route.
            return m.RouteUpdate(str(cidr), "local-block", dst_node=owner,
                                 nat_outgoing=pool.nat_outgoing)
        return self._remote_route(str(cidr), "remote-block", owner, pool)

    def _remote_route(self, dst: str, kind: str, owner: str,
                      pool: PoolInfo) -> m.RouteUpdate | None:
        """A route to `dst` on node `owner`, encapsulated as `pool` says for that node
        (remote blocks and borrowed addresses alike); None while the node, or the VTEP
        it needs, is unknown."""
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
            return m.RouteUpdate(dst, kind, dst_node=owner,
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

    # -- borrowed addresses ----------------------------------------------------------------

    def _index_block(self, key: str, cidr: IPNetwork, add: bool) -> None:
        if cidr.version != 4:
            return
        net = int(cidr.network_address)
        if add:
            self._by_prefix.setdefault(cidr.prefixlen, {})[net] = key
        else:
            table = self._by_prefix.get(cidr.prefixlen)
            if table is not None and table.get(net) == key:
                del table[net]
                if not table:
                    del self._by_prefix[cidr.prefixlen]
        # Pools almost always share one block size: then a lookup is one shift, one probe.
        self._one_size = None
        if len(self._by_prefix) == 1:
            ((plen, table),) = self._by_prefix.items()
            self._one_size = (32 - plen, table)

    def _block_of(self, addr: int) -> str | None:
        """The block holding an IPv4 address (as an int): one dict probe per block size."""
        one = self._one_size
        if one is not None:
            return one[1].get(addr >> one[0] << one[0])
        for plen, table in self._by_prefix.items():
            shift = 32 - plen
            got = table.get(addr >> shift << shift)
            if got is not None:
                return got
        return None

    def _indexed_node(self, key: str, ips: tuple[str, ...]) -> str | None:
        """The node a classified workload was indexed under (None: not indexed)."""
        ip = ips[0] if len(ips) == 1 else next(ip for ip in ips if ":" not in ip)
        addr = int.from_bytes(socket.inet_aton(ip), "big")
        one = self._one_size
        block = one[1].get(addr >> one[0] << one[0]) if one is not None else self._block_of(addr)
        if block is None:
            return self._unblocked.get(key)
        members = self._members.get(block)
        return None if members is None else members.get(key)

    def _unindex(self, key: str, ips: tuple[str, ...]) -> None:
        """Take a workload out of the index (which must match the layout it was put in
        under: block changes requeue their workloads before the layout changes)."""
        self._unblocked.pop(key, None)
        for ip in ips:
            if ":" in ip:
                continue
            block = self._block_of(_int(ip))
            members = None if block is None else self._members.get(block)
            if block is not None and members is not None:
                members.pop(key, None)
                if not members:
                    del self._members[block]

    def _requeue(self, key: str, node: str) -> None:
        self._unindex(key, self._remote[key])
        self._dirty_wls[key] = node

    def _requeue_block(self, key: str, new: tuple[IPNetwork, str | None] | None) -> None:
        """A block appears, goes, moves or changes affinity: classify again its workloads
        and, for a new range, the workloads that had an address in no block."""
        for wl, node in list(self._members.get(key, {}).items()):
            self._requeue(wl, node)
        old = self._blocks.get(key)
        if new is None or new[0].version != 4 or (old is not None and old[0] == new[0]):
            return
        lo, hi = int(new[0].network_address), int(new[0].broadcast_address)
        for wl, node in list(self._unblocked.items()):
            if any(lo <= _int(ip) <= hi for ip in self._remote[wl] if ":" not in ip):
                self._requeue(wl, node)

    def _classify(self, dirty: Mapping[str, str]) -> None:
        """Index workloads under their blocks and note their borrowed addresses: those in
        no block or in a block not affine to the workload's node. (The start of day's
        250,000 workloads come through here: hence the locals and the one-block-size path.)"""
        remote, blocks, index = self._remote, self._blocks, self._members
        one, block_of = self._one_size, self._block_of
        for key, node in dirty.items():
            ips = remote.get(key)
            dsts: list[str] = []
            for ip in ips or ():
                if ":" in ip:
                    continue
                addr = int.from_bytes(socket.inet_aton(ip), "big")
                if one is not None:
                    block = one[1].get(addr >> one[0] << one[0])
                else:
                    block = block_of(addr)
                if block is None:
                    self._unblocked[key] = node
                    dsts.append(f"{ip}/32")
                    continue
                members = index.get(block)
                if members is None:
                    members = index[block] = {}
                members[key] = node
                if blocks[block][1] != node:
                    dsts.append(f"{ip}/32")
            if dsts or key in self._borrowed:
                self._set_borrowed(key, node, tuple(dsts))

    def _set_borrowed(self, key: str, node: str, dsts: tuple[str, ...]) -> None:
        old = self._borrowed.pop(key, None)
        if old is not None:
            bucket = self._borrowed_by_node[old[0]]
            bucket.discard(key)
            if not bucket:
                del self._borrowed_by_node[old[0]]
            for dst in old[1]:
                if dst not in dsts:
                    self._unclaim(dst, key)
        if dsts:
            self._borrowed[key] = (node, dsts)
            self._borrowed_by_node.setdefault(node, set()).add(key)
            for dst in dsts:
                self._claim(dst, key, node)

    def _claim(self, dst: str, key: str, node: str) -> None:
        msg = None
        if node != self._me:
            pool = self._pool_for(ipaddress.IPv4Network(dst))
            if pool is not None:
                msg = self._remote_route(dst, "remote-workload", node, pool)
        self._claims.setdefault(dst, {})[key] = msg
        self._sync_workload_route(dst)

    def _unclaim(self, dst: str, key: str) -> None:
        claims = self._claims.get(dst)
        if claims is not None and claims.pop(key, 0) != 0:
            if not claims:
                del self._claims[dst]
            self._sync_workload_route(dst)

    def _sync_workload_route(self, dst: str) -> None:
        """Put or remove the borrowed /32 at `dst`: the latest claimant's route, unless a
        local workload or a block has the same destination (theirs comes first)."""
        if dst in self._local or dst in self._block_routes:
            return
        claims = self._claims.get(dst)
        msg = claims[next(reversed(claims))] if claims else None
        if msg is None:
            self._seq.remove(sq.ROUTE, dst)
        else:
            self._seq.put(sq.ROUTE, dst, msg)


def _int(ip: str) -> int:
    """An IPv4 address in the graph's canonical text form, as an int (cheaper than
    ipaddress for the 250,000-workload start of day)."""
    return int.from_bytes(socket.inet_aton(ip), "big")


def _has_v4(ips: tuple[str, ...]) -> bool:
    if len(ips) == 1:
        return ":" not in ips[0]
    return any(":" not in ip for ip in ips)
