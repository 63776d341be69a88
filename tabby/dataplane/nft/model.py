"""An in-memory image of Tabby's nft table, and the two ways to write it.

`Ruleset` holds sets, verdict maps and chains (each rule one string). From it:

* `full_text(rs)`  - one file that atomically replaces the whole table:
  `table inet tabby` / `delete table inet tabby` / `table inet tabby { ... }` (the first
  line makes the delete safe when the table is absent).
* `delta_text(old, new)` - one file that turns `old` into `new` in place, in a written
  order so every reference resolves at every step: declare new sets/maps/chains; change
  set elements; rewrite changed chains (flush + add rule); re-point map elements;
  empty removed chains, delete removed maps, delete removed chains; delete removed sets.
  `None` if it cannot be done in place (a base chain's hook changed, a set's or map's
  type changed), meaning: use full_text.

How set elements change depends on the kernel's set backend (measured on 6.18, 10k
elements): a one-dimension interval set (rbtree) deletes elements one by one very slowly
(10k: 34 s) but flushes fast, so it is flushed and refilled; a concatenated interval set
(pipapo) deletes at ~0.3 ms per element and flushes no faster, so a few changes are
exact deletes and adds, and many are a new set: its chains emptied, the set deleted and
declared again, filled, the chains refilled (10k elements: ~0.1 s); hash sets take
exact deletes and adds.

Each `Text` keeps, for every line, the owner key of the object it came from, so an
error that nft reports as "/dev/stdin:LINE:..." can be traced to the policy, profile,
IP set or endpoint that caused it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tabby.dataplane.nft.names import FAMILY, TABLE, comment

T = f"{FAMILY} {TABLE}"
RECREATE_MIN = 64  # removed elements from which a concatenated interval set is rebuilt


@dataclass(frozen=True)
class NftSet:
    name: str
    type: str  # "ipv4_addr", "ipv4_addr . inet_proto . inet_service", ...
    interval: bool
    elements: frozenset[str]
    owner: str | None = None
    note: str = ""

    def decl(self) -> str:
        parts = [f"type {self.type};"]
        if self.interval:
            parts.append("flags interval;")
        if self.note:
            parts.append(comment(self.note) + ";")
        return " ".join(parts)


@dataclass(frozen=True)
class NftMap:
    """A verdict map: {key: chain to goto/jump}. By default keyed by interface name
    (endpoint dispatch: `goto`); a tier's port index (portmap.py) is keyed by
    `inet_proto . inet_service` and jumps (the tier chain goes on after it)."""

    name: str
    elements: tuple[tuple[str, str], ...]  # sorted (key, target chain)
    type: str = "ifname"
    interval: bool = False
    verb: str = "goto"
    owner: str | None = None

    def decl(self) -> str:
        return f"type {self.type} : verdict;" + (" flags interval;" if self.interval else "")

    def key(self, k: str) -> str:
        return f'"{k}"' if self.type == "ifname" else k

    def element(self, k: str, v: str) -> str:
        return f"{self.key(k)} : {self.verb} {v}"


@dataclass(frozen=True)
class NftChain:
    name: str
    rules: tuple[str, ...]
    hook: str | None = None  # "type filter hook forward priority filter; policy accept;"
    owner: str | None = None
    note: str = ""
    # Per-rule owners when they differ from `owner` (a tier chain holding copies of
    # inlined policies' rules): an nft error on such a line blames the policy.
    rule_owners: tuple[str | None, ...] | None = None

    def rule_owner(self, i: int) -> str | None:
        return self.rule_owners[i] if self.rule_owners is not None else self.owner


@dataclass
class Ruleset:
    sets: dict[str, NftSet] = field(default_factory=dict)
    maps: dict[str, NftMap] = field(default_factory=dict)
    chains: dict[str, NftChain] = field(default_factory=dict)

    def add_set(self, s: NftSet) -> None:
        if s.name in self.sets:
            raise ValueError(f"set name clash: {s.name} (owners {self.sets[s.name].owner}, {s.owner})")
        self.sets[s.name] = s

    def add_chain(self, c: NftChain) -> None:
        if c.name in self.chains:
            raise ValueError(f"chain name clash: {c.name} (owners {self.chains[c.name].owner}, {c.owner})")
        self.chains[c.name] = c

    def rule_count(self) -> int:
        return sum(len(c.rules) for c in self.chains.values())

    def element_count(self) -> int:
        return sum(len(s.elements) for s in self.sets.values())


@dataclass
class Text:
    """nft -f input with the owner of every line (index 0 = line 1)."""

    lines: list[str] = field(default_factory=list)
    owners: list[str | None] = field(default_factory=list)

    def add(self, line: str, owner: str | None = None) -> None:
        self.lines.append(line)
        self.owners.append(owner)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n" if self.lines else ""

    def owner_of(self, lineno: int) -> str | None:
        if 1 <= lineno <= len(self.owners):
            return self.owners[lineno - 1]
        return None

    def __bool__(self) -> bool:
        return bool(self.lines)


def _elements(t: Text, elems: list[str], owner: str | None, indent: str) -> None:
    for i, e in enumerate(elems):
        t.add(f"{indent}{e}{',' if i < len(elems) - 1 else ''}", owner)


def full_text(rs: Ruleset) -> Text:
    t = Text()
    t.add(f"table {T}")
    t.add(f"delete table {T}")
    t.add(f"table {T} {{")
    t.add('  comment "tabby: owned by the tabby agent; replaced on every full sync"')
    for s in rs.sets.values():
        if not s.elements:
            t.add(f"  set {s.name} {{ {s.decl()} }}", s.owner)
            continue
        t.add(f"  set {s.name} {{ {s.decl()}", s.owner)
        t.add("    elements = {", s.owner)
        _elements(t, sorted(s.elements), s.owner, "      ")
        t.add("    }", s.owner)
        t.add("  }", s.owner)
    for m in rs.maps.values():
        if not m.elements:
            t.add(f"  map {m.name} {{ {m.decl()} }}", m.owner)
            continue
        t.add(f"  map {m.name} {{ {m.decl()}", m.owner)
        t.add("    elements = {", m.owner)
        _elements(t, [m.element(k, v) for k, v in m.elements], m.owner, "      ")
        t.add("    }", m.owner)
        t.add("  }", m.owner)
    for c in rs.chains.values():
        t.add(f"  chain {c.name} {{", c.owner)
        if c.hook:
            t.add(f"    {c.hook}", c.owner)
        if c.note:
            t.add(f"    {comment(c.note)}", c.owner)
        for i, r in enumerate(c.rules):
            t.add(f"    {r}", c.rule_owner(i))
        t.add("  }", c.owner)
    t.add("}")
    return t


def delta_text(old: Ruleset, new: Ruleset, *, interval_flush: bool = True) -> Text | None:
    """Statements turning `old` (what the kernel has) into `new`; empty Text if equal."""
    t = Text()
    for name, c in new.chains.items():
        oc = old.chains.get(name)
        if (oc is not None and oc.hook != c.hook) or (oc is None and c.hook):
            return None  # base chains are only created by a full replace
    for name, s in new.sets.items():
        os_ = old.sets.get(name)
        if os_ is not None and (os_.type, os_.interval) != (s.type, s.interval):
            return None
    for name, m in new.maps.items():
        om = old.maps.get(name)
        if om is not None and (om.type, om.interval, om.verb) != (m.type, m.interval, m.verb):
            return None
    for name, oc in old.chains.items():
        if oc.hook and name not in new.chains:
            return None

    # 1. declare what is new: sets, maps, chains (chains empty for now).
    for name, s in new.sets.items():
        if name not in old.sets:
            t.add(f"add set {T} {name} {{ {s.decl()} }}", s.owner)
    for name, m in new.maps.items():
        if name not in old.maps:
            t.add(f"add map {T} {name} {{ {m.decl()} }}", m.owner)
    for name, c in new.chains.items():
        if name not in old.chains:
            t.add(f"add chain {T} {name}", c.owner)

    # 2. set members, before any rule that relies on them.
    refill: set[str] = set()  # chains emptied here to rebuild a set they use
    for name, s in new.sets.items():
        os_ = old.sets.get(name)
        before = os_.elements if os_ is not None else frozenset()
        if before == s.elements:
            continue
        removed: frozenset[str]
        added: frozenset[str]
        dropped = before - s.elements
        if s.interval and " . " in s.type and len(dropped) > max(RECREATE_MIN, len(s.elements) // 32):
            users = [c for c in old.chains.values() if _uses(c, name)]
            for c in users:
                if c.name not in refill and c.rules:
                    t.add(f"flush chain {T} {c.name}", c.owner)
                refill.add(c.name)
            t.add(f"delete set {T} {name}", s.owner)
            t.add(f"add set {T} {name} {{ {s.decl()} }}", s.owner)
            removed, added = frozenset(), s.elements
        elif s.interval and interval_flush and os_ is not None and " . " not in s.type:
            # Interval sets are rewritten whole: a partial delete of a range must name
            # it exactly, and nft 1.0.6 has had trouble with that; flush+add is atomic.
            t.add(f"flush set {T} {name}", s.owner)
            removed, added = frozenset(), s.elements
        else:
            removed, added = before - s.elements, s.elements - before
        if removed:
            t.add(f"delete element {T} {name} {{ {', '.join(sorted(removed))} }}", s.owner)
        if added:
            t.add(f"add element {T} {name} {{", s.owner)
            _elements(t, sorted(added), s.owner, "  ")
            t.add("}", s.owner)

    # 3. (re)write chains whose rules changed, new ones included.
    for name, c in new.chains.items():
        oc = old.chains.get(name)
        if name not in refill and oc is not None and (oc is c or oc.rules == c.rules):
            continue
        if name not in refill and oc is not None and oc.rules:
            t.add(f"flush chain {T} {name}", c.owner)
        for i, r in enumerate(c.rules):
            t.add(f"add rule {T} {name} {r}", c.rule_owner(i))

    # 4. verdict map elements: delete then add (re-adding a key says "File exists").
    for name, m in new.maps.items():
        was: dict[str, str] = dict(old.maps[name].elements) if name in old.maps else {}
        now = dict(m.elements)
        gone = [k for k in was if k not in now or now[k] != was[k]]
        if gone:
            keys = ", ".join(m.key(k) for k in sorted(gone))
            t.add(f"delete element {T} {name} {{ {keys} }}", m.owner)
        new_elems = sorted((k, v) for k, v in now.items() if was.get(k) != v)
        if new_elems:
            elems = ", ".join(m.element(k, v) for k, v in new_elems)
            t.add(f"add element {T} {name} {{ {elems} }}", m.owner)

    # 5. removed chains: empty them all first (they may jump to each other); then the
    # removed maps, whose rules are gone now and whose elements may jump to those
    # chains (the kernel refuses to delete a chain a map element still names); then
    # the chains.
    gone_chains = [n for n in old.chains if n not in new.chains]
    for name in gone_chains:
        if old.chains[name].rules and name not in refill:
            t.add(f"flush chain {T} {name}", old.chains[name].owner)
    for name in old.maps:
        if name not in new.maps:
            t.add(f"delete map {T} {name}", old.maps[name].owner)
    for name in gone_chains:
        t.add(f"delete chain {T} {name}", old.chains[name].owner)

    # 6. removed sets, now that no rule refers to them.
    for name in old.sets:
        if name not in new.sets:
            t.add(f"delete set {T} {name}", old.sets[name].owner)
    return t


def _uses(c: NftChain, set_name: str) -> bool:
    ref = f"@{set_name}"
    return any(ref + " " in r or r.endswith(ref) for r in c.rules)
