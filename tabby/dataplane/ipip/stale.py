"""Remove IP-in-IP state a previous agent left behind, for an agent that runs without an
IpipDataplane (`--ipip off`, or IP-in-IP unavailable on this node now).

    removed = remove_stale(None, "eth0")     # after the first complete sync, never before
    removed.routes, removed.filters

Only what is recognisably ours after a restart with no memory: IPv4 routes in the main
table with protocol 81 (IPIP_ROUTE_PROTO) and the tc filters named `tabby-ipip-*` on the
underlay (the clsact qdisc goes too if no filter at all is left on it, as in `remove()`).
Routes go first, then the programs that encapsulate for them (the reverse of adding).
Needs no BPF object, so it works where the object was never built or has gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyroute2 import IPRoute

from tabby.dataplane.ipip import routes as rt
from tabby.dataplane.ipip.bpf_path import detach_all
from tabby.dataplane.ipip.dataplane import IpipError


@dataclass
class StaleRemoved:
    routes: list[str] = field(default_factory=list)  # destinations whose route was deleted
    filters: int = 0

    def __bool__(self) -> bool:
        return bool(self.routes or self.filters)


def remove_stale(netns: str | None, underlay_if: str,
                 route_protocol: int = rt.IPIP_ROUTE_PROTO) -> StaleRemoved:
    """Delete our proto-81 routes and tabby-ipip tc filters in `netns` (None: this
    process's namespace). Raises IpipError (one line) if a route could not be deleted;
    the filters then stay too, so the routes never lose their encapsulation."""
    try:
        ipr = IPRoute(**({"netns": netns, "flags": 0} if netns else {}))
    except OSError as exc:
        raise IpipError(f"netns {netns}: cannot open: {exc}") from None
    with ipr:
        stale = rt.read_routes(ipr, route_protocol)
        failed = rt.write_batch(netns, [("del", s) for s in stale.values()], route_protocol)
        if failed:
            first = next(iter(failed.values()))
            raise IpipError(f"stale IP-in-IP routes: {len(failed)} not deleted, e.g. {first}")
        filters = detach_all(ipr, underlay_if)
    return StaleRemoved(routes=sorted(stale), filters=filters)
