"""The nftables policy dataplane: messages in, one atomic `nft -f -` per apply.

    dp = NftDataplane(netns="node1")       # None = the namespace we run in
    dp.on_update(msg) ...                  # cheap: records the latest state per key
    dp.apply()                             # one transaction; raises NftApplyError

`on_update` never touches the kernel; it keeps the latest message per key, so a burst
of updates for one key costs one change. `apply` renders the desired table and writes
it in ONE `nft -f -` run:

* first apply (or after any failure, or `apply(full=True)`): an atomic replace of the
  whole `inet tabby` table - stale chains from an earlier run vanish in the same
  transaction that installs the new ones, so there is no unfiltered window;
* afterwards: an in-place delta (new objects, set elements, rewritten chains, map
  elements, removals - in that order). When only IP set membership changed, the chains
  are not even re-rendered: that is the hot path (add/remove pods behind a selector).

A failed transaction changes nothing (nft is atomic). If nft names a line that belongs
to a policy or profile (the kernel refused it, e.g. too many expressions in a rule), that
policy is rejected - rendered as a single drop, reported by `problems()` - and the
apply is retried once; otherwise `NftApplyError` carries nft's message, the pending
state is kept, and the caller retries with backoff. Nothing is written before `InSync`.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from tabby.calc import messages as m
from tabby.dataplane.nft import model
from tabby.dataplane.nft.model import NftSet, Ruleset, Text
from tabby.dataplane.nft.names import FAMILY, TABLE, ipset_name
from tabby.dataplane.nft.render import (
    INDEX_MIN,
    INLINE_MAX,
    SET_TYPES,
    ChainCache,
    DataplaneState,
    Rendered,
    build,
    policy_owner,
    profile_owner,
    set_elements,
)

log = logging.getLogger(__name__)
_NETNS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_ERR_LINE = re.compile(r"/dev/stdin:(\d+):")


class NftApplyError(RuntimeError):
    """An `nft -f` transaction failed; nothing changed in the kernel."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


@dataclass(frozen=True)
class ApplyResult:
    mode: str  # "full" | "delta" | "noop" | "waiting" (not in sync yet: nothing written)
    render_seconds: float = 0.0
    nft_seconds: float = 0.0
    lines: int = 0
    rules: int = 0
    elements: int = 0
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.render_seconds + self.nft_seconds


@dataclass(frozen=True)
class ExistingTable:
    """What `nft -j list table inet tabby` shows: names with rule / element counts."""

    chains: dict[str, int]
    sets: dict[str, int]
    maps: dict[str, int]
    comments: tuple[str, ...]

    @property
    def rules(self) -> int:
        return sum(self.chains.values())


class NftDataplane:
    def __init__(self, netns: str | None = None, *, nft: str = "nft", timeout: float = 60.0,
                 require_in_sync: bool = True, merge_rules: bool = True,
                 inline_max: int = INLINE_MAX, index_min: int = INDEX_MIN) -> None:
        if netns is not None and (not _NETNS.match(netns) or netns in (".", "..")):
            raise ValueError(f"netns: invalid namespace name {netns!r}")
        self.netns = netns
        self.nft = nft
        self.timeout = timeout
        self.state = DataplaneState()
        self.in_sync = not require_in_sync
        self.merge_rules = merge_rules  # False: one nft rule per policy rule (see merge.py)
        # Allow-only policies of at most this many nft rules are copied into their tier
        # chains instead of jumped to, and runs of at least index_min port-keyed ones
        # are looked up by port (tiers.py); 0 and 0: every policy jumped to in turn.
        self.inline_max = inline_max
        self.index_min = index_min
        self._applied: Ruleset | None = None  # what the kernel has, as far as we know
        self._problems: dict[str, str] = {}
        self._structural = True  # something beyond IP set members changed
        self._dirty_sets: set[str] = set()
        self._cache: ChainCache = {}  # compiled policy/profile chains, reused across builds

    # --- messages ---------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return self._structural or bool(self._dirty_sets)

    def on_update(self, msg: Any) -> None:
        """Record `msg` (cheap, no kernel I/O). Raises ValueError on a malformed message."""
        s = self.state
        if isinstance(msg, m.IPSetUpdate):
            set_elements(msg.kind, msg.members)  # validate now, naming the bad member
            old = s.ipsets.get(msg.set_id)
            s.ipsets[msg.set_id] = msg
            if old is None or old.kind != msg.kind:
                self._structural = True
            elif old.members != msg.members:
                self._dirty_sets.add(msg.set_id)
        elif isinstance(msg, m.IPSetDeltaUpdate):
            old = s.ipsets.get(msg.set_id)
            if old is None:
                raise ValueError(f"IPSetDeltaUpdate.set_id: unknown IP set {msg.set_id!r}")
            members = (old.members - msg.removed) | msg.added
            set_elements(old.kind, members)
            s.ipsets[msg.set_id] = m.IPSetUpdate(msg.set_id, old.kind, members)
            self._dirty_sets.add(msg.set_id)
        elif isinstance(msg, m.IPSetRemove):
            if s.ipsets.pop(msg.set_id, None) is not None:
                self._structural = True
        elif isinstance(msg, m.PolicyUpdate):
            s.rejected.pop(policy_owner(msg.policy_id), None)
            self._put(s.policies, msg.policy_id, msg)
        elif isinstance(msg, m.PolicyRemove):
            s.rejected.pop(policy_owner(msg.policy_id), None)
            self._drop(s.policies, msg.policy_id)
        elif isinstance(msg, m.ProfileUpdate):
            s.rejected.pop(profile_owner(msg.profile_id), None)
            self._put(s.profiles, msg.profile_id, msg)
        elif isinstance(msg, m.ProfileRemove):
            s.rejected.pop(profile_owner(msg.profile_id), None)
            self._drop(s.profiles, msg.profile_id)
        elif isinstance(msg, m.WorkloadEndpointUpdate):
            self._put(s.workloads, msg.endpoint_id, msg)
        elif isinstance(msg, m.WorkloadEndpointRemove):
            self._drop(s.workloads, msg.endpoint_id)
        elif isinstance(msg, m.HostEndpointUpdate):
            self._put(s.host_endpoints, msg.endpoint_id, msg)
        elif isinstance(msg, m.HostEndpointRemove):
            self._drop(s.host_endpoints, msg.endpoint_id)
        elif isinstance(msg, m.IPPoolUpdate):
            self._put(s.pools, msg.cidr, msg)
        elif isinstance(msg, m.IPPoolRemove):
            self._drop(s.pools, msg.cidr)
        elif isinstance(msg, m.ConfigUpdate):
            if msg != s.config:
                s.config = msg
                self._structural = True
        elif isinstance(msg, m.InSync):
            self.in_sync = True
        elif isinstance(msg, m.RouteUpdate):
            # Only node host routes matter here (tunnel peers); the rest is the route
            # driver's business. A dst that stops being a host route is dropped.
            if msg.kind in ("local-host", "remote-host"):
                addr = msg.dst_node_ip or msg.dst.split("/", 1)[0]
                self._peer(s.host_routes, msg.dst, addr)
            else:
                self._peer(s.host_routes, msg.dst, None)
        elif isinstance(msg, m.RouteRemove):
            self._peer(s.host_routes, msg.dst, None)
        elif isinstance(msg, m.VTEPUpdate):
            self._peer(s.vtep_hosts, msg.node, msg.underlay_ip)
        elif isinstance(msg, m.VTEPRemove):
            self._peer(s.vtep_hosts, msg.node, None)
        else:
            raise ValueError(f"message: unsupported type {type(msg).__name__}")

    def replace_state(self, state: DataplaneState) -> None:
        """Swap in a whole desired state (a resync snapshot); applied by the next apply."""
        state.rejected.clear()
        self.state = state
        self._structural = True

    def _put(self, table: dict[Any, Any], key: Any, msg: Any) -> None:
        if table.get(key) != msg:
            table[key] = msg
            self._structural = True

    def _drop(self, table: dict[Any, Any], key: Any) -> None:
        if table.pop(key, None) is not None:
            self._structural = True

    def _peer(self, table: dict[str, str], key: str, addr: str | None) -> None:
        """Record a tunnel peer address (None: forget it). The peers are only rendered
        with a host endpoint, so without one a node coming or going costs no re-render."""
        if (addr is None and key not in table) or (addr is not None and table.get(key) == addr):
            return
        if addr is None:
            del table[key]
        else:
            table[key] = addr
        if self.state.host_endpoints:
            self._structural = True

    def problems(self) -> dict[str, str]:
        """Objects rendered fail-closed at the last apply (owner -> reason)."""
        return dict(self._problems)

    # --- apply ------------------------------------------------------------------------

    def apply(self, *, full: bool = False) -> ApplyResult:
        """Write everything pending in one transaction. Raises NftApplyError (state kept)."""
        if not self.in_sync:
            return ApplyResult("waiting")
        if not self.pending and not full and self._applied is not None:
            return ApplyResult("noop")
        t0 = time.perf_counter()
        fast = None
        if not self._structural and self._applied is not None:
            fast = self._with_new_members(self._applied)
        if fast is not None:
            desired, problems = fast, self._problems
        else:
            rendered = self._build()
            desired, problems = rendered.ruleset, rendered.problems
        text: Text | None = None
        mode = "full"
        if self._applied is not None and not full:
            text = model.delta_text(self._applied, desired)
            mode = "delta"
        if text is None:
            text, mode = model.full_text(desired), "full"
        render_s = time.perf_counter() - t0
        if not text:
            self._done(desired, problems)
            return ApplyResult("noop", render_s, problems=dict(problems))
        t1 = time.perf_counter()
        try:
            self._run(["-f", "-"], text.text())
        except NftApplyError as exc:
            if mode == "delta":
                # Our picture of the kernel may be wrong (someone touched the table):
                # fall back to a full replace in the same apply.
                log.warning("nft delta failed, retrying as a full replace: %s", exc)
                self._applied = None
                return self.apply(full=True)
            blamed = self._blame(exc.stderr, text)
            if not blamed:
                self._applied = None
                raise
            for owner, reason in blamed.items():
                log.error("nft rejected %s: %s", owner, reason)
                self.state.rejected[owner] = reason
            self._structural = True
            rendered = self._build()
            text = model.full_text(rendered.ruleset)
            try:
                self._run(["-f", "-"], text.text())
            except NftApplyError:
                self._applied = None
                raise
            desired, problems = rendered.ruleset, rendered.problems
        nft_s = time.perf_counter() - t1
        self._done(desired, problems)
        return ApplyResult(mode, render_s, nft_s, len(text.lines), desired.rule_count(),
                           desired.element_count(), dict(problems))

    def _build(self) -> Rendered:
        return build(self.state, self._cache, merge=self.merge_rules,
                     inline_max=self.inline_max, index_min=self.index_min)

    def _done(self, desired: Ruleset, problems: dict[str, str]) -> None:
        self._applied = desired
        self._problems = dict(problems)
        self._structural = False
        self._dirty_sets.clear()
        for owner, reason in problems.items():
            log.warning("dataplane: %s fails closed: %s", owner, reason)

    def _with_new_members(self, applied: Ruleset) -> Ruleset | None:
        """The applied ruleset with fresh members for the dirty IP sets (no re-render), or
        None when a family of a set became empty or non-empty (rules depend on that)."""
        sets = dict(applied.sets)
        for set_id in self._dirty_sets:
            ipset = self.state.ipsets.get(set_id)
            if ipset is None:
                continue
            elems = set_elements(ipset.kind, ipset.members)
            for version, members in ((4, elems[0]), (6, elems[1])):
                name = ipset_name(set_id, ipset.kind, version)
                if (name in sets) != bool(members):
                    return None
                if members:
                    typ, interval = SET_TYPES[(ipset.kind, version)]
                    sets[name] = NftSet(name, typ, interval, members, owner=f"ipset:{set_id}",
                                        note=f"ipset {set_id}"[:120])
        return Ruleset(sets=sets, maps=applied.maps, chains=applied.chains)

    @staticmethod
    def _blame(stderr: str, text: Text) -> dict[str, str]:
        """Policies/profiles owning the lines nft complained about -> nft's message."""
        out: dict[str, str] = {}
        for line in stderr.splitlines():
            mt = _ERR_LINE.search(line)
            if not mt:
                continue
            owner = text.owner_of(int(mt.group(1)))
            if owner is None or not owner.startswith(("policy:", "profile:")):
                return {}  # not something we can take out: report the failure as is
            reason = line[mt.end():].strip().split("Error:", 1)[-1].strip() or "nft error"
            out.setdefault(owner, f"kernel rejected: {reason}"[:200])
        return out

    # --- reading back -----------------------------------------------------------------

    def read_existing(self) -> ExistingTable | None:
        """Our table as the kernel has it now, or None if there is none."""
        try:
            out = self._run(["-j", "list", "table", FAMILY, TABLE], None)
        except NftApplyError as exc:
            if "No such file" in exc.stderr:
                return None
            raise
        chains: dict[str, int] = {}
        sets: dict[str, int] = {}
        maps: dict[str, int] = {}
        comments: list[str] = []
        for item in json.loads(out).get("nftables", []):
            if "chain" in item:
                chains.setdefault(item["chain"]["name"], 0)
            elif "rule" in item:
                r = item["rule"]
                chains[r["chain"]] = chains.get(r["chain"], 0) + 1
                if "comment" in r:
                    comments.append(r["comment"])
            elif "set" in item:
                sets[item["set"]["name"]] = len(item["set"].get("elem", []))
            elif "map" in item:
                maps[item["map"]["name"]] = len(item["map"].get("elem", []))
        return ExistingTable(chains, sets, maps, tuple(comments))

    def verify(self) -> list[str]:
        """Differences between the kernel and what we last applied (empty = in step)."""
        existing = self.read_existing()
        want = self._applied
        if want is None:
            return ["nothing applied yet"] if existing is not None else []
        if existing is None:
            return [f"table {FAMILY} {TABLE} is missing"]
        diffs = []
        for name, c in want.chains.items():
            have = existing.chains.get(name)
            if have != len(c.rules):
                diffs.append(f"chain {name}: kernel has {have} rules, expected {len(c.rules)}")
        diffs += [f"chain {n}: unexpected" for n in existing.chains if n not in want.chains]
        for name, s in want.sets.items():
            if existing.sets.get(name) != len(s.elements):
                diffs.append(f"set {name}: kernel has {existing.sets.get(name)} elements, "
                             f"expected {len(s.elements)}")
        diffs += [f"set {n}: unexpected" for n in existing.sets if n not in want.sets]
        for name, mp in want.maps.items():
            if existing.maps.get(name) != len(mp.elements):
                diffs.append(f"map {name}: kernel has {existing.maps.get(name)} elements, "
                             f"expected {len(mp.elements)}")
        return diffs

    def remove_table(self) -> None:
        """Delete our table (uninstall / tests). Safe when it is absent."""
        self._run(["-f", "-"], f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")
        self._applied = None
        self._structural = True

    # --- exec -------------------------------------------------------------------------

    def _argv(self, args: list[str]) -> list[str]:
        base = [self.nft, *args]
        return ["ip", "netns", "exec", self.netns, *base] if self.netns else base

    def _run(self, args: list[str], stdin: str | None) -> str:
        argv = self._argv(args)
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                                  timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise NftApplyError(f"nft {' '.join(args)}: timed out after {self.timeout}s") from None
        except OSError as exc:
            raise NftApplyError(f"nft {' '.join(args)}: cannot run: {exc}") from None
        if proc.returncode != 0:
            err = proc.stderr.strip()
            first = err.splitlines()[0] if err else f"exit {proc.returncode}"
            where = f" in netns {self.netns}" if self.netns else ""
            raise NftApplyError(f"nft {' '.join(args)}{where} failed: {first}", err)
        return proc.stdout
