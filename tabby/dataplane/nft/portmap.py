"""Index a tier's allow-only policies by (protocol, destination port) (pure, no I/O).

A tier chain evaluates its policies one after the other, so 500 policies cost a new
connection 500 evaluations even when each is a single rule. But a run of consecutive
policies that can only Allow may be evaluated in any order (whichever matches, the
verdict is Allow; none matching falls through to what follows the run), and when every
rule of such a policy names a protocol and destination ports, a packet whose protocol
and destination port is in none of them cannot match it at all. So the tier chain can
look the packet's `meta l4proto . th dport` up in one verdict map and jump only to the
policies that could match it - usually none or one:

    meta l4proto . th dport vmap @<map>      (tcp . 80 : jump <policy chain>, ...)
    meta mark & ACCEPT == ACCEPT return

The policy chains themselves are unchanged and still decide (source sets, nets, ...), so
the index only ever skips policies that could not match. Overlapping port ranges of
different policies are cut into disjoint segments, each naming every policy it covers
(in tier order); a segment covered by several policies jumps to a small chain that jumps
to each of them in turn.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tabby.calc.messages import Rule

INDEX_PROTOCOLS = (6, 17, 132)  # TCP, UDP, SCTP: destination port at the same offset
Key = tuple[int, int, int]  # (protocol, first port, last port)


def port_keys(rules: Sequence[Rule]) -> tuple[Key, ...] | None:
    """The (protocol, port range)s a packet must hit for one of `rules` to match, or None
    if some rule can match without (no protocol or port, or named ports beside them)."""
    keys: set[Key] = set()
    for r in rules:
        if (r.protocol not in INDEX_PROTOCOLS or not r.dst_ports
                or r.dst_named_port_ip_set_ids):
            return None
        keys.update((r.protocol, p.first, p.last) for p in r.dst_ports)
    return tuple(sorted(keys))


def segments(entries: Sequence[tuple[str, Sequence[Key]]]) -> list[tuple[Key, tuple[str, ...]]]:
    """Disjoint (protocol, first, last) segments, each with the entries (names, in the
    given order) whose keys cover it; neighbours with the same names are joined."""
    rank = {name: i for i, (name, _) in enumerate(entries)}
    by_proto: dict[int, dict[int, list[tuple[int, str]]]] = {}
    for name, keys in entries:
        for proto, lo, hi in keys:
            edges = by_proto.setdefault(proto, {})
            edges.setdefault(lo, []).append((1, name))
            edges.setdefault(hi + 1, []).append((-1, name))
    out: list[tuple[Key, tuple[str, ...]]] = []
    for proto in sorted(by_proto):
        edges = by_proto[proto]
        points = sorted(edges)
        active: Counter[str] = Counter()
        for k, p in enumerate(points[:-1]):
            for delta, name in edges[p]:
                active[name] += delta
                if not active[name]:
                    del active[name]
            if not active:
                continue
            names = tuple(sorted(active, key=rank.__getitem__))
            hi = points[k + 1] - 1
            if out and out[-1][1] == names and out[-1][0][0] == proto and out[-1][0][2] + 1 == p:
                out[-1] = ((proto, out[-1][0][1], hi), names)
            else:
                out.append(((proto, p, hi), names))
    return out


def element_key(key: Key, proto_name: str) -> str:
    _, lo, hi = key
    return f"{proto_name} . {lo}" if lo == hi else f"{proto_name} . {lo}-{hi}"
