"""The VXLAN tunnel device, as Calico's Felix makes it: one device per node.

    vxlan.tabby: id 4096 dstport 4789 nolearning local <underlay ip> dev <underlay if>
                 mtu <underlay mtu - 50>, address <own tunnel ip>/32, MAC <own VTEP MAC>

Remote nodes are reached through it with a permanent neighbour (tunnel IP -> VTEP MAC) and
an FDB entry (VTEP MAC -> underlay IP) each; routes.py programs those. This module only
creates, checks and removes the device itself. A device whose immutable parameters
(VNI, port, local address, parent) differ is deleted and made again; MTU, MAC and address
are fixed in place. Everything takes a pyroute2 IPRoute bound to the right namespace.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from tabby.dataplane.encap import VXLAN_DEVICE, VXLAN_OVERHEAD, VXLAN_PORT, VXLAN_VNI

log = logging.getLogger(__name__)

DEVICE = VXLAN_DEVICE
VNI = VXLAN_VNI
PORT = VXLAN_PORT
OVERHEAD = VXLAN_OVERHEAD
MIN_MTU = 576

ENODEV = 19
EEXIST = 17
EADDRNOTAVAIL = 99


@dataclass(frozen=True)
class VxlanDevice:
    """What the device should look like (or looks like, when read back)."""

    local_ip: str
    parent_index: int
    mtu: int
    mac: str
    address: str  # the node's tunnel IP, put on the device as a /32
    name: str = DEVICE
    vni: int = VNI
    port: int = PORT

    def __post_init__(self) -> None:
        ipaddress.IPv4Address(self.local_ip)
        ipaddress.IPv4Address(self.address)
        if not MIN_MTU <= self.mtu <= 65535:
            raise ValueError(f"mtu: {self.mtu} out of range {MIN_MTU}-65535")


def tunnel_mtu(underlay_mtu: int) -> int:
    """The tunnel's MTU: what is left of the underlay's after the VXLAN headers."""
    return max(MIN_MTU, underlay_mtu - OVERHEAD)


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def read_device(ipr: Any, name: str = DEVICE) -> tuple[VxlanDevice | None, bool]:
    """(the device as configured, True if it is up) - (None, False) if absent or not VXLAN."""
    idx = _index(ipr, name)
    if idx is None:
        return None, False
    (link,) = ipr.link("get", index=idx)
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return None, False
    data = info.get_attr("IFLA_INFO_DATA")
    addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.addr("dump", index=idx, family=2)
             if a["prefixlen"] == 32]
    dev = VxlanDevice(
        local_ip=data.get_attr("IFLA_VXLAN_LOCAL") or "0.0.0.0",
        parent_index=int(data.get_attr("IFLA_VXLAN_LINK") or 0),
        mtu=int(link.get_attr("IFLA_MTU")),
        mac=str(link.get_attr("IFLA_ADDRESS")).lower(),
        address=addrs[0] if addrs else "0.0.0.0",
        name=name,
        vni=int(data.get_attr("IFLA_VXLAN_ID")),
        port=int(data.get_attr("IFLA_VXLAN_PORT")),
    )
    up = bool(link["flags"] & 1)  # IFF_UP
    return dev, up


def ensure_device(ipr: Any, want: VxlanDevice) -> tuple[int, list[str]]:
    """Make the device match `want`; returns (its index, what was changed)."""
    changes: list[str] = []
    have, up = read_device(ipr, want.name)
    idx = _index(ipr, want.name)
    if idx is not None and (
        have is None
        or (have.vni, have.port, have.local_ip, have.parent_index)
        != (want.vni, want.port, want.local_ip, want.parent_index)
    ):
        # Not a VXLAN device, or parameters the kernel cannot change in place.
        ipr.link("del", index=idx)
        changes.append("recreated")
        idx, have, up = None, None, False
    if idx is None:
        ipr.link(
            "add",
            ifname=want.name,
            kind="vxlan",
            vxlan_id=want.vni,
            vxlan_port=want.port,
            vxlan_learning=0,
            vxlan_local=want.local_ip,
            vxlan_link=want.parent_index,
            mtu=want.mtu,
            address=want.mac,
        )
        idx = _index(ipr, want.name)
        if idx is None:
            raise RuntimeError(f"{want.name}: created but not found")
        changes.append("created")
    else:
        assert have is not None
        if have.mtu != want.mtu:
            ipr.link("set", index=idx, mtu=want.mtu)
            changes.append(f"mtu {have.mtu}->{want.mtu}")
        if have.mac != want.mac:
            ipr.link("set", index=idx, address=want.mac)
            changes.append(f"mac {have.mac}->{want.mac}")
    # Exactly one IPv4 address: the tunnel address.
    for a in ipr.addr("dump", index=idx, family=2):
        addr, plen = a.get_attr("IFA_ADDRESS"), a["prefixlen"]
        if (addr, plen) != (want.address, 32):
            ipr.addr("del", index=idx, address=addr, prefixlen=plen)
            changes.append(f"removed address {addr}/{plen}")
    try:
        ipr.addr("add", index=idx, address=want.address, prefixlen=32)
        changes.append(f"address {want.address}/32")
    except NetlinkError as exc:
        if exc.code != EEXIST:
            raise
    if not up:
        ipr.link("set", index=idx, state="up")
        changes.append("up")
    return idx, changes


def remove_device(ipr: Any, name: str = DEVICE) -> bool:
    """Delete the device if it exists (its routes, neighbours and FDB entries go with it)."""
    idx = _index(ipr, name)
    if idx is None:
        return False
    try:
        ipr.link("del", index=idx)
    except NetlinkError as exc:
        if exc.code != ENODEV:
            raise
        return False
    return True
