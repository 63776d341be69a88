"""The event sequencer: one pending change per key, emitted in a written order.

Calculators `put(kind, key, message)` or `remove(kind, key)` whenever they like; nothing
is emitted until `flush()`. A key updated many times between flushes yields one message,
and a key added and removed again yields none: the pending state is bounded by the number
of keys, which is the graph's back-pressure bound. The sequencer also remembers what it
last sent per key, so an update equal to the last one is dropped.

Flush order (Felix's EventSequencer): configuration and pools first; then IP sets before
the policies and profiles whose rules use them, and those before the endpoints that
reference them; then removals in reverse (endpoints, profiles, policies, IP sets); then
routes and VTEPs - route removals, route updates that need no VTEP, VTEP removals, VTEP
additions, the remaining route updates, so a route never points at a missing VTEP - and
last pool removals.

IP sets are special (their members change one at a time): the IP set calculator keeps
their pending deltas, and the sequencer calls its `flush_updates` / `flush_removes` at
the right points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tabby.calc import messages as m

CONFIG = "config"
POOL = "pool"
POLICY = "policy"
PROFILE = "profile"
WORKLOAD = "workload"
HOST_ENDPOINT = "host-endpoint"
ROUTE = "route"
VTEP = "vtep"

KINDS = (CONFIG, POOL, POLICY, PROFILE, WORKLOAD, HOST_ENDPOINT, ROUTE, VTEP)

# The message that removes a key of each kind (config is never removed, only replaced).
_REMOVE: dict[str, Callable[[Any], object]] = {
    POOL: m.IPPoolRemove,
    POLICY: m.PolicyRemove,
    PROFILE: m.ProfileRemove,
    WORKLOAD: m.WorkloadEndpointRemove,
    HOST_ENDPOINT: m.HostEndpointRemove,
    ROUTE: m.RouteRemove,
    VTEP: m.VTEPRemove,
}


def _no_vtep(msg: Any) -> bool:
    return getattr(msg, "encap", None) != "vxlan"


class IPSetSource(Protocol):
    def flush_updates(self, emit: Callable[[object], None]) -> None: ...
    def flush_removes(self, emit: Callable[[object], None]) -> None: ...


class EventSequencer:
    def __init__(self, emit: Callable[[object], None], ipsets: IPSetSource) -> None:
        self._emit = emit
        self._ipsets = ipsets
        self._sent: dict[str, dict[Any, object]] = {k: {} for k in KINDS}
        self._pending: dict[str, dict[Any, object | None]] = {k: {} for k in KINDS}

    def put(self, kind: str, key: Any, msg: object) -> None:
        self._pending[kind][key] = msg

    def remove(self, kind: str, key: Any) -> None:
        self._pending[kind][key] = None

    def sent(self, kind: str) -> dict[Any, object]:
        """What the dataplane was last told, per key (read-only view for callers)."""
        return self._sent[kind]

    @property
    def pending(self) -> int:
        """Keys with a change waiting for the next flush."""
        return sum(len(p) for p in self._pending.values())

    # -- flush ---------------------------------------------------------------------------

    def _updates(self, kind: str, only: Callable[[Any], bool] | None = None) -> None:
        pending, sent, emit = self._pending[kind], self._sent[kind], self._emit
        for key, msg in pending.items():
            if msg is not None and sent.get(key) != msg and (only is None or only(msg)):
                sent[key] = msg
                emit(msg)

    def _removes(self, kind: str) -> None:
        pending, sent, emit = self._pending[kind], self._sent[kind], self._emit
        for key, msg in pending.items():
            if msg is None and sent.pop(key, None) is not None:
                emit(_REMOVE[kind](key))

    def flush(self) -> None:
        """Emit everything pending, in the order above."""
        self._updates(CONFIG)
        self._updates(POOL)
        self._ipsets.flush_updates(self._emit)
        self._updates(POLICY)
        self._updates(PROFILE)
        self._updates(WORKLOAD)
        self._updates(HOST_ENDPOINT)
        self._removes(WORKLOAD)
        self._removes(HOST_ENDPOINT)
        self._removes(PROFILE)
        self._removes(POLICY)
        self._ipsets.flush_removes(self._emit)
        self._removes(ROUTE)
        # A route that stops using a VTEP (say VXLAN -> IPIP) is replaced before the VTEP
        # goes; one that needs a VTEP comes after it.
        self._updates(ROUTE, _no_vtep)
        self._removes(VTEP)
        self._updates(VTEP)
        self._updates(ROUTE)
        self._removes(POOL)
        for pending in self._pending.values():
            pending.clear()
