"""Run the BGP controller alone for one node, fed straight from the datastore.

    ip netns exec NODE python -m tabby.bgp.run --node NODE --datastore sqlite:///x.db

This is the BGP half of `tabby node run` without the rest of the agent: list the keys BGP
reads, hand them to BgpController, declare in-sync, then follow a datastore watch. Tests,
benchmarks and the lab use it until (and besides) the full agent; the code path is the
controller's. SIGTERM/SIGINT stop BIRD with `down`, so the node's routes are withdrawn.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

from tabby.bgp.controller import BgpController
from tabby.bgp.inputs import WATCH_PREFIXES
from tabby.datastore import Compacted, Datastore, Unavailable, open_datastore

log = logging.getLogger("tabby.bgp.run")

WATCH_ROOT = "/tabby/"  # one watch for every prefix BGP reads (the controller filters)


def _decode(value: bytes | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class DatastoreFeed:
    """List + watch, resynchronising (with deletions) when the watch is lost."""

    def __init__(self, ds: Datastore, controller: BgpController) -> None:
        self.ds = ds
        self.controller = controller
        self.known: set[str] = set()
        self._watch: Any = None
        self._stop = threading.Event()

    def snapshot(self) -> int:
        revision: int | None = None
        seen: set[str] = set()
        for prefix in WATCH_PREFIXES:
            kvs, revision = self.ds.list(prefix, revision=revision)
            for kv in kvs:
                seen.add(kv.key)
                self.controller.on_update(kv.key, _decode(kv.value))
        for gone in self.known - seen:
            self.controller.on_update(gone, None)
        self.known = seen
        assert revision is not None
        return revision

    def run(self) -> None:
        revision = self.snapshot()
        self.controller.on_in_sync()
        while not self._stop.is_set():
            try:
                self._watch = self.ds.watch(WATCH_ROOT, revision + 1)
                if self._stop.is_set():
                    break
                for event in self._watch:
                    revision = event.revision
                    if event.type == "delete":
                        self.known.discard(event.key)
                        self.controller.on_update(event.key, None)
                    else:
                        self.known.add(event.key)
                        self.controller.on_update(event.key, _decode(event.value))
                if self._stop.is_set():
                    break
            except (Compacted, Unavailable) as exc:
                log.warning("datastore watch lost (%s): listing again", exc)
                if self._stop.wait(0.5):
                    break
                try:
                    revision = self.snapshot()
                except Unavailable as exc2:
                    log.warning("datastore unavailable: %s", exc2)

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tabby.bgp.run", description=__doc__)
    parser.add_argument("--node", required=True, help="this node's name (a Node resource)")
    parser.add_argument("--datastore", required=True, help="sqlite:///path or etcd://h:p")
    parser.add_argument("--run-dir", help="BIRD's files (default /run/tabby/<node>)")
    parser.add_argument("--secret-dir", help="BGP passwords as <dir>/<secret>/<key> files")
    parser.add_argument("--allow-host-netns", action="store_true",
                        help="allow BIRD in the host's network namespace (a real node)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s bgp[{args.node}] %(message)s",
        stream=sys.stderr,
    )
    ds = open_datastore(args.datastore)
    controller = BgpController(args.node, args.run_dir, secret_dir=args.secret_dir,
                               allow_host_netns=args.allow_host_netns or None)
    feed = DatastoreFeed(ds, controller)
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = threading.Thread(target=feed.run, name="feed", daemon=True)
    controller.start()
    worker.start()
    log.info("running; BIRD socket %s", controller.socket_path)
    while not done.wait(0.5):
        if not worker.is_alive():
            log.error("datastore feed stopped")
            break
    feed.stop()
    controller.stop(withdraw=True)
    ds.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
