"""Compile a policy's or profile's rule list into few nft rules (pure, no I/O).

nft evaluates a chain's rules one by one, so a 10,000-rule policy costs a new
connection 10,000 rule evaluations. Calico's semantics allow a shortcut: within one
chain, a maximal run of consecutive rules with the same terminal action (allow, deny or
pass) can be evaluated in any order - whichever of them matches first, the verdict is
that action. (Log rules are not terminal and are ordered, so they end a run; so does a
change of action.) Inside a run, rules that differ only in "set-able" values - source or
destination CIDRs, source or destination ports - become one nft rule whose differing
values are one set lookup:

    allow from 10.0.0.1/32, allow from 10.0.0.2/32, ...     ->  ip saddr { ... }
    allow from A to port 80, allow from B to port 443, ...   ->  ip saddr . tcp dport @set

A rule matches when every criterion does and a list is ANY of its values, so the union
of a group's values, with everything else equal, matches exactly when one of the rules
does. Everything else is the group's "shape" and must be identical: action, protocol,
IP version, IP set ids, named ports, ICMP, every negated field, and which of the four
dimensions are empty (an empty list means "any", which no set can hold). Per shape the
dimensions to unite are chosen to leave the fewest rules (at most two, as one
concatenated lookup); rules left alone compile exactly as before.

Set elements are made disjoint (overlapping CIDRs collapsed, port ranges joined, pairs
split into non-overlapping boxes): interval sets refuse overlaps. Small unions are
anonymous sets in the rule; bigger ones are named sets owned by the policy, named after
its chain, so a change to one rule of a big group is an element delta of the same set in
the same transaction as the chain (see model.delta_text). A named set holding only
single addresses and ports is a hash set (constant-time lookups and deletes), otherwise
an interval set; the kind is in the name, so a set is never retyped.
"""

from __future__ import annotations

import functools
import ipaddress
import operator
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import combinations

from tabby.calc.messages import Rule
from tabby.dataplane.nft import names as n
from tabby.dataplane.nft.model import NftSet
from tabby.dataplane.nft.rules import Merged, Resolver, compile_rule, families

DIMS = ("src_nets", "dst_nets", "src_ports", "dst_ports")
SHAPE_FIELDS = tuple(f.name for f in fields(Rule) if f.name not in (*DIMS, "rule_id", "log_prefix"))
ANON_MAX = 32  # more elements than this in one family: a named set
MAX_PAIRS = 100_000  # a two-dimension group whose cross products exceed this is not merged

Range = tuple[int, int]  # inclusive integer range: addresses or ports


@dataclass(frozen=True)
class Group:
    """Rules (indices into the chain's list) compiled as one; `dims` are united."""

    indices: tuple[int, ...]
    dims: tuple[str, ...]


# --- planning -------------------------------------------------------------------------------


def runs(rules: Sequence[Rule]) -> list[list[int]]:
    """Maximal runs of consecutive rules with one terminal action; a Log rule is alone."""
    out: list[list[int]] = []
    for i, r in enumerate(rules):
        if out and r.action != "log" and rules[out[-1][0]].action == r.action:
            out[-1].append(i)
        else:
            out.append([i])
    return out


_SHAPE_OF = operator.attrgetter(*SHAPE_FIELDS)
_DIMS_OF = operator.attrgetter(*DIMS)


def _shape(r: Rule) -> tuple[object, ...]:
    return (*_SHAPE_OF(r), *map(bool, _DIMS_OF(r)))


def _two_dim_ok(rules: Sequence[Rule], idxs: Sequence[int], dims: tuple[str, str]) -> bool:
    first = rules[idxs[0]]
    for d in dims:  # numeric OR named ports on one side cannot be split into pairs
        side = d.split("_")[0]
        if d.endswith("_ports") and getattr(first, f"{side}_named_port_ip_set_ids"):
            return False
    pairs = sum(len(getattr(rules[i], dims[0])) * len(getattr(rules[i], dims[1])) for i in idxs)
    return pairs <= MAX_PAIRS


def plan(rules: Sequence[Rule]) -> list[Group]:
    """The chain as groups, in an order with the same verdicts as `rules`."""
    out: list[Group] = []
    for run in runs(rules):
        if len(run) == 1 or rules[run[0]].action == "log":
            out += [Group((i,), ()) for i in run]
            continue
        by_shape: dict[tuple[object, ...], list[int]] = {}
        for i in run:
            by_shape.setdefault(_shape(rules[i]), []).append(i)
        groups: list[Group] = []
        for idxs in by_shape.values():
            groups += _split(rules, idxs)
        out += sorted(groups, key=lambda g: g.indices[0])  # any order is right; keep a familiar one
    return out


def _split(rules: Sequence[Rule], idxs: list[int]) -> list[Group]:
    if len(idxs) == 1:
        return [Group((idxs[0],), ())]
    present = [d for d in DIMS if getattr(rules[idxs[0]], d)]
    options: list[tuple[str, ...]] = [(), *((d,) for d in present)]
    options += [p for p in combinations(present, 2) if _two_dim_ok(rules, idxs, p)]
    best: dict[tuple[object, ...], list[int]] | None = None
    best_dims: tuple[str, ...] = ()
    for dims in options:  # fewest rules left, then the fewest united dimensions
        keep = [d for d in present if d not in dims]
        buckets: dict[tuple[object, ...], list[int]] = {}
        for i in idxs:
            buckets.setdefault(tuple(getattr(rules[i], d) for d in keep), []).append(i)
        if best is None or len(buckets) < len(best):
            best, best_dims = buckets, dims
    assert best is not None
    return [Group(tuple(b), best_dims if len(b) > 1 else ()) for b in best.values()]


# --- elements -------------------------------------------------------------------------------


def _join(ranges: Sequence[Range]) -> list[Range]:
    """Sorted, with overlapping and adjacent ranges joined."""
    out: list[Range] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


@functools.lru_cache(maxsize=1 << 16)
def _net_range(text: str) -> tuple[int, Range]:
    net = ipaddress.ip_network(text)
    return net.version, (int(net.network_address), int(net.broadcast_address))


def _values(r: Rule, dim: str, fam: int | None) -> list[Range]:
    if dim.endswith("_ports"):
        return [(p.first, p.last) for p in getattr(r, dim)]
    return [rng for version, rng in map(_net_range, getattr(r, dim)) if version == fam]


def _texts(rng: Range, dim: str, fam: int | None) -> list[str]:
    lo, hi = rng
    if dim.endswith("_ports"):
        return [str(lo) if lo == hi else f"{lo}-{hi}"]
    cls = ipaddress.IPv4Address if fam == 4 else ipaddress.IPv6Address
    if lo == hi:
        return [str(cls(lo))]
    return [str(c.network_address) if c.prefixlen == c.max_prefixlen else str(c)
            for c in ipaddress.summarize_address_range(cls(lo), cls(hi))]


def _boxes(pairs: list[tuple[Range, Range]]) -> list[tuple[Range, list[Range]]]:
    """The union of rectangles x-range x y-range as disjoint boxes: the x axis cut at every
    edge, each piece with the joined y ranges covering it, equal neighbours joined."""
    edges: dict[int, list[tuple[int, Range]]] = {}
    for x, y in pairs:
        edges.setdefault(x[0], []).append((1, y))
        edges.setdefault(x[1] + 1, []).append((-1, y))
    active: Counter[Range] = Counter()
    out: list[tuple[Range, list[Range]]] = []
    points = sorted(edges)
    for k, p in enumerate(points):
        for delta, y in edges[p]:
            active[y] += delta
            if not active[y]:
                del active[y]
        if not active or k + 1 == len(points):
            continue
        ys = _join(list(active))
        piece = (p, points[k + 1] - 1)
        if out and out[-1][1] == ys and out[-1][0][1] + 1 == p:
            out[-1] = ((out[-1][0][0], piece[1]), ys)
        else:
            out.append((piece, ys))
    return out


def elements(rules: Sequence[Rule], idxs: Sequence[int], dims: tuple[str, ...],
             fam: int | None) -> list[str]:
    """The nft elements of the union of `dims` over the rules, for one family, in
    numeric order and disjoint."""
    if len(dims) == 1:
        ranges = [v for i in idxs for v in _values(rules[i], dims[0], fam)]
        return [t for rng in _join(ranges) for t in _texts(rng, dims[0], fam)]
    pairs = [(x, y) for i in idxs for x in _values(rules[i], dims[0], fam)
             for y in _values(rules[i], dims[1], fam)]
    out: list[str] = []
    for xr, yrs in _boxes(pairs):
        for xt in _texts(xr, dims[0], fam):
            out += [f"{xt} . {yt}" for yr in yrs for yt in _texts(yr, dims[1], fam)]
    return out


def _set_type(dims: tuple[str, ...], fam: int | None) -> str:
    addr = "ipv4_addr" if fam == 4 else "ipv6_addr"
    return " . ".join("inet_service" if d.endswith("_ports") else addr for d in dims)


def _spans(idxs: Sequence[int]) -> str:
    out: list[str] = []
    start = prev = idxs[0]
    for i in [*idxs[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(out)


# --- compiling ------------------------------------------------------------------------------


def compile_rules(
    rules: Sequence[Rule], *, chain: str, owner: str, label: str, resolve: Resolver,
    verdicts: Mapping[str, str], log_prefix: str, merge: bool = True,
) -> tuple[list[str], list[NftSet]]:
    """nft rule lines for a policy/profile chain, and the named sets they use.

    Raises RuleError/ValueError like `compile_rule` (every rule is checked, merged or not).
    Comments name the source: the rule's id (or `label/index`); a merged rule names its
    first rule, how many more, and the indices of all of them."""
    notes = [r.rule_id or f"{label}/{i}" for i, r in enumerate(rules)]
    if not merge:
        groups = [Group((i,), ()) for i in range(len(rules))]
    else:
        groups = plan(rules)
    lines: list[str] = []
    sets: dict[str, NftSet] = {}
    seen: Counter[str] = Counter()
    for g in groups:
        first = rules[g.indices[0]]
        if len(g.indices) == 1:
            lines += compile_rule(first, resolve=resolve, verdicts=verdicts,
                                  log_prefix=log_prefix, note=notes[g.indices[0]])
            continue
        # The other rules of the group have the first one's shape, so they compile (or
        # fail to) exactly as it does: checking the first checks them all.
        note = f"{notes[g.indices[0]]} +{len(g.indices) - 1} merged ({_spans(g.indices)})"
        merged = None
        if g.dims:
            refs: dict[int | None, str] = {}
            tag = repr((_shape(first), g.dims))
            seen[tag] += 1
            by_family = any(d.endswith("_nets") for d in g.dims)
            for fam in families(first):
                elems = elements(rules, g.indices, g.dims, fam if by_family else None)
                if not elems:
                    continue
                if len(elems) == 1 and len(g.dims) == 1:
                    refs[fam] = elems[0]
                elif len(elems) <= ANON_MAX:
                    refs[fam] = "{ " + ", ".join(elems) + " }"
                else:  # ports alone are the same set for both families
                    # Single addresses and ports only: a hash set (constant-time lookups
                    # and deletes) instead of an interval set; the kind is in the name.
                    interval = any("/" in e or "-" in e for e in elems)
                    key = f"{fam if by_family else 0}{'' if interval else 'h'}"
                    name = f"{chain}-m{key}-{n.short_hash(f'{chain}|{tag}|{seen[tag]}', 8)}"
                    if name not in sets:
                        sets[name] = NftSet(
                            name, _set_type(g.dims, fam), interval, frozenset(elems),
                            owner=owner, note=f"{label} rules {_spans(g.indices)}"[:120])
                    refs[fam] = f"@{name}"
            merged = Merged(g.dims, refs)
        lines += compile_rule(first, resolve=resolve, verdicts=verdicts, log_prefix=log_prefix,
                              note=note, merged=merged)
    return lines, list(sets.values())
