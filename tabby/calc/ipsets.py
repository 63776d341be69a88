"""IP set membership (Felix's SelectorAndNamedPortIndex + IP set member calculation).

Every endpoint in the cluster (workload endpoints, host endpoints) and every network set
is in one `LabelIndex`, with its addresses. The index holds only the selectors of IP sets
that active rules use (`ref` / `unref`, counted: sets are shared between rules); its
match started/stopped callbacks turn into member changes.

Members: host addresses as plain text ("10.0.0.1", "fd00::1"), network-set CIDRs as
"10.1.0.0/24" (a /32 or /128 becomes a plain address). A set with any CIDR member has
kind "net", otherwise "ip"; named-port sets have kind "ip-port" and members
"10.0.0.1,tcp:8080".

A set's members are not stored: they are what its matching endpoints (the index's own
match set) contribute, computed when the set is sent whole. That saves a member map per
set (a million members at 250,000 endpoints, plus a string per named-port member). An
endpoint starting or stopping a match changes a member unless another matching endpoint
contributes it too (two endpoints may briefly share an address): endpoints are indexed by
address for that check.

What the dataplane was sent is remembered per set (its kind and, to tell it from "ip",
how many CIDR members it has), and changes to a sent set are kept as pending
added/removed members, cancelling each other out, until the sequencer flushes: a new set
(or one whose kind changed) goes out whole (IPSetUpdate), a changed one as an
IPSetDeltaUpdate, an unused one as IPSetRemove. Until a set has gone out whole, match
changes cost it nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from tabby.calc.messages import IPSetDeltaUpdate, IPSetRemove, IPSetUpdate
from tabby.calc.rules import PROTOCOL_NAMES, IPSetSpec
from tabby.selector import LabelIndex
from tabby.selector.index import bucket_add, bucket_discard

NamedPorts = tuple[tuple[str, int, int], ...]  # (name, protocol number, port)


class IPSetCalculator:
    def __init__(self) -> None:
        self.index = LabelIndex(self._started, self._stopped)
        self._ips: dict[Hashable, tuple[str, ...]] = {}  # member key -> its addresses/nets
        self._ports: dict[Hashable, NamedPorts] = {}  # only members that declare ports
        # Address -> the member key holding it, or a dict (as a set) of keys if shared
        # (the label index's bucket layout and helpers).
        self._by_addr: dict[str, Any] = {}
        self._specs: dict[str, IPSetSpec] = {}  # active sets
        self._refs: dict[str, int] = {}
        # The dataplane's view.
        self._sent: dict[str, str] = {}  # set id -> kind
        self._nets: dict[str, int] = {}  # sent active set id -> members that are CIDRs
        self._whole: set[str] = set()  # active sets to send whole at the next flush
        self._dirty: set[str] = set()
        self._added: dict[str, set[str]] = {}
        self._removed: dict[str, set[str]] = {}
        self._dropping: str | None = None

    # -- queries -------------------------------------------------------------------------

    def members(self, set_id: str) -> frozenset[str]:
        if set_id not in self._specs:
            return frozenset()
        return frozenset(self._compute(set_id))

    def active_sets(self) -> set[str]:
        return set(self._specs)

    def spec(self, set_id: str) -> IPSetSpec | None:
        return self._specs.get(set_id)

    def kind(self, set_id: str) -> str:
        if self._specs[set_id].port_name is not None:
            return "ip-port"
        if set_id in self._whole:
            return _kind_of(self._compute(set_id))
        return "net" if self._nets[set_id] else "ip"

    # -- sets ----------------------------------------------------------------------------

    def ref(self, spec: IPSetSpec) -> None:
        sid = spec.set_id
        count = self._refs.get(sid, 0)
        self._refs[sid] = count + 1
        if count:
            return
        self._specs[sid] = spec
        self._dirty.add(sid)
        self._whole.add(sid)  # new, or dropped and taken again (re-sent whole)
        self.index.update_selector(sid, spec.selector)

    def unref(self, set_id: str) -> None:
        count = self._refs[set_id] - 1
        if count:
            self._refs[set_id] = count
            return
        del self._refs[set_id]
        # The members go with the set: skip the per-member bookkeeping (a broad set can
        # have a member per endpoint in the cluster). If the set comes back before the
        # next flush it is re-sent whole.
        self._dropping = set_id
        try:
            self.index.delete_selector(set_id)
        finally:
            self._dropping = None
        del self._specs[set_id]
        self._nets.pop(set_id, None)
        self._whole.discard(set_id)
        self._added.pop(set_id, None)
        self._removed.pop(set_id, None)
        self._dirty.add(set_id)

    # -- members -------------------------------------------------------------------------

    def update_member(self, key: Hashable, labels: Mapping[str, str],
                      parents: Iterable[Hashable], ips: tuple[str, ...],
                      ports: NamedPorts = ()) -> None:
        """Add or update an endpoint / network set: labels, parents, addresses, ports."""
        if len(ips) > 1 and len(set(ips)) < len(ips):
            ips = tuple(dict.fromkeys(ips))  # an address listed twice is one member
        old_ips = self._ips.get(key)
        if old_ips is not None and (old_ips != ips or self._ports.get(key, ()) != ports):
            current = self.index.selectors_for_endpoint(key) - self._whole
            for sid in current:
                self._contribute(sid, key, False)
            self._unstore(key)
            self._store(key, ips, ports)
            for sid in current:
                self._contribute(sid, key, True)
        elif old_ips is None:
            self._store(key, ips, ports)
        self.index.update_endpoint(key, labels, parents)

    def remove_member(self, key: Hashable) -> None:
        if key not in self._ips:
            return
        self.index.delete_endpoint(key)  # the stop callbacks still see its addresses
        self._unstore(key)

    def _store(self, key: Hashable, ips: tuple[str, ...], ports: NamedPorts) -> None:
        self._ips[key] = ips
        if ports:
            self._ports[key] = ports
        for ip in ips:
            bucket_add(self._by_addr, ip, key)

    def _unstore(self, key: Hashable) -> None:
        ips = self._ips.pop(key)
        self._ports.pop(key, None)
        for ip in ips:
            bucket_discard(self._by_addr, ip, key)

    def update_parent(self, parent: Hashable, labels: Mapping[str, str] | None) -> None:
        if labels:
            self.index.update_parent(parent, labels)
        else:
            self.index.delete_parent(parent)

    # -- index callbacks -------------------------------------------------------------------

    def _started(self, set_id: str, key: Hashable) -> None:
        if set_id not in self._whole:
            self._contribute(set_id, key, True)

    def _stopped(self, set_id: str, key: Hashable) -> None:
        if set_id != self._dropping and set_id not in self._whole:
            self._contribute(set_id, key, False)

    def _items(self, spec: IPSetSpec, key: Hashable) -> Iterable[str]:
        """The members that endpoint ``key`` gives the set."""
        ips = self._ips.get(key, ())
        if spec.port_name is None:
            return ips
        ports = self._ports.get(key)
        if not ports:
            return ()
        found: list[str] = []
        for name, proto, port in ports:
            if name == spec.port_name and (spec.protocol is None or spec.protocol == proto):
                pname = PROTOCOL_NAMES.get(proto, str(proto))
                found.extend(f"{ip},{pname}:{port}" for ip in ips if "/" not in ip)
        return found

    def _compute(self, set_id: str) -> set[str]:
        spec = self._specs[set_id]
        items, ips = self._items, self._ips
        out: set[str] = set()
        if spec.port_name is None:
            for key in self.index.iter_matches(set_id):
                out.update(ips[key])
        else:
            for key in self.index.iter_matches(set_id):
                out.update(items(spec, key))
        return out

    def _also_from_another(self, set_id: str, spec: IPSetSpec, key: Hashable,
                           member: str) -> bool:
        """Whether an endpoint other than ``key`` in the set contributes ``member``."""
        holder = self._by_addr.get(member.partition(",")[0])
        if type(holder) is not dict:
            return False  # only ``key`` itself (or nobody) has the address
        has_match = self.index.has_match
        for other in holder:
            if other != key and has_match(set_id, other) and (
                    spec.port_name is None or member in self._items(spec, other)):
                return True
        return False

    def _contribute(self, set_id: str, key: Hashable, add: bool) -> None:
        spec = self._specs[set_id]
        for member in self._items(spec, key):
            if self._also_from_another(set_id, spec, key, member):
                continue
            if "/" in member:
                self._nets[set_id] += 1 if add else -1
            if add:
                self._note(set_id, member, self._added, self._removed)
            else:
                self._note(set_id, member, self._removed, self._added)

    def _note(self, set_id: str, member: str, into: dict[str, set[str]],
              cancel: dict[str, set[str]]) -> None:
        self._dirty.add(set_id)
        other = cancel.get(set_id)
        if other and member in other:
            other.discard(member)
            return
        bucket = into.get(set_id)
        if bucket is None:
            into[set_id] = {member}
        else:
            bucket.add(member)

    # -- flushing (called by the sequencer) --------------------------------------------------

    def flush_updates(self, emit: Callable[[object], None]) -> None:
        for sid in self._dirty:
            spec = self._specs.get(sid)
            if spec is None:
                continue
            added = self._added.pop(sid, None)
            removed = self._removed.pop(sid, None)
            if sid in self._whole:
                members = self._compute(sid)
                self._whole.discard(sid)
            else:
                kind = self.kind(sid)
                if self._sent[sid] == kind:
                    if added or removed:
                        emit(IPSetDeltaUpdate(sid, frozenset(added or ()),
                                              frozenset(removed or ())))
                    continue
                members = self._compute(sid)
            kind = "ip-port" if spec.port_name is not None else _kind_of(members)
            self._nets[sid] = sum("/" in mb for mb in members)
            self._sent[sid] = kind
            emit(IPSetUpdate(sid, kind, frozenset(members)))

    def flush_removes(self, emit: Callable[[object], None]) -> None:
        for sid in self._dirty:
            if sid not in self._specs and self._sent.pop(sid, None) is not None:
                emit(IPSetRemove(sid))
        self._dirty.clear()


def _kind_of(members: Iterable[str]) -> str:
    return "net" if any("/" in mb for mb in members) else "ip"
