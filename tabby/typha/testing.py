"""Helpers shared by the Typha tests and bench/typha.py (no test framework needed).

`Consumer` is a sink for a Syncer or a TyphaClient that keeps the view it was given and
checks the stream's rules as it goes; `mixed_writes` makes reproducible creates, updates and
deletes; `datastore_state` reads what the consumers should end up with.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable

from tabby.datastore.base import Datastore
from tabby.datastore.syncer import DEFAULT_PREFIXES, InSync, OutOfSync, SyncItem, Update

State = dict[str, tuple[bytes, int]]


class Consumer:
    """Records the view a syncer-like source delivers and counts stream events.

    `noops` counts Updates that changed nothing in the view (a put of the value and revision
    the consumer already had, or a delete of a key it did not have): a source that resyncs
    by difference sends none, one that replays everything after a reconnect sends many."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.view: State = {}
        self.updates = 0
        self.noops = 0
        self.in_syncs = 0
        self.out_of_syncs = 0
        self.items: list[str] = []  # the item kinds in order: "U", "I", "O"
        self.seen_at: dict[str, float] = {}  # value text -> monotonic time first delivered

    def __call__(self, item: SyncItem) -> None:
        if isinstance(item, Update):
            self.updates += 1
            if item.value is None:
                if self.view.pop(item.key, None) is None:
                    self.noops += 1
            else:
                entry = (item.value, item.revision)
                if self.view.get(item.key) == entry:
                    self.noops += 1
                self.view[item.key] = entry
            if not self.items or self.items[-1] != "U":
                self.items.append("U")
        elif isinstance(item, InSync):
            self.in_syncs += 1
            self.items.append("I")
        elif isinstance(item, OutOfSync):
            self.out_of_syncs += 1
            self.items.append("O")

    def values(self) -> dict[str, bytes]:
        return {k: v for k, (v, _) in self.view.items()}


def datastore_state(ds: Datastore, prefixes: Iterable[str] = DEFAULT_PREFIXES) -> State:
    out: State = {}
    kvs, rev = ds.list(next(iter(prefixes)))
    for kv in kvs:
        out[kv.key] = (kv.value, kv.mod_revision)
    for prefix in list(prefixes)[1:]:
        for kv in ds.list(prefix, revision=rev)[0]:
            out[kv.key] = (kv.value, kv.mod_revision)
    return out


def mixed_writes(
    ds: Datastore,
    count: int,
    *,
    seed: int = 0,
    prefix: str = "/tabby/v3/projectcalico.org/workloadendpoints/ns/",
    value_size: int = 0,
    pause: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """`count` creates, updates and deletes (about 40/40/20) under prefix; returns the live
    keys and their revisions. `pause(i)` runs before write i (to interleave with a test)."""
    rng = random.Random(seed)
    live: dict[str, int] = {}
    pad = "x" * value_size
    for i in range(count):
        if pause is not None:
            pause(i)
        r = rng.random()
        if not live or r < 0.4:
            key = f"{prefix}w{seed}-{i}"
            live[key] = ds.create(key, f'{{"n":{i},"op":"create","pad":"{pad}"}}'.encode())
        elif r < 0.8:
            key = rng.choice(sorted(live))
            live[key] = ds.update(key, f'{{"n":{i},"op":"update","pad":"{pad}"}}'.encode(),
                                  live[key])
        else:
            key = rng.choice(sorted(live))
            ds.delete(key, live.pop(key))
    return live


async def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll predicate on the event loop until it holds or timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(step)
