"""BIRD 2 configuration for one node, rendered from the datastore contents (pure).

    result = render(inputs, "node-1", secrets=lookup)
    result.config   # the whole bird.conf text
    result.peers    # the sessions (PeerPlan), result.issues: what was left out and why

What the configuration does, per IP family (see docs/design/bgp.md for the reasons):

* `tabby_blocks4`: a static blackhole route per block affine to this node. BGP announces it
  (only the block, never the workload routes inside it) and the kernel gets it too, so an
  unallocated address of our block is dropped here instead of following the default route.
* `tabby_bgp_import4`: routes from peers, except our own blocks (nobody else may announce
  them; a more specific route inside them - an address another node borrowed - is fine).
* `tabby_bgp_export4` (the function `tabby_bgp_export_default4`): pool routes only:
  disableBGPExport pools never; our blocks as aggregates; other pool routes (what a route
  reflector reflects, what an external peer needs, addresses this node borrowed); service
  CIDRs; communities per prefixAdvertisements.
* BGPFilters: a session whose BGPPeer lists filters gets its own import/export filter that
  calls each filter's function in order (see filters.py) before the default: import keeps
  the own-block guard first, then the filters, then accepts; export runs the filters, then
  `tabby_bgp_export_default4()`.
* `tabby_kernel4`: learns the kernel's routes (underlay routes resolve iBGP next hops;
  workload routes on cali* interfaces in a pool are the borrowed addresses to announce) and
  installs only what BGP learned, plus our blackholes. VXLAN pools are left to the agent;
  IPIP pools go `onlink` via tunl0 (CrossSubnet: only towards other subnets), unless the
  node's agent programs IP-in-IP itself (its Node carries the annotation
  `tabby.dev/ipip-implementation: kernel|bpf`): then they are left to the agent as well.
  BIRD marks its kernel routes `proto bird` (12), it cannot use Tabby's own protocol number.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from tabby.bgp import filters as bgpfilters
from tabby.bgp.inputs import BgpInputs
from tabby.bgp.peers import (
    Issue,
    NodeBGP,
    PeerPlan,
    SecretLookup,
    bird_string_ok,
    global_as,
    mesh_enabled,
    node_config,
    plan_peers,
)
from tabby.resources import BGPConfiguration, IPPool

WORKLOAD_IFACES = "cali*"  # host-side workload veths (tabby/cni/constants.py HOST_VETH_PREFIX)
IPIP_DEVICE = "tunl0"
# The agent's IP-in-IP dataplane puts this on its Node (tabby.dataplane.ipip.ANNOTATION;
# not imported: that package loads pyroute2 and libbpf, the renderer needs neither).
AGENT_IPIP_ANNOTATION = "tabby.dev/ipip-implementation"
AGENT_IPIP_IMPLEMENTATIONS = ("kernel", "bpf")
# Never learn or announce these: kube-proxy's IPVS dummy holds every cluster IP.
DIRECT_EXCLUDED = ("cali*", "kube-ipvs*")
EXCLUDE_LB_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"

_LOG_CLASSES = {
    "Trace": "all",
    "Debug": "all",
    "Info": "{ info, remote, warning, error, auth, fatal, bug, trace }",
    "Warning": "{ warning, error, auth, fatal, bug }",
    "Error": "{ error, auth, fatal, bug }",
    "Fatal": "{ fatal, bug }",
}
_DEBUG = {"Trace": "debug all;", "Debug": "debug all;", "Info": "debug { states };"}


@dataclass(frozen=True)
class RenderResult:
    config: str
    router_id: str
    peers: list[PeerPlan]
    issues: list[Issue]
    blocks: list[str]  # this node's announced blocks


def _setting(inputs: BgpInputs, node_name: str, field: str) -> object:
    """A field a `node.<name>` BGPConfiguration may override; else `default`'s; else None."""
    for cfg in (node_config(inputs, node_name), inputs.configs.get("default")):
        if cfg is not None and getattr(cfg.spec, field) is not None:
            return getattr(cfg.spec, field)
    return None


def router_id(me: NodeBGP | None, node_name: str) -> str:
    """The node's IPv4 address; an IPv6-only node gets a stable hash of its name (as
    Calico's CALICO_ROUTER_ID=hash does): BIRD needs a 32-bit id either way."""
    if me is not None and me.ipv4:
        return me.ipv4
    digest = hashlib.sha256(node_name.encode()).digest()
    return str(ipaddress.IPv4Address(digest[:4]))


def _nets(cidrs: Iterable[str], version: int) -> list[str]:
    nets = {ipaddress.ip_network(c, strict=False) for c in cidrs}
    return [str(n) for n in sorted(n for n in nets if n.version == version)]


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "", indent: int = 0) -> None:
        self.lines.append(("  " * indent + text) if text else "")

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


@dataclass
class _Family:
    """Everything one IP family's filters need."""

    version: int
    blocks: list[str]
    pools: list[IPPool]
    services: list[str]
    communities: list[tuple[str, list[tuple[int, ...]]]]  # (cidr, [community parts])
    my_subnet: str | None
    agent_ipip: str | None = None  # the agent programs IPIP routes ("kernel" | "bpf")
    filter_functions: list[list[str]] = dataclass_field(default_factory=list)

    @property
    def v(self) -> str:
        return str(self.version)

    @property
    def channel(self) -> str:
        return f"ipv{self.version}"


def agent_ipip(inputs: BgpInputs, node_name: str) -> str | None:
    """How the node's agent does IP-in-IP when it programs the routes itself (its Node's
    `tabby.dev/ipip-implementation` annotation), else None (BIRD installs them via tunl0,
    as Calico does)."""
    node = inputs.nodes.get(node_name)
    value = ((node.metadata.annotations or {}) if node is not None else {}).get(
        AGENT_IPIP_ANNOTATION)
    return value if value in AGENT_IPIP_IMPLEMENTATIONS else None


def _communities(
    inputs: BgpInputs, node_name: str, issues: list[Issue]
) -> list[tuple[str, list[tuple[int, ...]]]]:
    """prefixAdvertisements of the node's BGPConfiguration, else of `default`, with named
    communities resolved from the same BGPConfiguration."""
    cfg: BGPConfiguration | None = None
    for candidate in (node_config(inputs, node_name), inputs.configs.get("default")):
        if candidate is not None and candidate.spec.prefixAdvertisements:
            cfg = candidate
            break
    if cfg is None:
        return []
    names = {c.name: c.value for c in cfg.spec.communities or ()}
    out = []
    for adv in cfg.spec.prefixAdvertisements or ():
        values = []
        for community in adv.communities:
            text = names.get(community, community)
            try:
                values.append(tuple(int(p) for p in text.split(":")))
            except ValueError:
                issues.append(
                    Issue("warning", f'BGPConfiguration "{cfg.metadata.name}"',
                          f"community {community!r} is not a value: ignored")
                )
        out.append((str(ipaddress.ip_network(adv.cidr, strict=False)), values))
    return out


def render(inputs: BgpInputs, node_name: str, secrets: SecretLookup | None = None) -> RenderResult:
    """The BIRD configuration of `node_name`; never raises for bad datastore content."""
    me, peers, issues = plan_peers(inputs, node_name, secrets)
    issues = [
        Issue("error", _invalid_source(key), f"ignored: {msg}")
        for key, msg in sorted(inputs.invalid.items())
    ] + issues
    rid = router_id(me, node_name)
    severity = str(_setting(inputs, node_name, "logSeverityScreen") or "Info")
    blocks = inputs.own_blocks(node_name)
    default = inputs.configs.get("default")
    services: list[str] = []
    if default is not None:
        spec = default.spec
        excluded = me is not None and me.labels.get(EXCLUDE_LB_LABEL) == "true"
        lists = [spec.serviceClusterIPs]
        if not excluded:
            lists += [spec.serviceExternalIPs, spec.serviceLoadBalancerIPs]
        services = [b.cidr for blocks_ in lists for b in blocks_ or ()]
    communities = _communities(inputs, node_name, issues)
    pools = sorted(inputs.pools.values(), key=lambda p: p.metadata.name)
    families = [
        _Family(
            v,
            _nets(blocks, v),
            [p for p in pools if p.spec.network.version == v],
            _nets(services, v),
            [c for c in communities if ipaddress.ip_network(c[0]).version == v],
            str(ipaddress.ip_interface(cidr).network)
            if me and (cidr := (me.ipv4_cidr if v == 4 else me.ipv6_cidr))
            else None,
            agent_ipip(inputs, node_name),
        )
        for v in (4, 6)
    ]

    for fam in families:
        fam.filter_functions = _filter_functions(inputs, peers, fam.version)

    w = _Writer()
    w(f'# BIRD configuration of Tabby node "{node_name}", rendered from the datastore by')
    w("# tabby.bgp: do not edit, the node agent rewrites it on every relevant change.")
    if issues:
        w("#")
        w("# Issues (also shown by `tabby node status`):")
        for issue in issues:
            w(f"#   {issue.severity}: {issue}".replace("\n", " "))
    w()
    w(f"log stderr {_LOG_CLASSES.get(severity, _LOG_CLASSES['Info'])};")
    w("timeformat protocol iso long ms;  # precise 'since' times for status")
    w(f"router id {rid};")
    w()
    w("protocol device {")
    w("scan time 10;", 1)
    w("}")
    w()
    ignored = [str(i) for i in _setting(inputs, node_name, "ignoredInterfaces") or ()]  # type: ignore[attr-defined]
    patterns = ", ".join(f'-"{p}"' for p in (*DIRECT_EXCLUDED, *ignored)) + ', "*"'
    w("# Connected underlay routes: iBGP next hops resolve through them (never workloads).")
    w("protocol direct tabby_direct {")
    w("ipv4;", 1)
    w("ipv6;", 1)
    w(f"interface {patterns};", 1)
    w("}")
    for fam in families:
        _render_family(w, fam)
    _render_bgp(w, inputs, node_name, me, peers, severity, {f.version: f for f in families})
    return RenderResult(w.text(), rid, peers, issues, blocks)


def _invalid_source(key: str) -> str:
    parts = key.rstrip("/").split("/")
    kinds = {
        "nodes": "Node",
        "bgppeers": "BGPPeer",
        "bgpconfigurations": "BGPConfiguration",
        "ippools": "IPPool",
        "bgpfilters": "BGPFilter",
    }
    return f'{kinds.get(parts[-2], parts[-2])} "{parts[-1]}"' if len(parts) >= 2 else key


def _render_family(w: _Writer, fam: _Family) -> None:
    v, ch = fam.v, fam.channel
    w()
    w(f"# {'-' * 30} IPv{v} {'-' * 30}")
    w()
    w("# This node's blocks: announced to peers, and blackholed in the kernel so that an")
    w("# unallocated address of the block is dropped here.")
    w(f"protocol static tabby_blocks{v} {{")
    w(f"{ch};", 1)
    for block in fam.blocks:
        w(f"route {block} blackhole;", 1)
    w("}")
    if fam.services:
        w()
        w("# Service CIDRs from BGPConfiguration: announced, never programmed here.")
        w(f"protocol static tabby_services{v} {{")
        w(f"{ch};", 1)
        for cidr in fam.services:
            w(f"route {cidr} blackhole;", 1)
        w("}")
    if fam.communities:
        w()
        w(f"function tabby_communities{v}() {{")
        for cidr, values in fam.communities:
            w(f"if net ~ {cidr} then {{", 1)
            for parts in values:
                attr = "bgp_community" if len(parts) == 2 else "bgp_large_community"
                w(f"{attr}.add(({', '.join(str(p) for p in parts)}));", 2)
            w("}", 1)
        w("}")

    w()
    w(f"filter tabby_bgp_import{v} {{")
    for block in fam.blocks:
        w(f"if net = {block} then reject;  # our own block: only this node announces it", 1)
    w("accept;", 1)
    w("}")

    w()
    w("# What every BGP session exports unless its BGPFilters decided first.")
    w(f"function tabby_bgp_export_default{v}()")
    w("{")
    for pool in fam.pools:
        if pool.spec.disableBGPExport:
            w(f"if net ~ {pool.spec.cidr} then reject;  # {pool.metadata.name}: disableBGPExport", 1)
    if fam.communities:
        w(f"tabby_communities{v}();", 1)
    for block in fam.blocks:
        w(f"if net = {block} then accept;  # our block, as one route", 1)
        w(f"if net ~ {block} then reject;  # not the workload routes inside it", 1)
    for cidr in fam.services:
        w(f"if net ~ {cidr} then accept;  # service CIDR", 1)
    for pool in fam.pools:
        if not pool.spec.disableBGPExport:
            w(f"if net ~ {pool.spec.cidr} then accept;  # pool {pool.metadata.name}", 1)
    w("reject;", 1)
    w("}")
    w()
    w(f"filter tabby_bgp_export{v} {{")
    w(f"tabby_bgp_export_default{v}();", 1)
    w("}")
    for lines in fam.filter_functions:
        w()
        for line in lines:
            w(line)

    w()
    w(f"filter tabby_kernel_import{v} {{")
    for pool in fam.pools:
        w(f"if net ~ {pool.spec.cidr} then {{  # pool {pool.metadata.name}: workload routes only", 1)
        w(f'if ifname ~ "{WORKLOAD_IFACES}" then accept;', 2)
        w("reject;", 2)
        w("}", 1)
    w("accept;  # underlay routes: they resolve BGP next hops", 1)
    w("}")

    w()
    w(f"filter tabby_kernel_export{v} {{")
    w(f'if proto = "tabby_blocks{v}" then accept;', 1)
    w("if source != RTS_BGP then reject;  # only what BGP learned goes to the kernel", 1)
    for cidr in fam.services:
        w(f"if net ~ {cidr} then reject;  # service CIDR: announced, not routed", 1)
    for pool in fam.pools:
        spec = pool.spec
        name = pool.metadata.name
        if spec.vxlanMode != "Never":
            w(f"if net ~ {spec.cidr} then reject;  # {name}: VXLAN, the agent programs it", 1)
        elif spec.ipipMode != "Never" and fam.version == 4 and fam.agent_ipip:
            w(f"if net ~ {spec.cidr} then reject;  # {name}: IPIP {spec.ipipMode}, the agent "
              f"programs it ({fam.agent_ipip})", 1)
        elif spec.ipipMode != "Never" and fam.version == 4:
            w(f"if net ~ {spec.cidr} then {{  # {name}: IPIP {spec.ipipMode}", 1)
            w("# Needs the kernel's ipip module (tunl0); without it BIRD cannot install", 2)
            w("# these routes and they stay in BIRD's table only.", 2)
            if spec.ipipMode == "CrossSubnet" and fam.my_subnet:
                w(f"if bgp_next_hop ~ {fam.my_subnet} then accept;  # same subnet: direct", 2)
            w(f'onlink = true; ifname = "{IPIP_DEVICE}"; gw = bgp_next_hop;', 2)
            w("accept;", 2)
            w("}", 1)
    w("accept;", 1)
    w("}")

    w()
    w(f"protocol kernel tabby_kernel{v} {{")
    w(f"{ch} {{", 1)
    w(f"import filter tabby_kernel_import{v};", 2)
    w(f"export filter tabby_kernel_export{v};", 2)
    w("};", 1)
    w("learn;  # alien kernel routes: underlay for next hops, borrowed workload addresses", 1)
    w("scan time 10;", 1)
    w("merge paths on;  # ECMP when several peers announce one prefix", 1)
    w("graceful restart;", 1)
    w("}")


def _filter_functions(inputs: BgpInputs, peers: list[PeerPlan], version: int) -> list[list[str]]:
    """The BGPFilter functions this node's sessions of one family call, each once, in a
    stable order (by filter name, import before export)."""
    wanted = {
        use
        for p in peers
        if p.version == version
        for direction in bgpfilters.DIRECTIONS
        for use in bgpfilters.uses(inputs.filters, p.filters, direction, version)
    }
    return [
        bgpfilters.function_lines(inputs.filters[u.name], u.direction, u.version)
        for u in sorted(wanted, key=lambda u: (u.name, bgpfilters.DIRECTIONS.index(u.direction)))
    ]


def _render_bgp(
    w: _Writer,
    inputs: BgpInputs,
    node_name: str,
    me: NodeBGP | None,
    peers: list[PeerPlan],
    severity: str,
    families: dict[int, _Family],
) -> None:
    w()
    w(f"# {'-' * 30} BGP {'-' * 30}")
    w()
    my_as = me.as_number if me else global_as(inputs)
    port = me.listen_port if me else None
    strict = _setting(inputs, node_name, "bindMode") == "NodeIP"
    w("template bgp tabby_bgp {")
    w(f"local {f'port {port} ' if port else ''}as {my_as};", 1)
    w("multihop;  # peers may sit behind a router", 1)
    w("graceful restart;", 1)
    w("connect delay time 1;", 1)
    w("connect retry time 2;", 1)
    w("error wait time 5, 30;", 1)
    if severity in _DEBUG:
        w(_DEBUG[severity], 1)
    w("}")
    w()
    if me is not None and me.cluster_id:
        w(f"# This node is a route reflector (cluster ID {me.cluster_id}): no node-to-node mesh.")
    elif not mesh_enabled(inputs):
        w("# Node-to-node mesh disabled.")
    if not peers:
        w("# No BGP peers.")
    for i, peer in enumerate(peers):
        if i or (me is not None and me.cluster_id) or not mesh_enabled(inputs):
            w()
        _render_peer(w, peer, my_as, me if strict else None, inputs, families[peer.version])


def _render_peer(w: _Writer, p: PeerPlan, my_as: int, bind: NodeBGP | None,
                 inputs: BgpInputs, fam: _Family) -> None:
    """One session; `bind` (bindMode NodeIP) pins every session to the node's address."""
    parts = [p.peer_type] + ([] if p.scope == "mesh" else [p.source])
    about = "; ".join(parts) + (f"; node {p.peer_node}" if p.peer_node else "")
    about = about.replace('"', "")
    if not bird_string_ok(about):
        about = p.peer_type
    w(f"protocol bgp {p.name} from tabby_bgp {{")
    w(f'description "{about}";', 1)
    if p.local_as != my_as:
        w(f"local as {p.local_as};", 1)
    w(f"neighbor {p.address}{f' port {p.port}' if p.port else ''} as {p.as_number};", 1)
    if p.source_address:
        w(f"source address {p.source_address};", 1)
    elif bind is not None:
        # BIRD binds strictly only to a known local address: bindMode wins over
        # sourceAddress None.
        w(f"source address {bind.address(p.version)};  # bindMode NodeIP", 1)
    if bind is not None:
        w("strict bind on;  # bindMode NodeIP: listen on the node address only", 1)
    if p.passive:
        w("passive on;  # mesh: the node with the lower address connects", 1)
    if p.rr_client:
        w("rr client;", 1)
        w(f"rr cluster id {p.rr_cluster_id};", 1)
    if p.password is not None:
        w(f'password "{p.password}";', 1)
    if p.ttl_security:
        w("ttl security on;", 1)
        w(f"multihop {p.ttl_security};", 1)
    if p.allow_local_as:
        w(f"allow local as {p.allow_local_as};", 1)
    if p.keepalive_time:
        w(f"keepalive time {p.keepalive_time};", 1)
        w(f"hold time {p.keepalive_time * 3};", 1)
    if p.restart_time:
        w(f"graceful restart time {p.restart_time};", 1)
    w(f"ipv{p.version} {{", 1)
    _render_channel_filters(w, p, inputs, fam)
    w("gateway recursive;", 2)
    w("add paths on;", 2)
    if p.next_hop:
        w(f"next hop {p.next_hop};", 2)
    w("};", 1)
    w("}")


def _render_channel_filters(w: _Writer, p: PeerPlan, inputs: BgpInputs, fam: _Family) -> None:
    """The session's import and export filters: the shared ones, or, when its BGPPeer lists
    BGPFilters with rules for this family, its own that call them before the default."""
    v = p.version
    imports = bgpfilters.uses(inputs.filters, p.filters, "import", v)
    if not imports:
        w(f"import filter tabby_bgp_import{v};", 2)
    else:
        w("import filter {", 2)
        # Our own blocks stay out even if a filter accepts them: only this node may
        # announce them (tabby_bgp_import).
        for block in fam.blocks:
            w(f"if net = {block} then reject;  # our own block", 3)
        for use in imports:
            w(f'{use.function}();  # BGPFilter "{use.name}"', 3)
        w("accept;  # no filter decided: the default import", 3)
        w("};", 2)
    exports = bgpfilters.uses(inputs.filters, p.filters, "export", v)
    if not exports:
        w(f"export filter tabby_bgp_export{v};", 2)
    else:
        w("export filter {", 2)
        for use in exports:
            w(f'{use.function}();  # BGPFilter "{use.name}"', 3)
        w(f"tabby_bgp_export_default{v}();  # no filter decided: the default export", 3)
        w("};", 2)
