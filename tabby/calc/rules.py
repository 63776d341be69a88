"""Compiled policy rules (tabby.policy) -> the neutral `messages.Rule`, plus the IP sets
each rule needs (Felix's rule scanner).

Every rule selector becomes an IP set: the positive source/destination selector (already
scoped to the policy's namespace by tabby.policy) and the notSelector each get one. A
named port becomes an "ip-port" set of the endpoints that the rule's positive selector of
that side picks (every endpoint when it has none) and that declare a port of that name -
of the rule's protocol, or of any protocol when the rule names none.

Ids are stable and derived from canonical forms, so two rules (in any policies) with the
same selector share one set: "s:" + Calico's selector UniqueID, "n:" + a hash of
(selector, protocol, port name).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from typing import Any, NamedTuple

from tabby.calc.messages import PortRange, Rule
from tabby.policy.rules import EntityMatch
from tabby.policy.rules import Rule as CompiledRule
from tabby.selector import ALL, Selector

PROTOCOL_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 136: "udplite"}


class IPSetSpec(NamedTuple):
    """What an IP set holds: the addresses of the endpoints (and network-set nets) that
    `selector` matches, or - with `port_name` - their "ip,proto:port" named ports."""

    set_id: str
    selector: Selector
    port_name: str | None = None
    protocol: int | None = None  # named ports only: None = any protocol


def _hash_id(prefix: str, text: str) -> str:
    digest = hashlib.sha224((prefix + text).encode()).digest()
    return prefix + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def selector_set(sel: Selector) -> IPSetSpec:
    return IPSetSpec(sel.unique_id, sel)


def named_port_set(sel: Selector | None, protocol: int | None, name: str) -> IPSetSpec:
    base = ALL if sel is None else sel
    proto = "" if protocol is None else str(protocol)
    return IPSetSpec(_hash_id("n:", f"{base}|{proto}|{name}"), base, name, protocol)


def _side(ent: EntityMatch, side: str, protocol: int | None, kw: dict[str, Any],
          sets: dict[str, IPSetSpec]) -> None:
    if ent.selector is not None:
        spec = selector_set(ent.selector)
        sets[spec.set_id] = spec
        kw[f"{side}_ip_set_ids"] = (spec.set_id,)
    if ent.not_selector is not None:
        spec = selector_set(ent.not_selector)
        sets[spec.set_id] = spec
        kw[f"not_{side}_ip_set_ids"] = (spec.set_id,)
    if ent.nets is not None:
        kw[f"{side}_nets"] = tuple(str(n) for n in ent.nets)
    if ent.not_nets is not None:
        kw[f"not_{side}_nets"] = tuple(str(n) for n in ent.not_nets)
    for negated, ports in ((False, ent.ports), (True, ent.not_ports)):
        if not ports:
            continue
        numeric: list[PortRange] = []
        named: list[str] = []
        for pm in ports:
            if pm.name:
                spec = named_port_set(ent.selector, protocol, pm.name)
                sets[spec.set_id] = spec
                if spec.set_id not in named:
                    named.append(spec.set_id)
            else:
                numeric.append(PortRange(pm.first, pm.last))
        pre = "not_" if negated else ""
        if numeric:
            kw[f"{pre}{side}_ports"] = tuple(numeric)
        if named:
            kw[f"{pre}{side}_named_port_ip_set_ids"] = tuple(named)


def convert_rule(rule: CompiledRule, rule_id: str,
                 sets: dict[str, IPSetSpec]) -> Rule | None:
    """One compiled rule as a dataplane Rule, adding the IP sets it uses to `sets`.

    None for a rule that can never match here: one using `services`, which the reference
    evaluator treats the same way. An `http` match is not enforced at L3/L4, as in the
    evaluator (the rule acts on its other criteria).
    """
    if rule.source.services is not None or rule.destination.services is not None:
        return None
    kw: dict[str, Any] = {}
    _side(rule.source, "src", rule.protocol, kw, sets)
    _side(rule.destination, "dst", rule.protocol, kw, sets)
    return Rule(
        action=rule.action.lower(),
        ip_version=rule.ip_version,
        protocol=rule.protocol,
        not_protocol=rule.not_protocol,
        icmp_type=rule.icmp_type,
        icmp_code=rule.icmp_code,
        not_icmp_type=rule.not_icmp_type,
        not_icmp_code=rule.not_icmp_code,
        rule_id=rule_id,
        **kw,
    )


def convert_rules(rules: Iterable[CompiledRule], prefix: str,
                  sets: dict[str, IPSetSpec]) -> tuple[Rule, ...]:
    """A rule list; rule ids are `<prefix>/<index in the original list>`."""
    out = []
    for rule in rules:
        converted = convert_rule(rule, f"{prefix}/{rule.index}", sets)
        if converted is not None:
            out.append(converted)
    return tuple(out)
