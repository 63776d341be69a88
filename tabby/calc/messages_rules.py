"""Calc -> dataplane messages about policy: compiled rules, IP sets, policies and profiles
(see `tabby.calc.messages` for the whole protocol and its keys)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tabby.calc.messages_fields import (
    ACTIONS,
    IPSET_KINDS,
    PolicyId,
    PortRange,
    _bad,
    _choice,
    _cidrs,
    _policy_id,
    _set,
    _strs,
    protocol_number,
)

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
