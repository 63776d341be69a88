"""IP set members as nft set elements (pure): parsing, validation, set types."""

from __future__ import annotations

import functools
import ipaddress


@functools.lru_cache(maxsize=1 << 17)
def set_elements(kind: str, members: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(IPv4 elements, IPv6 elements) as nft element text; ValueError names a bad member.

    "net" members are collapsed (an interval set refuses overlapping ranges)."""
    v4: list[str] = []
    v6: list[str] = []
    if kind == "net":
        nets4: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        nets6: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for m in members:
            try:
                net = ipaddress.ip_network(m, strict=False)
            except ValueError:
                raise ValueError(f"IPSetUpdate.members: invalid CIDR {m!r}") from None
            (nets4 if net.version == 4 else nets6).append(net)
        for nets, out in ((nets4, v4), (nets6, v6)):
            for c in ipaddress.collapse_addresses(nets):  # type: ignore[type-var]
                out.append(str(c.network_address) if c.prefixlen == c.max_prefixlen else str(c))
    elif kind == "ip":
        for m in members:
            try:
                addr = ipaddress.ip_interface(m)
            except ValueError:
                raise ValueError(f"IPSetUpdate.members: invalid address {m!r}") from None
            if addr.network.prefixlen != addr.max_prefixlen:
                raise ValueError(f"IPSetUpdate.members: {m!r} is a network in an 'ip' set")
            (v4 if addr.version == 4 else v6).append(str(addr.ip))
    else:  # ip-port: "10.0.0.1,tcp:8080"
        for m in members:
            try:
                ip_text, rest = m.rsplit(",", 1)
                proto, port_text = rest.split(":")
                addr = ipaddress.ip_interface(ip_text)
                port = int(port_text)
                proto = proto.lower()
                if proto not in ("tcp", "udp", "sctp") or not 0 <= port <= 65535:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"IPSetUpdate.members: invalid named-port member {m!r} (want ip,proto:port)"
                ) from None
            (v4 if addr.version == 4 else v6).append(f"{addr.ip} . {proto} . {port}")
    return frozenset(v4), frozenset(v6)


SET_TYPES = {
    ("ip", 4): ("ipv4_addr", False),
    ("ip", 6): ("ipv6_addr", False),
    ("net", 4): ("ipv4_addr", True),
    ("net", 6): ("ipv6_addr", True),
    ("ip-port", 4): ("ipv4_addr . inet_proto . inet_service", False),
    ("ip-port", 6): ("ipv6_addr . inet_proto . inet_service", False),
}
