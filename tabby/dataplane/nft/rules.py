"""Compile one `tabby.calc.messages.Rule` into nft rule text (pure).

A rule becomes one nft rule per IP family it can match (none when it has no address
criteria, so one rule serves both). Criteria are ANDed as nft statements; a list of
alternatives becomes an anonymous set (`tcp dport { 80, 8080 }`). The one OR nft cannot
write inline is numeric ports OR named-port sets on one side; those sides set a scratch
mark bit per alternative and the final rule tests the bits, so a Log rule still logs
once and no cross product of rules is made.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tabby.calc.messages import PortRange, Rule
from tabby.dataplane.nft.names import (
    MARK_SCRATCH0,
    MARK_SCRATCH1,
    comment,
    mark_clear,
    mark_is_set,
    mark_set,
    quote,
)

L4_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp", 136: "udplite"}
PORT_KEYWORDS = {6: "tcp", 17: "udp", 132: "sctp", 136: "th"}
# The kernel takes at most 128 expressions per rule; a match costs 2-4 of them.
MAX_MATCHES = 30

# resolve(set_id, want, version) -> nft set name, or None when that family of the set is
# empty (no named set is made for it: nothing can be in it). want is "addr" or "port".
Resolver = Callable[[str, str, int], str | None]


class RuleError(ValueError):
    """A rule that cannot be expressed in nft; the message says why."""


@dataclass(frozen=True)
class Merged:
    """Dimensions (`src_nets`, `dst_nets`, `src_ports`, `dst_ports`, in that order) whose
    values a group of rules unites: `refs[family]` is what follows the lookup (`@name`,
    `{ a, b }` or one literal); a family with no entry has no element, so no rule."""

    dims: tuple[str, ...]
    refs: Mapping[int | None, str]


def _dim_expr(dim: str, addr: str, kw: str) -> str:
    side, what = dim.split("_")
    if what == "nets":
        return f"{addr} {'saddr' if side == 'src' else 'daddr'}"
    return f"{kw} {'sport' if side == 'src' else 'dport'}"


def l4(proto: int) -> str:
    return L4_NAMES.get(proto, str(proto))


def port_literal(ports: Iterable[PortRange]) -> str:
    items = sorted(set(ports))
    texts = [str(p) for p in items]
    return texts[0] if len(texts) == 1 else "{ " + ", ".join(texts) + " }"


def net_literal(nets: Iterable[str]) -> str:
    parsed = [ipaddress.ip_network(n) for n in nets]
    collapsed = list(ipaddress.collapse_addresses(parsed))  # type: ignore[type-var]
    texts = [
        str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in collapsed
    ]
    return texts[0] if len(texts) == 1 else "{ " + ", ".join(texts) + " }"


def _version(net: str) -> int:
    return ipaddress.ip_network(net).version


def _needs_family(r: Rule) -> bool:
    return bool(
        r.src_nets or r.not_src_nets or r.dst_nets or r.not_dst_nets
        or r.src_ip_set_ids or r.not_src_ip_set_ids or r.dst_ip_set_ids or r.not_dst_ip_set_ids
        or r.src_named_port_ip_set_ids or r.not_src_named_port_ip_set_ids
        or r.dst_named_port_ip_set_ids or r.not_dst_named_port_ip_set_ids
        or r.icmp_type is not None or r.not_icmp_type is not None
    )


def families(r: Rule) -> list[int | None]:
    fams: list[int | None]
    if r.ip_version is not None:
        fams = [r.ip_version]
    elif _needs_family(r):
        fams = [4, 6]
    else:
        fams = [None]
    if r.protocol == 1:
        fams = [f for f in fams if f != 6]
    elif r.protocol == 58:
        fams = [f for f in fams if f != 4]
    if fams == [None] and r.protocol == 58:
        fams = [6]
    return fams


def _check(r: Rule) -> None:
    has_ports = r.src_ports or r.not_src_ports or r.dst_ports or r.not_dst_ports
    if has_ports and r.protocol not in PORT_KEYWORDS:
        raise RuleError(
            f"rule {r.rule_id or '?'}: numeric ports need protocol TCP, UDP, SCTP or UDPLite "
            f"(protocol is {r.protocol})"
        )
    has_icmp = r.icmp_type is not None or r.not_icmp_type is not None
    if has_icmp and r.protocol not in (1, 58):
        raise RuleError(
            f"rule {r.rule_id or '?'}: ICMP type/code needs protocol ICMP or ICMPv6 "
            f"(protocol is {r.protocol})"
        )


def compile_rule(
    r: Rule,
    *,
    resolve: Resolver,
    verdicts: Mapping[str, str],
    log_prefix: str,
    note: str,
    merged: Merged | None = None,
) -> list[str]:
    """nft rule lines for `r` (possibly none: e.g. only IPv6 nets in an IPv4-only rule).

    `verdicts` maps allow/deny/pass to the statement ending the rule; log rules log and
    fall through to the next rule. With `merged`, the values of `merged.dims` come from
    `merged.refs` instead of `r`.
    """
    _check(r)
    if r.action == "log":
        prefix = r.log_prefix if r.log_prefix is not None else log_prefix
        action = f"log prefix {quote(prefix.rstrip() + ' ', 127)}"
    else:
        action = verdicts[r.action]
    out: list[str] = []
    for fam in families(r):
        out.extend(_compile_family(r, fam, resolve, action, comment(note), merged))
    return out


def _compile_family(
    r: Rule, fam: int | None, resolve: Resolver, action: str, note: str,
    merged: Merged | None = None,
) -> list[str]:
    # Matches are ordered cheapest first, because nft stops at the first that fails:
    # compares (family, protocol, ports, ICMP) before CIDRs before set lookups.
    head: list[str] = []
    cheap: list[str] = []
    costly: list[str] = []
    if fam is not None:
        head.append(f"meta nfproto ipv{fam}")
    if r.protocol is not None:
        head.append(f"meta l4proto {l4(r.protocol)}")
    if r.not_protocol is not None:
        head.append(f"meta l4proto != {l4(r.not_protocol)}")
    alts: dict[str, list[str]] = {"s": [], "d": []}
    addr = "ip" if fam == 4 else "ip6"
    kw = PORT_KEYWORDS.get(r.protocol or 0, "th")
    mdims: tuple[str, ...] = ()
    lookup = ""
    if merged is not None:
        if fam not in merged.refs:
            return []  # no merged value of this family: nothing to match
        mdims = merged.dims
        lookup = " . ".join(_dim_expr(d, addr, kw) for d in mdims) + " " + merged.refs[fam]
    for side, pre in (("s", "src"), ("d", "dst")):
        word = "saddr" if side == "s" else "daddr"
        pword = "sport" if side == "s" else "dport"
        ports = getattr(r, f"{pre}_ports")
        not_ports = getattr(r, f"not_{pre}_ports")
        named = getattr(r, f"{pre}_named_port_ip_set_ids")
        not_named = getattr(r, f"not_{pre}_named_port_ip_set_ids")
        # a port dimension in a two-dimension lookup is matched by that lookup
        ports_in_concat = len(mdims) == 2 and f"{pre}_ports" in mdims
        if not_ports:
            cheap.append(f"{kw} {pword} != {port_literal(not_ports)}")
        if ports and f"{pre}_ports" in mdims:
            if not ports_in_concat:
                alts[side].append(lookup)
        elif ports:
            alts[side].append(f"{kw} {pword} {port_literal(ports)}")
        if fam is None:
            continue
        nets = getattr(r, f"{pre}_nets")
        if f"{pre}_nets" in mdims:
            if len(mdims) == 1:
                costly.append(lookup)
        else:
            mine = [n for n in nets if _version(n) == fam]
            if nets and not mine:
                return []  # all of this side's nets are of the other family
            if mine:
                costly.append(f"{addr} {word} {net_literal(mine)}")
        not_mine = [n for n in getattr(r, f"not_{pre}_nets") if _version(n) == fam]
        if not_mine:
            costly.append(f"{addr} {word} != {net_literal(not_mine)}")
        for sid in getattr(r, f"{pre}_ip_set_ids"):
            name = resolve(sid, "addr", fam)
            if name is None:
                return []  # must be in an empty set: this family cannot match
            costly.append(f"{addr} {word} @{name}")
        for sid in getattr(r, f"not_{pre}_ip_set_ids"):
            name = resolve(sid, "addr", fam)
            if name is not None:  # not in an empty set: always true, no test
                costly.append(f"{addr} {word} != @{name}")
        concat = f"{addr} {word} . meta l4proto . th {pword}"
        for sid in named:
            name = resolve(sid, "port", fam)
            if name is not None:
                alts[side].append(f"{concat} @{name}")
        if (ports or named) and not alts[side] and not ports_in_concat:
            return []  # only empty named-port sets on this side: nothing matches
        for sid in not_named:
            name = resolve(sid, "port", fam)
            if name is not None:
                costly.append(f"{concat} != @{name}")
    if len(mdims) == 2:
        costly.append(lookup)
    if fam is not None:
        icmp = "icmp" if fam == 4 else "icmpv6"
        if r.icmp_type is not None:
            cheap.append(f"{icmp} type {r.icmp_type}")
            if r.icmp_code is not None:
                cheap.append(f"{icmp} code {r.icmp_code}")
        if r.not_icmp_type is not None:
            if r.not_icmp_code is not None:
                cheap.append(f"{icmp} type . {icmp} code != {{ {r.not_icmp_type} . {r.not_icmp_code} }}")
            else:
                cheap.append(f"{icmp} type != {r.not_icmp_type}")
    for a in alts.values():
        if len(a) == 1:  # a single alternative is just another match
            (costly if "@" in a[0] else cheap).append(a[0])
    m = head + cheap + costly
    count = len(m) + sum(len(a) for a in alts.values() if len(a) > 1)
    if count > MAX_MATCHES:
        raise RuleError(
            f"rule {r.rule_id or '?'}: too many match criteria for one nft rule "
            f"({count} > {MAX_MATCHES})"
        )
    multi = {side: a for side, a in alts.items() if len(a) > 1}
    if not multi:
        return [" ".join([*m, action, note])]
    bits = {"s": MARK_SCRATCH0, "d": MARK_SCRATCH1}
    used = 0
    lines = [mark_clear(MARK_SCRATCH0 | MARK_SCRATCH1)]
    for side, options in multi.items():
        used |= bits[side]
        for opt in options:
            lines.append(f"{opt} {mark_set(bits[side])}")
    lines.append(" ".join([*m, mark_is_set(used), action, note]))
    return lines
