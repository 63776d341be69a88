"""IPAM's own key space in the datastore, and compare-and-swap with bounded retries.

    /tabby/ipam/v2/blocks/<cidr with / as ->          Block JSON (see block.py)
    /tabby/ipam/v2/affinities/<node>/<block>          {"node", "cidr", "state"}
    /tabby/ipam/v2/handles/<handle>                   {"handle", "blocks": {cidr: count}}
    /tabby/ipam/v2/config                             {"strictAffinity", "autoAllocateBlocks",
                                                       "maxBlocksPerHost"}

Node and handle names are escaped (`%`, `/`) so each stays one key segment. Every write is
a create, or an update/delete against the revision that was read.
"""

from __future__ import annotations

import json

from tabby.datastore.base import KV, AlreadyExists, Conflict, Datastore, NotFound
from tabby.ipam.block import (
    Block,
    IPNetwork,
    cidr_to_key,
    escape_segment,
    key_to_cidr,
    unescape_segment,
)

# `typing` costs ~3 ms per CNI plugin exec (which imports this module); annotations are
# strings (PEP 563), so their names are needed only by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")

ROOT = "/tabby/ipam/v2/"
BLOCKS = ROOT + "blocks/"
AFFINITIES = ROOT + "affinities/"
HANDLES = ROOT + "handles/"
CONFIG_KEY = ROOT + "config"

# Calico's datastoreRetries: a conflict means another writer made progress, so this bound
# is only reached under pathological contention.
MAX_ATTEMPTS = 100

PENDING, CONFIRMED, PENDING_DELETION = "pending", "confirmed", "pendingDeletion"
DEFAULT_BLOCK_LIMIT = 20


class IPAMError(Exception):
    """An allocation or release that cannot be done; the message is one user-facing line."""


class RetriesExhausted(IPAMError):
    """Compare-and-swap kept conflicting MAX_ATTEMPTS times."""


def block_key(cidr: IPNetwork | str) -> str:
    return BLOCKS + cidr_to_key(cidr)


def affinity_prefix(node: str) -> str:
    return AFFINITIES + escape_segment(node) + "/"


def affinity_key(node: str, cidr: IPNetwork | str) -> str:
    return affinity_prefix(node) + cidr_to_key(cidr)


def handle_key(handle: str) -> str:
    return HANDLES + escape_segment(handle)


def parse_affinity_key(key: str) -> tuple[str, IPNetwork]:
    node, _, block = key[len(AFFINITIES) :].partition("/")
    return unescape_segment(node), key_to_cidr(block)


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


class IPAMConfig:
    """Calico's IPAMConfig (plain class: dataclass creation would cost import time)."""

    __slots__ = ("strictAffinity", "autoAllocateBlocks", "maxBlocksPerHost")

    def __init__(
        self,
        strictAffinity: bool = False,
        autoAllocateBlocks: bool = True,
        maxBlocksPerHost: int = 0,
    ) -> None:
        self.strictAffinity = strictAffinity
        self.autoAllocateBlocks = autoAllocateBlocks
        self.maxBlocksPerHost = maxBlocksPerHost

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IPAMConfig) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"IPAMConfig({self.to_dict()})"

    def validate(self) -> None:
        if not self.strictAffinity and not self.autoAllocateBlocks:
            raise IPAMError(
                "autoAllocateBlocks=false requires strictAffinity=true "
                "(otherwise nodes could not borrow from unclaimed blocks)"
            )
        if self.maxBlocksPerHost < 0:
            raise IPAMError(f"maxBlocksPerHost: must be >= 0, got {self.maxBlocksPerHost}")
        if self.maxBlocksPerHost > 0 and not self.strictAffinity:
            raise IPAMError(
                f"maxBlocksPerHost={self.maxBlocksPerHost} requires strictAffinity=true "
                "(a limit without strict affinity would just make nodes borrow)"
            )

    @property
    def block_limit(self) -> int:
        return self.maxBlocksPerHost or DEFAULT_BLOCK_LIMIT

    def to_dict(self) -> dict[str, Any]:
        return {
            "strictAffinity": self.strictAffinity,
            "autoAllocateBlocks": self.autoAllocateBlocks,
            "maxBlocksPerHost": self.maxBlocksPerHost,
        }


class Affinity:
    __slots__ = ("node", "cidr", "state", "revision")

    def __init__(self, node: str, cidr: IPNetwork, state: str, revision: int) -> None:
        self.node, self.cidr, self.state, self.revision = node, cidr, state, revision

    def __repr__(self) -> str:
        return f"Affinity({self.node!r}, {self.cidr}, {self.state}, rev {self.revision})"


class Store:
    """Typed reads and CAS writes of the IPAM keys, counting conflicts."""

    def __init__(self, ds: Datastore) -> None:
        self.ds = ds
        self.conflicts = 0  # CAS conflicts seen (each followed by a re-read and retry)
        self.exhausted = 0  # operations that gave up after MAX_ATTEMPTS conflicts

    def retry(self, what: str, attempt: Callable[[], T]) -> T:
        """Run attempt() until it does not raise Conflict; it re-reads what it changes."""
        for _ in range(MAX_ATTEMPTS):
            try:
                return attempt()
            except Conflict:
                self.conflicts += 1
        self.exhausted += 1
        raise RetriesExhausted(f"{what}: gave up after {MAX_ATTEMPTS} conflicting writes")

    # -- config ------------------------------------------------------------------------

    def get_config(self) -> IPAMConfig:
        kv = self.ds.get(CONFIG_KEY)
        if kv is None:
            return IPAMConfig()
        d = json.loads(kv.value)
        return IPAMConfig(
            bool(d.get("strictAffinity", False)),
            bool(d.get("autoAllocateBlocks", True)),
            int(d.get("maxBlocksPerHost", 0)),
        )

    def put_config(self, cfg: IPAMConfig) -> None:
        cfg.validate()
        value = _dump(cfg.to_dict())

        def attempt() -> None:
            kv = self.ds.get(CONFIG_KEY)
            if kv is None:
                try:
                    self.ds.create(CONFIG_KEY, value)
                except AlreadyExists:
                    raise Conflict(CONFIG_KEY) from None
            else:
                self.ds.update(CONFIG_KEY, value, kv.mod_revision)

        self.retry("write IPAM config", attempt)

    # -- blocks ------------------------------------------------------------------------

    def get_block(self, cidr: IPNetwork | str) -> tuple[Block, int] | None:
        kv = self.ds.get(block_key(cidr))
        return None if kv is None else (Block.from_json(kv.value), kv.mod_revision)

    def list_blocks(self) -> list[tuple[Block, int]]:
        kvs, _ = self.ds.list(BLOCKS)
        return [(Block.from_json(kv.value), kv.mod_revision) for kv in kvs]

    def list_block_cidrs(self) -> set[str]:
        kvs, _ = self.ds.list(BLOCKS)
        return {str(key_to_cidr(kv.key[len(BLOCKS) :])) for kv in kvs}

    def create_block(self, block: Block) -> int:
        return self.ds.create(block_key(block.cidr), block.to_json())

    def update_block(self, block: Block, revision: int) -> int:
        return self.ds.update(block_key(block.cidr), block.to_json(), revision)

    def delete_block(self, block: Block, revision: int) -> None:
        self.ds.delete(block_key(block.cidr), revision)

    # -- affinities --------------------------------------------------------------------

    @staticmethod
    def _affinity(kv: KV) -> Affinity:
        d = json.loads(kv.value)
        node, cidr = parse_affinity_key(kv.key)
        return Affinity(node, cidr, d.get("state", CONFIRMED), kv.mod_revision)

    def get_affinity(self, node: str, cidr: IPNetwork | str) -> Affinity | None:
        kv = self.ds.get(affinity_key(node, cidr))
        return None if kv is None else self._affinity(kv)

    def list_affinities(self, node: str | None = None) -> list[Affinity]:
        kvs, _ = self.ds.list(AFFINITIES if node is None else affinity_prefix(node))
        return [self._affinity(kv) for kv in kvs]

    def create_affinity(self, node: str, cidr: IPNetwork, state: str) -> int:
        value = _dump({"node": node, "cidr": str(cidr), "state": state})
        return self.ds.create(affinity_key(node, cidr), value)

    def set_affinity_state(self, aff: Affinity, state: str) -> int:
        value = _dump({"node": aff.node, "cidr": str(aff.cidr), "state": state})
        return self.ds.update(affinity_key(aff.node, aff.cidr), value, aff.revision)

    def delete_affinity(self, aff: Affinity) -> None:
        try:
            self.ds.delete(affinity_key(aff.node, aff.cidr), aff.revision)
        except NotFound:
            pass

    # -- handles -----------------------------------------------------------------------

    def get_handle(self, handle: str) -> tuple[dict[str, int], int] | None:
        kv = self.ds.get(handle_key(handle))
        if kv is None:
            return None
        return dict(json.loads(kv.value).get("blocks", {})), kv.mod_revision

    def list_handles(self) -> dict[str, dict[str, int]]:
        kvs, _ = self.ds.list(HANDLES)
        out = {}
        for kv in kvs:
            d = json.loads(kv.value)
            out[d.get("handle") or unescape_segment(kv.key[len(HANDLES) :])] = d.get("blocks", {})
        return out

    def adjust_handle(self, handle: str, cidr: IPNetwork | str, delta: int) -> None:
        """Add delta to the handle's count for a block; delete the handle when all reach 0."""
        key, block = handle_key(handle), str(cidr)
        if delta > 0:
            # Usually a new handle (one per container): try the create first, saving a read.
            try:
                self.ds.create(key, _dump({"handle": handle, "blocks": {block: delta}}))
                return
            except AlreadyExists:
                pass

        def attempt() -> None:
            kv = self.ds.get(key)
            if kv is None:
                if delta <= 0:
                    return  # already gone: nothing to decrement
                value = _dump({"handle": handle, "blocks": {block: delta}})
                try:
                    self.ds.create(key, value)
                except AlreadyExists:
                    raise Conflict(key) from None
                return
            blocks: dict[str, int] = dict(json.loads(kv.value).get("blocks", {}))
            count = blocks.get(block, 0) + delta
            if count > 0:
                blocks[block] = count
            else:
                blocks.pop(block, None)
            try:
                if blocks:
                    value = _dump({"handle": handle, "blocks": blocks})
                    self.ds.update(key, value, kv.mod_revision)
                else:
                    self.ds.delete(key, kv.mod_revision)
            except NotFound:
                raise Conflict(key) from None

        self.retry(f"update handle {handle!r}", attempt)

    def delete_handle(self, handle: str) -> None:
        kv = self.ds.get(handle_key(handle))
        if kv is not None:
            try:
                self.ds.delete(kv.key, kv.mod_revision)
            except (NotFound, Conflict):
                pass  # changed meanwhile: a concurrent assign re-used it, leave it
