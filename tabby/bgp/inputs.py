"""What the BGP renderer reads from the datastore, kept up to date from (key, value) updates.

The agent runtime feeds the controller the same updates it feeds its calculation graph:
`(key, decoded JSON dict | None)`. Of those, BGP needs:

    /tabby/v3/nodes/<name>                       Node (addresses, AS, RR cluster id, labels)
    /tabby/v3/bgppeers/<name>                    BGPPeer
    /tabby/v3/bgpconfigurations/<name>           BGPConfiguration `default` and `node.<name>`
    /tabby/v3/ippools/<name>                     IPPool (encapsulation, disableBGPExport)
    /tabby/v3/bgpfilters/<name>                  BGPFilter (rules BGPPeers refer to by name)
    /tabby/ipam/v2/affinities/<node>/<block>     this node's block affinities

Block contents (/tabby/ipam/v2/blocks/) are deliberately ignored: every allocation rewrites
a block, and the routes depend only on which blocks a node owns. An object that does not
validate is remembered under `invalid` (key -> one-line error) so that status can name it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from tabby.resources import (
    BGPConfiguration,
    BGPFilter,
    BGPPeer,
    IPPool,
    Node,
    ResourceError,
    from_dict,
)

NODES = "/tabby/v3/nodes/"
PEERS = "/tabby/v3/bgppeers/"
CONFIGS = "/tabby/v3/bgpconfigurations/"
POOLS = "/tabby/v3/ippools/"
FILTERS = "/tabby/v3/bgpfilters/"
AFFINITIES = "/tabby/ipam/v2/affinities/"

# Every prefix the controller wants in its feed (the agent's syncer must include them).
WATCH_PREFIXES = (NODES, PEERS, CONFIGS, POOLS, FILTERS, AFFINITIES)

_KINDS: dict[str, tuple[str, type[Any]]] = {
    NODES: ("Node", Node),
    PEERS: ("BGPPeer", BGPPeer),
    CONFIGS: ("BGPConfiguration", BGPConfiguration),
    POOLS: ("IPPool", IPPool),
    FILTERS: ("BGPFilter", BGPFilter),
}


def _unescape(segment: str) -> str:
    # IPAM escapes node names in keys (see tabby/ipam/block.py); mirror it without importing
    # tabby.ipam (bgp sits beside ipam, not above it).
    return segment.replace("%2F", "/").replace("%25", "%")


def parse_affinity_key(key: str) -> tuple[str, str] | None:
    """'/tabby/ipam/v2/affinities/n1/10.65.0.0-26' -> ('n1', '10.65.0.0/26'); None if malformed."""
    node, sep, block = key[len(AFFINITIES) :].partition("/")
    addr, dash, plen = block.rpartition("-")
    if not sep or not dash or not node:
        return None
    try:
        net = ipaddress.ip_network(f"{addr}/{plen}")
    except ValueError:
        return None
    return _unescape(node), str(net)


@dataclass
class BgpInputs:
    """The datastore contents BGP cares about, typed. Mutated only through `apply`."""

    nodes: dict[str, Node] = field(default_factory=dict)
    peers: dict[str, BGPPeer] = field(default_factory=dict)
    configs: dict[str, BGPConfiguration] = field(default_factory=dict)
    pools: dict[str, IPPool] = field(default_factory=dict)
    filters: dict[str, BGPFilter] = field(default_factory=dict)
    # node -> {block CIDR: affinity state ("pending" | "confirmed" | "pendingDeletion")}
    affinities: dict[str, dict[str, str]] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)

    def copy(self) -> BgpInputs:
        """A snapshot another thread can render from (the models themselves are not mutated)."""
        return BgpInputs(
            nodes=dict(self.nodes),
            peers=dict(self.peers),
            configs=dict(self.configs),
            pools=dict(self.pools),
            filters=dict(self.filters),
            affinities={n: dict(b) for n, b in self.affinities.items()},
            invalid=dict(self.invalid),
        )

    @staticmethod
    def is_relevant(key: str, node_name: str | None = None) -> bool:
        """Whether a change to `key` can change the configuration of `node_name` (or of any
        node when None): other nodes' affinities cannot, so they are not even stored."""
        if key.startswith(AFFINITIES):
            if node_name is None:
                return True
            parsed = parse_affinity_key(key)
            return parsed is not None and parsed[0] == node_name
        return key.startswith((NODES, PEERS, CONFIGS, POOLS, FILTERS))

    def apply(self, key: str, value: dict[str, Any] | None) -> bool:
        """Record one update; True when something BGP reads changed."""
        if key.startswith(AFFINITIES):
            return self._apply_affinity(key, value)
        for prefix, (kind, _cls) in _KINDS.items():
            if key.startswith(prefix):
                return self._apply_resource(key, prefix, kind, value)
        return False

    def _apply_affinity(self, key: str, value: dict[str, Any] | None) -> bool:
        parsed = parse_affinity_key(key)
        if parsed is None:
            return False
        node, cidr = parsed
        blocks = self.affinities.setdefault(node, {})
        if value is None:
            changed = blocks.pop(cidr, None) is not None
        else:
            state = str(value.get("state") or "confirmed")
            changed = blocks.get(cidr) != state
            blocks[cidr] = state
        if not blocks:
            self.affinities.pop(node, None)
        return changed

    def _apply_resource(
        self, key: str, prefix: str, kind: str, value: dict[str, Any] | None
    ) -> bool:
        name = key[len(prefix) :]
        tables: dict[str, dict[str, Any]] = {
            NODES: self.nodes,
            PEERS: self.peers,
            CONFIGS: self.configs,
            POOLS: self.pools,
            FILTERS: self.filters,
        }
        table = tables[prefix]
        had_error = self.invalid.pop(key, None) is not None
        if value is None:
            return table.pop(name, None) is not None or had_error
        try:
            res = from_dict(value, where="stored")
        except ResourceError as exc:
            # "stored (BGPPeer x): spec.peerIP: ..." -> "spec.peerIP: ..." (status names it)
            msg = str(exc)
            self.invalid[key] = msg.split("): ", 1)[1] if "): " in msg else msg
            table.pop(name, None)
            return True
        if table.get(name) == res:
            return had_error
        table[name] = res
        return True

    def own_blocks(self, node_name: str) -> list[str]:
        """The node's confirmed blocks, sorted (pending claims are not announced yet, and a
        block being released is no longer announced)."""
        blocks = self.affinities.get(node_name, {})
        nets = [ipaddress.ip_network(c) for c, s in blocks.items() if s == "confirmed"]
        return [str(n) for n in sorted(nets, key=lambda n: (n.version, n))]
