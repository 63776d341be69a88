"""BgpController: datastore updates in, a running BIRD with the right configuration out.

The node agent owns one controller and feeds it what its syncer delivers:

    ctl = BgpController("node-1")               # run dir /run/tabby/node-1
    for key, value in snapshot: ctl.on_update(key, value)   # value: decoded JSON or None
    ctl.on_in_sync()                            # first complete snapshot delivered
    ctl.start()                                 # worker thread: render, check, BIRD
    ... ctl.on_update(key, value) for every later change ...
    ctl.status()                                # BgpStatus (sessions + issues)
    ctl.stop()                                  # `birdc down`: routes withdrawn
    ctl.detach()                                # or: leave BIRD running for the next agent

`on_update` is cheap and thread-safe: it updates the inputs and wakes the worker, which
waits `debounce` seconds for the rest of a burst, renders, and when the text changed checks
it with `bird -p`, writes it atomically and reloads BIRD with `configure` (unchanged
sessions stay up). Nothing is started or written before `on_in_sync()`: a half-read
datastore must not withdraw routes. A configuration BIRD rejects is never installed: the old
one keeps running and the error shows in status. If BIRD dies, it is restarted (backing off
up to 30 s).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tabby.bgp.bird import BirdError, BirdProcess, write_private
from tabby.bgp.inputs import BgpInputs
from tabby.bgp.peers import Issue, PeerPlan
from tabby.bgp.render import RenderResult, render
from tabby.bgp.status import STATUS_FILE, BgpStatus, collect_status, default_run_dir

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX = 30.0


def secret_dir_lookup(secret_dir: str | Path | None) -> Callable[[str, str], str | None]:
    """Passwords from files laid out like a mounted Kubernetes secret: <dir>/<name>/<key>."""

    def lookup(name: str, key: str) -> str | None:
        if secret_dir is None or not name or "/" in name or "/" in key or name.startswith("."):
            return None
        try:
            return (Path(secret_dir) / name / key).read_text().rstrip("\n")
        except OSError:
            return None

    return lookup


class BgpController:
    def __init__(
        self,
        node_name: str,
        run_dir: str | Path | None = None,
        *,
        secret_dir: str | Path | None = None,
        debounce: float = 0.02,
        supervise_interval: float = 0.5,
        bird: str = "bird",
        bird_process: BirdProcess | None = None,
        allow_host_netns: bool | None = None,
    ) -> None:
        self.node_name = node_name
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(node_name)
        self.bird = bird_process or BirdProcess(
            self.run_dir, bird=bird, allow_host_netns=allow_host_netns
        )
        self.secrets = secret_dir_lookup(secret_dir)
        self.debounce = debounce
        self.supervise_interval = supervise_interval
        self._inputs = BgpInputs()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._applied = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._in_sync = False
        self._changes = 0  # relevant updates received
        self._applied_changes = -1  # `_changes` as of the last completed apply
        self._installed: str | None = None  # the text BIRD runs
        self._retry_at = 0.0
        self._backoff = 1.0
        self.reloads = 0
        self.last_error: str | None = None
        self.last_render: RenderResult | None = None
        self.last_apply_seconds: float | None = None

    # -- inputs (any thread) ---------------------------------------------------------------

    @property
    def socket_path(self) -> str:
        return str(self.bird.socket)

    def on_update(self, key: str, value: dict[str, Any] | None) -> None:
        if not BgpInputs.is_relevant(key, self.node_name):
            return
        with self._lock:
            if self._inputs.apply(key, value):
                self._changes += 1
                self._wake.set()

    def on_in_sync(self) -> None:
        with self._lock:
            self._in_sync = True
            self._changes += 1
        self._wake.set()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.bird.adopt():
            self._installed = self.bird.installed()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"bgp-{self.node_name}", daemon=True)
        self._thread.start()

    def stop(self, withdraw: bool = True, timeout: float = 10.0) -> None:
        """Stop the worker and BIRD (`down`: peers and the kernel lose our routes). With
        withdraw=False BIRD is killed and its routes stay (for a quick agent upgrade)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.bird.stop(withdraw=withdraw)
        self._write_status()

    def detach(self, timeout: float = 10.0) -> None:
        """Stop the worker but leave BIRD running with its configuration, sessions and
        kernel routes (an agent exiting for a restart or upgrade); the next controller on
        this run directory adopts it through the pid file."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._write_status()
        detach = getattr(self.bird, "detach", None)
        if detach is not None:
            detach()

    def wait_applied(self, timeout: float = 10.0) -> bool:
        """Block until every update received so far is rendered and applied (tests, bench)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._applied_changes < self._changes:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._applied.wait(left)
        return True

    # -- status -----------------------------------------------------------------------------

    @property
    def issues(self) -> list[Issue]:
        return list(self.last_render.issues) if self.last_render else []

    @property
    def peers(self) -> list[PeerPlan]:
        return list(self.last_render.peers) if self.last_render else []

    def controller_status(self) -> dict[str, Any]:
        cfg = self._installed
        return {
            "node": self.node_name,
            "updated": time.time(),
            "in_sync": self._in_sync,
            "bird_pid": self.bird.pid,
            "bird_starts": self.bird.starts,
            "reloads": self.reloads,
            "config_sha256": hashlib.sha256(cfg.encode()).hexdigest() if cfg else None,
            "last_error": self.last_error,
            "last_apply_seconds": self.last_apply_seconds,
            "issues": [
                {"severity": i.severity, "source": i.source, "message": i.message}
                for i in self.issues
            ],
            "planned_peers": [
                {"name": p.name, "address": p.address, "type": p.peer_type, "source": p.source}
                for p in self.peers
            ],
        }

    def status(self) -> BgpStatus:
        """BIRD's view of the sessions, with this controller's issues and counters."""
        status = collect_status(self.socket_path)
        ctl = self.controller_status()
        status.issues = ctl.pop("issues")
        status.controller = ctl
        return status

    def _write_status(self) -> None:
        path = self.run_dir / STATUS_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(self.controller_status(), indent=2) + "\n")
            tmp.replace(path)

    # -- the worker -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.supervise_interval)
            self._wake.clear()
            if self._stopping:
                break
            with self._lock:
                pending = self._in_sync and self._applied_changes < self._changes
            if pending and self.debounce > 0:
                time.sleep(self.debounce)  # let the rest of a burst arrive: one render
            try:
                if pending or self._retry_due():
                    self._apply()
                self._supervise()
            except Exception as exc:  # the worker must survive anything and say so
                log.exception("BGP controller error")
                self.last_error = f"internal error: {exc}"
                self._write_status()

    def _retry_due(self) -> bool:
        return self._retry_at > 0 and time.monotonic() >= self._retry_at

    def _apply(self) -> None:
        started = time.monotonic()
        with self._lock:
            snapshot = self._inputs.copy()
            seen = self._changes
        result = render(snapshot, self.node_name, self.secrets)
        self.last_render = result
        error = None
        if result.config != self._installed or not self.bird.alive():
            error = self._install(result.config)
        self.last_error = error
        if error is None:
            self._retry_at, self._backoff = 0.0, 1.0
        self.last_apply_seconds = time.monotonic() - started
        self._write_status()
        with self._lock:
            self._applied_changes = max(self._applied_changes, seen)
            self._applied.notify_all()

    def _install(self, text: str) -> str | None:
        """Check, write and load `text`; None on success, else the error (old config kept)."""
        if text != self._installed:
            problem = self.bird.check(text)
            if problem is not None:
                with contextlib.suppress(OSError):
                    write_private(self.run_dir / "bird.conf.rejected", text)
                log.error("BIRD rejected the new configuration; keeping the old one: %s", problem)
                return f"new configuration rejected by bird -p (old one kept): {problem}"
            self.bird.install(text)
        try:
            if self.bird.alive():
                verdict = self.bird.configure()
                self.reloads += 1
                log.info("BIRD reconfigured (%s)", verdict)
            else:
                self.bird.start()
                log.info("BIRD started, pid %s", self.bird.pid)
        except BirdError as exc:
            self._schedule_retry()
            return str(exc)
        self._installed = text
        return None

    def _schedule_retry(self) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RESTART_BACKOFF_MAX)

    def _supervise(self) -> None:
        """Restart BIRD if it died after we started it."""
        if self._installed is None or self._stopping or self.bird.alive():
            return
        if self._retry_at and time.monotonic() < self._retry_at:
            return
        log.warning("BIRD is not running (exit %s): restarting: %s",
                    self.bird.last_exit, self.bird.log_tail(3))
        try:
            self.bird.start()
            self.last_error = None
            self._retry_at, self._backoff = 0.0, 1.0
        except BirdError as exc:
            self.last_error = f"BIRD restart failed: {exc}"
            self._schedule_retry()
        self._write_status()
