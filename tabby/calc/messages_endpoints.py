"""Calc -> dataplane messages about endpoints and networking: workload and host endpoints,
IP pools, configuration, routes and VTEPs (see `tabby.calc.messages` for the whole
protocol and its keys)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tabby.calc.messages_fields import (
    _MAC,
    ENCAPS,
    ENDPOINT_TO_HOST_ACTIONS,
    ROUTE_KINDS,
    TIER_DEFAULT_ACTIONS,
    _bad,
    _choice,
    _cidrs,
    _ifname,
    _opt_ip,
    _set,
    _strs,
)
from tabby.resources.felix import (
    DEFAULT_FAILSAFE_INBOUND_HOST_PORTS,
    DEFAULT_FAILSAFE_OUTBOUND_HOST_PORTS,
)

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


def _from_model(entries: Iterable[Any]) -> tuple[FailsafePort, ...]:
    return tuple(FailsafePort(e.protocol, e.port, e.net) for e in entries)


# Calico's defaults (FailsafeInboundHostPorts / FailsafeOutboundHostPorts), kept once,
# with the FelixConfiguration model.
DEFAULT_FAILSAFE_INBOUND = _from_model(DEFAULT_FAILSAFE_INBOUND_HOST_PORTS)
DEFAULT_FAILSAFE_OUTBOUND = _from_model(DEFAULT_FAILSAFE_OUTBOUND_HOST_PORTS)


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
