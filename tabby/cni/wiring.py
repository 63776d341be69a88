"""The Calico-style veth: one pair per attachment, routed, no bridge.

Workload side (CNI_IFNAME, in CNI_NETNS): the /32 (and /128) address, a link-scope route to
169.254.1.1 and a default route via it (IPv6: via the host veth's fixed link-local address).
Host side (`cali` + 11 hex digits, in the namespace the plugin runs in): no address, MAC
ee:ee:ee:ee:ee:ee, proxy_arp=1 and proxy_delay=0 so it answers ARP for 169.254.1.1 at once,
and a /32 (/128) route to the workload with Tabby's route protocol number.

Why `ip -batch` and not pyroute2: the plugin is exec'd per container, and importing pyroute2
costs ~150-200 ms against a budget of 60 ms for the whole ADD. Two `ip -batch -` execs (one per
namespace, ~2 ms each) do all netlink work; the host's sysctls are plain writes to /proc/sys,
which is the plugin's own (node) namespace. The container's namespace is entered only by the
`ip` child (`nsenter --net=`), never by this process.
"""

from __future__ import annotations

import json
import os

from tabby.cni.constants import (
    GATEWAY_V4,
    GATEWAY_V6,
    HOST_VETH_MAC,
    HOST_VETH_PREFIX,
    ROUTE_PROTO,
)

# `typing` costs ~3 ms per plugin exec; annotations are strings (PEP 563), so it is
# needed only by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

try:  # the builtin SHA-1: hashlib would load OpenSSL (~2 ms per exec) for one short digest
    from _sha1 import sha1
except ImportError:  # pragma: no cover - CPython always has it
    from hashlib import sha1

# Runtimes may exec the plugin with an empty PATH: look in the usual places as well.
_FALLBACK_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
_found: dict[str, str] = {}


class WiringError(Exception):
    """A netlink or sysctl step failed; the message names the object and the kernel's reason."""

    def __init__(self, msg: str, exists: bool = False) -> None:
        super().__init__(msg)
        self.exists = exists  # the kernel said "File exists"


def host_ifname(container_id: str, ifname: str) -> str:
    """'cali' + 11 hex digits of sha1(containerID.ifname): the CNI key of the attachment, so a
    repeated ADD finds the same link and two attachments never collide (15 chars max)."""
    digest = sha1(f"{container_id}.{ifname}".encode()).hexdigest()
    return HOST_VETH_PREFIX + digest[: 15 - len(HOST_VETH_PREFIX)]


def container_mac(container_id: str, ifname: str) -> str:
    """A stable, locally administered unicast MAC, so ADD knows it without reading it back."""
    d = sha1(f"mac.{container_id}.{ifname}".encode()).digest()
    first = (d[0] | 0x02) & 0xFE
    return ":".join(f"{b:02x}" for b in (first, *d[1:6]))


def _which(name: str) -> str:
    if name in _found:
        return _found[name]
    dirs = [d for d in os.environ.get("PATH", "").split(":") if d] + list(_FALLBACK_PATH)
    for d in dirs:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            _found[name] = path
            return path
    raise WiringError(f"{name}: not found in PATH or {':'.join(_FALLBACK_PATH)}")


class _Proc:
    __slots__ = ("returncode", "stdout", "stderr")

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _run(argv: list[str], stdin: str | None = None) -> _Proc:
    """Exec argv with pipes, via posix_spawn (vfork + exec): the `subprocess` module would add
    a few ms of imports to every plugin exec, and this is all the plugin needs of it."""
    import select

    fds: list[int] = []
    try:
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        fds = [r_in, w_in, r_out, w_out, r_err, w_err]
        actions = [
            (os.POSIX_SPAWN_DUP2, r_in, 0),
            (os.POSIX_SPAWN_DUP2, w_out, 1),
            (os.POSIX_SPAWN_DUP2, w_err, 2),
        ]
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise WiringError(f"{argv[0]}: {exc.strerror}") from None
    for fd in (r_in, w_out, w_err):
        os.close(fd)
    try:
        # Batches are a few hundred bytes: far below the pipe buffer, so this cannot block.
        os.write(w_in, (stdin or "").encode())
    except OSError:
        pass  # the child exited early; its status and stderr say why
    os.close(w_in)
    chunks: dict[int, list[bytes]] = {r_out: [], r_err: []}
    open_fds = [r_out, r_err]
    # poll, not select: in the long-running agent (CNI server) descriptors can pass 1024.
    poller = select.poll()
    for fd in open_fds:
        poller.register(fd, select.POLLIN)
    while open_fds:
        ready = poller.poll(30_000)
        if not ready:
            os.kill(pid, 9)
            break
        for fd, _ in ready:
            data = os.read(fd, 65536)
            if data:
                chunks[fd].append(data)
            else:
                poller.unregister(fd)
                open_fds.remove(fd)
    for fd in (r_out, r_err):
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    out = b"".join(chunks[r_out]).decode(errors="replace")
    err = b"".join(chunks[r_err]).decode(errors="replace")
    return _Proc(code, out, err)


def _ip_argv(netns: str | None) -> list[str]:
    ip = _which("ip")
    if netns is None:
        return [ip]
    return [_which("nsenter"), f"--net={netns}", "--", ip]


def ip_batch(lines: Sequence[str], netns: str | None = None, force: bool = False) -> None:
    """Run `ip` commands in one exec: here, or inside the namespace file `netns`."""
    argv = _ip_argv(netns) + (["-force"] if force else []) + ["-batch", "-"]
    proc = _run(argv, "\n".join(lines) + "\n")
    if proc.returncode != 0:
        err = " ".join(proc.stderr.split()) or f"exit {proc.returncode}"
        where = f" in {netns}" if netns else ""
        raise WiringError(f"ip{where}: {err}", exists="File exists" in err)


def ip_json(args: Sequence[str], netns: str | None = None) -> list[dict[str, Any]]:
    """`ip -j ARGS` parsed; [] when the object does not exist."""
    proc = _run(_ip_argv(netns) + ["-j", *args])
    if proc.returncode != 0:
        if "does not exist" in proc.stderr or "Cannot find device" in proc.stderr:
            return []
        where = f" in {netns}" if netns else ""
        raise WiringError(f"ip{where} {' '.join(args)}: {' '.join(proc.stderr.split())}")
    out = proc.stdout.strip()
    return json.loads(out) if out else []


def link_names() -> set[str]:
    """Links of this process's namespace: /proc/self/net is per namespace (/sys may be
    another namespace's mount), and reading it needs no exec and no `socket` import."""
    with open("/proc/self/net/dev") as f:
        lines = f.read().splitlines()[2:]
    return {line.split(":", 1)[0].strip() for line in lines}


def link_exists(name: str) -> bool:
    return name in link_names()


def write_sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise WiringError(f"sysctl {path[len('/proc/sys/'):]}: {exc.strerror}") from None


def read_sysctl(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def ensure_forwarding(v4: bool, v6: bool) -> None:
    """The node routes for its workloads (a fresh namespace starts with forwarding off)."""
    wanted = []
    if v4:
        wanted.append("/proc/sys/net/ipv4/ip_forward")
    if v6:
        wanted.append("/proc/sys/net/ipv6/conf/all/forwarding")
    for path in wanted:
        if read_sysctl(path) != "1":
            write_sysctl(path, "1")


def _host_sysctls(host_if: str, v6: bool) -> None:
    write_sysctl(f"/proc/sys/net/ipv4/conf/{host_if}/proxy_arp", "1")
    write_sysctl(f"/proc/sys/net/ipv4/neigh/{host_if}/proxy_delay", "0")
    write_sysctl(f"/proc/sys/net/ipv4/conf/{host_if}/forwarding", "1")
    if v6:
        # The workload routes via our link-local address: it must be usable the moment the
        # carrier comes up (no DAD wait), and we must answer NDP for routed addresses.
        write_sysctl(f"/proc/sys/net/ipv6/conf/{host_if}/accept_dad", "0")
        write_sysctl(f"/proc/sys/net/ipv6/conf/{host_if}/proxy_ndp", "1")
        write_sysctl(f"/proc/sys/net/ipv6/conf/{host_if}/forwarding", "1")


def _is_v6(cidr: str) -> bool:
    return ":" in cidr


def host_routes(host_if: str, addresses: Sequence[str]) -> list[str]:
    """The `ip` lines for the host's routes to the workload (replace: idempotent)."""
    lines = []
    for cidr in addresses:
        ip = cidr.split("/")[0]
        plen = 128 if _is_v6(cidr) else 32
        lines.append(f"route replace {ip}/{plen} dev {host_if} proto {ROUTE_PROTO} scope link")
    return lines


def create_veth(
    *,
    host_if: str,
    ifname: str,
    netns: str,
    mac: str,
    mtu: int,
    addresses: Sequence[str],
) -> None:
    """Create and configure the pair. Raises WiringError (exists=True if a link is in the way)."""
    v4 = any(not _is_v6(a) for a in addresses)
    v6 = any(_is_v6(a) for a in addresses)
    ensure_forwarding(v4, v6)
    # Host side first: the peer is created straight inside the container's namespace (never
    # here), and the /32 route can be added while the peer is still down.
    ip_batch(
        [
            f"link add {host_if} mtu {mtu} address {HOST_VETH_MAC} type veth "
            f"peer name {ifname} mtu {mtu} address {mac} netns {netns}",
            f"link set {host_if} up",
            *host_routes(host_if, addresses),
        ]
    )
    # Before the workload side comes up, so the carrier never rises without proxy ARP/NDP.
    _host_sysctls(host_if, v6)
    lines = [f"link set {ifname} up"]
    for cidr in addresses:
        ip = cidr.split("/")[0]
        if _is_v6(cidr):
            lines.append(f"addr add {ip}/128 dev {ifname} nodad")
        else:
            lines.append(f"addr add {ip}/32 dev {ifname}")
    if v4:
        lines.append(f"route add {GATEWAY_V4} dev {ifname} scope link")
        lines.append(f"route add default via {GATEWAY_V4} dev {ifname}")
    if v6:
        lines.append(f"route add default via {GATEWAY_V6} dev {ifname}")
    ip_batch(lines, netns=netns)


def delete_host_link(host_if: str) -> bool:
    """Delete the host side (the kernel removes the peer and the routes with it).
    False if it was not there."""
    if not link_exists(host_if):
        return False
    try:
        ip_batch([f"link del {host_if}"])
    except WiringError:
        if link_exists(host_if):
            raise
        # deleted concurrently: same outcome
    return True


# --- CHECK ------------------------------------------------------------------------------


class Mismatch(Exception):
    """CHECK found the attachment not as ADD left it; `kind` is interface/address/route."""

    def __init__(self, kind: str, msg: str) -> None:
        super().__init__(msg)
        self.kind = kind


def check_veth(*, host_if: str, ifname: str, netns: str, addresses: Sequence[str]) -> None:
    """Compare the live kernel state with what ADD creates; raise Mismatch on a difference."""
    host = ip_json(["link", "show", "dev", host_if])
    if not host:
        raise Mismatch("interface", f"host interface {host_if} is missing")
    if "UP" not in host[0].get("flags", []):
        raise Mismatch("interface", f"host interface {host_if} is down")
    if not os.path.exists(netns):
        raise Mismatch("interface", f"network namespace {netns} is missing")
    link = ip_json(["addr", "show", "dev", ifname], netns=netns)
    if not link:
        raise Mismatch("interface", f"interface {ifname} is missing in {netns}")
    if "UP" not in link[0].get("flags", []):
        raise Mismatch("interface", f"interface {ifname} in {netns} is down")
    have = {f"{a['local']}/{a['prefixlen']}" for a in link[0].get("addr_info", [])}
    for cidr in addresses:
        ip = cidr.split("/")[0]
        want = f"{ip}/{128 if _is_v6(cidr) else 32}"
        if want not in have:
            raise Mismatch("address", f"address {want} is missing on {ifname} in {netns}")
    host_dsts = {r.get("dst") for r in ip_json(["route", "show", "dev", host_if])}
    host_dsts |= {r.get("dst") for r in ip_json(["-6", "route", "show", "dev", host_if])}
    for cidr in addresses:
        ip = cidr.split("/")[0]
        if ip not in host_dsts and cidr not in host_dsts:
            raise Mismatch("route", f"host route {ip} dev {host_if} is missing")
    v4 = any(not _is_v6(a) for a in addresses)
    v6 = any(_is_v6(a) for a in addresses)
    if v4:
        routes = ip_json(["route", "show", "dev", ifname], netns=netns)
        if not any(r.get("dst") == GATEWAY_V4 for r in routes):
            raise Mismatch("route", f"route {GATEWAY_V4} dev {ifname} is missing in {netns}")
        if not any(r.get("dst") == "default" and r.get("gateway") == GATEWAY_V4 for r in routes):
            raise Mismatch(
                "route", f"default route via {GATEWAY_V4} dev {ifname} is missing in {netns}"
            )
    if v6:
        routes = ip_json(["-6", "route", "show", "dev", ifname], netns=netns)
        if not any(r.get("dst") == "default" and r.get("gateway") == GATEWAY_V6 for r in routes):
            raise Mismatch(
                "route", f"default route via {GATEWAY_V6} dev {ifname} is missing in {netns}"
            )
