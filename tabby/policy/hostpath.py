"""The host endpoint stages of a flow, in the order the dataplane applies them.

Traffic to a host (a packet that arrives through a host endpoint for the host itself):
failsafe inbound ports, then untracked (doNotTrack) ingress policy, then preDNAT ingress
policy, then the cluster's own tunnel packets (VXLAN / IP-in-IP from a known node, while a
pool uses that encapsulation) are accepted, then normal ingress policy with the endpoint's
profiles. An Allow in an earlier stage skips the later ones; a Deny drops.

Traffic from a host (sent by the host itself out of a host endpoint): failsafe outbound
ports, untracked egress policy, tunnel packets to a known node, normal egress policy.
preDNAT policy never applies.

Forwarded traffic (in through host endpoint A, out to a local workload or through host
endpoint B): A's untracked and preDNAT ingress policy, then only applyOnForward policy:
A's ingress and B's egress. Failsafe ports do not open forwarded traffic; they only make
the packet skip the untracked and preDNAT stages. A forward chain that no policy selects,
or that every tier passes, lets the packet through. An untracked or preDNAT Allow skips
A's forward ingress stage only, as in Felix: the workload's policy and B's still apply.

A workload to its own host: the workload's egress policy, then the node's
DefaultEndpointToHostAction; host endpoint policy is not consulted. The host to its own
workloads, and to itself: always allowed. ICMPv6 neighbour discovery is never policed on
host endpoints, and ND/MLD from a workload to its host skips its egress policy.
"""

from __future__ import annotations

from typing import Any

from tabby.dataplane.encap import IPIP_PROTOCOL, VXLAN_PORT
from tabby.policy.host import INBOUND, OUTBOUND, HostConfig
from tabby.policy.match import Flow, Matcher, Peer
from tabby.policy.model import EGRESS, INGRESS, Endpoint, PolicySet
from tabby.policy.walk import (
    ENDPOINT_TO_HOST,
    FAILSAFE,
    FORWARD,
    LOCAL,
    PRE_DNAT,
    TUNNEL,
    UNTRACKED,
    DirectionResult,
    Step,
    walk_chain,
)

ICMPV6 = 58
ND_TYPES = frozenset({133, 134, 135, 136})  # router/neighbour solicitation/advertisement
WL_TO_HOST_ICMPV6 = frozenset({130, 131, 132, 133, 135, 136})  # MLD, RS, NS, NA


def _icmpv6(flow: Flow, types: frozenset[int]) -> bool:
    return flow.protocol == ICMPV6 and flow.icmp_type in types


def _result(direction: str, peer: Peer, allowed: bool, decider: dict[str, Any],
            steps: list[Step], stage: str | None = None) -> DirectionResult:
    return DirectionResult(direction, peer, allowed, decider, steps, stage)


def _failsafe(cfg: HostConfig, which: str, flow: Flow, remote: Peer, steps: list[Step],
              ) -> dict[str, Any] | None:
    """The failsafe decider when the flow's destination port is on the `which` list."""
    hit = cfg.failsafe(which, flow.protocol, flow.dst_port, remote.ip)
    if hit is None:
        return None
    what = f"failsafe {which} {hit.label}"
    steps.append(Step("Allow", stage=FAILSAFE, note=what))
    return {"stage": FAILSAFE, "failsafe": f"{which} {hit.label}", "action": "Allow",
            "default": f"allow: {what}"}


def _tunnel(ps: PolicySet, flow: Flow, remote: Peer, steps: list[Step]) -> dict[str, Any] | None:
    """The cluster's own VXLAN (UDP 4789) or IP-in-IP packets to or from a known node, which
    the dataplane accepts ahead of normal host endpoint policy (after the untracked and
    preDNAT stages), so a host endpoint on the underlay cannot cut pod traffic."""
    if flow.ip_version != 4 or remote.ip is None or remote.ip not in ps.node_ips:
        return None
    if "vxlan" in ps.tunnel_encaps and flow.protocol == 17 and flow.dst_port == VXLAN_PORT:
        what = "VXLAN"
    elif "ipip" in ps.tunnel_encaps and flow.protocol == IPIP_PROTOCOL:
        what = "IP-in-IP"
    else:
        return None
    note = f"{what} with a known node ({remote.ip})"
    steps.append(Step("Allow", stage=TUNNEL, note=note))
    return {"stage": TUNNEL, "action": "Allow", "default": f"allow: {note}"}


def _reply_pinhole(cfg: HostConfig, which: str, flow: Flow, remote: Peer,
                   steps: list[Step]) -> bool:
    """Raw-stage only: a source port on the `which` list may be a failsafe connection's
    reply, so untracked policy is skipped for it (normal policy still applies)."""
    hit = cfg.failsafe(which, flow.protocol, flow.src_port, remote.ip)
    if hit is not None:
        steps.append(Step("Skip", stage=UNTRACKED, note=f"source port is failsafe "
                          f"{which} {hit.label}: untracked policy skipped"))
    return hit is not None


def _nd(flow: Flow, steps: list[Step]) -> dict[str, Any] | None:
    if not _icmpv6(flow, ND_TYPES):
        return None
    steps.append(Step("Allow", stage=FAILSAFE, note="IPv6 neighbour discovery"))
    return {"stage": FAILSAFE, "action": "Allow",
            "default": "allow: IPv6 neighbour discovery is never policed on host endpoints"}


def to_host(ps: PolicySet, m: Matcher, flow: Flow, hep: Endpoint) -> DirectionResult:
    """Ingress of the host itself through `hep` (the flow's destination)."""
    peer, remote = flow.dst, flow.src
    cfg = ps.host_config(hep.node)
    steps: list[Step] = []
    decided = _nd(flow, steps) or _failsafe(cfg, INBOUND, flow, remote, steps)
    if decided is not None:
        return _result(INGRESS, peer, True, decided, steps)
    chains = ps.resolved_host(hep)
    if not _reply_pinhole(cfg, OUTBOUND, flow, remote, steps):
        got = walk_chain(ps, m, flow, INGRESS, chains.untracked_ingress, steps,
                         stage=UNTRACKED, end_of_tier_drop=False)
        if got is not None:
            return _result(INGRESS, peer, got[0], got[1], steps)
    got = walk_chain(ps, m, flow, INGRESS, chains.pre_dnat_ingress, steps, stage=PRE_DNAT,
                     end_of_tier_drop=False)
    if got is not None:
        return _result(INGRESS, peer, got[0], got[1], steps)
    tunnel = _tunnel(ps, flow, remote, steps)
    if tunnel is not None:
        return _result(INGRESS, peer, True, tunnel, steps)
    allowed, decider = walk_chain(ps, m, flow, INGRESS, ps.resolved(hep).ingress, steps,
                                  profiles=hep.profiles) or (False, {})
    return _result(INGRESS, peer, allowed, decider, steps)


def from_host(ps: PolicySet, m: Matcher, flow: Flow, hep: Endpoint) -> DirectionResult:
    """Egress of the host itself through `hep` (the flow's source)."""
    peer, remote = flow.src, flow.dst
    cfg = ps.host_config(hep.node)
    steps: list[Step] = []
    decided = _nd(flow, steps) or _failsafe(cfg, OUTBOUND, flow, remote, steps)
    if decided is not None:
        return _result(EGRESS, peer, True, decided, steps)
    if not _reply_pinhole(cfg, INBOUND, flow, remote, steps):
        got = walk_chain(ps, m, flow, EGRESS, ps.resolved_host(hep).untracked_egress, steps,
                         stage=UNTRACKED, end_of_tier_drop=False)
        if got is not None:
            return _result(EGRESS, peer, got[0], got[1], steps)
    tunnel = _tunnel(ps, flow, remote, steps)
    if tunnel is not None:
        return _result(EGRESS, peer, True, tunnel, steps)
    allowed, decider = walk_chain(ps, m, flow, EGRESS, ps.resolved(hep).egress, steps,
                                  profiles=hep.profiles) or (False, {})
    return _result(EGRESS, peer, allowed, decider, steps)


def forward_in(ps: PolicySet, m: Matcher, flow: Flow, hep: Endpoint) -> DirectionResult:
    """A forwarded packet arriving through `hep`: untracked, preDNAT, then applyOnForward
    ingress policy. An untracked or preDNAT Allow skips only the forward ingress stage (as
    in Felix): the workload's policy and the outgoing host endpoint's still apply."""
    peer = Peer(hep, hep.ip(flow.ip_version))
    remote = flow.src
    cfg = ps.host_config(hep.node)
    chains = ps.resolved_host(hep)
    steps: list[Step] = []
    inbound = cfg.failsafe(INBOUND, flow.protocol, flow.dst_port, remote.ip)
    skip = (f"failsafe {INBOUND} {inbound.label}" if inbound is not None
            else "IPv6 neighbour discovery" if _icmpv6(flow, ND_TYPES) else None)
    if skip is not None:
        steps.append(Step("Skip", stage=UNTRACKED, note=f"{skip}: untracked and preDNAT "
                          "policy skipped; failsafes do not open forwarded traffic"))
    else:
        if not _reply_pinhole(cfg, OUTBOUND, flow, remote, steps):
            got = walk_chain(ps, m, flow, INGRESS, chains.untracked_ingress, steps,
                             stage=UNTRACKED, end_of_tier_drop=False)
            if got is not None:
                return _skip_forward(peer, got, steps, "untracked")
        got = walk_chain(ps, m, flow, INGRESS, chains.pre_dnat_ingress, steps,
                         stage=PRE_DNAT, end_of_tier_drop=False)
        if got is not None:
            return _skip_forward(peer, got, steps, "preDNAT")
    return _forward_chain(ps, m, flow, INGRESS, peer, chains.forward_ingress, steps)


def _skip_forward(peer: Peer, got: tuple[bool, dict[str, Any]], steps: list[Step],
                  what: str) -> DirectionResult:
    """An untracked / preDNAT verdict on a forwarded packet: a Deny drops it, an Allow
    skips the forward ingress stage."""
    if got[0]:
        steps.append(Step("Skip", stage=FORWARD,
                          note=f"allowed by {what} policy: forward ingress policy skipped"))
    return _result(INGRESS, peer, got[0], got[1], steps, FORWARD)


def forward_out(ps: PolicySet, m: Matcher, flow: Flow, hep: Endpoint) -> DirectionResult:
    """A forwarded packet leaving through `hep`: applyOnForward egress policy only."""
    peer = Peer(hep, hep.ip(flow.ip_version))
    return _forward_chain(ps, m, flow, EGRESS, peer, ps.resolved_host(hep).forward_egress, [])


def _forward_chain(ps: PolicySet, m: Matcher, flow: Flow, direction: str, peer: Peer,
                   chain: Any, steps: list[Step]) -> DirectionResult:
    got = walk_chain(ps, m, flow, direction, chain, steps, stage=FORWARD)
    if got is not None:
        return _result(direction, peer, got[0], got[1], steps, FORWARD)
    why = ("no applyOnForward policy selects the host endpoint in this direction" if not chain
           else "every tier passed")
    return _result(direction, peer, True, {"stage": FORWARD, "default": f"allow: {why}"},
                   steps, FORWARD)


def workload_to_host(ps: PolicySet, flow: Flow, egress: DirectionResult,
                     hep: Endpoint) -> tuple[DirectionResult, DirectionResult]:
    """A workload to its own host: (egress, host side). `egress` is the workload's
    normal egress result, replaced when ND/MLD bypasses it."""
    peer = flow.dst
    if _icmpv6(flow, WL_TO_HOST_ICMPV6):
        note = "ICMPv6 ND/MLD from a workload to its host is always allowed"
        decider = {"stage": ENDPOINT_TO_HOST, "default": f"allow: {note}"}
        step = Step("Allow", stage=ENDPOINT_TO_HOST, note=note)
        return (_result(EGRESS, flow.src, True, decider, [step]),
                _result(INGRESS, peer, True, dict(decider), [step]))
    action = ps.host_config(hep.node).default_endpoint_to_host_action
    allowed = action != "Drop"
    note = f"DefaultEndpointToHostAction {action}"
    if action == "Return":
        note += " (to the host's other firewall rules, not modelled: allowed here)"
    if not egress.allowed:
        note += "; not reached: the workload's egress policy denied"
    step = Step(action, stage=ENDPOINT_TO_HOST, note=note)
    decider = {"stage": ENDPOINT_TO_HOST, "action": action,
               "default": f"{'allow' if allowed else 'deny'}: {note}"}
    return egress, _result(INGRESS, peer, allowed, decider, [step])


def local(flow: Flow, what: str) -> tuple[DirectionResult, DirectionResult]:
    """Host to its own workload or to itself: no policy on either side."""
    note = f"{what}: always allowed, no policy applies"
    decider = {"stage": LOCAL, "default": f"allow: {note}"}
    step = Step("Allow", stage=LOCAL, note=note)
    return (_result(EGRESS, flow.src, True, decider, [step]),
            _result(INGRESS, flow.dst, True, dict(decider), [step]))
