"""Byte layouts of the maps in bpf/ipip.c (pure: encode, decode, no kernel access).

Addresses are stored in network byte order, as they sit in the packet; lengths and
counters in host byte order, as the kernel reads them.
"""

from __future__ import annotations

import ipaddress
import struct

MAP_ROUTES = "ipip_routes"  # LPM trie: {prefixlen u32, addr be32} -> {remote be32, local be32}
MAP_NODES = "ipip_nodes"  # hash: node address be32 -> u32 (1)
MAP_CONFIG = "ipip_config"  # array[1]: {local be32, flags u32}
MAP_COUNTERS = "ipip_counters"  # per-CPU array of u64, indexed as COUNTERS
PROG_ENCAP = "ipip_encap"
PROG_DECAP = "ipip_decap"

CFG_DECAP = 1  # strip the outer header (BPF path); without it the program only filters

# Index order of ipip_counters: keep in step with the enum in bpf/ipip.c.
COUNTERS = (
    "encap_packets",
    "decap_packets",
    "drop_unknown_source",
    "drop_bad_inner",
    "drop_ecn",
    "encap_errors",
    "decap_errors",
)


def _v4(value: str, field: str) -> bytes:
    try:
        addr = ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{field}: not an IPv4 address: {value!r}") from None
    return addr.packed


def route_key(cidr: str) -> bytes:
    """LPM key of an IPv4 CIDR: prefix length (host order) then the network address."""
    try:
        net = ipaddress.IPv4Network(cidr, strict=False)
    except ValueError:
        raise ValueError(f"dst: not an IPv4 CIDR: {cidr!r}") from None
    return struct.pack("=I", net.prefixlen) + net.network_address.packed


def decode_route_key(key: bytes) -> str:
    (plen,) = struct.unpack("=I", key[:4])
    return str(ipaddress.IPv4Network((ipaddress.IPv4Address(key[4:8]), plen)))


def route_value(remote: str, local: str) -> bytes:
    return _v4(remote, "remote") + _v4(local, "local")


def decode_route_value(value: bytes) -> tuple[str, str]:
    return str(ipaddress.IPv4Address(value[:4])), str(ipaddress.IPv4Address(value[4:8]))


def node_key(ip: str) -> bytes:
    return _v4(ip, "node")


def decode_node_key(key: bytes) -> str:
    return str(ipaddress.IPv4Address(key))


NODE_VALUE = struct.pack("=I", 1)
CONFIG_KEY = struct.pack("=I", 0)


def config_value(local: str, flags: int) -> bytes:
    return _v4(local, "local") + struct.pack("=I", flags)


def counter_key(index: int) -> bytes:
    return struct.pack("=I", index)


def sum_percpu(value: bytes) -> int:
    """Sum one per-CPU u64 slot over every CPU."""
    n = len(value) // 8
    return sum(struct.unpack(f"={n}Q", value[: n * 8]))
