"""Policy rules: Rule, EntityRule, ICMPFields, HTTPMatch and friends (policy_common in Calico).

Shared by NetworkPolicy, GlobalNetworkPolicy and Profile. Cross-field checks follow
Calico's validator: ports need a protocol that has ports (a rule with no protocol may
use only named ports), ICMP matches need an ICMP protocol of the right IP version,
one rule never mixes IPv4 and IPv6 CIDRs, HTTP matches only on Allow rules over TCP.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_serializer, model_validator

from .common import (
    AnnotationMap,
    Name,
    NamespaceSelector,
    Port,
    Protocol,
    Selector,
    TabbyModel,
    check_masked_cidr,
    parse_cidr_or_ip,
)
from .errors import FieldError, show

Action = Literal["Allow", "Deny", "Log", "Pass"]
PolicyType = Literal["Ingress", "Egress"]

MAX_NETS = 256
MAX_PORTS = 50
MAX_RULES = 1024

Net = Annotated[str, BeforeValidator(check_masked_cidr)]


def _icmp_value(limit: int, what: str) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise ValueError(f"invalid ICMP {what} {show(value)} (want 0-{limit})")
        return value

    return BeforeValidator(check)


class ICMPFields(TabbyModel):
    """Match an ICMP type and (only with a type) a code."""

    type: Annotated[int, _icmp_value(254, "type")] | None = None
    code: Annotated[int, _icmp_value(255, "code")] | None = None

    @model_validator(mode="after")
    def _code_needs_type(self) -> ICMPFields:
        if self.code is not None and self.type is None:
            raise FieldError("code", f"ICMP code {self.code} given without an ICMP type")
        return self


class ServiceAccountMatch(TabbyModel):
    names: list[str] | None = None
    selector: Selector | None = None


class ServiceMatch(TabbyModel):
    name: Name | None = None
    namespace: Name | None = None


class HTTPPath(TabbyModel):
    exact: Annotated[str, Field(max_length=1024)] | None = None
    prefix: Annotated[str, Field(max_length=1024)] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> HTTPPath:
        if bool(self.exact) == bool(self.prefix):
            raise FieldError((), "an HTTP path needs exactly one of exact or prefix")
        path = self.exact or self.prefix or ""
        if not path.startswith("/") or any(c in path for c in "? #"):
            raise FieldError(
                "exact" if self.exact else "prefix",
                f"invalid HTTP path {show(path)} (must start with / and not contain ?, # or space)",
            )
        return self


class HTTPMatch(TabbyModel):
    methods: Annotated[list[str], Field(max_length=20)] | None = None
    paths: Annotated[list[HTTPPath], Field(max_length=20)] | None = None

    @model_validator(mode="after")
    def _no_duplicate_methods(self) -> HTTPMatch:
        if self.methods and len(set(self.methods)) != len(self.methods):
            raise FieldError("methods", f"duplicate HTTP methods in {show(self.methods)}")
        return self


class RuleMetadata(TabbyModel):
    annotations: AnnotationMap | None = None


class EntityRule(TabbyModel):
    """Match criteria for one side (source or destination) of a rule."""

    nets: Annotated[list[Net], Field(max_length=MAX_NETS)] | None = None
    selector: Selector | None = None
    namespaceSelector: NamespaceSelector | None = None
    services: ServiceMatch | None = None
    ports: Annotated[list[Port], Field(max_length=MAX_PORTS)] | None = None
    notNets: Annotated[list[Net], Field(max_length=MAX_NETS)] | None = None
    notSelector: Selector | None = None
    notPorts: Annotated[list[Port], Field(max_length=MAX_PORTS)] | None = None
    serviceAccounts: ServiceAccountMatch | None = None

    @model_validator(mode="after")
    def _services_alone(self) -> EntityRule:
        if self.services is None:
            return self
        if not self.services.name:
            raise FieldError(("services", "name"), "services must name a service")
        clash = [
            f
            for f in ("namespaceSelector", "selector", "notSelector", "serviceAccounts")
            if getattr(self, f)
        ]
        clash += [f for f in ("nets", "notNets") if getattr(self, f)]
        if clash:
            raise FieldError(clash[0], f"{clash[0]} cannot be combined with services")
        return self

    def is_empty(self) -> bool:
        return not self.model_dump(exclude_none=True)


class Rule(TabbyModel):
    """One policy rule: an action and match criteria, all of which must hold."""

    action: Action
    ipVersion: Literal[4, 6] | None = None
    protocol: Protocol | None = None
    icmp: ICMPFields | None = None
    notProtocol: Protocol | None = None
    notICMP: ICMPFields | None = None
    source: EntityRule = Field(default_factory=EntityRule)
    destination: EntityRule = Field(default_factory=EntityRule)
    http: HTTPMatch | None = None
    metadata: RuleMetadata | None = None

    @model_serializer(mode="wrap")
    def _omit_empty_sides(self, handler: Any) -> Any:
        # An absent side and an empty side mean the same (match anything); print neither.
        data = handler(self)
        if isinstance(data, dict):
            for side in ("source", "destination"):
                if data.get(side) == {}:
                    del data[side]
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        self._check_ports()
        self._check_icmp()
        self._check_nets()
        if self.http is not None:
            if self.action != "Allow":
                raise FieldError(
                    "http", f"HTTP match is only valid on Allow rules, not {self.action}"
                )
            if self.protocol is not None and self.protocol.number != 6:
                raise FieldError(
                    "protocol",
                    f"rules with an HTTP match need protocol TCP, not {show(self.protocol.root)}",
                )
        for fld in ("ports", "notPorts"):
            if self.destination.services is not None and getattr(self.destination, fld):
                raise FieldError(("destination", fld), f"{fld} cannot be combined with services")
        return self

    def _check_ports(self) -> None:
        for side in ("source", "destination"):
            entity: EntityRule = getattr(self, side)
            for fld in ("ports", "notPorts"):
                for i, port in enumerate(getattr(entity, fld) or ()):
                    if self.protocol is not None and not self.protocol.supports_ports:
                        raise FieldError(
                            (side, fld, i),
                            f"protocol {show(self.protocol.root)} has no ports "
                            f"(port {show(port.root)}; ports need TCP, UDP or SCTP)",
                        )
                    if self.protocol is None and not port.is_named:
                        raise FieldError(
                            (side, fld, i),
                            f"port {show(port.root)} needs the rule protocol set to TCP, UDP or SCTP",
                        )

    def _check_icmp(self) -> None:
        for fld in ("icmp", "notICMP"):
            if getattr(self, fld) is not None and (
                self.protocol is None or not self.protocol.is_icmp
            ):
                got = f"protocol {show(self.protocol.root)}" if self.protocol else "no protocol"
                raise FieldError(fld, f"{fld} needs protocol ICMP or ICMPv6 (rule has {got})")
        for fld in ("protocol", "notProtocol"):
            proto: Protocol | None = getattr(self, fld)
            if proto is None or self.ipVersion is None:
                continue
            if proto.number == 1 and self.ipVersion != 4:
                raise FieldError(
                    "ipVersion", f"protocol ICMP needs ipVersion 4, not {self.ipVersion}"
                )
            if proto.number == 58 and self.ipVersion != 6:
                raise FieldError(
                    "ipVersion", f"protocol ICMPv6 needs ipVersion 6, not {self.ipVersion}"
                )

    def _check_nets(self) -> None:
        seen: set[int] = set()
        for side in ("source", "destination"):
            entity: EntityRule = getattr(self, side)
            for fld in ("nets", "notNets"):
                for i, text in enumerate(getattr(entity, fld) or ()):
                    _, net = parse_cidr_or_ip(text)
                    path = (side, fld, i)
                    if self.ipVersion is not None and net.version != self.ipVersion:
                        raise FieldError(
                            path,
                            f"IPv{net.version} CIDR {show(text)} in an ipVersion {self.ipVersion} rule",
                        )
                    if seen and net.version not in seen:
                        raise FieldError(path, f"rule mixes IPv4 and IPv6 CIDRs ({show(text)})")
                    seen.add(net.version)
                    if fld == "notNets" and net.prefixlen == 0:
                        raise FieldError(path, f"notNets {show(text)} matches no traffic")

    def ip_versions(self) -> set[int]:
        """The IP versions this rule can match: from ipVersion, else its CIDRs, else both."""
        if self.ipVersion is not None:
            return {int(self.ipVersion)}
        versions: set[int] = {
            ipaddress.ip_network(n, strict=False).version
            for side in (self.source, self.destination)
            for n in (side.nets or []) + (side.notNets or [])
        }
        return versions or {4, 6}
