"""IP set membership (Felix's SelectorAndNamedPortIndex + IP set member calculation).

Every endpoint in the cluster (workload endpoints, host endpoints) and every network set
is in one `LabelIndex`, with its addresses. The index holds only the selectors of IP sets
that active rules use (`ref` / `unref`, counted: sets are shared between rules); its
match started/stopped callbacks add or remove the member's addresses. Members are counted
too, since two endpoints may briefly hold one address.

Members: host addresses as plain text ("10.0.0.1", "fd00::1"), network-set CIDRs as
"10.1.0.0/24" (a /32 or /128 becomes a plain address). A set with any CIDR member has
kind "net", otherwise "ip"; named-port sets have kind "ip-port" and members
"10.0.0.1,tcp:8080".

What the dataplane was sent is remembered per set (its kind), and changes to a sent set
are kept as pending added/removed members, cancelling each other out, until the
sequencer flushes: a new set (or one whose kind changed) goes out whole (IPSetUpdate),
a changed one as an IPSetDeltaUpdate, an unused one as IPSetRemove.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping

from tabby.calc.messages import IPSetDeltaUpdate, IPSetRemove, IPSetUpdate
from tabby.calc.rules import PROTOCOL_NAMES, IPSetSpec
from tabby.selector import LabelIndex

NamedPorts = tuple[tuple[str, int, int], ...]  # (name, protocol number, port)


class IPSetCalculator:
    def __init__(self) -> None:
        self.index = LabelIndex(self._started, self._stopped)
        self._ips: dict[Hashable, tuple[str, ...]] = {}  # member key -> its addresses/nets
        self._ports: dict[Hashable, NamedPorts] = {}  # only members that declare ports
        self._specs: dict[str, IPSetSpec] = {}  # active sets
        self._refs: dict[str, int] = {}
        self._members: dict[str, dict[str, int]] = {}  # set id -> member -> count
        self._nets: dict[str, int] = {}  # set id -> members that are CIDRs
        # The dataplane's view.
        self._sent: dict[str, str] = {}  # set id -> kind
        self._dirty: set[str] = set()
        self._added: dict[str, set[str]] = {}
        self._removed: dict[str, set[str]] = {}
        self._resend: set[str] = set()
        self._dropping: str | None = None
        self._unsent_plain: set[str] = set()  # selector (not named-port) sets not yet sent

    # -- queries -------------------------------------------------------------------------

    def members(self, set_id: str) -> frozenset[str]:
        return frozenset(self._members.get(set_id, ()))

    def active_sets(self) -> set[str]:
        return set(self._specs)

    def spec(self, set_id: str) -> IPSetSpec | None:
        return self._specs.get(set_id)

    def kind(self, set_id: str) -> str:
        if self._specs[set_id].port_name is not None:
            return "ip-port"
        return "net" if self._nets[set_id] else "ip"

    # -- sets ----------------------------------------------------------------------------

    def ref(self, spec: IPSetSpec) -> None:
        sid = spec.set_id
        count = self._refs.get(sid, 0)
        self._refs[sid] = count + 1
        if count:
            return
        self._specs[sid] = spec
        self._members[sid] = {}
        self._nets[sid] = 0
        self._dirty.add(sid)
        if spec.port_name is None and (sid not in self._sent or sid in self._resend):
            self._unsent_plain.add(sid)
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
        del self._specs[set_id], self._members[set_id], self._nets[set_id]
        self._unsent_plain.discard(set_id)
        self._added.pop(set_id, None)
        self._removed.pop(set_id, None)
        if set_id in self._sent:
            self._resend.add(set_id)
        self._dirty.add(set_id)

    # -- members -------------------------------------------------------------------------

    def update_member(self, key: Hashable, labels: Mapping[str, str],
                      parents: Iterable[Hashable], ips: tuple[str, ...],
                      ports: NamedPorts = ()) -> None:
        """Add or update an endpoint / network set: labels, parents, addresses, ports."""
        old_ips = self._ips.get(key)
        if old_ips is not None and (old_ips != ips or self._ports.get(key, ()) != ports):
            current = self.index.selectors_for_endpoint(key)
            for sid in current:
                self._contribute(sid, key, False)
            self._store(key, ips, ports)
            for sid in current:
                self._contribute(sid, key, True)
        else:
            self._store(key, ips, ports)
        self.index.update_endpoint(key, labels, parents)

    def remove_member(self, key: Hashable) -> None:
        if key not in self._ips:
            return
        self.index.delete_endpoint(key)
        del self._ips[key]
        self._ports.pop(key, None)

    def _store(self, key: Hashable, ips: tuple[str, ...], ports: NamedPorts) -> None:
        self._ips[key] = ips
        if ports:
            self._ports[key] = ports
        else:
            self._ports.pop(key, None)

    def update_parent(self, parent: Hashable, labels: Mapping[str, str] | None) -> None:
        if labels:
            self.index.update_parent(parent, labels)
        else:
            self.index.delete_parent(parent)

    # -- index callbacks -------------------------------------------------------------------

    def _started(self, set_id: str, key: Hashable) -> None:
        if set_id in self._unsent_plain:
            # The common bulk case (a new set filling up): count members, no deltas.
            ips = self._ips.get(key)
            if ips:
                members = self._members[set_id]
                for ip in ips:
                    n = members.get(ip)
                    if n is None:
                        members[ip] = 1
                        if "/" in ip:
                            self._nets[set_id] += 1
                    else:
                        members[ip] = n + 1
            return
        self._contribute(set_id, key, True)

    def _stopped(self, set_id: str, key: Hashable) -> None:
        if set_id != self._dropping:
            self._contribute(set_id, key, False)

    def _contribute(self, set_id: str, key: Hashable, add: bool) -> None:
        spec = self._specs[set_id]
        ips = self._ips.get(key, ())
        if spec.port_name is None:
            items: Iterable[str] = ips
        else:
            ports = self._ports.get(key)
            if not ports:
                return
            found: list[str] = []
            for name, proto, port in ports:
                if name == spec.port_name and (spec.protocol is None or spec.protocol == proto):
                    pname = PROTOCOL_NAMES.get(proto, str(proto))
                    found.extend(f"{ip},{pname}:{port}" for ip in ips if "/" not in ip)
            items = found
        members = self._members[set_id]
        sent = set_id in self._sent
        for member in items:
            count = members.get(member, 0)
            if add:
                members[member] = count + 1
                if count:
                    continue
                if "/" in member:
                    self._nets[set_id] += 1
                if sent:
                    self._note(set_id, member, self._added, self._removed)
            else:
                if count > 1:
                    members[member] = count - 1
                    continue
                del members[member]
                if "/" in member:
                    self._nets[set_id] -= 1
                if sent:
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
            if sid not in self._specs:
                continue
            kind = self.kind(sid)
            added = self._added.pop(sid, None)
            removed = self._removed.pop(sid, None)
            if self._sent.get(sid) != kind or sid in self._resend:
                self._sent[sid] = kind
                self._unsent_plain.discard(sid)
                emit(IPSetUpdate(sid, kind, frozenset(self._members[sid])))
            elif added or removed:
                emit(IPSetDeltaUpdate(sid, frozenset(added or ()), frozenset(removed or ())))

    def flush_removes(self, emit: Callable[[object], None]) -> None:
        for sid in self._dirty:
            if sid not in self._specs and self._sent.pop(sid, None) is not None:
                emit(IPSetRemove(sid))
        self._dirty.clear()
        self._resend.clear()
