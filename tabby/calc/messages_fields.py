"""Shared parts of the calc -> dataplane messages (see `tabby.calc.messages`): the value
types they carry (PortRange, PolicyId), the allowed values of their enum-like fields, and
the field checks each message runs on construction (one-line errors naming the field)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

ACTIONS = ("allow", "deny", "pass", "log")
IPSET_KINDS = ("ip", "net", "ip-port")
TIER_DEFAULT_ACTIONS = ("Deny", "Pass")
ENDPOINT_TO_HOST_ACTIONS = ("Drop", "Return", "Accept")
PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132, "udplite": 136}
PORT_PROTOCOLS = frozenset({6, 17, 132, 136})  # protocols whose rules may match ports
ROUTE_KINDS = (
    "local-workload",  # a workload on this node: /32 dev cali...
    "remote-workload",  # a single (borrowed) workload IP on another node
    "local-block",  # an IPAM block affine to this node (blackhole / BGP export)
    "remote-block",  # an IPAM block affine to another node
    "local-host",  # this node's own address
    "remote-host",  # another node's address
    "local-tunnel",  # this node's tunnel address
    "remote-tunnel",  # another node's tunnel address
)
ENCAPS = ("none", "vxlan", "ipip")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _bad(cls: str, fld: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{cls}.{fld}: {why}: {value!r}")


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _strs(obj: Any, name: str) -> tuple[str, ...]:
    value = getattr(obj, name)
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise _bad(type(obj).__name__, name, value, "expected a list of strings")
    out = tuple(value)
    for v in out:
        if not isinstance(v, str) or not v:
            raise _bad(type(obj).__name__, name, v, "expected a non-empty string")
    _set(obj, name, out)
    return out


def _cidrs(obj: Any, name: str, version: int | None = None) -> tuple[str, ...]:
    out = []
    for v in _strs(obj, name):
        try:
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise _bad(type(obj).__name__, name, v, "invalid CIDR") from None
        if version is not None and net.version != version:
            raise _bad(type(obj).__name__, name, v, f"not an IPv{version} CIDR")
        out.append(str(net))
    _set(obj, name, tuple(out))
    return tuple(out)


def _opt_ip(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if value is None:
        return
    try:
        _set(obj, name, str(ipaddress.ip_address(value)))
    except ValueError:
        raise _bad(type(obj).__name__, name, value, "invalid IP address") from None


def _ifname(obj: Any, name: str, *, star: bool = False) -> None:
    value = getattr(obj, name)
    if star and value in ("*", ""):
        return
    if not isinstance(value, str) or not _IFNAME.match(value):
        raise _bad(type(obj).__name__, name, value, "invalid interface name")


def _choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise _bad(type(obj).__name__, name, value, f"expected one of {', '.join(choices)}")


def protocol_number(value: int | str) -> int:
    """6, "6", "TCP", "tcp" -> 6. Raises ValueError naming the value."""
    if isinstance(value, bool):
        raise ValueError(f"protocol: invalid protocol {value!r}")
    if isinstance(value, int):
        num = value
    elif isinstance(value, str) and value.lower() in PROTOCOL_NUMBERS:
        num = PROTOCOL_NUMBERS[value.lower()]
    elif isinstance(value, str) and value.isdigit():
        num = int(value)
    else:
        raise ValueError(f"protocol: invalid protocol {value!r}")
    if not 1 <= num <= 255:
        raise ValueError(f"protocol: {value!r} out of range 1-255")
    return num


class PortRange(NamedTuple):
    """An inclusive port range; a single port has first == last."""

    first: int
    last: int

    @classmethod
    def of(cls, value: Any) -> PortRange:
        """80, "80", "80:90", (80, 90) or a PortRange -> PortRange."""
        if isinstance(value, PortRange):
            first, last = value
        elif isinstance(value, bool):
            raise ValueError(f"port: invalid port {value!r}")
        elif isinstance(value, int):
            first = last = value
        elif isinstance(value, str) and re.fullmatch(r"\d+", value):
            first = last = int(value)
        elif isinstance(value, str) and re.fullmatch(r"\d+:\d+", value):
            a, b = value.split(":")
            first, last = int(a), int(b)
        elif isinstance(value, tuple) and len(value) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in value
        ):
            first, last = value
        else:
            raise ValueError(f"port: invalid port or range {value!r}")
        if not (0 <= first <= last <= 65535):
            raise ValueError(f"port: invalid range {value!r} (need 0 <= first <= last <= 65535)")
        return cls(first, last)

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


class PolicyId(NamedTuple):
    """A policy is named within its tier (Felix's PolicyID: tier + name)."""

    tier: str
    name: str

    def __str__(self) -> str:
        return f"{self.tier}/{self.name}"


def _policy_id(obj: Any, name: str) -> PolicyId:
    value = getattr(obj, name)
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise _bad(type(obj).__name__, name, value, "expected (tier, name)")
    pid = PolicyId(*value)
    _set(obj, name, pid)
    return pid
