"""IP pools and node labels as IPAM needs them, read as plain JSON.

The CNI plugin imports IPAM on every container ADD, so this reads the stored resource JSON
directly ("/tabby/v3/ippools/<name>", "/tabby/v3/nodes/<name>") instead of importing the
pydantic models; the selector engine is imported only when a pool has a real nodeSelector.
"""

from __future__ import annotations

import ipaddress
import json

from tabby.ipam.block import block_containing
from tabby.ipam.store import IPAMError

# `typing` costs ~3 ms per CNI plugin exec (which imports this module); annotations are
# strings (PEP 563), so their names are needed only by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from tabby.datastore.base import Datastore
    from tabby.ipam.block import IPAddress, IPNetwork

POOLS_PREFIX = "/tabby/v3/ippools/"
NODES_PREFIX = "/tabby/v3/nodes/"

ALLOWED_USES = ("Workload", "Tunnel", "LoadBalancer")
DEFAULT_ALLOWED_USES = ("Workload", "Tunnel")
_ALL = {"", "all()"}

_selector_cache: dict[str, Any] = {}


class Pool:
    """What IPAM needs of an IPPool (plain class: dataclass creation costs import time)."""

    __slots__ = ("name", "cidr", "block_size", "disabled", "node_selector", "allowed_uses",
                 "assignment_mode", "raw")

    def __init__(
        self,
        name: str,
        cidr: IPNetwork,
        block_size: int,
        disabled: bool = False,
        node_selector: str = "all()",
        allowed_uses: tuple[str, ...] = DEFAULT_ALLOWED_USES,
        assignment_mode: str = "Automatic",
        raw: dict[str, Any] | None = None,
    ) -> None:
        self.name, self.cidr, self.block_size = name, cidr, block_size
        self.disabled, self.node_selector = disabled, node_selector
        self.allowed_uses, self.assignment_mode = allowed_uses, assignment_mode
        self.raw = raw or {}

    def __repr__(self) -> str:
        return f"Pool({self.name!r}, {self.cidr}, blockSize {self.block_size})"

    @property
    def version(self) -> int:
        return self.cidr.version

    def label(self) -> str:
        return f"{self.cidr} ({self.name})" if self.name else str(self.cidr)

    def selects_node(self, labels: Mapping[str, str] | None) -> bool:
        text = self.node_selector.strip()
        if text in _ALL:
            return True
        sel = _selector_cache.get(text)
        if sel is None:
            from tabby.selector import SelectorError, parse  # lazy: not on the common path

            try:
                sel = parse(text)
            except SelectorError as exc:
                raise IPAMError(
                    f"IPPool {self.name}: spec.nodeSelector {text!r} is invalid: {exc}"
                ) from None
            _selector_cache[text] = sel
        return bool(sel.matches(labels or {}))

    def block_for(self, ip: IPAddress) -> IPNetwork:
        return block_containing(ip, self.block_size)


def pool_from_dict(d: dict[str, Any]) -> Pool:
    meta, spec = d.get("metadata") or {}, d.get("spec") or {}
    name = str(meta.get("name", ""))
    try:
        cidr = ipaddress.ip_network(spec["cidr"], strict=False)
    except (KeyError, ValueError) as exc:
        raise IPAMError(f"IPPool {name}: spec.cidr {spec.get('cidr')!r} is invalid") from exc
    block_size = spec.get("blockSize") or (26 if cidr.version == 4 else 122)
    return Pool(
        name=name,
        cidr=cidr,
        block_size=int(block_size),
        disabled=bool(spec.get("disabled", False)),
        node_selector=spec.get("nodeSelector") or "all()",
        allowed_uses=tuple(spec.get("allowedUses") or DEFAULT_ALLOWED_USES),
        assignment_mode=spec.get("assignmentMode") or "Automatic",
        raw=d,
    )


def read_pools(ds: Datastore) -> list[Pool]:
    kvs, _ = ds.list(POOLS_PREFIX)
    return [pool_from_dict(json.loads(kv.value)) for kv in kvs]


def read_node_labels(ds: Datastore, node: str) -> dict[str, str]:
    kv = ds.get(NODES_PREFIX + node)
    if kv is None:
        return {}
    return dict((json.loads(kv.value).get("metadata") or {}).get("labels") or {})


def read_node_names(ds: Datastore) -> set[str]:
    kvs, _ = ds.list(NODES_PREFIX)
    return {kv.key[len(NODES_PREFIX) :] for kv in kvs}


def pool_for_ip(pools: list[Pool], ip: IPAddress) -> Pool | None:
    for pool in pools:
        if pool.version == ip.version and ip in pool.cidr:
            return pool
    return None


def select_pools(
    all_pools: list[Pool],
    version: int,
    node: str,
    requested: list[str] | None,
    node_labels: Mapping[str, str] | None,
    labels_reader: Any = None,
    use: str = "Workload",
) -> list[Pool]:
    """The pools an auto-assignment of this IP version may use, in order.

    Requested pools (names or CIDRs) must exist, be enabled and allow the use (their
    nodeSelector is not applied: an explicit request wins, as in Calico); otherwise
    every enabled pool of the version whose nodeSelector matches the node and whose
    allowedUses contains `use`. `labels_reader()` is called (once) only if a selector
    actually needs the node's labels.
    """
    if use not in ALLOWED_USES:
        raise IPAMError(f"invalid use {use!r} (want one of {', '.join(ALLOWED_USES)})")
    labels = node_labels

    def selects(pool: Pool) -> bool:
        nonlocal labels
        if labels is None and pool.node_selector.strip() not in _ALL:
            labels = labels_reader() if labels_reader is not None else {}
        return pool.selects_node(labels)

    if requested:
        chosen: list[Pool] = []
        for want in requested:
            pool = _find_pool(all_pools, want)
            if pool is None:
                raise IPAMError(f"requested IP pool {want!r} does not exist")
            if pool.version != version:
                continue
            if pool.disabled:
                raise IPAMError(f"requested IP pool {pool.label()} is disabled")
            if use not in pool.allowed_uses:
                raise IPAMError(f"requested IP pool {pool.label()} does not allow use {use} "
                                f"(allowedUses {', '.join(pool.allowed_uses)})")
            chosen.append(pool)  # as Calico: an explicit request overrides nodeSelector
        if not chosen:
            raise IPAMError(
                f"none of the requested IP pools ({', '.join(requested)}) is an IPv{version} pool"
            )
        return chosen
    return [
        p
        for p in all_pools
        if p.version == version
        and not p.disabled
        and use in p.allowed_uses
        and p.assignment_mode != "Manual"
        and selects(p)
    ]


def _find_pool(pools: list[Pool], want: str) -> Pool | None:
    for pool in pools:
        if pool.name == want:
            return pool
    try:
        net = ipaddress.ip_network(want, strict=False)
    except ValueError:
        return None
    for pool in pools:
        if pool.cidr == net:
            return pool
    return None
