"""The server's in-memory snapshot (key -> value at a revision) and its subscribers.

All of it runs on the server's event loop and never awaits: applying a batch of changes
updates the snapshot, encodes ONE frame and hands the same bytes to every subscriber, whose
`send_frame` only appends to a buffer. Subscribing copies the snapshot (as pre-encoded
chunk frames, shared by every client that connects at the same revision) and registers the
subscriber in the same synchronous step, so nothing can slip between the snapshot and the
first delta the new client gets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .protocol import Delta, Deltas, InSync, OutOfSync, encode, snapshot_frames

DELTA_FRAME_BYTES = 256 * 1024  # a big resync batch is split into frames of about this size


class Subscriber(Protocol):
    def send_frame(self, frame: bytes) -> None:
        """Queue bytes for the peer; must not block or await."""


@dataclass(frozen=True, slots=True)
class SnapshotView:
    frames: list[bytes]  # SnapshotChunk frames, shared by several clients: never mutate
    revision: int
    keys: int
    in_sync: bool


class SnapshotCache:
    def __init__(self, syncer_type: str, chunk_bytes: int = 64 * 1024) -> None:
        self.syncer_type = syncer_type
        self.chunk_bytes = chunk_bytes
        self.data: dict[str, tuple[bytes, int]] = {}  # key -> (value, mod_revision)
        self.revision = 0  # newest revision applied (or reported in sync at)
        self.nbytes = 0  # sum of len(key) + len(value)
        self.in_sync = False
        self.updates_applied = 0
        self.frames_broadcast = 0
        self.snapshots_encoded = 0
        self._subscribers: set[Subscriber] = set()
        self._encoded: SnapshotView | None = None  # encoding of the current state, if made

    # -- changes ------------------------------------------------------------------------------

    def apply(self, deltas: Iterable[Delta]) -> int:
        """Apply changes in order and send them to every subscriber; returns how many were
        sent (a delete of a key the snapshot does not hold is dropped)."""
        effective: list[Delta] = []
        data = self.data
        for d in deltas:
            old = data.get(d.key)
            if d.value is None:
                if old is None:
                    continue
                del data[d.key]
                self.nbytes -= len(d.key) + len(old[0])
            else:
                data[d.key] = (d.value, d.revision)
                self.nbytes += len(d.value) - (len(old[0]) if old is not None else -len(d.key))
            effective.append(d)
        if not effective:
            return 0
        self.revision = max(self.revision, effective[-1].revision)
        self._encoded = None
        self.updates_applied += len(effective)
        for frame in _delta_frames(effective):
            self.broadcast(frame)
        return len(effective)

    def set_in_sync(self, revision: int) -> None:
        """The upstream syncer has delivered a complete view (first time, or after a resync)."""
        self.revision = max(self.revision, revision)
        self.in_sync = True
        self._encoded = None
        self.broadcast(encode(InSync(self.revision)))

    def set_out_of_sync(self, reason: str) -> None:
        """The upstream stream broke; clients hear it so that their consumers do too."""
        if not self.in_sync:
            return
        self.in_sync = False
        self._encoded = None
        self.broadcast(encode(OutOfSync(reason)))

    def broadcast(self, frame: bytes) -> None:
        self.frames_broadcast += 1
        for sub in list(self._subscribers):
            sub.send_frame(frame)

    # -- subscribers --------------------------------------------------------------------------

    def subscribe(self, sub: Subscriber) -> SnapshotView:
        """The current state, encoded; `sub` gets every change after it."""
        if self._encoded is None:
            items = ((k, v, r) for k, (v, r) in sorted(self.data.items()))
            self._encoded = SnapshotView(
                frames=snapshot_frames(items, self.chunk_bytes),
                revision=self.revision,
                keys=len(self.data),
                in_sync=self.in_sync,
            )
            self.snapshots_encoded += 1
        self._subscribers.add(sub)
        return self._encoded

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


def _delta_frames(deltas: list[Delta]) -> list[bytes]:
    """Deltas as frames of at most about DELTA_FRAME_BYTES (one frame for a normal batch).

    A single value near MAX_FRAME could not be sent; datastore values are far smaller (etcd
    refuses values over 1.5 MiB), so that would be a programming error, not a runtime case."""
    frames: list[bytes] = []
    start, size = 0, 0
    for i, d in enumerate(deltas):
        size += len(d.key) + (len(d.value) if d.value is not None else 0) + 24
        if size >= DELTA_FRAME_BYTES:
            frames.append(encode(Deltas(tuple(deltas[start : i + 1]))))
            start, size = i + 1, 0
    if start < len(deltas):
        frames.append(encode(Deltas(tuple(deltas[start:]))))
    return frames
