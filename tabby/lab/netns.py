"""Small, safe primitives for network namespaces: create, delete, run, spawn, netlink, sysctl.

Everything here acts on a *named* namespace (`/run/netns/NAME`) and refuses an empty name,
so no call can fall through to the root namespace by accident. Namespace work happens in a
child process (`ip netns exec`, or pyroute2's forked socket helper), never through a
process-wide `setns` in the caller.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pyroute2 import IPRoute

NETNS_DIR = Path("/run/netns")
IFNAMSIZ = 15  # usable characters in a Linux interface name

_NS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_IF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


class NetnsError(RuntimeError):
    """A namespace operation failed; the message names the namespace and the command."""


def check_netns_name(name: str) -> str:
    """Return `name` if it is a usable namespace name, else raise ValueError naming it."""
    if not isinstance(name, str) or not _NS_NAME.match(name) or name in (".", ".."):
        raise ValueError(f"netns: invalid namespace name {name!r}")
    return name


def check_ifname(name: str) -> str:
    """Return `name` if it is a valid interface name (<= 15 chars), else raise ValueError."""
    if not isinstance(name, str) or not _IF_NAME.match(name):
        raise ValueError(f"ifname: invalid interface name {name!r} (1-15 of [A-Za-z0-9_.-])")
    return name


# --- lifecycle ------------------------------------------------------------------------


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / check_netns_name(name)).exists()


def list_netns(prefix: str = "") -> list[str]:
    """Names of the named namespaces starting with `prefix`, sorted."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def add_netns(name: str) -> None:
    """Create namespace `name` with loopback up; fail if it already exists (never adopt)."""
    check_netns_name(name)
    if netns_exists(name):
        raise NetnsError(f"netns {name}: already exists")
    _ip(["netns", "add", name])
    # A fresh namespace has lo down; daemons and probes expect 127.0.0.1 to work.
    _ip(["-n", name, "link", "set", "lo", "up"])


def del_netns(name: str) -> bool:
    """Delete namespace `name` by exact name; its links go with it. False if absent."""
    check_netns_name(name)
    if not netns_exists(name):
        return False
    proc = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 and netns_exists(name):
        raise NetnsError(f"netns {name}: delete failed: {proc.stderr.strip()}")
    return True


def netns_pids(name: str) -> list[int]:
    """PIDs of the processes whose network namespace is `name`."""
    check_netns_name(name)
    if not netns_exists(name):
        return []
    proc = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


# --- commands and processes -------------------------------------------------------------


def _ip(args: Sequence[str], timeout: float = 10.0) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` inside `netns` (ip netns exec replaces itself: same PID)."""
    if not argv:
        raise ValueError("argv: empty command")
    return ["ip", "netns", "exec", check_netns_name(netns), *[str(a) for a in argv]]


def run(
    netns: str,
    argv: Sequence[str],
    *,
    timeout: float = 30.0,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside `netns` and wait; raise NetnsError on non-zero exit if `check`."""
    full = exec_argv(netns, argv)
    try:
        proc = subprocess.run(
            full,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=dict(env) if env is not None else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"netns {netns}: {' '.join(map(str, argv))}: timed out") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()
        raise NetnsError(
            f"netns {netns}: {' '.join(map(str, argv))}: exit {proc.returncode}: {err}"
        )
    return proc


def proc_starttime(pid: int) -> int | None:
    """Kernel start time (clock ticks since boot) of `pid`, or None if it is gone.

    Stored with a PID so a later process never signals a recycled PID.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parens: fields after the last ')' are fixed.
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[19])


def pid_alive(pid: int, starttime: int | None = None) -> bool:
    st = proc_starttime(pid)
    if st is None:
        return False
    if _is_zombie(pid):
        return False
    return starttime is None or st == starttime


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].startswith("Z")


def kill_pid(pid: int, starttime: int | None = None, timeout: float = 3.0) -> bool:
    """SIGTERM `pid`, wait up to `timeout`, then SIGKILL. Only if its start time matches.

    Returns True if the process was signalled. Reaps it when it is our child.
    """
    if not pid_alive(pid, starttime):
        _reap(pid)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid, starttime):
            return True
        time.sleep(0.02)
    if pid_alive(pid, starttime):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            _reap(pid)
            if not pid_alive(pid, starttime):
                break
            time.sleep(0.02)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@dataclass
class NsProcess:
    """A long-running process started inside a namespace. Stop it with `terminate()`."""

    netns: str
    argv: list[str]
    popen: subprocess.Popen[Any]
    starttime: int | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def stdin(self) -> IO[Any] | None:
        return self.popen.stdin

    @property
    def stdout(self) -> IO[Any] | None:
        return self.popen.stdout

    def alive(self) -> bool:
        return self.popen.poll() is None

    def terminate(self, timeout: float = 3.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code (None if it could not be reaped)."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout)
        for f in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        return self.popen.returncode


def spawn(
    netns: str,
    argv: Sequence[str],
    *,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    text: bool = False,
) -> NsProcess:
    """Start `argv` inside `netns` without waiting. The PID is the command's own PID."""
    full = exec_argv(netns, argv)
    popen = subprocess.Popen(
        full,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        text=text,
        start_new_session=True,  # a Ctrl-C to the test runner should not hit daemons first
    )
    return NsProcess(netns, list(full), popen, proc_starttime(popen.pid))


# --- netlink and sysctl ---------------------------------------------------------------


@contextlib.contextmanager
def ipr(netns: str) -> Iterator[IPRoute]:
    """A pyroute2 IPRoute bound to existing namespace `netns` (never created, never root).

    pyroute2 0.9 opens the netlink socket in a forked helper and hands it back, so the
    calling process stays in its own namespace.
    """
    check_netns_name(netns)
    if not netns_exists(netns):
        raise NetnsError(f"netns {netns}: does not exist")
    with IPRoute(netns=netns, flags=0) as ip:
        yield ip


def link_index(ip: IPRoute, ifname: str) -> int:
    """Index of `ifname` in the namespace `ip` is bound to; NetnsError if absent."""
    found = ip.link_lookup(ifname=ifname)
    if not found:
        raise NetnsError(f"link {ifname}: not found")
    return int(found[0])


def sysctl_key_path(key: str) -> str:
    """`net.ipv4.conf.cali1.proxy_arp` -> the /proc/sys path; rejects path tricks."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+", key):
        raise ValueError(f"sysctl: invalid key {key!r}")
    return "/proc/sys/" + key.replace(".", "/")


def set_sysctls(netns: str, values: Mapping[str, str | int]) -> None:
    """Write sysctls inside `netns` in one `sysctl -w` call (one exec per batch, not per key).

    Keys use dots; interface names must not contain dots (ours never do).
    """
    if not values:
        return
    args = []
    for key, value in values.items():
        sysctl_key_path(key)
        args.append(f"{key}={value}")
    run(netns, ["sysctl", "-q", "-w", *args], timeout=10)


def get_sysctl(netns: str, key: str) -> str:
    sysctl_key_path(key)
    return run(netns, ["sysctl", "-n", key], timeout=10).stdout.strip()
