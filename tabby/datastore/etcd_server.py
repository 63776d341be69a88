"""Run a throwaway single-member etcd on loopback (tests, benchmarks, the lab).

    with EtcdServer() as server:
        ds = open_datastore(server.url)

The server listens on free 127.0.0.1 ports, keeps its data in a temporary directory
(on /dev/shm when present, so fsync is cheap), and is stopped by PID and cleaned up on exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ETCD_BINARY = "etcd"


class EtcdNotInstalled(RuntimeError):
    """The etcd binary is not on PATH (Debian package etcd-server)."""


def etcd_binary() -> str | None:
    """Path of the etcd executable, or None when it is not installed."""
    return shutil.which(ETCD_BINARY)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: PR_SET_PDEATHSIG(SIGTERM).
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _default_parent() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class EtcdServer:
    """A real etcd process. `start()`/`stop()` may be called again (same ports and data),
    which is how tests simulate an etcd restart under a live watch."""

    def __init__(
        self,
        *,
        data_parent: str | None = None,
        startup_timeout: float = 20.0,
        name: str = "tabby-test",
        auto_compaction_retention: int | None = 10_000,
        die_with_parent: bool = True,
    ) -> None:
        """`auto_compaction_retention`: revisions of history etcd keeps (its own periodic
        compaction, like the sqlite backend's bound); None = never compact.
        `die_with_parent`: etcd gets SIGTERM if the thread that started it dies (even by
        SIGKILL), so a crashed test run leaves no etcd behind; start it from a thread that
        lives as long as the server should."""
        binary = etcd_binary()
        if binary is None:
            raise EtcdNotInstalled("etcd binary not found on PATH (install Debian's etcd-server)")
        self.binary = binary
        self.name = name
        self.startup_timeout = startup_timeout
        self.auto_compaction_retention = auto_compaction_retention
        self.die_with_parent = die_with_parent
        self._data_parent = data_parent if data_parent is not None else _default_parent()
        self.tmpdir: Path | None = None
        self.client_port = 0
        self.peer_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.client_port}"

    @property
    def log_path(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "etcd.log"

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start etcd (first time: new ports and data dir) and wait until it is healthy."""
        if self.proc is not None:
            return
        first = self.tmpdir is None
        if first:
            self.tmpdir = Path(tempfile.mkdtemp(prefix="tabby-etcd-", dir=self._data_parent))
        attempts = 3 if first else 1
        for attempt in range(attempts):
            if first:
                # Another process may grab a probed port before etcd binds it: retry fresh.
                self.client_port, self.peer_port = _free_port(), _free_port()
            try:
                self._spawn()
                return
            except RuntimeError:
                self.stop()
                if attempt == attempts - 1:
                    if first:
                        self.close()
                    raise

    def _spawn(self) -> None:
        assert self.tmpdir is not None
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.tmpdir / "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip
        if self.auto_compaction_retention:
            cmd += [
                "--auto-compaction-mode", "revision",
                "--auto-compaction-retention", str(self.auto_compaction_retention),
            ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self._log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"etcd not healthy after {self.startup_timeout}s: {self._log_tail()}")

    def healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=1.0)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            body = resp.read()
            return resp.status == 200 and json.loads(body).get("health") == "true"
        except (OSError, http.client.HTTPException, ValueError):
            return False
        finally:
            conn.close()

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    def stop(self) -> None:
        """Stop the process by PID (SIGTERM, then SIGKILL); keep the data for a restart."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def close(self) -> None:
        """Stop etcd and remove its data directory."""
        self.stop()
        if self.tmpdir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.tmpdir)
            self.tmpdir = None
