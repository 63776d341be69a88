"""BIRD as a supervised child process of the node agent, in the node's own namespace.

One run directory per node (see `status.default_run_dir`) holds:

    bird.conf      the installed configuration (replaced atomically)
    bird.ctl       BIRD's control socket (`birdc -s .../bird.ctl show protocols`)
    bird.pid       BIRD's pid file
    bird.log       BIRD's stderr (logSeverityScreen decides how much)

BIRD runs in the foreground (`bird -f`), so it is our child: we know its PID and notice at
once when it dies (the controller restarts it). It runs in its own session, so a signal
meant for the agent does not take it down before the agent withdraws routes in order. If
the agent itself is SIGKILLed, BIRD keeps routing; the next agent `adopt()`s it through the
pid file (sessions stay up) or, if it no longer answers, stops it by PID. A new
configuration is first checked with `bird -p`; only a configuration that parses is
installed, and BIRD is told to `configure` (sessions whose settings did not change stay up).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from tabby.bgp import birdctl

log = logging.getLogger(__name__)

CONF, SOCKET, PIDFILE, LOGFILE = "bird.conf", "bird.ctl", "bird.pid", "bird.log"
LOG_KEEP = 1 << 20  # bird.log is cut to its last MiB whenever BIRD (re)starts
_CONFIGURED = {3: "reconfigured", 4: "in progress", 5: "queued", 19: "nothing to do"}


class BirdError(RuntimeError):
    """BIRD could not be started, checked or reconfigured; the message says why."""


ALLOW_HOST_NETNS_ENV = "TABBY_BGP_ALLOW_HOST_NETNS"


def in_host_netns() -> bool:
    """True when this process is in the host's (the initial) network namespace: that of
    PID 1, or of kthreadd (PID 2, a kernel thread, always there) when PID 1's is hidden."""
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False
    for pid in (1, 2):
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino == mine
        except OSError:
            continue
    return False  # cannot tell: not the case this guard is for


def find_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        raise BirdError(f"{name} not found: install BIRD 2 (Debian package bird2)")
    return path


def check_config(text: str, path: str | Path, bird: str = "bird", timeout: float = 30.0) -> str | None:
    """Parse `text` with `bird -p`, using `path` as a scratch file; None if BIRD accepts it,
    else BIRD's message (which names the line)."""
    scratch = Path(path)
    write_private(scratch, text)
    try:
        proc = subprocess.run(
            [find_binary(bird), "-p", "-c", str(scratch)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"bird -p: no answer in {timeout:.0f} s"
    finally:
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()
    if proc.returncode == 0:
        return None
    return (proc.stderr or proc.stdout).strip() or f"bird -p exited with {proc.returncode}"


def _is_our_bird(pid: int, socket_path: Path) -> bool:
    """A live (not zombie) bird process whose command line names our socket."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    return (
        state != "Z"
        and bool(cmdline)
        and cmdline[0].endswith(b"bird")
        and str(socket_path).encode() in cmdline
    )


def write_private(path: Path, text: str) -> None:
    """Write a file only root can read (BGP passwords are in it), atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _cut_log(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > LOG_KEEP:
            data = path.read_bytes()[-LOG_KEEP:]
            path.write_bytes(data)


class BirdProcess:
    """Start, reconfigure, supervise and stop one BIRD in the current network namespace."""

    def __init__(
        self, run_dir: str | Path, *, bird: str = "bird", allow_host_netns: bool | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.bird = bird
        # BIRD programs the kernel routing table of the namespace it runs in. On a real host
        # that is the point; on a shared test machine a node process started in the host
        # namespace by mistake would rewrite the host's routes. So the host namespace must be
        # asked for: allow_host_netns=True (`tabby node run` on a real host) or the env var.
        if allow_host_netns is None:
            allow_host_netns = os.environ.get(ALLOW_HOST_NETNS_ENV) == "1"
        self.allow_host_netns = allow_host_netns
        self.conf = self.run_dir / CONF
        self.socket = self.run_dir / SOCKET
        self.pidfile = self.run_dir / PIDFILE
        self.logfile = self.run_dir / LOGFILE
        self._popen: subprocess.Popen[bytes] | None = None
        self._adopted: int | None = None  # a BIRD a previous agent left running
        self._log: IO[Any] | None = None
        self.starts = 0  # how many times BIRD was started (restarts = starts - 1)
        self.last_exit: int | None = None

    # -- configuration --------------------------------------------------------------------

    def check(self, text: str) -> str | None:
        """None if BIRD would accept `text`, else its error."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return check_config(text, self.run_dir / ".bird.conf.check", self.bird)

    def installed(self) -> str | None:
        try:
            return self.conf.read_text()
        except FileNotFoundError:
            return None

    def install(self, text: str) -> None:
        """Write the configuration BIRD reads on start and on `configure` (atomically)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_private(self.conf, text)

    def configure(self, timeout: float = 30.0) -> str:
        """Make the running BIRD re-read bird.conf; returns BIRD's verdict, raises BirdError."""
        try:
            replies = birdctl.command(self.socket, "configure", timeout)
        except birdctl.BirdControlError as exc:
            raise BirdError(str(exc)) from None
        for reply in replies:
            if reply.code in _CONFIGURED:
                return _CONFIGURED[reply.code]
        raise BirdError(f"BIRD configure: unexpected answer {birdctl.text(replies)!r}")

    # -- the process ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        if not self.alive():
            return None
        return self._adopted if self._adopted is not None else self._popen.pid  # type: ignore[union-attr]

    def alive(self) -> bool:
        if self._adopted is not None:
            if _is_our_bird(self._adopted, self.socket):
                return True
            self._adopted = None
            return False
        if self._popen is None:
            return False
        code = self._popen.poll()
        if code is not None and self.last_exit is None:
            self.last_exit = code
        return code is None

    def adopt(self) -> bool:
        """Take over a BIRD that a previous agent left running on our socket (its sessions
        and routes stay up across an agent restart). True if there was one."""
        if self.alive():
            return True
        pid = self._pidfile_pid()
        if pid is None or not _is_our_bird(pid, self.socket):
            return False
        try:
            birdctl.command(self.socket, "show status", timeout=2.0)
        except birdctl.BirdControlError:
            return False
        log.info("adopting BIRD pid %d left by a previous run", pid)
        self._adopted = pid
        return True

    def _pidfile_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def start(self, timeout: float = 10.0) -> None:
        """Start BIRD on the installed configuration and wait until its socket answers."""
        if self.alive():
            return
        if not self.conf.exists():
            raise BirdError(f"{self.conf}: no configuration installed yet")
        if not self.allow_host_netns and in_host_netns():
            raise BirdError(
                "refusing to start BIRD in the host's network namespace (it would program "
                f"the host's routes): run the node in its own namespace, or allow it with "
                f"{ALLOW_HOST_NETNS_ENV}=1 / allow_host_netns=True on a real node"
            )
        self.stop_stale()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        _cut_log(self.logfile)
        self._close_log()
        self._log = open(self.logfile, "ab")
        argv = [find_binary(self.bird), "-f", "-c", str(self.conf), "-s", str(self.socket),
                "-P", str(self.pidfile)]
        # A new session: a Ctrl-C meant for the agent must not kill BIRD before the agent
        # has withdrawn its routes in order.
        self._popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1
        self.last_exit = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise BirdError(f"BIRD exited with {self.last_exit} at start: {self.log_tail()}")
            try:
                birdctl.command(self.socket, "show status", timeout=1.0)
                return
            except birdctl.BirdControlError:
                time.sleep(0.02)
        raise BirdError(f"BIRD did not open {self.socket} within {timeout:.0f} s")

    def stop(self, timeout: float = 5.0, withdraw: bool = True) -> None:
        """Stop BIRD: `down` (clean shutdown, removes its kernel routes and tells peers) when
        `withdraw`, else SIGKILL (routes stay in the kernel); SIGTERM/SIGKILL if it hangs."""
        if self._adopted is not None:
            self._stop_pid(self._adopted, timeout, withdraw)
            self._adopted = None
        popen = self._popen
        if popen is not None and popen.poll() is None:
            if withdraw:
                with contextlib.suppress(birdctl.BirdControlError):
                    birdctl.command(self.socket, "down", timeout=timeout)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout)
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM if withdraw else signal.SIGKILL)
                try:
                    popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait(timeout)
        if popen is not None:
            self.last_exit = popen.returncode
        self._popen = None
        self._close_log()
        for path in (self.socket, self.pidfile):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def detach(self) -> None:
        """Let go of BIRD without stopping it: it keeps routing (its own process session)
        and the next BirdProcess on this run directory adopts it through the pid file."""
        self._popen = None
        self._adopted = None
        self._close_log()

    def stop_stale(self) -> None:
        """End a BIRD left by a previous agent that does not answer on its socket (its pid
        file names it, and it is a bird process using our socket); nothing else is touched."""
        pid = self._pidfile_pid()
        if pid is None or (self._popen is not None and pid == self._popen.pid):
            return
        if _is_our_bird(pid, self.socket):
            log.warning("stopping stale BIRD pid %d (from a previous run)", pid)
            self._stop_pid(pid, 5.0, withdraw=True)

    def _stop_pid(self, pid: int, timeout: float, withdraw: bool) -> None:
        """Stop a BIRD that is not our child: `down`, then signals, by PID."""

        def gone() -> bool:
            deadline = time.monotonic() + timeout
            while _is_our_bird(pid, self.socket):
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)
            return True

        if withdraw:
            with contextlib.suppress(birdctl.BirdControlError):
                birdctl.command(self.socket, "down", timeout=timeout)
            if gone():
                return
        for sig in (signal.SIGTERM, signal.SIGKILL) if withdraw else (signal.SIGKILL,):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if gone():
                return

    def log_tail(self, lines: int = 5) -> str:
        try:
            data = self.logfile.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return ""
        return " | ".join(data[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
