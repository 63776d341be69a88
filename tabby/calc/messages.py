"""Typed messages from the calculation graph to the dataplane drivers.

Modelled on Felix's calc -> dataplane protocol, in Python: every message is a frozen,
slotted dataclass, hashable (collections are tuples / frozensets), and validated on
construction with a one-line error naming the field and the value. Drivers keep the
latest message per key (set id, policy id, endpoint id, ...), so a burst of updates for
one key coalesces to a single pending change.

The calc graph has already done all the label work: selectors became IP set ids, named
ports became "ip-port" IP sets, and each endpoint carries its ordered tiers and profiles.
Nothing here knows about selectors or the datastore.

Keys:
    IPSetUpdate / IPSetDeltaUpdate / IPSetRemove   set_id
    PolicyUpdate / PolicyRemove                    policy_id = PolicyId(tier, name)
    ProfileUpdate / ProfileRemove                  profile_id
    WorkloadEndpointUpdate / ...Remove             endpoint_id
    HostEndpointUpdate / ...Remove                 endpoint_id
    IPPoolUpdate / IPPoolRemove                    cidr
    ConfigUpdate                                   (one; each replaces the previous)
    RouteUpdate / RouteRemove                      dst
    VTEPUpdate / VTEPRemove                        node
    InSync                                         (the first complete snapshot was sent)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

# --- helpers ---------------------------------------------------------------------------

ACTIONS = ("allow", "deny", "pass", "log")
IPSET_KINDS = ("ip", "net", "ip-port")
TIER_DEFAULT_ACTIONS = ("Deny", "Pass")
ENDPOINT_TO_HOST_ACTIONS = ("Drop", "Return", "Accept")
PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132, "udplite": 136}
PORT_PROTOCOLS = frozenset({6, 17, 132, 136})  # protocols whose rules may match ports
ROUTE_KINDS = (
    "local-workload",  # a workload on this node: /32 dev cali...
    "remote-workload",  # a single (borrowed) workload IP on another node
    "local-block",  # an IPAM block affine to this node (blackhole / BGP export)
    "remote-block",  # an IPAM block affine to another node
    "local-host",  # this node's own address
    "remote-host",  # another node's address
    "local-tunnel",  # this node's tunnel address
    "remote-tunnel",  # another node's tunnel address
)
ENCAPS = ("none", "vxlan", "ipip")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _bad(cls: str, fld: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{cls}.{fld}: {why}: {value!r}")


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _strs(obj: Any, name: str) -> tuple[str, ...]:
    value = getattr(obj, name)
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise _bad(type(obj).__name__, name, value, "expected a list of strings")
    out = tuple(value)
    for v in out:
        if not isinstance(v, str) or not v:
            raise _bad(type(obj).__name__, name, v, "expected a non-empty string")
    _set(obj, name, out)
    return out


def _cidrs(obj: Any, name: str, version: int | None = None) -> tuple[str, ...]:
    out = []
    for v in _strs(obj, name):
        try:
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise _bad(type(obj).__name__, name, v, "invalid CIDR") from None
        if version is not None and net.version != version:
            raise _bad(type(obj).__name__, name, v, f"not an IPv{version} CIDR")
        out.append(str(net))
    _set(obj, name, tuple(out))
    return tuple(out)


def _opt_ip(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if value is None:
        return
    try:
        _set(obj, name, str(ipaddress.ip_address(value)))
    except ValueError:
        raise _bad(type(obj).__name__, name, value, "invalid IP address") from None


def _ifname(obj: Any, name: str, *, star: bool = False) -> None:
    value = getattr(obj, name)
    if star and value in ("*", ""):
        return
    if not isinstance(value, str) or not _IFNAME.match(value):
        raise _bad(type(obj).__name__, name, value, "invalid interface name")


def _choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise _bad(type(obj).__name__, name, value, f"expected one of {', '.join(choices)}")


def protocol_number(value: int | str) -> int:
    """6, "6", "TCP", "tcp" -> 6. Raises ValueError naming the value."""
    if isinstance(value, bool):
        raise ValueError(f"protocol: invalid protocol {value!r}")
    if isinstance(value, int):
        num = value
    elif isinstance(value, str) and value.lower() in PROTOCOL_NUMBERS:
        num = PROTOCOL_NUMBERS[value.lower()]
    elif isinstance(value, str) and value.isdigit():
        num = int(value)
    else:
        raise ValueError(f"protocol: invalid protocol {value!r}")
    if not 1 <= num <= 255:
        raise ValueError(f"protocol: {value!r} out of range 1-255")
    return num


class PortRange(NamedTuple):
    """An inclusive port range; a single port has first == last."""

    first: int
    last: int

    @classmethod
    def of(cls, value: Any) -> PortRange:
        """80, "80", "80:90", (80, 90) or a PortRange -> PortRange."""
        if isinstance(value, PortRange):
            first, last = value
        elif isinstance(value, bool):
            raise ValueError(f"port: invalid port {value!r}")
        elif isinstance(value, int):
            first = last = value
        elif isinstance(value, str) and re.fullmatch(r"\d+", value):
            first = last = int(value)
        elif isinstance(value, str) and re.fullmatch(r"\d+:\d+", value):
            a, b = value.split(":")
            first, last = int(a), int(b)
        elif isinstance(value, tuple) and len(value) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in value
        ):
            first, last = value
        else:
            raise ValueError(f"port: invalid port or range {value!r}")
        if not (0 <= first <= last <= 65535):
            raise ValueError(f"port: invalid range {value!r} (need 0 <= first <= last <= 65535)")
        return cls(first, last)

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


class PolicyId(NamedTuple):
    """A policy is named within its tier (Felix's PolicyID: tier + name)."""

    tier: str
    name: str

    def __str__(self) -> str:
        return f"{self.tier}/{self.name}"


def _policy_id(obj: Any, name: str) -> PolicyId:
    value = getattr(obj, name)
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise _bad(type(obj).__name__, name, value, "expected (tier, name)")
    pid = PolicyId(*value)
    _set(obj, name, pid)
    return pid


# --- compiled rules -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled policy rule, all criteria ANDed.

    Within one list the entries are alternatives (a source in ANY of `src_nets`, a port in
    ANY of `dst_ports`), except IP set ids: the address must be in ALL `src_ip_set_ids`
    (Felix ANDs them: one id per selector clause). Negated lists exclude ANY of their
    entries. Numeric ports and named-port sets of one side are ORed (a port matches if it
    is in `dst_ports` or its ip . proto . port is in one of the named-port sets).
    """

    action: str  # allow | deny | pass | log
    ip_version: int | None = None
    protocol: int | None = None
    not_protocol: int | None = None
    src_nets: tuple[str, ...] = ()
    not_src_nets: tuple[str, ...] = ()
    dst_nets: tuple[str, ...] = ()
    not_dst_nets: tuple[str, ...] = ()
    src_ip_set_ids: tuple[str, ...] = ()
    not_src_ip_set_ids: tuple[str, ...] = ()
    dst_ip_set_ids: tuple[str, ...] = ()
    not_dst_ip_set_ids: tuple[str, ...] = ()
    src_ports: tuple[PortRange, ...] = ()
    not_src_ports: tuple[PortRange, ...] = ()
    dst_ports: tuple[PortRange, ...] = ()
    not_dst_ports: tuple[PortRange, ...] = ()
    src_named_port_ip_set_ids: tuple[str, ...] = ()
    not_src_named_port_ip_set_ids: tuple[str, ...] = ()
    dst_named_port_ip_set_ids: tuple[str, ...] = ()
    not_dst_named_port_ip_set_ids: tuple[str, ...] = ()
    icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_type: int | None = None
    not_icmp_code: int | None = None
    log_prefix: str | None = None
    rule_id: str = ""  # e.g. "default/allow-web/ingress/0": shown in rule comments

    def __post_init__(self) -> None:
        action = self.action.lower() if isinstance(self.action, str) else self.action
        if action == "next-tier":  # Felix's backend name for Pass
            action = "pass"
        _set(self, "action", action)
        _choice(self, "action", ACTIONS)
        if self.ip_version not in (None, 4, 6):
            raise _bad("Rule", "ip_version", self.ip_version, "expected 4, 6 or None")
        for name in ("protocol", "not_protocol"):
            value = getattr(self, name)
            if value is not None:
                try:
                    _set(self, name, protocol_number(value))
                except ValueError:
                    raise _bad("Rule", name, value, "invalid protocol") from None
        for name in ("src_nets", "not_src_nets", "dst_nets", "not_dst_nets"):
            _cidrs(self, name)
        for name in (
            "src_ip_set_ids", "not_src_ip_set_ids", "dst_ip_set_ids", "not_dst_ip_set_ids",
            "src_named_port_ip_set_ids", "not_src_named_port_ip_set_ids",
            "dst_named_port_ip_set_ids", "not_dst_named_port_ip_set_ids",
        ):
            _strs(self, name)
        for name in ("src_ports", "not_src_ports", "dst_ports", "not_dst_ports"):
            value = getattr(self, name)
            if isinstance(value, (str, int)) or not isinstance(value, Iterable):
                raise _bad("Rule", name, value, "expected a list of ports")
            try:
                _set(self, name, tuple(PortRange.of(p) for p in value))
            except ValueError as exc:
                raise _bad("Rule", name, value, str(exc)) from None
        for name, hi in (("icmp_type", 255), ("icmp_code", 255),
                         ("not_icmp_type", 255), ("not_icmp_code", 255)):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi
            ):
                raise _bad("Rule", name, value, f"expected 0-{hi}")
        if self.icmp_code is not None and self.icmp_type is None:
            raise _bad("Rule", "icmp_code", self.icmp_code, "needs icmp_type")
        if self.not_icmp_code is not None and self.not_icmp_type is None:
            raise _bad("Rule", "not_icmp_code", self.not_icmp_code, "needs not_icmp_type")
        if self.log_prefix is not None and not isinstance(self.log_prefix, str):
            raise _bad("Rule", "log_prefix", self.log_prefix, "expected a string")
        if not isinstance(self.rule_id, str):
            raise _bad("Rule", "rule_id", self.rule_id, "expected a string")


def _rules(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if isinstance(value, (str, Rule)) or not isinstance(value, Iterable):
        raise _bad(type(obj).__name__, name, value, "expected a list of Rule")
    out = tuple(value)
    for r in out:
        if not isinstance(r, Rule):
            raise _bad(type(obj).__name__, name, r, "expected a Rule")
    _set(obj, name, out)


# --- IP sets -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IPSetUpdate:
    """The full membership of an IP set. Kinds: "ip" (addresses), "net" (CIDRs), "ip-port"
    (named ports: members "10.0.0.1,tcp:8080"). Members may mix IPv4 and IPv6."""

    set_id: str
    kind: str
    members: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.set_id, str) or not self.set_id:
            raise _bad("IPSetUpdate", "set_id", self.set_id, "expected a non-empty string")
        _choice(self, "kind", IPSET_KINDS)
        if isinstance(self.members, str) or not isinstance(self.members, Iterable):
            raise _bad("IPSetUpdate", "members", self.members, "expected a set of strings")
        _set(self, "members", frozenset(self.members))


@dataclass(frozen=True, slots=True)
class IPSetDeltaUpdate:
    """Members added to / removed from an existing IP set (big sets change a little)."""

    set_id: str
    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.set_id, str) or not self.set_id:
            raise _bad("IPSetDeltaUpdate", "set_id", self.set_id, "expected a non-empty string")
        _set(self, "added", frozenset(self.added))
        _set(self, "removed", frozenset(self.removed))


@dataclass(frozen=True, slots=True)
class IPSetRemove:
    set_id: str


# --- policies and profiles ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyUpdate:
    """A policy's compiled rules. Inbound = ingress (to the endpoint), outbound = egress."""

    policy_id: PolicyId
    inbound_rules: tuple[Rule, ...] = ()
    outbound_rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        _policy_id(self, "policy_id")
        _rules(self, "inbound_rules")
        _rules(self, "outbound_rules")


@dataclass(frozen=True, slots=True)
class PolicyRemove:
    policy_id: PolicyId

    def __post_init__(self) -> None:
        _policy_id(self, "policy_id")


@dataclass(frozen=True, slots=True)
class ProfileUpdate:
    profile_id: str
    inbound_rules: tuple[Rule, ...] = ()
    outbound_rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.profile_id, str) or not self.profile_id:
            raise _bad("ProfileUpdate", "profile_id", self.profile_id, "expected a non-empty string")
        _rules(self, "inbound_rules")
        _rules(self, "outbound_rules")


@dataclass(frozen=True, slots=True)
class ProfileRemove:
    profile_id: str


# --- endpoints ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TierInfo:
    """One tier that applies to an endpoint, with its policy names in evaluation order
    (already filtered to the policies that select the endpoint, per direction)."""

    name: str
    default_action: str = "Deny"
    ingress_policies: tuple[str, ...] = ()
    egress_policies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise _bad("TierInfo", "name", self.name, "expected a non-empty string")
        _choice(self, "default_action", TIER_DEFAULT_ACTIONS)
        _strs(self, "ingress_policies")
        _strs(self, "egress_policies")


def _tiers(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if isinstance(value, (str, TierInfo)) or not isinstance(value, Iterable):
        raise _bad(type(obj).__name__, name, value, "expected a list of TierInfo")
    out = tuple(value)
    for t in out:
        if not isinstance(t, TierInfo):
            raise _bad(type(obj).__name__, name, t, "expected a TierInfo")
    _set(obj, name, out)


@dataclass(frozen=True, slots=True)
class WorkloadEndpointUpdate:
    """A local workload endpoint. `endpoint_id` is the calc graph's key for it (e.g.
    "k8s/ns.pod/eth0"); `interface_name` is the host side of its veth."""

    endpoint_id: str
    interface_name: str
    ipv4_nets: tuple[str, ...] = ()
    ipv6_nets: tuple[str, ...] = ()
    tiers: tuple[TierInfo, ...] = ()
    profile_ids: tuple[str, ...] = ()
    mac: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.endpoint_id, str) or not self.endpoint_id:
            raise _bad("WorkloadEndpointUpdate", "endpoint_id", self.endpoint_id,
                       "expected a non-empty string")
        _ifname(self, "interface_name")
        _cidrs(self, "ipv4_nets", 4)
        _cidrs(self, "ipv6_nets", 6)
        _tiers(self, "tiers")
        _strs(self, "profile_ids")
        if self.mac is not None:
            if not isinstance(self.mac, str) or not _MAC.match(self.mac.lower()):
                raise _bad("WorkloadEndpointUpdate", "mac", self.mac, "invalid MAC address")
            _set(self, "mac", self.mac.lower())


@dataclass(frozen=True, slots=True)
class WorkloadEndpointRemove:
    endpoint_id: str


@dataclass(frozen=True, slots=True)
class HostEndpointUpdate:
    """A host endpoint on this node. interface_name "*" = every non-workload interface
    (a named endpoint for an interface wins over "*"); "" = the interface holding one of
    `expected_ips` (the calc graph or agent resolves it; the nft driver skips it). Tier lists per policy kind:
    `tiers` normal policy (input/output), `forward_tiers` applyOnForward policy,
    `untracked_tiers` doNotTrack policy, `pre_dnat_tiers` preDNAT policy (ingress only)."""

    endpoint_id: str
    interface_name: str
    expected_ips: tuple[str, ...] = ()
    tiers: tuple[TierInfo, ...] = ()
    untracked_tiers: tuple[TierInfo, ...] = ()
    pre_dnat_tiers: tuple[TierInfo, ...] = ()
    forward_tiers: tuple[TierInfo, ...] = ()
    profile_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.endpoint_id, str) or not self.endpoint_id:
            raise _bad("HostEndpointUpdate", "endpoint_id", self.endpoint_id,
                       "expected a non-empty string")
        _ifname(self, "interface_name", star=True)
        ips = []
        for v in _strs(self, "expected_ips"):
            try:
                ips.append(str(ipaddress.ip_address(v)))
            except ValueError:
                raise _bad("HostEndpointUpdate", "expected_ips", v, "invalid IP address") from None
        _set(self, "expected_ips", tuple(ips))
        for name in ("tiers", "untracked_tiers", "pre_dnat_tiers", "forward_tiers"):
            _tiers(self, name)
        for t in self.pre_dnat_tiers:
            if t.egress_policies:
                raise _bad("HostEndpointUpdate", "pre_dnat_tiers", t.name,
                           "preDNAT policy cannot have egress policies")
        _strs(self, "profile_ids")


@dataclass(frozen=True, slots=True)
class HostEndpointRemove:
    endpoint_id: str


# --- pools and configuration ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IPPoolUpdate:
    """An IP pool as the dataplane needs it. `masquerade` is the pool's natOutgoing."""

    cidr: str
    masquerade: bool = False
    ipip_mode: str = "Never"
    vxlan_mode: str = "Never"
    disabled: bool = False

    def __post_init__(self) -> None:
        try:
            _set(self, "cidr", str(ipaddress.ip_network(self.cidr)))
        except (ValueError, TypeError):
            raise _bad("IPPoolUpdate", "cidr", self.cidr, "invalid CIDR") from None
        _choice(self, "ipip_mode", ("Never", "Always", "CrossSubnet"))
        _choice(self, "vxlan_mode", ("Never", "Always", "CrossSubnet"))


@dataclass(frozen=True, slots=True)
class IPPoolRemove:
    cidr: str

    def __post_init__(self) -> None:
        try:
            _set(self, "cidr", str(ipaddress.ip_network(self.cidr)))
        except (ValueError, TypeError):
            raise _bad("IPPoolRemove", "cidr", self.cidr, "invalid CIDR") from None


@dataclass(frozen=True, slots=True)
class FailsafePort:
    """One FailsafeInboundHostPorts / FailsafeOutboundHostPorts entry."""

    protocol: str
    port: int
    net: str | None = None

    def __post_init__(self) -> None:
        _set(self, "protocol", str(self.protocol).lower())
        _choice(self, "protocol", ("tcp", "udp", "sctp"))
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise _bad("FailsafePort", "port", self.port, "expected 1-65535")
        if self.net is not None:
            try:
                _set(self, "net", str(ipaddress.ip_network(self.net, strict=False)))
            except ValueError:
                raise _bad("FailsafePort", "net", self.net, "invalid CIDR") from None

    @classmethod
    def parse(cls, text: str) -> FailsafePort:
        """"tcp:22", "22" (tcp), "udp:10.0.0.0/8:53" -> FailsafePort."""
        parts = text.strip().split(":")
        try:
            if len(parts) == 1:
                return cls("tcp", int(parts[0]))
            if len(parts) == 2:
                return cls(parts[0], int(parts[1]))
            if len(parts) == 3:
                return cls(parts[0], int(parts[2]), parts[1])
        except ValueError as exc:
            raise ValueError(f"failsafe port: {exc}") from None
        raise ValueError(f"failsafe port: invalid entry {text!r} (use proto:port or proto:cidr:port)")


def _failsafes(text: str) -> tuple[FailsafePort, ...]:
    return tuple(FailsafePort.parse(t) for t in text.split(","))


# Calico's defaults (FailsafeInboundHostPorts / FailsafeOutboundHostPorts).
DEFAULT_FAILSAFE_INBOUND = _failsafes(
    "tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667"
)
DEFAULT_FAILSAFE_OUTBOUND = _failsafes(
    "udp:53,udp:67,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667"
)


@dataclass(frozen=True, slots=True)
class ConfigUpdate:
    """Dataplane settings (FelixConfiguration's share). Each one replaces the last."""

    failsafe_inbound: tuple[FailsafePort, ...] = DEFAULT_FAILSAFE_INBOUND
    failsafe_outbound: tuple[FailsafePort, ...] = DEFAULT_FAILSAFE_OUTBOUND
    default_endpoint_to_host_action: str = "Drop"
    log_prefix: str = "tabby-packet"
    workload_iface_prefixes: tuple[str, ...] = ("cali",)
    workload_source_spoofing: str = "Disabled"  # "Any" turns off the reverse-path check
    nat_outgoing_address: str | None = None  # SNAT to this address instead of masquerade

    def __post_init__(self) -> None:
        for name in ("failsafe_inbound", "failsafe_outbound"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = _failsafes(value) if value.strip() not in ("", "[]") else ()
            value = tuple(FailsafePort.parse(v) if isinstance(v, str) else v for v in value)
            for v in value:
                if not isinstance(v, FailsafePort):
                    raise _bad("ConfigUpdate", name, v, "expected a FailsafePort")
            _set(self, name, value)
        action = self.default_endpoint_to_host_action
        if isinstance(action, str):
            _set(self, "default_endpoint_to_host_action", action.capitalize())
        _choice(self, "default_endpoint_to_host_action", ENDPOINT_TO_HOST_ACTIONS)
        if not isinstance(self.log_prefix, str):
            raise _bad("ConfigUpdate", "log_prefix", self.log_prefix, "expected a string")
        for p in _strs(self, "workload_iface_prefixes"):
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,14}", p):
                raise _bad("ConfigUpdate", "workload_iface_prefixes", p, "invalid prefix")
        _choice(self, "workload_source_spoofing", ("Disabled", "Any"))
        _opt_ip(self, "nat_outgoing_address")


@dataclass(frozen=True, slots=True)
class InSync:
    """The calc graph has sent its first complete snapshot: the dataplane may now write."""


# --- routes (for the route driver) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteUpdate:
    """A route the node should have. `next_hop` for remote destinations (the node's IP,
    or its tunnel IP with encap "vxlan"/"ipip"); `ifname` for local workloads."""

    dst: str
    kind: str
    dst_node: str | None = None
    dst_node_ip: str | None = None
    next_hop: str | None = None
    ifname: str | None = None
    encap: str = "none"
    same_subnet: bool = False
    nat_outgoing: bool = False

    def __post_init__(self) -> None:
        try:
            _set(self, "dst", str(ipaddress.ip_network(self.dst, strict=False)))
        except (ValueError, TypeError):
            raise _bad("RouteUpdate", "dst", self.dst, "invalid CIDR") from None
        _choice(self, "kind", ROUTE_KINDS)
        _choice(self, "encap", ENCAPS)
        _opt_ip(self, "dst_node_ip")
        _opt_ip(self, "next_hop")
        if self.ifname is not None:
            _ifname(self, "ifname")


@dataclass(frozen=True, slots=True)
class RouteRemove:
    dst: str

    def __post_init__(self) -> None:
        try:
            _set(self, "dst", str(ipaddress.ip_network(self.dst, strict=False)))
        except (ValueError, TypeError):
            raise _bad("RouteRemove", "dst", self.dst, "invalid CIDR") from None


@dataclass(frozen=True, slots=True)
class VTEPUpdate:
    """A VXLAN tunnel endpoint of another node (apply before routes that use it)."""

    node: str
    tunnel_ip: str
    mac: str
    underlay_ip: str
    tunnel_ipv6: str | None = None
    mac_v6: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.node, str) or not self.node:
            raise _bad("VTEPUpdate", "node", self.node, "expected a non-empty string")
        _opt_ip(self, "tunnel_ip")
        _opt_ip(self, "underlay_ip")
        _opt_ip(self, "tunnel_ipv6")
        for name in ("mac", "mac_v6"):
            value = getattr(self, name)
            if value is None and name == "mac_v6":
                continue
            if not isinstance(value, str) or not _MAC.match(value.lower()):
                raise _bad("VTEPUpdate", name, value, "invalid MAC address")
            _set(self, name, value.lower())


@dataclass(frozen=True, slots=True)
class VTEPRemove:
    node: str


DataplaneMessage = (
    IPSetUpdate | IPSetDeltaUpdate | IPSetRemove | PolicyUpdate | PolicyRemove | ProfileUpdate
    | ProfileRemove | WorkloadEndpointUpdate | WorkloadEndpointRemove | HostEndpointUpdate
    | HostEndpointRemove | IPPoolUpdate | IPPoolRemove | ConfigUpdate | InSync | RouteUpdate
    | RouteRemove | VTEPUpdate | VTEPRemove
)

__all__ = [
    "ACTIONS", "DEFAULT_FAILSAFE_INBOUND", "DEFAULT_FAILSAFE_OUTBOUND", "ConfigUpdate",
    "DataplaneMessage", "FailsafePort", "HostEndpointRemove", "HostEndpointUpdate",
    "IPPoolRemove", "IPPoolUpdate", "IPSetDeltaUpdate", "IPSetRemove", "IPSetUpdate", "InSync",
    "PolicyId", "PolicyRemove", "PolicyUpdate", "PortRange", "ProfileRemove", "ProfileUpdate",
    "RouteRemove", "RouteUpdate", "Rule", "TierInfo", "VTEPRemove", "VTEPUpdate",
    "WorkloadEndpointRemove", "WorkloadEndpointUpdate", "protocol_number",
]
