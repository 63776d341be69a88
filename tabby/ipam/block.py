"""Allocation blocks: the arithmetic and bookkeeping of one block, pure (no I/O).

A pool is carved into aligned blocks of `blockSize` prefix length. A block records, per
ordinal (offset from the block's base address), the index of the attribute entry
({handle, attrs}) of its allocation, or None when free. Free ordinals are kept in a FIFO
(`unallocated`): allocation takes from the head, release appends to the tail, so a
released address is reused as late as possible. `sequenceNumber` is bumped on every change.
"""

from __future__ import annotations

import ipaddress
import json
import time

# `typing` costs ~3 ms per CNI plugin exec (which imports this module); annotations are
# strings (PEP 563), so their names are needed only by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

AFFINITY_PREFIX = "host:"


class AddressInUse(Exception):
    """assign() of an ordinal that is already allocated."""


# ---------------------------------------------------------------------------- keys


def cidr_to_key(cidr: IPNetwork | str) -> str:
    """A CIDR as one key segment: '10.0.0.0/26' -> '10.0.0.0-26' (no '/' inside keys)."""
    return str(cidr).replace("/", "-")


def key_to_cidr(part: str) -> IPNetwork:
    addr, _, plen = part.rpartition("-")
    return ipaddress.ip_network(f"{addr}/{plen}")


def escape_segment(name: str) -> str:
    """Make a handle or node name safe as one key segment (reversible)."""
    return name.replace("%", "%25").replace("/", "%2F")


def unescape_segment(part: str) -> str:
    return part.replace("%2F", "/").replace("%25", "%")


# ------------------------------------------------------------------- pool -> blocks


def num_blocks(pool: IPNetwork, block_size: int) -> int:
    return 1 << (block_size - pool.prefixlen)


def block_at(pool: IPNetwork, block_size: int, index: int) -> IPNetwork:
    """The index-th block of the pool."""
    step = 1 << (pool.max_prefixlen - block_size)
    base = int(pool.network_address) + index * step
    return ipaddress.ip_network((base, block_size))


def block_containing(ip: IPAddress, block_size: int) -> IPNetwork:
    """The block (of this prefix length) that holds ip: blocks are aligned to their size."""
    return ipaddress.ip_network((ip, block_size), strict=False)


def fnv1a32(text: str) -> int:
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def _splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return state, z ^ (z >> 31)


def seeded_index(seed_text: str, n: int) -> int:
    """A pseudo-random index in [0, n), the same for the same seed text on every host.

    Seeding by node name makes one node start its search at the same place each time (and
    different nodes at different places), so nodes rarely race for one block, and this does
    not need the `random` module (the CNI plugin's import time matters).
    """
    state, value, bits = fnv1a32(seed_text), 0, 0
    while (1 << bits) < n * 2**32:  # enough random bits that the modulo bias is negligible
        state, out = _splitmix64(state)
        value = (value << 64) | out
        bits += 64
    return value % n


def walk_blocks(pool: IPNetwork, block_size: int, seed_text: str) -> Iterator[IPNetwork]:
    """Every block of the pool once, from a seeded start, wrapping around (Calico's walk)."""
    n = num_blocks(pool, block_size)
    start = seeded_index(seed_text, n)
    for i in range(n):
        yield block_at(pool, block_size, (start + i) % n)


# --------------------------------------------------------------------------- block


class Block:
    # A plain class, not a dataclass: dataclass creation costs import time on every ADD.
    __slots__ = ("cidr", "affinity", "allocations", "unallocated", "attributes",
                 "sequence_number")

    def __init__(
        self,
        cidr: IPNetwork,
        affinity: str | None = None,  # "host:<node>" or None
        allocations: list[int | None] | None = None,
        unallocated: list[int] | None = None,
        attributes: list[dict[str, Any]] | None = None,
        sequence_number: int = 0,
    ) -> None:
        self.cidr = cidr
        self.affinity = affinity
        self.allocations: list[int | None] = allocations if allocations is not None else []
        self.unallocated: list[int] = unallocated if unallocated is not None else []
        self.attributes: list[dict[str, Any]] = attributes if attributes is not None else []
        self.sequence_number = sequence_number

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Block) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Block({self.cidr}, affinity={self.affinity!r}, in_use={self.in_use}/{self.size})"

    @classmethod
    def new(cls, cidr: IPNetwork | str, affinity: str | None = None) -> Block:
        net = ipaddress.ip_network(cidr)
        size = net.num_addresses
        return cls(net, affinity, [None] * size, list(range(size)))

    # -- serialisation ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "cidr": str(self.cidr),
            "affinity": self.affinity,
            "allocations": self.allocations,
            "unallocated": self.unallocated,
            "attributes": self.attributes,
            "sequenceNumber": self.sequence_number,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Block:
        return cls(
            ipaddress.ip_network(d["cidr"]),
            d.get("affinity"),
            list(d["allocations"]),
            list(d["unallocated"]),
            list(d.get("attributes") or []),
            int(d.get("sequenceNumber", 0)),
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Block:
        return cls.from_dict(json.loads(raw))

    # -- queries -----------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.allocations)

    @property
    def free(self) -> int:
        return len(self.unallocated)

    @property
    def in_use(self) -> int:
        return self.size - len(self.unallocated)

    @property
    def empty(self) -> bool:
        return not self.in_use

    @property
    def host(self) -> str | None:
        """The node this block is affine to, if any."""
        if self.affinity and self.affinity.startswith(AFFINITY_PREFIX):
            return self.affinity[len(AFFINITY_PREFIX) :]
        return None

    def ip(self, ordinal: int) -> IPAddress:
        return self.cidr.network_address + ordinal

    def ordinal(self, ip: IPAddress) -> int:
        if ip not in self.cidr:
            raise ValueError(f"{ip} is not in block {self.cidr}")
        return int(ip) - int(self.cidr.network_address)

    def handle_of(self, ip: IPAddress) -> str | None:
        idx = self.allocations[self.ordinal(ip)]
        return None if idx is None else self.attributes[idx]["handle"]

    def allocation(self, ip: IPAddress) -> dict[str, Any] | None:
        """The attribute entry ({handle, attrs, allocatedAt}) of ip's allocation, or None."""
        idx = self.allocations[self.ordinal(ip)]
        return None if idx is None else self.attributes[idx]

    def allocated(self) -> Iterator[tuple[IPAddress, dict[str, Any]]]:
        """(ip, attribute entry) for every allocated address, in address order."""
        for ordinal, idx in enumerate(self.allocations):
            if idx is not None:
                yield self.ip(ordinal), self.attributes[idx]

    def ips_by_handle(self, handle: str) -> list[IPAddress]:
        return [ip for ip, attr in self.allocated() if attr["handle"] == handle]

    # -- changes (each caller writes the block back with compare-and-swap) -------------

    def _attribute_index(self, handle: str, attrs: dict[str, Any] | None, now: float) -> int:
        attrs = dict(attrs or {})
        for i, entry in enumerate(self.attributes):
            if entry["handle"] == handle and entry["attrs"] == attrs:
                return i
        self.attributes.append({"handle": handle, "attrs": attrs, "allocatedAt": round(now, 3)})
        return len(self.attributes) - 1

    def auto_assign(
        self, num: int, handle: str, attrs: dict[str, Any] | None = None, now: float | None = None
    ) -> list[IPAddress]:
        """Take up to num free addresses from the head of the free list."""
        take = min(num, len(self.unallocated))
        if take <= 0:
            return []
        idx = self._attribute_index(handle, attrs, time.time() if now is None else now)
        ordinals, self.unallocated = self.unallocated[:take], self.unallocated[take:]
        for ordinal in ordinals:
            self.allocations[ordinal] = idx
        self.sequence_number += 1
        return [self.ip(o) for o in ordinals]

    def assign(
        self, ip: IPAddress, handle: str, attrs: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        ordinal = self.ordinal(ip)
        if self.allocations[ordinal] is not None:
            raise AddressInUse(f"{ip} is already assigned (handle {self.handle_of(ip)})")
        self.allocations[ordinal] = self._attribute_index(
            handle, attrs, time.time() if now is None else now
        )
        self.unallocated.remove(ordinal)
        self.sequence_number += 1

    def release(
        self, ips: list[IPAddress], handle: str | None = None
    ) -> tuple[list[IPAddress], dict[str, int]]:
        """Free the addresses that are allocated (and, when handle is given, belong to it).

        Returns the released addresses and how many were released per handle (for the
        handle records). Others are left alone: release of a free address is not an error.
        """
        released: list[IPAddress] = []
        per_handle: dict[str, int] = {}
        for ip in ips:
            ordinal = self.ordinal(ip)
            idx = self.allocations[ordinal]
            if idx is None:
                continue
            owner = self.attributes[idx]["handle"]
            if handle is not None and owner != handle:
                continue
            self.allocations[ordinal] = None
            self.unallocated.append(ordinal)
            per_handle[owner] = per_handle.get(owner, 0) + 1
            released.append(ip)
        if released:
            self._compact_attributes()
            self.sequence_number += 1
        return released, per_handle

    def release_by_handle(self, handle: str) -> list[IPAddress]:
        released, _ = self.release(self.ips_by_handle(handle), handle)
        return released

    def _compact_attributes(self) -> None:
        """Drop attribute entries no allocation refers to, renumbering the references."""
        used = sorted({i for i in self.allocations if i is not None})
        if len(used) == len(self.attributes):
            return
        remap = {old: new for new, old in enumerate(used)}
        self.attributes = [self.attributes[i] for i in used]
        self.allocations = [None if i is None else remap[i] for i in self.allocations]
