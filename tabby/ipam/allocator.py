"""The IP address allocator: Calico's block-affinity IPAM over the Datastore API.

Auto-assignment for a node (per IP version):
  1. eligible pools: the requested ones, else enabled pools whose nodeSelector matches the
     node and whose allowedUses contains the use (Workload by default);
  2. fill the blocks affine to the node;
  3. claim new blocks (node-seeded walk over the pool) while the node owns fewer than the
     block limit (maxBlocksPerHost, else 20); at the limit, fail without borrowing;
  4. unless strictAffinity, borrow from any other block of the pools that has space.
Each change to a block is one compare-and-swap (retried on conflict after a re-read), so
allocators in many processes never hand out one address twice. The handle record is
written before the block (so it may over-count after a crash, never under-count).

This module must stay cheap to import (the CNI plugin imports it on every ADD): stdlib and
tabby.datastore.base only; pools are read as JSON.
"""

from __future__ import annotations

import ipaddress

from tabby.datastore.base import Conflict, NotFound
from tabby.ipam import affinity as aff_ops
from tabby.ipam.block import AddressInUse, Block, seeded_index, walk_blocks
from tabby.ipam.pools import (
    pool_for_ip,
    read_node_labels,
    read_pools,
    select_pools,
)
from tabby.ipam.store import CONFIRMED, PENDING, IPAMConfig, IPAMError, Store

# `typing` costs ~3 ms per CNI plugin exec (which imports this module); annotations are
# strings (PEP 563), so their names are needed only by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

    from tabby.datastore.base import Datastore
    from tabby.ipam.block import IPAddress, IPNetwork
    from tabby.ipam.pools import Pool

__all__ = ["IPAM", "AssignResult", "IPAMConfig", "IPAMError"]


class AssignResult:
    """Assigned addresses, each as an interface whose prefix is its block's (e.g.
    10.65.0.7/26) - use `.ip` and a /32 or /128 for the workload, as Calico's CNI does."""

    __slots__ = ("v4", "v6", "retries")

    def __init__(self, v4: list[ipaddress.IPv4Interface] | None = None,
                 v6: list[ipaddress.IPv6Interface] | None = None, retries: int = 0) -> None:
        self.v4: list[ipaddress.IPv4Interface] = v4 if v4 is not None else []
        self.v6: list[ipaddress.IPv6Interface] = v6 if v6 is not None else []
        self.retries = retries  # CAS conflicts met (and retried) by this call

    def __repr__(self) -> str:
        return f"AssignResult(v4={self.v4}, v6={self.v6}, retries={self.retries})"

    @property
    def ips(self) -> list[IPAddress]:
        return [*(i.ip for i in self.v4), *(i.ip for i in self.v6)]


def _as_ip(value: Any) -> IPAddress:
    if isinstance(value, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return value.ip
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    text = str(value)
    try:
        return ipaddress.ip_address(text.split("/", 1)[0])
    except ValueError:
        raise IPAMError(f"invalid IP address {text!r}") from None


def _check_name(what: str, value: str) -> None:
    if not value or not isinstance(value, str):
        raise IPAMError(f"{what}: must be a non-empty string, got {value!r}")


class IPAM:
    def __init__(self, ds: Datastore) -> None:
        self.ds = ds
        self.store = Store(ds)

    @property
    def stats(self) -> dict[str, int]:
        """CAS conflicts retried, and operations that gave up, since this object was made."""
        return {"conflicts": self.store.conflicts, "exhausted": self.store.exhausted}

    # -- configuration -----------------------------------------------------------------

    def get_config(self) -> IPAMConfig:
        return self.store.get_config()

    def set_config(
        self,
        strict_affinity: bool | None = None,
        max_blocks_per_host: int | None = None,
        auto_allocate_blocks: bool | None = None,
    ) -> IPAMConfig:
        cfg = self.store.get_config()
        if strict_affinity is not None:
            cfg.strictAffinity = bool(strict_affinity)
        if max_blocks_per_host is not None:
            cfg.maxBlocksPerHost = int(max_blocks_per_host)
        if auto_allocate_blocks is not None:
            cfg.autoAllocateBlocks = bool(auto_allocate_blocks)
        self.store.put_config(cfg)
        return cfg

    # -- assignment --------------------------------------------------------------------

    def auto_assign(
        self,
        handle: str,
        node: str,
        num_v4: int = 1,
        num_v6: int = 0,
        attrs: dict[str, Any] | None = None,
        pools: list[str] | None = None,
        node_labels: Mapping[str, str] | None = None,
        use: str = "Workload",
    ) -> AssignResult:
        """Assign num_v4 + num_v6 addresses to handle on node: all of them, or none (on
        failure the addresses already taken are released and IPAMError is raised)."""
        _check_name("handle", handle)
        _check_name("node", node)
        if num_v4 < 0 or num_v6 < 0:
            raise IPAMError(f"number of addresses must be >= 0, got v4={num_v4} v6={num_v6}")
        before = self.store.conflicts
        # The IPAM config matters only once the node's own blocks are full: the common case
        # (a free address in an affine block) never reads it.
        cfg: IPAMConfig | None = None

        def config() -> IPAMConfig:
            nonlocal cfg
            if cfg is None:
                cfg = self.store.get_config()
            return cfg

        all_pools = read_pools(self.ds)
        labels: dict[str, str] | None = dict(node_labels) if node_labels is not None else None

        def labels_reader() -> dict[str, str]:
            nonlocal labels
            if labels is None:
                labels = read_node_labels(self.ds, node)
            return labels

        got: list[tuple[IPAddress, IPNetwork]] = []
        try:
            for version, num in ((4, num_v4), (6, num_v6)):
                if num:
                    chosen = select_pools(all_pools, version, node, pools, labels, labels_reader, use)
                    self._assign_version(version, chosen, handle, node, num, attrs, config, got)
        except BaseException:
            if got:
                try:
                    self.release_ips([ip for ip, _ in got], handle=handle)
                except Exception:  # the original error is the one to report
                    pass
            raise
        result = AssignResult(retries=self.store.conflicts - before)
        for ip, block in got:
            iface = ipaddress.ip_interface((ip, block.prefixlen))
            (result.v4 if ip.version == 4 else result.v6).append(iface)  # type: ignore[arg-type]
        return result

    def _assign_version(
        self,
        version: int,
        pools: list[Pool],
        handle: str,
        node: str,
        num: int,
        attrs: dict[str, Any] | None,
        config: Callable[[], IPAMConfig],
        got: list[tuple[IPAddress, IPNetwork]],
    ) -> None:
        if not pools:
            raise IPAMError(f"no enabled IPv{version} IP pool can be used on node {node!r}")
        target = len(got) + num

        def take(cidr: IPNetwork, affine_only: bool) -> None:
            ips = self._assign_from_block(cidr, target - len(got), handle, attrs, node, affine_only)
            got.extend((ip, cidr) for ip in ips)

        affine = self._affine_blocks(node, pools)
        for cidr in affine:
            take(cidr, True)
            if len(got) == target:
                return
        owned = len(affine)
        cfg = config()
        if cfg.autoAllocateBlocks:
            tried: set[IPNetwork] = set()
            while len(got) < target:
                if owned >= cfg.block_limit:
                    raise IPAMError(
                        f"node {node!r} has {owned} IPv{version} block(s), the limit "
                        f"(maxBlocksPerHost {cfg.block_limit}), and they are full"
                    )
                new, claimed = self._claim_block(node, pools, tried)
                if new is None:
                    break
                owned += claimed
                take(new, True)
        if len(got) < target and not cfg.strictAffinity:
            for cidr in self._borrowable_blocks(node, pools):
                take(cidr, False)
                if len(got) == target:
                    return
        if len(got) < target:
            names = ", ".join(p.label() for p in pools)
            why = " (strictAffinity: not borrowing)" if cfg.strictAffinity else ""
            raise IPAMError(
                f"IPv{version} pool(s) {names} exhausted: no free address for node "
                f"{node!r}{why}"
            )

    def _affine_blocks(self, node: str, pools: list[Pool]) -> list[IPNetwork]:
        """Blocks of these pools claimed by node, in pool order; settles pending claims."""
        order = {p.cidr: i for i, p in enumerate(pools)}
        found: list[tuple[int, int, IPNetwork]] = []
        for aff in self.store.list_affinities(node):
            pool = next((p for p in pools if p.version == aff.cidr.version
                         and aff.cidr.subnet_of(p.cidr)), None)  # type: ignore[arg-type]
            if pool is None:
                continue
            if aff.state == CONFIRMED or (
                aff.state == PENDING and aff_ops.repair_pending(self.store, aff)
            ):
                found.append((order[pool.cidr], int(aff.cidr.network_address), aff.cidr))
        return [cidr for _, _, cidr in sorted(found)]

    def _claim_block(
        self, node: str, pools: list[Pool], tried: set[IPNetwork]
    ) -> tuple[IPNetwork | None, bool]:
        """A block to fill: one that another process of this node claimed since we listed
        the affinities (not newly claimed), else a newly claimed free block of the first
        pool that has one, found by walking from a node-seeded start so that nodes spread
        out and one node keeps choosing the same blocks. (None, False) when none is left."""
        existing = [b for b, _ in self.store.list_blocks()]
        mine = aff_ops.host_affinity(node)
        for b in existing:
            if b.affinity == mine and b.free and b.cidr not in tried and pool_for_ip(
                pools, b.cidr.network_address
            ):
                tried.add(b.cidr)
                return b.cidr, False
        names = {str(b.cidr) for b in existing}
        for pool in pools:
            # Blocks of another size (left by a deleted pool) must not be overlapped.
            odd = [b.cidr for b in existing
                   if b.cidr.version == pool.version and b.cidr.prefixlen != pool.block_size
                   and b.cidr.overlaps(pool.cidr)]  # type: ignore[arg-type]
            for cidr in walk_blocks(pool.cidr, pool.block_size, node):
                if str(cidr) in names or cidr in tried:
                    continue
                if odd and any(cidr.overlaps(o) for o in odd):  # type: ignore[arg-type]
                    continue
                tried.add(cidr)
                if aff_ops.try_claim(self.store, node, cidr):
                    return cidr, True
                names.add(str(cidr))
        return None, False

    def _borrowable_blocks(self, node: str, pools: list[Pool]) -> list[IPNetwork]:
        mine = aff_ops.host_affinity(node)
        cands = [
            b.cidr for b, _ in self.store.list_blocks()
            if b.free and b.affinity != mine and pool_for_ip(pools, b.cidr.network_address)
        ]
        if not cands:
            return []
        start = seeded_index(node, len(cands))  # spread borrowers over the blocks
        return cands[start:] + cands[:start]

    def _assign_from_block(
        self,
        cidr: IPNetwork,
        num: int,
        handle: str,
        attrs: dict[str, Any] | None,
        node: str,
        affine_only: bool,
    ) -> list[IPAddress]:
        mine = aff_ops.host_affinity(node)

        def attempt() -> list[IPAddress]:
            got = self.store.get_block(cidr)
            if got is None:
                return []
            block, rev = got
            if (affine_only and block.affinity != mine) or not block.free:
                return []
            ips = block.auto_assign(num, handle, attrs)
            self._write_with_handle(block, rev, handle, len(ips))
            return ips

        return self.store.retry(f"assign from block {cidr}", attempt)

    def _write_with_handle(self, block: Block, rev: int, handle: str, count: int) -> None:
        """Count the addresses in the handle, then CAS the block; undo the count if the
        block write fails (Conflict means: re-read and try again)."""
        self.store.adjust_handle(handle, block.cidr, count)
        try:
            self.store.update_block(block, rev)
        except BaseException as exc:
            try:
                self.store.adjust_handle(handle, block.cidr, -count)
            except Exception:  # an over-count is harmless; keep the real error
                pass
            if isinstance(exc, NotFound):
                raise Conflict(str(block.cidr)) from None
            raise

    def assign_ip(
        self, ip: Any, handle: str, attrs: dict[str, Any] | None = None, node: str | None = None
    ) -> IPAddress:
        """Assign one given address. Its block is claimed for node if it does not exist yet."""
        _check_name("handle", handle)
        addr = _as_ip(ip)
        pool = pool_for_ip(read_pools(self.ds), addr)
        if pool is None or pool.disabled:
            raise IPAMError(f"{addr} is not in any enabled IP pool")
        cidr = pool.block_for(addr)
        cfg = self.store.get_config()

        def attempt() -> IPAddress:
            got = self.store.get_block(cidr)
            if got is None:
                if node:
                    aff_ops.try_claim(self.store, node, cidr)
                else:
                    try:
                        self.store.create_block(Block.new(cidr))
                    except Exception:  # created meanwhile; re-read below
                        pass
                raise Conflict(str(cidr))  # re-read the block that now exists
            block, rev = got
            if cfg.strictAffinity and block.host is not None and block.host != node:
                raise IPAMError(
                    f"{addr} is in block {cidr} of node {block.host!r} and strictAffinity is on"
                )
            try:
                block.assign(addr, handle, attrs)
            except AddressInUse as exc:
                raise IPAMError(str(exc)) from None
            self._write_with_handle(block, rev, handle, 1)
            return addr

        return self.store.retry(f"assign {addr}", attempt)

    # -- release -----------------------------------------------------------------------

    def _blocks_for(self, ips: Iterable[IPAddress]) -> dict[IPNetwork, list[IPAddress]]:
        pools = read_pools(self.ds)
        groups: dict[IPNetwork, list[IPAddress]] = {}
        stored: list[IPNetwork] | None = None
        for ip in ips:
            pool = pool_for_ip(pools, ip)
            cidr = pool.block_for(ip) if pool else None
            if cidr is None or self.store.get_block(cidr) is None:
                # Pool deleted or resized: find the stored block that holds the address.
                if stored is None:
                    stored = [b.cidr for b, _ in self.store.list_blocks()]
                cidr = next((c for c in stored if c.version == ip.version and ip in c), None)
            if cidr is not None:
                groups.setdefault(cidr, []).append(ip)
        return groups

    def release_ips(self, ips: Iterable[Any], handle: str | None = None) -> list[IPAddress]:
        """Release addresses (only those held by `handle`, when given). Returns the ones
        that were not allocated (or not to that handle) - those are left unchanged."""
        wanted = [_as_ip(x) for x in ips]
        released: set[IPAddress] = set()
        for cidr, group in self._blocks_for(wanted).items():
            released.update(self._release_in_block(cidr, group, handle))
        return [ip for ip in wanted if ip not in released]

    def _release_in_block(
        self, cidr: IPNetwork, ips: list[IPAddress] | None, handle: str | None
    ) -> list[IPAddress]:
        """Release ips (all of handle's, when ips is None) in one block; an empty block with
        no affinity is deleted in the same compare-and-swap."""

        def attempt() -> tuple[list[IPAddress], dict[str, int]]:
            got = self.store.get_block(cidr)
            if got is None:
                return [], {}
            block, rev = got
            targets = block.ips_by_handle(handle) if ips is None and handle else ips or []
            released, per_handle = block.release(targets, handle)
            if not released:
                return [], {}
            try:
                if block.empty and block.affinity is None:
                    self.store.delete_block(block, rev)
                else:
                    self.store.update_block(block, rev)
            except NotFound:
                raise Conflict(str(cidr)) from None
            return released, per_handle

        released, per_handle = self.store.retry(f"release in block {cidr}", attempt)
        for owner, count in per_handle.items():
            self.store.adjust_handle(owner, cidr, -count)
        return released

    def release_by_handle(self, handle: str) -> list[IPAddress]:
        """Release every address of a handle (idempotent: [] when it has none)."""
        got = self.store.get_handle(handle)
        if got is None:
            return []
        released: list[IPAddress] = []
        for text in got[0]:
            cidr = ipaddress.ip_network(text)
            released.extend(self._release_in_block(cidr, None, handle))
        # Counts left by an interrupted assignment refer to nothing: drop the record.
        rest = self.store.get_handle(handle)
        if rest is not None and not any(
            self._block_has_handle(ipaddress.ip_network(c), handle) for c in rest[0]
        ):
            self.store.delete_handle(handle)
        return sorted(released, key=lambda ip: (ip.version, int(ip)))

    def _block_has_handle(self, cidr: IPNetwork, handle: str) -> bool:
        got = self.store.get_block(cidr)
        return got is not None and bool(got[0].ips_by_handle(handle))

    def ips_by_handle(self, handle: str) -> list[IPAddress]:
        got = self.store.get_handle(handle)
        if got is None:
            return []
        ips: list[IPAddress] = []
        for text in got[0]:
            block = self.store.get_block(text)
            if block is not None:
                ips.extend(block[0].ips_by_handle(handle))
        return sorted(ips, key=lambda ip: (ip.version, int(ip)))

    # -- affinity management -----------------------------------------------------------

    def release_affinity(self, node: str, block: Any, require_empty: bool = False) -> bool:
        return aff_ops.release_affinity(
            self.store, node, ipaddress.ip_network(str(block)), require_empty
        )

    def release_host_affinities(self, node: str, require_empty: bool = False) -> list[str]:
        return aff_ops.release_host_affinities(self.store, node, require_empty)

    def repair(self, dry_run: bool = False) -> list[str]:
        return aff_ops.repair(self.store, dry_run)

    # -- reporting ---------------------------------------------------------------------

    def allocations(self) -> list[dict[str, Any]]:
        """Every allocated address: ip, block, handle, attrs, allocatedAt, blockNode."""
        out = []
        for block, _ in self.store.list_blocks():
            for ip, entry in block.allocated():
                out.append({
                    "ip": str(ip), "block": str(block.cidr), "handle": entry["handle"],
                    "attrs": entry.get("attrs") or {},
                    "allocatedAt": entry.get("allocatedAt"), "blockNode": block.host,
                })
        return out

    def lookup(self, ip: Any) -> dict[str, Any] | None:
        """The allocation holding ip, or None when it is free."""
        addr = _as_ip(ip)
        for cidr in self._blocks_for([addr]):
            got = self.store.get_block(cidr)
            entry = got[0].allocation(addr) if got else None
            if got and entry:
                return {"ip": str(addr), "block": str(cidr), "blockNode": got[0].host, **entry}
        return None

    def usage(self) -> dict[str, Any]:
        """Per pool: size, in use, free, and its blocks; plus blocks outside every pool."""
        pools = read_pools(self.ds)
        blocks = sorted((b for b, _ in self.store.list_blocks()),
                        key=lambda b: (b.cidr.version, int(b.cidr.network_address)))
        out: dict[str, Any] = {"pools": [], "otherBlocks": []}
        placed: set[str] = set()
        for pool in pools:
            rows = []
            for b in blocks:
                if b.cidr.version == pool.version and b.cidr.subnet_of(pool.cidr):  # type: ignore[arg-type]
                    placed.add(str(b.cidr))
                    rows.append(_block_row(b))
            in_use = sum(r["inUse"] for r in rows)
            out["pools"].append({
                "name": pool.name, "cidr": str(pool.cidr), "blockSize": pool.block_size,
                "disabled": pool.disabled, "size": pool.cidr.num_addresses,
                "inUse": in_use, "free": pool.cidr.num_addresses - in_use, "blocks": rows,
            })
        out["otherBlocks"] = [_block_row(b) for b in blocks if str(b.cidr) not in placed]
        return out


def _block_row(b: Block) -> dict[str, Any]:
    return {"cidr": str(b.cidr), "node": b.host, "size": b.size, "inUse": b.in_use,
            "free": b.free}
