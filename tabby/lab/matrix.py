"""Reality against policy: real connections between every pair of lab workloads, and what
`tabby policy matrix` says about the same pairs, keyed alike so they compare directly.

Both are `{"ns/endpoint": {"ns/endpoint": "Allow" | "Deny"}}` over the ordered pairs of
distinct workloads. A probe counts as Allow when the packet reached the destination: a
TCP connection or UDP echo, and also a refusal (RST, ICMP port unreachable) - the
destination's kernel answered, so policy let the flow through. Policy denies by dropping,
which shows as a timeout.

One comparison is of one IP family (`ip_version`): a dual-stack lab's workloads are probed
at their IPv4 and their IPv6 addresses, each against the evaluator for that family (rules
with `ipVersion`, `nets` and ICMP vs ICMPv6 tell the families apart).
"""

from __future__ import annotations

from dataclasses import dataclass

from tabby.lab.probe import ProbeResult, probe_matrix_detail
from tabby.lab.state import LabError, LabState, WorkloadState

Matrix = dict[str, dict[str, str]]
REACHED = ("ok", "refused")
PROTOCOLS = {"tcp": "tcp", "udp": "udp", "icmp": "icmp"}


@dataclass
class Comparison:
    protocol: str
    port: int | None
    probe: Matrix
    policy: Matrix
    details: dict[tuple[str, str], ProbeResult]
    ip_version: int = 4

    @property
    def mismatches(self) -> list[tuple[str, str]]:
        return [
            (s, d)
            for s, row in self.probe.items()
            for d, verdict in row.items()
            if self.policy.get(s, {}).get(d) != verdict
        ]

    @property
    def agree(self) -> bool:
        return not self.mismatches

    def counts(self) -> tuple[int, int]:
        allowed = sum(v == "Allow" for row in self.probe.values() for v in row.values())
        return allowed, sum(len(row) for row in self.probe.values())


def normalise(protocol: str, port: int | None) -> tuple[str, int | None]:
    proto = str(protocol).strip().lower()
    if proto not in PROTOCOLS:
        raise LabError(f"--protocol: unsupported {protocol!r} for a probe (TCP, UDP or ICMP)")
    if proto == "icmp":
        if port is not None:
            raise LabError("--port: protocol ICMP has no ports")
        return proto, None
    port = 80 if port is None else int(port)
    if not 0 < port < 65536:
        raise LabError(f"--port: invalid port {port} (1-65535)")
    return proto, port


def check_ip_version(state: LabState, ip_version: int) -> int:
    if ip_version not in state.families:
        have = " and ".join(f"IPv{v}" for v in state.families)
        raise LabError(f"--ip-version: lab {state.name!r} has {have} workloads only, "
                       f"not IPv{ip_version}" + (" (up with --ipv6)" if ip_version == 6 else ""))
    return ip_version


def _ready(state: LabState, ip_version: int = 4) -> list[WorkloadState]:
    check_ip_version(state, ip_version)
    wls = [w for w in state.workloads if w.address(ip_version) and w.endpoint]
    if len(wls) < 2:
        raise LabError(f"lab {state.name!r} has fewer than two workloads with IPv{ip_version} "
                       f"addresses")
    return wls


def probe(
    state: LabState, protocol: str = "tcp", port: int | None = 80, timeout: float = 1.0,
    ip_version: int = 4,
) -> tuple[Matrix, dict[tuple[str, str], ProbeResult]]:
    """Real connections from every workload to every other one's address of `ip_version`,
    in parallel."""
    proto, port = normalise(protocol, port)
    wls = _ready(state, ip_version)
    pairs = [(s.netns, d.address(ip_version)) for s in wls for d in wls if s is not d]
    results = probe_matrix_detail(pairs, proto, port, timeout)
    out: Matrix = {}
    details: dict[tuple[str, str], ProbeResult] = {}
    for s in wls:
        row: dict[str, str] = {}
        for d in wls:
            if s is d:
                continue
            res = results[(s.netns, d.address(ip_version))]
            row[d.key] = "Allow" if res.outcome in REACHED else "Deny"
            details[(s.key, d.key)] = res
        out[s.key] = row
    return out, details


def policy(
    state: LabState, protocol: str = "tcp", port: int | None = 80, ip_version: int = 4
) -> Matrix:
    """What the reference evaluator says for the same pairs (as `tabby policy matrix`)."""
    from tabby.datastore import open_datastore
    from tabby.datastore.client import ResourceClient
    from tabby.policy.matrix import reachability
    from tabby.policy.model import PolicySet
    from tabby.policy.rules import protocol_number

    proto, port = normalise(protocol, port)
    keys = {w.key for w in _ready(state, ip_version)}
    ds = open_datastore(state.datastore_url)
    try:
        resources, _ = ResourceClient(ds).snapshot()
    finally:
        ds.close()
    ps = PolicySet.from_resources(resources)
    endpoints = [ep for ep in ps.workload_endpoints(None) if ep.key in keys]
    if proto == "icmp" and ip_version == 6:
        proto = "icmpv6"  # what the probe sends to an IPv6 address
    result = reachability(ps, endpoints, protocol=protocol_number(proto), port=port,
                          ip_version=ip_version)
    return {
        src: {dst: "Allow" if ok else "Deny" for dst, ok in row.items()}
        for src, row in result.items()
    }


def compare(
    state: LabState, protocol: str = "tcp", port: int | None = 80, timeout: float = 1.0,
    ip_version: int = 4,
) -> Comparison:
    proto, port = normalise(protocol, port)
    pol = policy(state, proto, port, ip_version)
    real, details = probe(state, proto, port, timeout, ip_version)
    return Comparison(proto, port, real, pol, details, ip_version)
