"""Block affinity: claiming a block for a node, releasing it, and repairing interrupted steps.

Claiming is three writes, each safe to interrupt:

    1. create affinity <node>/<block> state=pending      (AlreadyExists: our own claim)
    2. create block with affinity host:<node>            (AlreadyExists: someone won)
    3. affinity -> confirmed

A crash after 1 leaves a pending affinity without a block: the node's next assignment
finishes the claim, `repair()` removes it. A crash after 2 leaves a pending affinity whose
block is ours: it is confirmed. Releasing is the mirror image: affinity -> pendingDeletion,
block affinity cleared (block deleted when empty), affinity deleted.
"""

from __future__ import annotations

from tabby.datastore.base import AlreadyExists, Conflict, NotFound
from tabby.ipam.block import AFFINITY_PREFIX, Block, IPNetwork
from tabby.ipam.store import (
    CONFIRMED,
    PENDING,
    PENDING_DELETION,
    Affinity,
    IPAMError,
    Store,
)


def host_affinity(node: str) -> str:
    return AFFINITY_PREFIX + node


def try_claim(store: Store, node: str, cidr: IPNetwork) -> bool:
    """Claim an (apparently) unclaimed block for node. False when another node got it."""
    try:
        store.create_affinity(node, cidr, PENDING)
    except AlreadyExists:
        aff = store.get_affinity(node, cidr)
        if aff is not None and aff.state == PENDING_DELETION:
            return False  # being released right now: do not fight it
        # pending (a concurrent claim from this node) or confirmed: the rest is idempotent
    return finish_claim(store, node, cidr)


def finish_claim(store: Store, node: str, cidr: IPNetwork) -> bool:
    """Steps 2 and 3 of a claim whose pending affinity exists."""
    try:
        store.create_block(Block.new(cidr, host_affinity(node)))
    except AlreadyExists:
        got = store.get_block(cidr)
        if got is None or got[0].affinity != host_affinity(node):
            # Another node's block (or a block that was just deleted): withdraw our claim.
            aff = store.get_affinity(node, cidr)
            if aff is not None and aff.state != PENDING_DELETION:
                try:
                    store.delete_affinity(aff)
                except Conflict:
                    pass  # changed under us; repair() settles it later
            return False
    confirm(store, node, cidr)
    return True


def confirm(store: Store, node: str, cidr: IPNetwork) -> None:
    def attempt() -> None:
        aff = store.get_affinity(node, cidr)
        if aff is None:
            # A repair removed our pending record between steps 1 and 2: recreate it.
            try:
                store.create_affinity(node, cidr, CONFIRMED)
            except AlreadyExists:
                raise Conflict("affinity") from None
        elif aff.state == PENDING:
            try:
                store.set_affinity_state(aff, CONFIRMED)
            except NotFound:
                raise Conflict("affinity") from None

    store.retry(f"confirm affinity of {cidr} to {node}", attempt)


def repair_pending(store: Store, aff: Affinity) -> bool:
    """Settle a pending affinity found while assigning: True when it is now a confirmed claim."""
    got = store.get_block(aff.cidr)
    if got is None:
        return finish_claim(store, aff.node, aff.cidr)
    if got[0].affinity == host_affinity(aff.node):
        confirm(store, aff.node, aff.cidr)
        return True
    try:
        store.delete_affinity(aff)
    except Conflict:
        pass
    return False


def release_affinity(
    store: Store, node: str, cidr: IPNetwork, require_empty: bool = False
) -> bool:
    """Remove node's affinity to a block. The block is deleted when empty, else it stays
    (unaffine, borrowable) until its last address is released. False if there was none."""
    aff = store.get_affinity(node, cidr)
    if aff is not None and aff.state != PENDING_DELETION:
        aff = store.retry(f"mark affinity {cidr} of {node} for deletion",
                          lambda: _mark_for_deletion(store, node, cidr))
    got = store.get_block(cidr)
    if aff is None and (got is None or got[0].affinity != host_affinity(node)):
        return False

    def clear_block() -> None:
        got = store.get_block(cidr)
        if got is None:
            return
        block, rev = got
        if block.affinity != host_affinity(node):
            return
        try:
            if block.empty:
                store.delete_block(block, rev)
            elif require_empty:
                raise IPAMError(f"block {cidr} of node {node} still has {block.in_use} "
                                "address(es) in use")
            else:
                block.affinity = None
                block.sequence_number += 1
                store.update_block(block, rev)
        except NotFound:
            raise Conflict("block") from None

    try:
        store.retry(f"release block {cidr} from {node}", clear_block)
    except IPAMError:
        if aff is not None and require_empty:  # put the affinity back as it was
            cur = store.get_affinity(node, cidr)
            if cur is not None:
                try:
                    store.set_affinity_state(cur, CONFIRMED)
                except (Conflict, NotFound):
                    pass
        raise
    if aff is not None:
        cur = store.get_affinity(node, cidr)
        if cur is not None:
            try:
                store.delete_affinity(cur)
            except Conflict:
                pass  # re-claimed meanwhile: that claim stands
    return True


def _mark_for_deletion(store: Store, node: str, cidr: IPNetwork) -> Affinity | None:
    aff = store.get_affinity(node, cidr)
    if aff is None or aff.state == PENDING_DELETION:
        return aff
    try:
        rev = store.set_affinity_state(aff, PENDING_DELETION)
    except NotFound:
        return None
    return Affinity(aff.node, aff.cidr, PENDING_DELETION, rev)


def release_host_affinities(store: Store, node: str, require_empty: bool = False) -> list[str]:
    """Release every block affinity of node (also blocks that name it but lost their record)."""
    cidrs = {str(a.cidr): a.cidr for a in store.list_affinities(node)}
    for block, _ in store.list_blocks():
        if block.affinity == host_affinity(node):
            cidrs.setdefault(str(block.cidr), block.cidr)
    released = []
    for text, cidr in sorted(cidrs.items()):
        if release_affinity(store, node, cidr, require_empty):
            released.append(text)
    return released


def repair(store: Store, dry_run: bool = False) -> list[str]:
    """Settle what interrupted claims and releases left behind; returns what it did.

    - pending affinity, no block: dropped (a live claimer recreates it on confirm)
    - pending affinity, block ours: confirmed
    - pending affinity, block someone else's: dropped
    - pendingDeletion affinity: the release is finished
    - block naming a node with no affinity record: the record is recreated (confirmed)
    """
    actions = []
    # Affinities before blocks: a confirmed affinity then always finds its block, and a
    # claim that starts in between is seen as a block with no record (which is kept).
    affinities = store.list_affinities()
    blocks = {str(b.cidr): b for b, _ in store.list_blocks()}
    recorded = set()
    for aff in affinities:
        recorded.add((aff.node, str(aff.cidr)))
        block = blocks.get(str(aff.cidr))
        ours = block is not None and block.affinity == host_affinity(aff.node)
        if aff.state == PENDING and ours:
            actions.append(f"confirm affinity of block {aff.cidr} to node {aff.node}")
            if not dry_run:
                confirm(store, aff.node, aff.cidr)
        elif aff.state == PENDING:
            actions.append(f"remove pending affinity of block {aff.cidr} to node {aff.node}")
            if not dry_run:
                try:
                    store.delete_affinity(aff)
                except Conflict:
                    pass
        elif aff.state == PENDING_DELETION:
            actions.append(f"finish releasing block {aff.cidr} from node {aff.node}")
            if not dry_run:
                release_affinity(store, aff.node, aff.cidr)
        elif not ours:
            actions.append(f"remove affinity of node {aff.node} to block {aff.cidr} "
                           "(the block is not affine to it)")
            if not dry_run:
                try:
                    store.delete_affinity(aff)
                except Conflict:
                    pass
    for text, block in blocks.items():
        node = block.host
        if node is not None and (node, text) not in recorded:
            actions.append(f"record affinity of block {text} to node {node}")
            if not dry_run:
                try:
                    store.create_affinity(node, block.cidr, CONFIRMED)
                except AlreadyExists:
                    pass
    return actions
