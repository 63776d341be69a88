"""Which BGP sessions one node has: the node-to-node mesh, BGPPeers and route reflection.

Pure: `plan_peers(inputs, node_name, secrets)` returns the sessions (`PeerPlan`) and the
problems found (`Issue`). The rules are Calico's (confd's peering calculation):

* Mesh (BGPConfiguration `default` nodeToNodeMeshEnabled, default true): a session to every
  other node's spec.bgp address, except nodes that are route reflectors (they have a
  routeReflectorClusterID); a route reflector itself ignores the mesh. The node with the
  higher address waits passively, so two nodes never race to open the same session.
* BGPPeer without node/nodeSelector: a global peer of every node. With node/nodeSelector: a
  peer of the selected nodes only, unless a global peer already covers that address. The
  remote end is peerIP (+asNumber), or every node selected by peerSelector (their own AS).
* Reverse peerings: the nodes a BGPPeer points at (peerSelector, or a node whose address
  and AS equal peerIP/asNumber) get the opposite session automatically, so selector peerings
  are symmetric (reversePeering: Manual turns this off).
* A route reflector (this node has a cluster ID) treats a same-AS peer whose cluster ID
  differs from its own as a client (`rr client`); only a reflector re-advertises iBGP routes.
* BGPFilters: a session made from a BGPPeer carries the names in its `filters`, in order,
  that exist as valid BGPFilters; a missing or invalid one is left out and reported.

Nothing here can produce a session BIRD would refuse: a peer that cannot be rendered is left
out and reported as an Issue, which status shows.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tabby.bgp.inputs import FILTERS, BgpInputs
from tabby.bgp.status import TYPE_GLOBAL, TYPE_MESH, TYPE_NODE, TYPE_RR, TYPE_RR_CLIENT
from tabby.resources import BGPConfiguration, BGPPeer, Node
from tabby.resources.common import duration_seconds
from tabby.selector import SelectorError, parse

DEFAULT_AS = 64512
DEFAULT_PORT = 179
MESH_RESTART_TIME = 120  # seconds, Calico's graceful restart time for mesh sessions

SecretLookup = Callable[[str, str], "str | None"]


_NAME_PREFIX = {"mesh": "Mesh", "global": "Global", "node": "Node"}


@dataclass(frozen=True)
class Issue:
    """Something in the datastore that BGP could not use as written."""

    severity: str  # "error" | "warning" | "info"
    source: str  # e.g. 'BGPPeer "rr"'
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


@dataclass(frozen=True)
class PeerPlan:
    """One BGP session of this node, everything the renderer needs."""

    name: str  # BIRD protocol name: Mesh_/Global_/Node_ + address (+ _port_N)
    scope: str  # "mesh" | "global" | "node"
    peer_type: str  # one of the TYPE_* labels
    address: str
    version: int
    port: int | None  # None = BGP's 179
    as_number: int
    local_as: int
    source: str  # where it comes from: "node-to-node mesh" or 'BGPPeer "x"'
    peer_node: str | None = None  # the Tabby node at `address`, if any
    rr_client: bool = False
    rr_cluster_id: str | None = None
    passive: bool = False
    password: str | None = None
    source_address: str | None = None
    next_hop: str | None = None  # "self" | "keep" | None (BIRD's default)
    restart_time: int | None = None
    keepalive_time: int | None = None
    ttl_security: int | None = None
    allow_local_as: int | None = None
    filters: tuple[str, ...] = ()  # BGPFilter names, in the BGPPeer's order (all exist)


@dataclass(frozen=True)
class NodeBGP:
    """A node's BGP facts, with defaults applied."""

    name: str
    ipv4: str | None
    ipv6: str | None
    ipv4_cidr: str | None
    ipv6_cidr: str | None
    as_number: int
    cluster_id: str | None
    labels: dict[str, str]
    listen_port: int | None  # None: the default 179

    def address(self, version: int) -> str | None:
        return self.ipv4 if version == 4 else self.ipv6


def _host(cidr: str | None) -> str | None:
    return None if not cidr else str(ipaddress.ip_interface(cidr).ip)


def mesh_enabled(inputs: BgpInputs) -> bool:
    default = inputs.configs.get("default")
    return True if default is None else default.spec.effective_node_to_node_mesh


def global_as(inputs: BgpInputs) -> int:
    default = inputs.configs.get("default")
    return DEFAULT_AS if default is None else default.spec.effective_as_number


def node_config(inputs: BgpInputs, node_name: str) -> BGPConfiguration | None:
    return inputs.configs.get(f"node.{node_name}")


def listen_port(inputs: BgpInputs, node_name: str) -> int | None:
    """The node's BGP port: its `node.<name>` BGPConfiguration, else `default`, else None."""
    for cfg in (node_config(inputs, node_name), inputs.configs.get("default")):
        if cfg is not None and cfg.spec.listenPort is not None:
            return cfg.spec.listenPort
    return None


def node_bgp(inputs: BgpInputs, node: Node) -> NodeBGP:
    bgp = node.spec.bgp
    return NodeBGP(
        name=node.metadata.name,
        ipv4=_host(bgp.ipv4Address if bgp else None),
        ipv6=_host(bgp.ipv6Address if bgp else None),
        ipv4_cidr=bgp.ipv4Address if bgp else None,
        ipv6_cidr=bgp.ipv6Address if bgp else None,
        as_number=(bgp.asNumber if bgp and bgp.asNumber is not None else global_as(inputs)),
        cluster_id=bgp.routeReflectorClusterID if bgp else None,
        labels=dict(node.metadata.labels or {}),
        listen_port=listen_port(inputs, node.metadata.name),
    )


def protocol_name(scope: str, address: str, port: int | None) -> str:
    """A BIRD identifier that status can read back: Mesh_10_0_0_1, Global_fd00__1_port_1179."""
    ident = address.replace(".", "_").replace(":", "_")
    suffix = f"_port_{port}" if port is not None else ""
    return f"{_NAME_PREFIX[scope]}_{ident}{suffix}"


def bird_string_ok(text: str) -> bool:
    """BIRD strings have no escapes: a quote, backslash or newline cannot be written."""
    return not any(c in text for c in '"\\\n\r') and text.isprintable()


@dataclass
class _Candidate:
    """A peering before the local checks (self, address family, duplicates)."""

    scope: str
    address: str
    port: int | None
    as_number: int
    source: str
    peer: BGPPeer | None  # None for the mesh
    peer_node: NodeBGP | None


@dataclass
class _Planner:
    inputs: BgpInputs
    me: NodeBGP
    secrets: SecretLookup
    nodes: dict[str, NodeBGP]
    issues: list[Issue] = field(default_factory=list)

    def issue(self, severity: str, source: str, message: str) -> None:
        self.issues.append(Issue(severity, source, message))

    # -- selection --------------------------------------------------------------------
    def matching(self, selector: str, source: str) -> list[NodeBGP] | None:
        try:
            sel = parse(selector)
        except SelectorError as exc:
            self.issue("error", source, f"invalid selector {selector!r}: {exc}")
            return None
        return [n for _, n in sorted(self.nodes.items()) if sel.matches(n.labels)]

    def node_at(self, address: str) -> NodeBGP | None:
        for node in self.nodes.values():
            if address in (node.ipv4, node.ipv6):
                return node
        return None

    def applies_to_me(self, peer: BGPPeer, source: str) -> bool:
        spec = peer.spec
        if spec.node:
            return spec.node == self.me.name
        if spec.nodeSelector:
            selected = self.matching(spec.nodeSelector, source)
            return selected is not None and any(n.name == self.me.name for n in selected)
        return True

    # -- the remote ends of one BGPPeer -----------------------------------------------
    def remote_ends(self, peer: BGPPeer, scope: str, source: str) -> list[_Candidate]:
        spec = peer.spec
        if spec.peerSelector:
            selected = self.matching(spec.peerSelector, source)
            if selected is None:
                return []
            others = [n for n in selected if n.name != self.me.name]
            if not selected:
                # (Selecting only this node is normal: a route reflector matches its own
                # "peer with the route reflectors" BGPPeer.)
                self.issue(
                    "warning", source, f"peerSelector {spec.peerSelector!r} selects no node"
                )
            return [self.node_candidate(n, v, scope, source, peer) for n in others for v in (4, 6)
                    if n.address(v)]
        if spec.peerIP:
            address, port = spec.peer_address()
            address = str(ipaddress.ip_address(address))
            as_number = spec.asNumber if spec.asNumber is not None else global_as(self.inputs)
            target = self.node_at(address)
            if port is None and target is not None and target.as_number == as_number:
                port = target.listen_port  # a Tabby node listens where its config says
            return [_Candidate(scope, address, port, as_number, source, peer, target)]
        if spec.localWorkloadSelector:
            self.issue("warning", source, "localWorkloadSelector peers are not supported: ignored")
        return []

    def node_candidate(
        self, node: NodeBGP, version: int, scope: str, source: str, peer: BGPPeer | None
    ) -> _Candidate:
        address = node.address(version)
        assert address is not None
        return _Candidate(scope, address, node.listen_port, node.as_number, source, peer, node)

    # -- the whole plan ---------------------------------------------------------------
    def candidates(self) -> list[_Candidate]:
        out: list[_Candidate] = []
        # A route reflector ignores the mesh, and nobody meshes with a route reflector.
        if mesh_enabled(self.inputs) and not self.me.cluster_id:
            for other in sorted(self.nodes.values(), key=lambda n: n.name):
                if other.name == self.me.name or other.cluster_id:
                    continue
                out += [self.node_candidate(other, v, "mesh", TYPE_MESH, None)
                        for v in (4, 6) if other.address(v)]
        peers = sorted(self.inputs.peers.items())
        # Global peers first, so a node-specific peering to the same address is dropped.
        for name, peer in peers:
            if not (peer.spec.node or peer.spec.nodeSelector):
                out += self.remote_ends(peer, "global", f'BGPPeer "{name}"')
        for name, peer in peers:
            source = f'BGPPeer "{name}"'
            if (peer.spec.node or peer.spec.nodeSelector) and self.applies_to_me(peer, source):
                out += self.remote_ends(peer, "node", source)
        for name, peer in peers:
            out += self.reverse(name, peer)
        return out

    def reverse(self, name: str, peer: BGPPeer) -> list[_Candidate]:
        """The sessions this node gets because a BGPPeer points at it."""
        spec = peer.spec
        source = f'BGPPeer "{name}"'
        if spec.reversePeering == "Manual":
            return []
        if spec.peerSelector:
            targets = self.matching(spec.peerSelector, source) or []
            versions: tuple[int, ...] = (4, 6)
        elif spec.peerIP:
            address, port = spec.peer_address()
            want_as = spec.asNumber if spec.asNumber is not None else global_as(self.inputs)
            targets = [
                n
                for n in self.nodes.values()
                if address in (n.ipv4, n.ipv6)
                and n.as_number == want_as
                and (port is None or port == (n.listen_port or DEFAULT_PORT))
            ]
            versions = (ipaddress.ip_address(address).version,)
        else:
            return []
        if not any(n.name == self.me.name for n in targets):
            return []
        if spec.node:
            remote = [self.nodes[spec.node]] if spec.node in self.nodes else []
        else:
            remote = self.matching(spec.nodeSelector or "all()", source) or []
        return [
            self.node_candidate(n, v, "node", source, peer)
            for n in remote
            for v in versions
            if n.name != self.me.name and n.address(v)
        ]

    def plan(self) -> list[PeerPlan]:
        seen: dict[tuple[str, str, int | None], _Candidate] = {}
        mesh_addresses: set[str] = set()
        plans: list[PeerPlan] = []
        for cand in self.candidates():
            if cand.address in (self.me.ipv4, self.me.ipv6):
                continue  # ourselves (a selector that also selects this node)
            key = (cand.scope, cand.address, cand.port)
            if key in seen:
                continue  # first emitted wins: explicit before reverse, global before node
            if cand.scope == "node" and ("global", cand.address, cand.port) in seen:
                continue
            if cand.scope != "mesh" and cand.address in mesh_addresses:
                self.issue(
                    "info",
                    cand.source,
                    f"{cand.address} is already a node-to-node mesh peer: no second session",
                )
                seen[key] = cand
                continue
            seen[key] = cand
            version = ipaddress.ip_address(cand.address).version
            if self.me.address(version) is None:
                self.issue(
                    "warning",
                    cand.source,
                    f"peer {cand.address} is IPv{version} but this node has no "
                    f"spec.bgp.ipv{version}Address: no session",
                )
                continue
            made = self.make(cand, version)
            if made is not None:
                if cand.scope == "mesh":
                    mesh_addresses.add(cand.address)
                plans.append(made)
        plans.sort(key=lambda p: ({"mesh": 0, "global": 1, "node": 2}[p.scope], p.version,
                                  ipaddress.ip_address(p.address), p.port or 0))
        return plans

    def password(self, ref_owner: str, password: object) -> tuple[bool, str | None]:
        """(usable, value): a password that cannot be read leaves the session out."""
        if password is None:
            return True, None
        ref = getattr(password, "secretKeyRef", None)
        if ref is None:
            return True, None
        value = self.secrets(ref.name or "", ref.key)
        if value is None:
            if ref.optional:
                return True, None
            self.issue(
                "error",
                ref_owner,
                f"password secret {ref.name or ''!r} key {ref.key!r} not found: no session",
            )
            return False, None
        if not bird_string_ok(value):
            self.issue(
                "error",
                ref_owner,
                "password contains a quote, backslash or control character, which BIRD "
                "cannot take: no session",
            )
            return False, None
        return True, value

    def make(self, cand: _Candidate, version: int) -> PeerPlan | None:
        me = self.me
        peer_node = cand.peer_node or self.node_at(cand.address)
        peer_cid = peer_node.cluster_id if peer_node else None
        rr_client = bool(
            me.cluster_id and cand.as_number == me.as_number and peer_cid != me.cluster_id
        )
        if cand.scope == "mesh":
            default = self.inputs.configs.get("default")
            ok, password = self.password(
                'BGPConfiguration "default"', default.spec.nodeMeshPassword if default else None
            )
            if not ok:
                return None
            restart = MESH_RESTART_TIME
            if default is not None and default.spec.nodeMeshMaxRestartTime:
                restart = _seconds(default.spec.nodeMeshMaxRestartTime)
            return PeerPlan(
                name=protocol_name("mesh", cand.address, None),
                scope="mesh",
                peer_type=TYPE_MESH,
                address=cand.address,
                version=version,
                port=cand.port,
                as_number=cand.as_number,
                local_as=me.as_number,
                source=cand.source,
                peer_node=peer_node.name if peer_node else None,
                passive=int(ipaddress.ip_address(cand.address))
                > int(ipaddress.ip_address(me.address(version) or "0.0.0.0")),
                password=password,
                source_address=me.address(version),
                restart_time=restart,
            )
        assert cand.peer is not None
        spec = cand.peer.spec
        ok, password = self.password(cand.source, spec.password)
        if not ok:
            return None
        next_hop = None
        if spec.nextHopMode == "Self":
            next_hop = "self"
        elif spec.nextHopMode == "Keep":
            next_hop = "keep"
        elif spec.keepOriginalNextHop and cand.as_number != me.as_number:
            next_hop = "keep"
        keepalive = _seconds(spec.keepaliveTime) if spec.keepaliveTime else None
        if keepalive is not None and not 1 <= keepalive <= 21845:
            self.issue(
                "warning",
                cand.source,
                f"keepaliveTime {spec.keepaliveTime} out of range 1s-21845s: BIRD's default used",
            )
            keepalive = None
        if rr_client:
            peer_type = TYPE_RR_CLIENT
        elif peer_cid:
            peer_type = TYPE_RR
        else:
            peer_type = TYPE_GLOBAL if cand.scope == "global" else TYPE_NODE
        return PeerPlan(
            name=protocol_name(cand.scope, cand.address, cand.port),
            scope=cand.scope,
            peer_type=peer_type,
            address=cand.address,
            version=version,
            port=cand.port,
            as_number=cand.as_number,
            local_as=spec.localASNumber if spec.localASNumber is not None else me.as_number,
            source=cand.source,
            peer_node=peer_node.name if peer_node else None,
            rr_client=rr_client,
            rr_cluster_id=me.cluster_id if rr_client else None,
            password=password,
            source_address=None if spec.sourceAddress == "None" else me.address(version),
            next_hop=next_hop,
            restart_time=_seconds(spec.maxRestartTime) if spec.maxRestartTime else None,
            keepalive_time=keepalive,
            ttl_security=spec.ttlSecurity or None,
            allow_local_as=spec.numAllowedLocalASNumbers or None,
            filters=self.filters(spec.filters or (), cand.source),
        )

    def filters(self, names: Iterable[str], source: str) -> tuple[str, ...]:
        """The BGPFilters a peer names that can be used; the others are reported and the
        sessions rendered without them (leaving a session out would cut more routes than
        a filter could, and a dangling name must not stop a config BIRD would take)."""
        found: list[str] = []
        for name in dict.fromkeys(names):  # a repeated name adds nothing: first match wins
            if name in self.inputs.filters:
                found.append(name)
            elif f"{FILTERS}{name}" in self.inputs.invalid:
                self.issue("warning", source,
                           f'BGPFilter "{name}" is invalid: sessions rendered without it')
            else:
                self.issue("warning", source,
                           f'BGPFilter "{name}" not found: sessions rendered without it')
        return tuple(found)


def _seconds(duration: str) -> int:
    return max(1, round(duration_seconds(duration)))


def plan_peers(
    inputs: BgpInputs, node_name: str, secrets: SecretLookup | None = None
) -> tuple[NodeBGP | None, list[PeerPlan], list[Issue]]:
    """This node's BGP facts, its sessions and the problems found (sessions left out)."""
    issues: list[Issue] = []
    node = inputs.nodes.get(node_name)
    if node is None:
        issues.append(
            Issue("error", f'Node "{node_name}"', "not found in the datastore: no BGP sessions")
        )
        return None, [], issues
    nodes = {name: node_bgp(inputs, n) for name, n in inputs.nodes.items()}
    me = nodes[node_name]
    if me.ipv4 is None and me.ipv6 is None:
        issues.append(
            Issue(
                "warning",
                f'Node "{node_name}"',
                "has no spec.bgp.ipv4Address or ipv6Address: no BGP sessions",
            )
        )
        return me, [], issues
    planner = _Planner(inputs, me, secrets or (lambda _n, _k: None), nodes, issues)
    plans = planner.plan()
    # A selector is evaluated in several passes: report each problem once.
    return me, plans, list(dict.fromkeys(planner.issues))
