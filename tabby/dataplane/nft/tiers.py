"""A tier chain's rules from its policies' compiled chains (pure, no I/O).

Calico walks a tier's policies in order: the first rule that matches decides (Allow ends
the direction, Deny drops, Pass skips to the next tier), and if nothing matched, the
tier's end drops (unless its defaultAction is Pass). The plain rendering jumps to each
policy's chain and checks the ACCEPT mark after it; the policy chain's Pass sets the PASS
mark, which the later jumps and the end-of-tier drop test.

Two shortcuts, both only for policies whose rules are all Allow (`allow_only`: such a
policy can end the tier with an Allow or fall through, nothing else), so neither changes
a verdict:

* inlining: a policy that compiles to at most `inline_max` nft rules is not jumped to;
  its rules are copied into the tier chain, where the same `ACCEPT mark + return` leaves
  the tier chain, and the endpoint chain's ACCEPT check right after ends the walk - as
  jump, return, check, return did;
* the port index (portmap.py): in a run of consecutive allow-only policies, which may be
  evaluated in any order, those whose every rule names a protocol and destination ports
  are looked up by `meta l4proto . th dport` in one verdict map that jumps to the ones
  that could match, when there are at least `index_min` of them.

Copied rules and the index need no PASS test of their own: where they follow a policy
that can Pass, one `return` if PASS goes first - leaving the tier chain with PASS set is
exactly what a Pass means (skip the rest of the tier, no end-of-tier drop).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from tabby.dataplane.nft import names as n
from tabby.dataplane.nft import portmap
from tabby.dataplane.nft.model import NftChain, NftMap
from tabby.dataplane.nft.rules import l4

ACCEPTED = f"{n.mark_is_set(n.MARK_ACCEPT)} return"


@dataclass(frozen=True)
class PolicyInfo:
    chain: NftChain  # the compiled policy chain (in the table only if jumped to)
    allow_only: bool  # every rule Allow and not failed closed
    keys: tuple[portmap.Key, ...] | None  # portmap.port_keys of its rules, if allow_only


@dataclass
class TierRules:
    rules: list[str] = field(default_factory=list)
    owners: list[str | None] = field(default_factory=list)
    used: list[NftChain] = field(default_factory=list)  # policy chains it jumps to
    maps: list[NftMap] = field(default_factory=list)
    chains: list[NftChain] = field(default_factory=list)  # jump-to-several chains

    def add(self, rule: str, owner: str | None) -> None:
        self.rules.append(rule)
        self.owners.append(owner)


def _modes(infos: Sequence[PolicyInfo], inline_max: int, index_min: int) -> list[str]:
    """Per policy: "jump", "inline" or "index<run>"."""
    modes = ["jump"] * len(infos)
    i = run = 0
    while i < len(infos):
        if not infos[i].allow_only:
            i += 1
            continue
        j = i
        while j < len(infos) and infos[j].allow_only:
            j += 1
        keyed = [k for k in range(i, j) if infos[k].keys]
        indexed = set(keyed) if index_min > 0 and len(keyed) >= index_min else set()
        for k in range(i, j):
            if k in indexed:
                modes[k] = f"index{run}"
            elif 0 < inline_max and len(infos[k].chain.rules) <= inline_max:
                modes[k] = "inline"
        run += 1
        i = j
    return modes


def tier_rules(name: str, owner: str, infos: Sequence[PolicyInfo], *, inline_max: int,
               index_min: int) -> TierRules:
    """The tier chain's rules up to (not including) the end-of-tier drop."""
    out = TierRules()
    out.add(n.mark_clear(n.MARK_PASS), owner)
    modes = _modes(infos, inline_max, index_min)
    may_pass = False  # a policy chain jumped to above can have set PASS
    done: set[str] = set()
    for i, (info, mode) in enumerate(zip(infos, modes, strict=True)):
        chain = info.chain
        if mode == "jump":
            guard = "" if i == 0 else n.mark_is_clear(n.MARK_PASS) + " "
            out.add(f"{guard}jump {chain.name}", owner)
            out.add(ACCEPTED, owner)
            out.used.append(chain)
            may_pass = may_pass or not info.allow_only
            continue
        if mode in done or (mode == "inline" and not chain.rules):
            continue  # indexed with an earlier policy of its run / nothing to copy
        if may_pass:
            out.add(f"{n.mark_is_set(n.MARK_PASS)} return", owner)
            may_pass = False
        if mode == "inline":
            for r in chain.rules:  # copies keep their policy as owner (kernel errors)
                out.add(r, chain.owner)
            continue
        done.add(mode)
        members = [inf.chain for inf, m in zip(infos, modes, strict=True) if m == mode]
        out.used += members
        vmap = _index(f"{name}-x{mode[5:]}", owner, members,
                      [inf.keys or () for inf, m in zip(infos, modes, strict=True) if m == mode],
                      out)
        out.maps.append(vmap)
        out.add(f"meta l4proto . th dport vmap @{vmap.name}", owner)
        out.add(ACCEPTED, owner)
    return out


def _index(name: str, owner: str, members: Sequence[NftChain],
           keys: Sequence[tuple[portmap.Key, ...]], out: TierRules) -> NftMap:
    elements, interval, several = _plan(tuple(zip((c.name for c in members), keys, strict=True)))
    for target, chains in several:  # ports several policies name: try each, in tier order
        rules = [r for c in chains for r in (f"jump {c}", ACCEPTED)]
        out.chains.append(NftChain(target, tuple(rules), owner=owner,
                                   note=f"port index: {len(chains)} policies"))
    # the kind is in the name: a map is never retyped in place
    return NftMap(f"{name}{'i' if interval else 'h'}", elements,
                  type="inet_proto . inet_service", interval=interval, verb="jump", owner=owner)


@functools.lru_cache(maxsize=64)
def _plan(entries: tuple[tuple[str, tuple[portmap.Key, ...]], ...]) -> tuple[
        tuple[tuple[str, str], ...], bool, tuple[tuple[str, tuple[str, ...]], ...]]:
    """(sorted map elements, interval?, jump-to-several chains) for (chain, keys)
    entries; cached, as the tier chains are rebuilt on every structural change."""
    segs = portmap.segments(entries)
    elements: list[tuple[str, str]] = []
    several: dict[str, tuple[str, ...]] = {}
    for key, chains in segs:
        target = chains[0]
        if len(chains) > 1:
            target = f"tabby-tx-{n.short_hash(repr(chains))}"
            several[target] = chains
        elements.append((portmap.element_key(key, l4(key[0])), target))
    interval = any(lo != hi for (_, lo, hi), _ in segs)
    return tuple(sorted(elements)), interval, tuple(several.items())
