"""Does a rule match a flow? Calico's per-field semantics, shared by evaluator and matrix.

A rule is split the way the dataplane sees it: flow-wide criteria (IP version, protocol,
ICMP), criteria on the source side and criteria on the destination side. Each side is
matched by address, as Felix's IP sets do: a selector matches a side when the side is a
Calico endpoint whose labels match, or its IP belongs to a matching endpoint or lies in the
nets of a matching network set. So ``notSelector`` matches anything that is not such a
member - including addresses that are no Calico endpoint at all - while ``selector:
"!has(x)"`` only matches Calico endpoints (and network sets) lacking ``x``.

Named ports resolve against the endpoints the rule's positive selector of that side picks
(every endpoint when it has none): the side matches when it is such an endpoint declaring a
port of that name with the flow's protocol and port number.
"""

from __future__ import annotations

from dataclasses import dataclass

from tabby.policy.model import Endpoint, PolicySet
from tabby.policy.rules import PORT_PROTOCOLS, EntityMatch, IPAddress, PortMatch, Rule


@dataclass(frozen=True)
class Peer:
    """One side of a flow: a Calico endpoint (with the address it uses) or a bare IP."""

    endpoint: Endpoint | None = None
    ip: IPAddress | None = None

    @property
    def label(self) -> str:
        if self.endpoint is not None:
            return self.endpoint.key
        return str(self.ip) if self.ip is not None else "?"


@dataclass(frozen=True)
class Flow:
    """One new connection's first packet. `via_in` / `via_out`: the host endpoints it is
    forwarded through (in at the destination's node, out at the source's node), when it
    crosses one; the evaluator applies their forward (applyOnForward), preDNAT and
    untracked policy."""

    src: Peer
    dst: Peer
    protocol: int
    dst_port: int | None = None
    src_port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    ip_version: int = 4
    via_in: Endpoint | None = None
    via_out: Endpoint | None = None


class Matcher:
    """Rule matching against one PolicySet, with per-selector caches."""

    def __init__(self, ps: PolicySet) -> None:
        self.ps = ps
        self._set_nets: dict[object, tuple] = {}

    # -- flow-wide criteria -----------------------------------------------------------------
    @staticmethod
    def flow_ok(rule: Rule, flow: Flow) -> bool:
        if rule.skipped_for_version(flow.ip_version):
            return False
        if rule.protocol is not None and rule.protocol != flow.protocol:
            return False
        if rule.not_protocol is not None and rule.not_protocol == flow.protocol:
            return False
        if rule.icmp_type is not None:
            if flow.icmp_type != rule.icmp_type:
                return False
            if rule.icmp_code is not None and flow.icmp_code != rule.icmp_code:
                return False
        if rule.not_icmp_type is not None and flow.icmp_type == rule.not_icmp_type and (
            rule.not_icmp_code is None or flow.icmp_code == rule.not_icmp_code
        ):
            return False
        return True

    def rule_matches(self, rule: Rule, flow: Flow) -> bool:
        return (
            self.flow_ok(rule, flow)
            and self.entity_matches(rule.source, flow.src, flow.src_port, flow)
            and self.entity_matches(rule.destination, flow.dst, flow.dst_port, flow)
        )

    # -- one side ---------------------------------------------------------------------------
    def entity_matches(self, entity: EntityMatch, peer: Peer, port: int | None,
                       flow: Flow) -> bool:
        if entity.empty:
            return True
        if entity.services is not None:
            return False  # Services are not modelled: never match rather than over-allow.
        version = flow.ip_version
        if entity.selector is not None and not self.in_selector(entity.selector, peer, version):
            return False
        if entity.not_selector is not None and self.in_selector(entity.not_selector, peer, version):
            return False
        ip = peer.ip
        if entity.nets is not None and (ip is None or not any(ip in n for n in entity.nets
                                                             if n.version == ip.version)):
            return False
        if entity.not_nets is not None and ip is not None and any(
            ip in n for n in entity.not_nets if n.version == ip.version
        ):
            return False
        if entity.ports is not None and not self.port_in(
            entity.ports, port, peer, flow.protocol, entity.selector
        ):
            return False
        if entity.not_ports is not None and self.port_in(
            entity.not_ports, port, peer, flow.protocol, entity.selector
        ):
            return False
        return True

    def in_selector(self, sel: object, peer: Peer, version: int) -> bool:
        """Is this side a member of the selector's IP set (endpoints + network sets)?"""
        ep = peer.endpoint
        if ep is not None and sel.matches(ep.labels):  # type: ignore[attr-defined]
            return True
        ip = peer.ip
        if ip is None:
            return False
        for net in self._network_set_nets(sel):
            if net.version == ip.version and ip in net:
                return True
        for other in self.ps.endpoints_at(ip):
            if other is not ep and sel.matches(other.labels):  # type: ignore[attr-defined]
                return True
        return False

    def _network_set_nets(self, sel: object) -> tuple:
        got = self._set_nets.get(sel)
        if got is None:
            got = tuple(net for ns in self.ps.network_sets
                        if sel.matches(ns.labels) for net in ns.nets)  # type: ignore[attr-defined]
            self._set_nets[sel] = got
        return got

    def port_in(self, ports: tuple[PortMatch, ...], port: int | None, peer: Peer, protocol: int,
                selector: object) -> bool:
        if port is None or protocol not in PORT_PROTOCOLS:
            return False
        for pm in ports:
            if pm.name:
                if self._named_port(pm.name, port, protocol, peer, selector):
                    return True
            elif pm.first <= port <= pm.last:
                return True
        return False

    def _named_port(self, name: str, port: int, protocol: int, peer: Peer,
                    selector: object) -> bool:
        candidates = ([peer.endpoint] if peer.endpoint is not None
                      else self.ps.endpoints_at(peer.ip) if peer.ip is not None else [])
        for ep in candidates:
            if selector is not None and not selector.matches(ep.labels):  # type: ignore[attr-defined]
                continue
            for np in ep.ports:
                if np.name == name and np.protocol == protocol and np.port == port:
                    return True
        return False
