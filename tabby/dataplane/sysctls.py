"""Kernel sysctls the dataplane relies on, written for the namespace the agent runs in.

    write_sysctls({"net.ipv4.ip_forward": 1})                 # this process's namespace
    write_sysctls({"net.ipv4.ip_forward": 1}, netns="tb1-n1")   # another one (tests)

Without `netns` the values go straight to /proc/sys, which shows the network namespace of
the calling process - that is the agent's own node namespace. With `netns`, one
`ip netns exec NS sysctl -w ...` run writes the whole batch there: a threaded program must
not `setns()` itself (STYLE.md). Interface names may contain dots (`vxlan.tabby`): the
/proc path keeps them, so keys are given as (prefix, ifname, leaf) where that matters.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Mapping

log = logging.getLogger(__name__)

_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

# What every node needs, whatever the encapsulation (Felix sets the same at start-up).
NODE_SYSCTLS: dict[str, str | int] = {
    "net.ipv4.ip_forward": 1,
    "net.ipv4.conf.all.forwarding": 1,
}
# Once the cluster has an IPv6 pool.
NODE_SYSCTLS_V6: dict[str, str | int] = {"net.ipv6.conf.all.forwarding": 1}


class SysctlError(RuntimeError):
    """A sysctl could not be written (the message names the key)."""


def iface_key(section: str, ifname: str, leaf: str) -> str:
    """`net/<section>/<ifname>/<leaf>` (section "ipv4/conf", "ipv4/neigh", ...) with the
    interface name checked. A slash path, because `sysctl`'s dotted syntax cannot carry
    the dots of a name like `vxlan.tabby`."""
    if not _IFNAME.match(ifname) or ifname in (".", ".."):
        raise ValueError(f"ifname: invalid interface name {ifname!r}")
    return f"net/{section}/{ifname}/{leaf}"


def _path(key: str) -> str:
    if "/" in key:  # already a path below /proc/sys (interface names with dots)
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"sysctl: invalid key {key!r}")
        return "/proc/sys/" + key
    if not _KEY.match(key):
        raise ValueError(f"sysctl: invalid key {key!r}")
    return "/proc/sys/" + key.replace(".", "/")


def write_sysctls(values: Mapping[str, str | int], netns: str | None = None) -> None:
    """Write every value (raises SysctlError naming the first key that failed)."""
    if not values:
        return
    paths = {key: _path(key) for key in values}
    if netns is None:
        for key, value in values.items():
            try:
                with open(paths[key], "w") as f:
                    f.write(f"{value}\n")
            except OSError as exc:
                raise SysctlError(f"sysctl {key}={value}: {exc.strerror or exc}") from None
        return
    # `sysctl` accepts slash-separated keys too (needed for names with dots).
    args = [f"{p[len('/proc/sys/'):]}={v}" for p, v in
            ((paths[k], val) for k, val in values.items())]
    proc = subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", *args],
                          capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise SysctlError(f"sysctl in {netns}: {proc.stderr.strip() or 'failed'}")


def read_sysctl(key: str, netns: str | None = None) -> str:
    path = _path(key)
    if netns is None:
        with open(path) as f:
            return f.read().strip()
    proc = subprocess.run(["ip", "netns", "exec", netns, "cat", path], capture_output=True,
                          text=True, timeout=10)
    if proc.returncode != 0:
        raise SysctlError(f"sysctl {key} in {netns}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def workload_sysctls(ifname: str) -> dict[str, str | int]:
    """Host side of a workload veth, Calico style: proxy ARP answers for 169.254.1.1 at
    once, and the interface forwards."""
    return {
        iface_key("ipv4/conf", ifname, "proxy_arp"): 1,
        iface_key("ipv4/neigh", ifname, "proxy_delay"): 0,
        iface_key("ipv4/conf", ifname, "forwarding"): 1,
    }
