"""BGPPeer, BGPConfiguration and BGPFilter.

BGPConfiguration keeps every field optional, as Calico stores it: an unset field means
"use the default", and the `default` instance and per-node `node.<name>` instances are
merged field by field by the BGP renderer. `BGPConfigurationSpec.effective(field)` (and
the typed `effective_*` properties) give the value with Calico's default applied.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, model_validator

from .common import (
    CIDR,
    IP,
    ASNumber,
    Duration,
    Name,
    Selector,
    TabbyModel,
    check_interface_name,
    check_ipv4,
    check_ipv6,
    int_range,
    parse_cidr_or_ip,
)
from .errors import FieldError, show
from .meta import Resource

_V4_PORT_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+):(\d+)\Z")
_V6_PORT_RE = re.compile(r"^\[([0-9a-fA-F:.]+)\]:(\d+)\Z")


def split_peer_ip(text: str) -> tuple[str, int | None]:
    """ "10.0.0.1:1179" -> ("10.0.0.1", 1179); "[fd00::1]:1179"; a bare IP -> (ip, None)."""
    m = _V4_PORT_RE.match(text)
    if m:
        return text.rsplit(":", 1)[0], int(m.group(5))
    m = _V6_PORT_RE.match(text)
    if m:
        return m.group(1), int(m.group(2))
    return text, None


def _check_peer_ip(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"invalid peerIP {show(value)}")
    ip, port = split_peer_ip(value)
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(
            f'invalid peerIP {show(value)} (want "<IP>", "<IPv4>:<port>" or "[<IPv6>]:<port>")'
        ) from None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"invalid port in peerIP {show(value)} (want 1-65535)")
    return value


class SecretKeySelector(TabbyModel):
    name: str | None = None
    key: str
    optional: bool | None = None


class BGPPassword(TabbyModel):
    secretKeyRef: SecretKeySelector | None = None


class BGPPeerSpec(TabbyModel):
    node: Name | None = None
    nodeSelector: Selector | None = None
    peerIP: Annotated[str, BeforeValidator(_check_peer_ip)] | None = None
    asNumber: ASNumber | None = None
    peerSelector: Selector | None = None
    keepOriginalNextHop: bool | None = None
    nextHopMode: Literal["Auto", "Self", "Keep"] | None = None
    password: BGPPassword | None = None
    sourceAddress: Literal["UseNodeIP", "None"] | None = None
    maxRestartTime: Duration | None = None
    numAllowedLocalASNumbers: (
        Annotated[int, int_range(0, 255, "numAllowedLocalASNumbers")] | None
    ) = None
    ttlSecurity: Annotated[int, int_range(0, 255, "ttlSecurity")] | None = None
    reachableBy: IP | None = None
    filters: list[Name] | None = None
    localWorkloadSelector: Selector | None = None
    keepaliveTime: Duration | None = None
    reversePeering: Literal["Auto", "Manual"] | None = None
    localASNumber: ASNumber | None = None

    @model_validator(mode="after")
    def _peer_rules(self) -> BGPPeerSpec:
        if self.node and self.nodeSelector:
            raise FieldError("node", "node must be empty when nodeSelector is given")
        if self.peerSelector:
            if self.peerIP:
                raise FieldError("peerIP", "peerIP must be empty when peerSelector is given")
            if self.asNumber is not None:
                raise FieldError(
                    "asNumber",
                    "asNumber must be empty when peerSelector is given (the selected nodes' AS is used)",
                )
        if self.localWorkloadSelector:
            if self.asNumber is None:
                raise FieldError("asNumber", "asNumber is required with localWorkloadSelector")
            if self.peerIP:
                raise FieldError(
                    "peerIP", "peerIP must be empty when localWorkloadSelector is given"
                )
            if self.peerSelector:
                raise FieldError(
                    "peerSelector", "peerSelector must be empty when localWorkloadSelector is given"
                )
        if self.reachableBy:
            if not self.peerIP:
                raise FieldError("reachableBy", "reachableBy needs a peerIP")
            peer, _ = split_peer_ip(self.peerIP)
            if ipaddress.ip_address(peer).version != ipaddress.ip_address(self.reachableBy).version:
                raise FieldError(
                    "reachableBy",
                    f"reachableBy {show(self.reachableBy)} and peerIP {show(self.peerIP)} "
                    "are different IP versions",
                )
        if self.keepOriginalNextHop and self.nextHopMode is not None:
            raise FieldError(
                "keepOriginalNextHop",
                "keepOriginalNextHop (deprecated) cannot be set with nextHopMode",
            )
        if self.peerIP and self.asNumber is None and not self.localWorkloadSelector:
            raise FieldError("asNumber", "asNumber is required with peerIP")
        return self

    def peer_address(self) -> tuple[str, int | None]:
        """(IP, port or None) of peerIP; raises ValueError if peerIP is not set."""
        if not self.peerIP:
            raise ValueError("peerIP is not set")
        return split_peer_ip(self.peerIP)


class BGPPeer(Resource):
    KIND: ClassVar[str] = "BGPPeer"

    apiVersion: Literal["projectcalico.org/v3"] = "projectcalico.org/v3"
    kind: Literal["BGPPeer"] = "BGPPeer"
    spec: BGPPeerSpec = Field(default_factory=BGPPeerSpec)


# --------------------------------------------------------------------------- BGPConfiguration

_COMMUNITY_RE = re.compile(r"^(\d+):(\d+)(:(\d+))?\Z")


def is_community(value: str) -> bool:
    """`aa:nn` (16-bit parts) or `aa:nn:mm` (32-bit parts)."""
    m = _COMMUNITY_RE.match(value)
    if not m:
        return False
    parts = [int(p) for p in (m.group(1), m.group(2), m.group(4)) if p is not None]
    limit = 0xFFFF if len(parts) == 2 else 0xFFFFFFFF
    return all(p <= limit for p in parts)


class CIDRBlock(TabbyModel):
    cidr: CIDR


class Community(TabbyModel):
    name: Name
    value: str

    @model_validator(mode="after")
    def _value(self) -> Community:
        if not is_community(self.value):
            raise FieldError(
                "value", f'invalid community {show(self.value)} (want "aa:nn" or "aa:nn:mm")'
            )
        return self


class PrefixAdvertisement(TabbyModel):
    cidr: CIDR
    communities: list[str]


def _ignored_interface(value: Any) -> str:
    if isinstance(value, str) and value != "*" and re.fullmatch(r"[a-zA-Z0-9_.*-]{1,15}", value):
        return value
    return check_interface_name(value)


BGP_DEFAULTS: dict[str, Any] = {
    "logSeverityScreen": "Info",
    "nodeToNodeMeshEnabled": True,
    "asNumber": 64512,
    "listenPort": 179,
    "serviceLoadBalancerAggregation": "Enabled",
    "bindMode": "None",
    "ipv4NormalRoutePriority": 1024,
    "ipv6NormalRoutePriority": 1024,
}

LogLevel = Literal["Trace", "Debug", "Info", "Warning", "Error", "Fatal"]


class BGPConfigurationSpec(TabbyModel):
    logSeverityScreen: LogLevel | None = None
    nodeToNodeMeshEnabled: bool | None = None
    asNumber: ASNumber | None = None
    serviceLoadBalancerIPs: list[CIDRBlock] | None = None
    serviceExternalIPs: list[CIDRBlock] | None = None
    serviceClusterIPs: list[CIDRBlock] | None = None
    communities: list[Community] | None = None
    prefixAdvertisements: list[PrefixAdvertisement] | None = None
    listenPort: Annotated[int, int_range(1, 65535, "listenPort")] | None = None
    nodeMeshPassword: BGPPassword | None = None
    nodeMeshMaxRestartTime: Duration | None = None
    bindMode: Literal["None", "NodeIP"] | None = None
    ignoredInterfaces: list[Annotated[str, BeforeValidator(_ignored_interface)]] | None = None
    localWorkloadPeeringIPV4: Annotated[str, BeforeValidator(check_ipv4)] | None = None
    localWorkloadPeeringIPV6: Annotated[str, BeforeValidator(check_ipv6)] | None = None
    serviceLoadBalancerAggregation: Literal["Enabled", "Disabled"] | None = None
    ipv4NormalRoutePriority: Annotated[int, int_range(1, 2147483646, "route priority")] | None = (
        None
    )
    ipv6NormalRoutePriority: Annotated[int, int_range(1, 2147483646, "route priority")] | None = (
        None
    )

    @model_validator(mode="after")
    def _rules(self) -> BGPConfigurationSpec:
        names = {c.name for c in self.communities or ()}
        if self.communities and not self.prefixAdvertisements:
            raise FieldError(
                "communities", "communities are defined but no prefixAdvertisements use them"
            )
        for i, adv in enumerate(self.prefixAdvertisements or ()):
            for j, community in enumerate(adv.communities):
                if not is_community(community) and community not in names:
                    raise FieldError(
                        ("prefixAdvertisements", i, "communities", j),
                        f"community {show(community)} is neither a value nor a defined name",
                    )
        if self.nodeToNodeMeshEnabled is False:
            for fld in ("nodeMeshPassword", "nodeMeshMaxRestartTime"):
                if getattr(self, fld) is not None:
                    raise FieldError(
                        fld, f"{fld} cannot be set when nodeToNodeMeshEnabled is false"
                    )
        return self

    def effective(self, field: str) -> Any:
        """The field's value, or Calico's default when it is unset."""
        value = getattr(self, field)
        return BGP_DEFAULTS.get(field) if value is None else value

    @property
    def effective_node_to_node_mesh(self) -> bool:
        return bool(self.effective("nodeToNodeMeshEnabled"))

    @property
    def effective_as_number(self) -> int:
        return int(self.effective("asNumber"))

    @property
    def effective_listen_port(self) -> int:
        return int(self.effective("listenPort"))

    @property
    def effective_log_severity(self) -> str:
        return str(self.effective("logSeverityScreen"))


class BGPConfiguration(Resource):
    KIND: ClassVar[str] = "BGPConfiguration"

    apiVersion: Literal["projectcalico.org/v3"] = "projectcalico.org/v3"
    kind: Literal["BGPConfiguration"] = "BGPConfiguration"
    spec: BGPConfigurationSpec = Field(default_factory=BGPConfigurationSpec)

    @model_validator(mode="after")
    def _mesh_settings_on_default_only(self) -> BGPConfiguration:
        if self.metadata.name != "default":
            for fld in ("nodeMeshPassword", "nodeMeshMaxRestartTime"):
                if getattr(self.spec, fld) is not None:
                    raise FieldError(
                        ("spec", fld), f"{fld} can only be set on the 'default' BGPConfiguration"
                    )
        return self


# --------------------------------------------------------------------------- BGPFilter
#
# Rules are matched in order and the first match decides (Accept or Reject); a route no rule
# matches goes on to the peer's next filter and finally to the default import/export. A rule
# matches when all of its conditions hold; a rule with none matches every route.

_FILTER_INTERFACE_RE = re.compile(r"^[a-zA-Z0-9_.*-]{1,15}\Z")


def _filter_interface(value: Any) -> str:
    # Calico's bgpFilterInterface: an interface name in which '*' is a wildcard.
    if isinstance(value, str) and _FILTER_INTERFACE_RE.match(value):
        return value
    raise ValueError(
        f"invalid interface {show(value)} (1-15 of letters, digits, '_', '.', '-', '*')"
    )


def _filter_cidr(version: int) -> Any:
    """A strictly masked IPv<version> CIDR, or a bare address (a /32 or /128)."""

    def check(value: Any) -> str:
        addr, net = parse_cidr_or_ip(value, f"IPv{version} CIDR")
        if addr.version != version:
            raise ValueError(f"expected an IPv{version} CIDR, got {show(value)}")
        if addr != net.network_address:
            raise ValueError(
                f"CIDR {show(value)} has host bits set (did you mean {str(net)!r}?)"
            )
        return str(value)

    return BeforeValidator(check)


class BGPFilterPrefixLengthV4(TabbyModel):
    min: Annotated[int, int_range(0, 32, "prefix length")] | None = None
    max: Annotated[int, int_range(0, 32, "prefix length")] | None = None


class BGPFilterPrefixLengthV6(TabbyModel):
    min: Annotated[int, int_range(0, 128, "prefix length")] | None = None
    max: Annotated[int, int_range(0, 128, "prefix length")] | None = None


MatchOperator = Literal["Equal", "NotEqual", "In", "NotIn"]


class BGPFilterRule(TabbyModel):
    """What BGPFilterRuleV4 and BGPFilterRuleV6 share; VERSION says which family."""

    VERSION: ClassVar[int] = 4

    cidr: str | None = None
    prefixLength: BGPFilterPrefixLengthV4 | BGPFilterPrefixLengthV6 | None = None
    source: Literal["RemotePeers"] | None = None
    interface: Annotated[str, BeforeValidator(_filter_interface)] | None = None
    matchOperator: MatchOperator | None = None
    action: Literal["Accept", "Reject"]

    @model_validator(mode="after")
    def _rule(self) -> BGPFilterRule:
        # cidr and matchOperator only mean something together (an operator needs a CIDR
        # to compare with, a CIDR an operator saying how), and prefixLength narrows a cidr
        # match.
        if self.cidr is not None and self.matchOperator is None:
            raise FieldError("matchOperator", "matchOperator is required with cidr")
        if self.matchOperator is not None and self.cidr is None:
            raise FieldError("cidr", "cidr is required with matchOperator")
        if self.prefixLength is None:
            return self
        if self.cidr is None:
            raise FieldError("cidr", "cidr is required with prefixLength")
        lo, hi = self.length_range()
        plen = self.network().prefixlen
        given = f"prefixLength {show(self.prefixLength.model_dump(exclude_none=True))}"
        if self.prefixLength.min is not None and self.prefixLength.max is not None and lo > hi:
            raise FieldError("prefixLength", f"{given}: min is greater than max")
        # A range that leaves no length the cidr can match is a rule that never matches,
        # and BIRD refuses such a prefix pattern: say so here rather than at render time.
        if self.matchOperator in ("Equal", "NotEqual") and not lo <= plen <= hi:
            raise FieldError(
                "prefixLength", f"{given} excludes /{plen}, the only length cidr "
                f"{show(self.cidr)} has: the rule could never match",
            )
        if hi < plen:
            raise FieldError(
                "prefixLength", f"{given}: max is shorter than cidr {show(self.cidr)}: "
                "no route in it could match",
            )
        return self

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The cidr as a network (a bare address is a host route); cidr must be set."""
        assert self.cidr is not None
        return ipaddress.ip_network(self.cidr)

    def length_range(self) -> tuple[int, int]:
        """(min, max) prefix length a route may have: prefixLength, defaulting to the
        cidr's own length and the family's longest."""
        longest = 32 if self.VERSION == 4 else 128
        pl = self.prefixLength
        lo = pl.min if pl is not None and pl.min is not None else None
        hi = pl.max if pl is not None and pl.max is not None else longest
        if lo is None:
            lo = self.network().prefixlen if self.cidr is not None else 0
        return lo, hi


class BGPFilterRuleV4(BGPFilterRule):
    VERSION: ClassVar[int] = 4

    cidr: Annotated[str, _filter_cidr(4)] | None = None
    prefixLength: BGPFilterPrefixLengthV4 | None = None


class BGPFilterRuleV6(BGPFilterRule):
    VERSION: ClassVar[int] = 6

    cidr: Annotated[str, _filter_cidr(6)] | None = None
    prefixLength: BGPFilterPrefixLengthV6 | None = None


class BGPFilterSpec(TabbyModel):
    exportV4: list[BGPFilterRuleV4] | None = None
    importV4: list[BGPFilterRuleV4] | None = None
    exportV6: list[BGPFilterRuleV6] | None = None
    importV6: list[BGPFilterRuleV6] | None = None

    def rules(self, direction: str, version: int) -> list[BGPFilterRule]:
        """The rules for "import"/"export" of IPv4/IPv6 routes, in order."""
        found = getattr(self, f"{direction}V{version}")
        return list(found or ())


class BGPFilter(Resource):
    KIND: ClassVar[str] = "BGPFilter"

    apiVersion: Literal["projectcalico.org/v3"] = "projectcalico.org/v3"
    kind: Literal["BGPFilter"] = "BGPFilter"
    spec: BGPFilterSpec = Field(default_factory=BGPFilterSpec)
