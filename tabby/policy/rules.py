"""Rules compiled from their v3 JSON form into something cheap to match.

A compiled rule keeps Calico's field meanings: every criterion present must hold (positive
and negated forms of one field both apply), and entity selectors are already combined with
namespace / service-account scoping (see `tabby.policy.selectors`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tabby.policy.errors import PolicyError
from tabby.policy.selectors import Scope, entity_selector, parse_selector

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ACTIONS = ("Allow", "Deny", "Pass", "Log")

# Calico's protocol names (numorstring) and their IANA numbers.
PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "udplite": 136}
PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6", 132: "SCTP", 136: "UDPLite"}
# Protocols for which Calico allows port matches.
PORT_PROTOCOLS = frozenset({6, 17, 132})


def protocol_number(value: str | int, where: str = "protocol") -> int:
    """A protocol given by Calico name (any case) or number 1-255, as its number."""
    if isinstance(value, bool):
        raise PolicyError(f"{where}: invalid protocol {value!r}")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        num = int(value)
        if not 0 < num < 256:
            raise PolicyError(f"{where}: protocol number {num} out of range 1-255")
        return num
    if isinstance(value, str) and value.strip().lower() in PROTOCOL_NUMBERS:
        return PROTOCOL_NUMBERS[value.strip().lower()]
    raise PolicyError(
        f"{where}: unknown protocol {value!r} (TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1-255)"
    )


def protocol_name(num: int) -> str:
    return PROTOCOL_NAMES.get(num, str(num))


@dataclass(frozen=True)
class PortMatch:
    """One entry of a rule's ports list: a number, an inclusive range, or a named port."""

    first: int = 0
    last: int = 0
    name: str = ""

    def __str__(self) -> str:
        if self.name:
            return self.name
        return str(self.first) if self.first == self.last else f"{self.first}:{self.last}"


def parse_port(value: Any, where: str = "ports") -> PortMatch:
    if isinstance(value, bool):
        raise PolicyError(f"{where}: invalid port {value!r}")
    if isinstance(value, int):
        return _port_range(value, value, where)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return _port_range(int(text), int(text), where)
        if ":" in text:
            lo, _, hi = text.partition(":")
            if lo.strip().isdigit() and hi.strip().isdigit():
                return _port_range(int(lo), int(hi), where)
            raise PolicyError(f"{where}: invalid port range {value!r}")
        if text:
            return PortMatch(name=text)
    raise PolicyError(f"{where}: invalid port {value!r}")


def _port_range(first: int, last: int, where: str) -> PortMatch:
    if not (1 <= first <= 65535 and 1 <= last <= 65535):
        raise PolicyError(f"{where}: port {first}:{last} out of range 1-65535")
    if first > last:
        raise PolicyError(f"{where}: port range {first}:{last} has min > max")
    return PortMatch(first, last)


def parse_net(value: str, where: str) -> IPNetwork:
    """A CIDR or bare IP, masked to its network as Calico does (10.0.0.10/4 -> 0.0.0.0/4)."""
    try:
        return ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError:
        raise PolicyError(f"{where}: invalid CIDR {value!r}") from None


@dataclass(frozen=True)
class EntityMatch:
    """A compiled EntityRule (source or destination)."""

    selector: Any = None  # combined positive selector, or None for "no selector"
    not_selector: Any = None
    nets: tuple[IPNetwork, ...] | None = None
    not_nets: tuple[IPNetwork, ...] | None = None
    ports: tuple[PortMatch, ...] | None = None
    not_ports: tuple[PortMatch, ...] | None = None
    services: Mapping[str, Any] | None = None  # not modelled: a rule using it never matches

    @property
    def empty(self) -> bool:
        return self == _EMPTY_ENTITY

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.selector is not None:
            out["selector"] = str(self.selector)
        if self.not_selector is not None:
            out["notSelector"] = str(self.not_selector)
        if self.nets is not None:
            out["nets"] = [str(n) for n in self.nets]
        if self.not_nets is not None:
            out["notNets"] = [str(n) for n in self.not_nets]
        if self.ports is not None:
            out["ports"] = [str(p) for p in self.ports]
        if self.not_ports is not None:
            out["notPorts"] = [str(p) for p in self.not_ports]
        if self.services is not None:
            out["services"] = dict(self.services)
        return out


_EMPTY_ENTITY = EntityMatch()


@dataclass(frozen=True)
class Rule:
    """One compiled rule. `index` is its position in the policy's ingress/egress list."""

    index: int
    action: str
    ip_version: int | None = None
    protocol: int | None = None
    not_protocol: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_type: int | None = None
    not_icmp_code: int | None = None
    source: EntityMatch = _EMPTY_ENTITY
    destination: EntityMatch = _EMPTY_ENTITY
    http: Mapping[str, Any] | None = None  # L7 match: not evaluated (needs an L7 proxy)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def skipped_for_version(self, version: int) -> bool:
        """Felix drops a rule for an IP version when all CIDRs of a nets field are of the other one."""
        if self.ip_version is not None and self.ip_version != version:
            return True
        for nets in (self.source.nets, self.source.not_nets,
                     self.destination.nets, self.destination.not_nets):
            if nets and not any(n.version == version for n in nets):
                return True
        return False


def compile_rules(rules: Any, scope: Scope, where: str) -> tuple[Rule, ...]:
    if rules is None:
        return ()
    if not isinstance(rules, list):
        raise PolicyError(f"{where}: expected a list of rules, got {type(rules).__name__}")
    return tuple(compile_rule(r, i, scope, f"{where}[{i}]") for i, r in enumerate(rules))


def compile_rule(rule: Mapping[str, Any], index: int, scope: Scope, where: str) -> Rule:
    if not isinstance(rule, Mapping):
        raise PolicyError(f"{where}: expected a rule mapping")
    action = rule.get("action")
    if action not in ACTIONS:
        raise PolicyError(f"{where}.action: invalid action {action!r} (Allow, Deny, Pass, Log)")
    ip_version = rule.get("ipVersion")
    if ip_version is not None and ip_version not in (4, 6):
        raise PolicyError(f"{where}.ipVersion: invalid value {ip_version!r} (4 or 6)")
    proto = rule.get("protocol")
    not_proto = rule.get("notProtocol")
    icmp = rule.get("icmp") or {}
    not_icmp = rule.get("notICMP") or {}
    return Rule(
        index=index,
        action=action,
        ip_version=ip_version,
        protocol=None if proto is None else protocol_number(proto, f"{where}.protocol"),
        not_protocol=None if not_proto is None
        else protocol_number(not_proto, f"{where}.notProtocol"),
        icmp_type=icmp.get("type"),
        icmp_code=icmp.get("code"),
        not_icmp_type=not_icmp.get("type"),
        not_icmp_code=not_icmp.get("code"),
        source=compile_entity(rule.get("source"), scope, f"{where}.source"),
        destination=compile_entity(rule.get("destination"), scope, f"{where}.destination"),
        http=rule.get("http") or None,
        raw=dict(rule),
    )


def compile_entity(entity: Mapping[str, Any] | None, scope: Scope, where: str) -> EntityMatch:
    if not entity:
        return _EMPTY_ENTITY
    if not isinstance(entity, Mapping):
        raise PolicyError(f"{where}: expected a mapping")
    positive = entity_selector(
        selector=entity.get("selector") or "",
        namespace_selector=entity.get("namespaceSelector") or "",
        service_accounts=entity.get("serviceAccounts") or None,
        not_selector=entity.get("notSelector") or "",
        scope=scope,
        where=where,
    )
    not_sel = entity.get("notSelector") or ""
    return EntityMatch(
        selector=positive,
        not_selector=parse_selector(not_sel, f"{where}.notSelector") if not_sel else None,
        nets=_nets(entity.get("nets"), f"{where}.nets"),
        not_nets=_nets(entity.get("notNets"), f"{where}.notNets"),
        ports=_ports(entity.get("ports"), f"{where}.ports"),
        not_ports=_ports(entity.get("notPorts"), f"{where}.notPorts"),
        services=entity.get("services") or None,
    )


def _nets(values: Any, where: str) -> tuple[IPNetwork, ...] | None:
    if not values:
        return None
    return tuple(parse_net(v, where) for v in values)


def _ports(values: Any, where: str) -> tuple[PortMatch, ...] | None:
    if not values:
        return None
    return tuple(parse_port(v, where) for v in values)
