"""What a consumer has been told, and how a new source is merged in without a reset.

A Typha client changes source when its server goes away (another Typha, or the datastore
directly as a fallback). The consumer must not see a reset: it keeps enforcing what it had.
So every new source is first STAGED - its snapshot and any deltas until its first InSync
are collected, not delivered - and at that InSync the consumer gets only the difference
against what it already has: updates for keys that are new or changed, deletes for keys
that vanished, then InSync. After that the source is live and each change goes straight
through. This is exactly what `tabby.datastore.syncer.Syncer` does when it relists, so a
consumer cannot tell a Typha client from a direct syncer.

Pure and synchronous: the caller feeds it; tests drive it directly.
"""

from __future__ import annotations

from collections.abc import Callable

from tabby.datastore.syncer import InSync, OutOfSync, SyncItem, Update

Entry = tuple[bytes, int]  # (value, mod_revision), while staged
Known = tuple[int, int]  # (mod_revision, hash(value)): what was delivered, as the Syncer keeps it


class ResyncMerger:
    def __init__(self, deliver: Callable[[SyncItem], None]) -> None:
        self._deliver = deliver
        # The consumer's view, as identities rather than values: the consumer holds the values
        # itself; we only need to tell whether a staged value differs (the Syncer does the same).
        self.delivered: dict[str, Known] = {}
        self.in_sync = False  # what the consumer was last told
        self.synced_once = False
        self.live = False  # the current source is past its first InSync
        self.revision = 0  # newest revision delivered
        self.updates = 0  # Update items delivered
        self.resyncs = 0  # staged sources merged after the first
        self._staging: dict[str, Entry] | None = None

    def start_source(self) -> None:
        """A new source begins (it will send its whole state, then InSync)."""
        self._staging = {}
        self.live = False

    def put(self, key: str, value: bytes | None, revision: int) -> None:
        """A key's value from the current source (None = deleted)."""
        if not self.live:
            if self._staging is None:
                raise RuntimeError("put() before start_source()")
            if value is None:
                self._staging.pop(key, None)
            else:
                self._staging[key] = (value, revision)
            return
        if value is None:
            if self.delivered.pop(key, None) is None:
                return  # never told the consumer about it: nothing to undo
        else:
            self.delivered[key] = (revision, hash(value))
        self._send(Update(key, value, revision))

    def source_in_sync(self, revision: int) -> None:
        if not self.live:
            self._merge_staged(revision)
        self.revision = max(self.revision, revision)
        if not self.in_sync:
            self.in_sync = True
            self._deliver(InSync(self.revision))

    def source_out_of_sync(self, reason: str) -> None:
        """The source says it may be missing changes (its own upstream broke)."""
        if self.in_sync:
            self.in_sync = False
            self._deliver(OutOfSync(reason))

    def source_lost(self, reason: str) -> None:
        """The source is gone; a new one will be staged from scratch."""
        self.source_out_of_sync(reason)
        self.live = False
        self._staging = None

    def _merge_staged(self, revision: int) -> None:
        staged = self._staging or {}
        self._staging = None
        delivered = self.delivered
        for key in sorted(staged):
            value, rev = staged[key]
            known = (rev, hash(value))
            if delivered.get(key) != known:
                delivered[key] = known
                self._send(Update(key, value, rev))
        for key in sorted(k for k in delivered if k not in staged):
            del delivered[key]
            self._send(Update(key, None, revision))
        if self.synced_once:
            self.resyncs += 1
        self.synced_once = True
        self.live = True

    def _send(self, update: Update) -> None:
        self.updates += 1
        if update.revision > self.revision:
            self.revision = update.revision
        self._deliver(update)
