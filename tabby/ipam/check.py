"""`ipam check` and `ipam gc`: compare IPAM's allocations with the endpoints that use them.

Problems found:
  - leaked addresses: allocated, but no WorkloadEndpoint has them (tunnel addresses are
    exempt while their node exists);
  - endpoint addresses that IPAM has not allocated;
  - block affinities of nodes that have no Node resource (only judged when at least one
    Node resource exists, so a datastore without nodes is not reported as all-orphaned);
  - interrupted claims/releases that `repair()` would settle.
`gc` releases leaked addresses older than a grace period (an ADD in progress allocates
before it writes its endpoint), releases the affinities of deleted nodes and repairs.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any

from tabby.ipam.allocator import IPAM

TUNNEL_HANDLE_PREFIXES = (
    "ipip-tunnel-addr-",
    "vxlan-tunnel-addr-",
    "vxlan-v6-tunnel-addr-",
    "wireguard-tunnel-addr-",
    "wireguard-v6-tunnel-addr-",
)
DEFAULT_GRACE_SECONDS = 60.0


def tunnel_node(handle: str) -> str | None:
    """The node of a tunnel-address handle, or None for other handles."""
    for prefix in TUNNEL_HANDLE_PREFIXES:
        if handle.startswith(prefix):
            return handle[len(prefix) :]
    return None


@dataclass(slots=True)
class EndpointRef:
    """What check needs of a WorkloadEndpoint."""

    name: str  # "namespace/name"
    node: str | None
    ips: list[str] = field(default_factory=list)


def endpoint_refs(weps: list[Any]) -> list[EndpointRef]:
    """EndpointRefs from WorkloadEndpoint resources (the models or their dicts)."""
    out = []
    for wep in weps:
        d = wep if isinstance(wep, dict) else wep.model_dump()
        meta, spec = d.get("metadata") or {}, d.get("spec") or {}
        name = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
        ips = [str(ipaddress.ip_interface(n).ip) for n in spec.get("ipNetworks") or []]
        out.append(EndpointRef(name, spec.get("node"), ips))
    return out


def check(
    ipam: IPAM, endpoints: list[EndpointRef], nodes: set[str], now: float | None = None
) -> dict[str, Any]:
    """The report (a plain dict, ready for -o json). Read endpoints before calling."""
    now = time.time() if now is None else now
    allocations = ipam.allocations()
    used: dict[str, EndpointRef] = {}
    for ep in endpoints:
        for ip in ep.ips:
            used[ip] = ep
    leaked, tunnels = [], []
    allocated = set()
    for a in allocations:
        allocated.add(a["ip"])
        if a["ip"] in used:
            continue
        at = a.get("allocatedAt")
        row = {
            "ip": a["ip"], "handle": a["handle"], "block": a["block"],
            "node": (a.get("attrs") or {}).get("node") or a.get("blockNode"),
            "attrs": a.get("attrs") or {},
            "ageSeconds": None if at is None else max(0, round(now - float(at))),
        }
        tnode = tunnel_node(a["handle"])
        if tnode is None:
            leaked.append(row)
        elif nodes and tnode not in nodes:
            tunnels.append(row)
    unallocated = [
        {"workloadEndpoint": ep.name, "ip": ip, "node": ep.node}
        for ep in endpoints for ip in ep.ips if ip not in allocated
    ]
    orphaned = []
    if nodes:
        in_use = {b["cidr"]: b["inUse"] for b in _all_block_rows(ipam)}
        for aff in ipam.store.list_affinities():
            if aff.node not in nodes:
                orphaned.append({"node": aff.node, "block": str(aff.cidr), "state": aff.state,
                                 "inUse": in_use.get(str(aff.cidr), 0)})
    repairs = ipam.repair(dry_run=True)
    problems = len(leaked) + len(tunnels) + len(unallocated) + len(orphaned) + len(repairs)
    return {
        "summary": {
            "allocations": len(allocations),
            "workloadEndpoints": len(endpoints),
            "nodes": len(nodes),
            "problems": problems,
        },
        "leakedAddresses": leaked,
        "orphanedTunnelAddresses": tunnels,
        "unallocatedEndpointAddresses": unallocated,
        "orphanedAffinities": orphaned,
        "pendingRepairs": repairs,
        "notes": [] if nodes else
        ["no Node resources exist: block affinities and tunnel addresses were not judged"],
    }


def _all_block_rows(ipam: IPAM) -> list[dict[str, Any]]:
    usage = ipam.usage()
    return [b for p in usage["pools"] for b in p["blocks"]] + usage["otherBlocks"]


def gc(
    ipam: IPAM,
    report: dict[str, Any],
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
) -> list[str]:
    """Act on a check report; returns one line per action (done, or planned if dry_run)."""
    actions: list[str] = []
    for row in report["leakedAddresses"] + report["orphanedTunnelAddresses"]:
        age = row.get("ageSeconds")
        if age is not None and age < grace_seconds:
            continue
        actions.append(f"release {row['ip']} (handle {row['handle']}, no workload endpoint)")
        if not dry_run:
            # Only if the same handle still holds it: it may have been re-assigned meanwhile.
            if ipam.release_ips([row["ip"]], handle=row["handle"]):
                actions[-1] += ": already released or re-assigned, left alone"
    for node in sorted({row["node"] for row in report["orphanedAffinities"]}):
        actions.append(f"release block affinities of deleted node {node}")
        if not dry_run:
            released = ipam.release_host_affinities(node)
            actions[-1] += f": {', '.join(released) or 'none left'}"
    actions.extend(ipam.repair(dry_run=dry_run))
    return actions
