"""Shared field types and validators for the v3 resources.

Every check that more than one kind needs lives here once: resource and label names,
CIDRs and IPs, MACs, interface names, AS numbers, durations, protocols, ports, and the
single hook through which every selector field is parsed (`check_selector`).
Messages name the offending value; pydantic adds the field path.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, RootModel, model_validator

from tabby.selector import SelectorError, parse

from .errors import FieldError, show

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TabbyModel(BaseModel):
    """Base for every model: unknown fields are errors, no silent type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --------------------------------------------------------------------------- names

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
_LABEL_RE = re.compile(rf"^{_LABEL}\Z")
_SUBDOMAIN_RE = re.compile(rf"^{_SUBDOMAIN}\Z")
_QNAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
_CONTAINER_ID_RE = re.compile(r"^[a-zA-Z0-9][-a-zA-Z0-9_.]*\Z")  # the CNI spec's rule
_INTERFACE_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}\Z")
_PORT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")
_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}\Z")
_DURATION_RE = re.compile(r"^[-+]?(0|(\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+\Z")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def is_dns_label(name: str) -> bool:
    return len(name) <= 63 and bool(_LABEL_RE.match(name))


def is_dns_subdomain(name: str) -> bool:
    return len(name) <= 253 and bool(_SUBDOMAIN_RE.match(name))


def _need_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected {what} (a string), got {show(value)}")
    return value


def int_range(lo: int, hi: int, what: str) -> Any:
    """A validator for a whole number in lo..hi (booleans refused), naming `what` on error."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"invalid {what} {show(value)} (want {lo}-{hi})")
        return value

    return BeforeValidator(check)


def check_name(value: Any) -> str:
    """A DNS-1123 subdomain: the name format of most v3 resources."""
    name = _need_str(value, "a name")
    if not is_dns_subdomain(name):
        raise ValueError(
            f"invalid name {show(name)} (lower-case alphanumerics, '-' and '.', "
            "starting and ending alphanumeric, at most 253 characters)"
        )
    return name


def check_label_name(value: Any) -> str:
    """A DNS-1123 label: namespaces, tiers."""
    name = _need_str(value, "a name")
    if not is_dns_label(name):
        raise ValueError(
            f"invalid name {show(name)} (lower-case alphanumerics and '-', "
            "starting and ending alphanumeric, at most 63 characters)"
        )
    return name


def check_container_id(value: Any) -> str:
    cid = _need_str(value, "a container ID")
    if not _CONTAINER_ID_RE.match(cid):
        raise ValueError(f"invalid container ID {show(cid)}")
    return cid


def check_interface_name(value: Any, allow_star: bool = False) -> str:
    name = _need_str(value, "an interface name")
    if allow_star and name == "*":
        return name
    if not _INTERFACE_RE.match(name):
        raise ValueError(
            f"invalid interface name {show(name)} (1-15 of letters, digits, '_', '.', '-')"
        )
    return name


def check_port_name(value: Any) -> str:
    """An IANA service name, as Kubernetes checks container port names."""
    name = _need_str(value, "a port name")
    if (
        not 1 <= len(name) <= 15
        or not _PORT_NAME_RE.match(name)
        or "--" in name
        or not any(c.isalpha() for c in name)
    ):
        raise ValueError(
            f"invalid port name {show(name)} (1-15 lower-case alphanumerics and '-', "
            "with at least one letter)"
        )
    return name


def check_mac(value: Any) -> str:
    mac = _need_str(value, "a MAC address")
    if not _MAC_RE.match(mac):
        raise ValueError(f"invalid MAC address {show(mac)}")
    return mac


def check_duration(value: Any) -> str:
    """A Go duration string ("90s", "1m30s", "250ms"), as metav1.Duration serialises."""
    text = _need_str(value, "a duration")
    if not _DURATION_RE.match(text):
        raise ValueError(f'invalid duration {show(text)} (want e.g. "90s", "1m30s", "250ms")')
    return text


def duration_seconds(text: str) -> float:
    """Seconds in a duration string checked by `check_duration`."""
    sign = -1.0 if text.startswith("-") else 1.0
    total = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(text))
    return sign * total


# --------------------------------------------------------------------------- labels


def check_qualified_name(key: str) -> str | None:
    """Why `key` is not a Kubernetes qualified name ("prefix/name"), or None if it is."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix or not is_dns_subdomain(prefix):
            return f"invalid label key {show(key)} (prefix must be a DNS subdomain)"
    if not name or len(name) > 63 or not _QNAME_RE.match(name):
        return (
            f"invalid label key {show(key)} (name part: at most 63 alphanumerics, '-', '_', '.', "
            "starting and ending alphanumeric)"
        )
    return None


def check_labels(value: Any) -> dict[str, str]:
    """Label keys are qualified names; values are empty or at most 63 name characters."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of labels, got {show(value)}")
    for k, v in value.items():
        if not isinstance(k, str):
            raise ValueError(f"label key {show(k)} must be a string")
        why = check_qualified_name(k)
        if why:
            raise ValueError(why)
        if not isinstance(v, str):
            raise ValueError(f"label {k}: value must be a string, got {show(v)} (quote it)")
        if v and (len(v) > 63 or not _QNAME_RE.match(v)):
            raise ValueError(
                f"label {k}: invalid value {show(v)} (at most 63 alphanumerics, '-', '_', '.', "
                "starting and ending alphanumeric)"
            )
    return value


def check_annotations(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of annotations, got {show(value)}")
    total = 0
    for k, v in value.items():
        if not isinstance(k, str):
            raise ValueError(f"annotation key {show(k)} must be a string")
        why = check_qualified_name(k.lower())
        if why:
            raise ValueError(why.replace("label key", "annotation key"))
        if not isinstance(v, str):
            raise ValueError(f"annotation {k}: value must be a string, got {show(v)} (quote it)")
        total += len(k) + len(v)
    if total > 256 * 1024:
        raise ValueError(f"annotations total {total} bytes, more than 256 KiB")
    return value


Labels = Annotated[dict[str, str], BeforeValidator(check_labels)]
AnnotationMap = Annotated[dict[str, str], BeforeValidator(check_annotations)]
Name = Annotated[str, BeforeValidator(check_name)]
Duration = Annotated[str, BeforeValidator(check_duration)]
MAC = Annotated[str, BeforeValidator(check_mac)]


# --------------------------------------------------------------------------- IPs and CIDRs


def parse_net(text: str) -> IPNetwork:
    """A CIDR or bare IP as a network (host bits allowed; they are dropped)."""
    return ipaddress.ip_network(text, strict=False)


def parse_cidr_or_ip(value: Any, what: str = "CIDR") -> tuple[IPAddress, IPNetwork]:
    text = _need_str(value, f"a {what}")
    try:
        if "/" in text:
            addr_text, _, plen = text.partition("/")
            addr = ipaddress.ip_address(addr_text)
            if not plen.isdigit():
                raise ValueError
            return addr, ipaddress.ip_network(text, strict=False)
        addr = ipaddress.ip_address(text)
        return addr, ipaddress.ip_network(addr)
    except ValueError:
        raise ValueError(f"invalid {what} {show(text)}") from None


def check_cidr(value: Any) -> str:
    """Any CIDR or bare IP (host bits allowed), kept as written."""
    parse_cidr_or_ip(value)
    return str(value)


def check_masked_cidr(value: Any) -> str:
    """A strictly masked CIDR (no host bits) or a bare IP, kept as written."""
    addr, net = parse_cidr_or_ip(value)
    if addr != net.network_address:
        raise ValueError(f"CIDR {show(value)} has host bits set (did you mean {str(net)!r}?)")
    return str(value)


def check_ip(value: Any) -> str:
    text = _need_str(value, "an IP address")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid IP address {show(text)}") from None
    return text


def check_ipv4(value: Any) -> str:
    text = check_ip(value)
    if ipaddress.ip_address(text).version != 4:
        raise ValueError(f"expected an IPv4 address, got {show(text)}")
    return text


def check_ipv6(value: Any) -> str:
    text = check_ip(value)
    if ipaddress.ip_address(text).version != 6:
        raise ValueError(f"expected an IPv6 address, got {show(text)}")
    return text


def check_cidr_v4(value: Any) -> str:
    addr, _ = parse_cidr_or_ip(value, "IPv4 address/CIDR")
    if addr.version != 4:
        raise ValueError(f"expected an IPv4 address/CIDR, got {show(value)}")
    return str(value)


def check_cidr_v6(value: Any) -> str:
    addr, _ = parse_cidr_or_ip(value, "IPv6 address/CIDR")
    if addr.version != 6:
        raise ValueError(f"expected an IPv6 address/CIDR, got {show(value)}")
    return str(value)


CIDR = Annotated[str, BeforeValidator(check_cidr)]
MaskedCIDR = Annotated[str, BeforeValidator(check_masked_cidr)]
IP = Annotated[str, BeforeValidator(check_ip)]
IPv4 = Annotated[str, BeforeValidator(check_ipv4)]
IPv6 = Annotated[str, BeforeValidator(check_ipv6)]
CIDRv4 = Annotated[str, BeforeValidator(check_cidr_v4)]
CIDRv6 = Annotated[str, BeforeValidator(check_cidr_v6)]


# --------------------------------------------------------------------------- selectors

MAX_SELECTOR_LENGTH = 1024


def check_selector(value: Any, *, allow_global: bool = False, only_global: bool = False) -> str:
    """The one place selector fields are validated: parse with tabby.selector.

    `allow_global=False` rejects any use of global() (it has meaning only in an
    EntityRule namespaceSelector); `only_global=True` allows global() but only as the
    whole selector, which is the EntityRule namespaceSelector rule. The text is kept as
    written; `tabby.selector.parse` gives the canonical form when needed.
    """
    text = _need_str(value, "a selector")
    if len(text) > MAX_SELECTOR_LENGTH:
        raise ValueError(f"selector longer than {MAX_SELECTOR_LENGTH} characters")
    try:
        canonical = str(parse(text))
    except SelectorError as exc:
        # SelectorError's text already quotes the selector and gives position/expectation.
        msg = str(exc)
        if not msg.startswith("selector "):
            msg = f"selector {show(text)}: {msg}"
        raise ValueError(f"invalid {msg}") from None
    if "global()" in canonical:
        if not (allow_global or only_global):
            raise ValueError(
                f"global() can only be used in an EntityRule namespaceSelector: {show(text)}"
            )
        if only_global and canonical != "global()":
            raise ValueError(f"global() cannot be combined with other selectors: {show(text)}")
    return text


def _no_global(value: Any) -> str:
    return check_selector(value)


def _only_global(value: Any) -> str:
    return check_selector(value, only_global=True)


Selector = Annotated[str, BeforeValidator(_no_global)]
NamespaceSelector = Annotated[str, BeforeValidator(_only_global)]


# --------------------------------------------------------------------------- AS numbers


def check_as_number(value: Any) -> int:
    """A 4-byte AS number: 1-4294967295, or "x.y" (asdot) which is stored as x*65536+y."""
    if isinstance(value, bool):
        raise ValueError(f"invalid AS number {show(value)}")
    num: int | None = None
    if isinstance(value, int):
        num = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            num = int(text)
        elif re.fullmatch(r"\d+\.\d+", text):
            hi, lo = (int(p) for p in text.split("."))
            if hi <= 0xFFFF and lo <= 0xFFFF:
                num = hi * 65536 + lo
    if num is None or not 1 <= num <= 0xFFFFFFFF:
        raise ValueError(f'invalid AS number {show(value)} (want 1-4294967295 or dotted "x.y")')
    return num


ASNumber = Annotated[int, BeforeValidator(check_as_number)]


# --------------------------------------------------------------------------- protocols

PROTOCOL_NUMBERS: dict[str, int] = {
    "TCP": 6,
    "UDP": 17,
    "ICMP": 1,
    "ICMPv6": 58,
    "SCTP": 132,
    "UDPLite": 136,
}
PORT_PROTOCOLS = frozenset({6, 17, 132})  # TCP, UDP, SCTP: the protocols with ports


def _check_protocol(value: Any) -> int | str:
    if isinstance(value, bool):
        raise ValueError(f"invalid protocol {show(value)}")
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int):
        if not 1 <= value <= 255:
            raise ValueError(f"invalid protocol number {value} (want 1-255)")
        return value
    if isinstance(value, str) and value in PROTOCOL_NUMBERS:
        return value
    raise ValueError(
        f"invalid protocol {show(value)} (want TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1-255)"
    )


class Protocol(RootModel[int | str]):
    """An IP protocol by Calico name ("TCP", "ICMPv6", ...) or number 1-255."""

    model_config = ConfigDict(strict=True, frozen=True)
    root: Annotated[int | str, BeforeValidator(_check_protocol)]

    @property
    def number(self) -> int:
        return self.root if isinstance(self.root, int) else PROTOCOL_NUMBERS[self.root]

    @property
    def supports_ports(self) -> bool:
        return self.number in PORT_PROTOCOLS

    @property
    def is_icmp(self) -> bool:
        return self.number in (1, 58)

    def __str__(self) -> str:
        return str(self.root)


# --------------------------------------------------------------------------- ports

_RANGE_RE = re.compile(r"^(\d+):(\d+)\Z")


def _check_port(value: Any) -> int | str:
    if isinstance(value, bool):
        raise ValueError(f"invalid port {show(value)}")
    if isinstance(value, str) and value.isdigit():
        value = int(value)  # "80" is the number 80, as Calico stores it
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise ValueError(f"invalid port {value} (want 1-65535)")
        return value
    if isinstance(value, str):
        m = _RANGE_RE.match(value)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
                raise ValueError(f"invalid port range {show(value)} (ports must be 1-65535)")
            if lo > hi:
                raise ValueError(f"invalid port range {show(value)} (min is greater than max)")
            return value
        try:
            return check_port_name(value)
        except ValueError:
            pass
    raise ValueError(
        f'invalid port {show(value)} (want a number 1-65535, a range "min:max" or a port name)'
    )


class Port(RootModel[int | str]):
    """A rule port: a number, a "min:max" range, or a named port (min = max = 0)."""

    model_config = ConfigDict(strict=True, frozen=True)
    root: Annotated[int | str, BeforeValidator(_check_port)]

    @property
    def port_name(self) -> str | None:
        if isinstance(self.root, str) and not _RANGE_RE.match(self.root):
            return self.root
        return None

    @property
    def is_named(self) -> bool:
        return self.port_name is not None

    @property
    def min_port(self) -> int:
        if isinstance(self.root, int):
            return self.root
        m = _RANGE_RE.match(self.root)
        return int(m.group(1)) if m else 0

    @property
    def max_port(self) -> int:
        if isinstance(self.root, int):
            return self.root
        m = _RANGE_RE.match(self.root)
        return int(m.group(2)) if m else 0

    def __str__(self) -> str:
        return str(self.root)


def _check_port_number(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"invalid port {show(value)} (want 1-65535)")
    return value


PortNumber = Annotated[int, BeforeValidator(_check_port_number)]
PortName = Annotated[str, BeforeValidator(check_port_name)]


class EndpointPort(TabbyModel):
    """A named port on a HostEndpoint: {name, protocol, port}."""

    name: PortName
    protocol: Protocol
    port: PortNumber

    @model_validator(mode="after")
    def _protocol_has_ports(self) -> EndpointPort:
        if not self.protocol.supports_ports:
            raise FieldError(
                "protocol",
                f"protocol {show(self.protocol.root)} has no ports (want TCP, UDP or SCTP)",
            )
        return self


def policy_order(value: float | None) -> float | int | None:
    """Serialise an order as Calico does: an integral float64 prints without ".0"."""
    if value is not None and float(value).is_integer():
        return int(value)
    return value
