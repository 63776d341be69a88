"""The kernel implementation (Calico's way): the ipip module's tunl0 device.

tunl0 is the module's fallback device, created in every namespace when the module loads
(or by `ip link add tunl0 type ipip`); it receives protocol-4 packets from any address
and sends to the route's gateway, so a remote block is routed with
`<block> via <remote node IP> dev tunl0 onlink`. tunl0 gets MTU underlay - 20 and, if the
pool gave one, the node's tunnel address (so host-to-workload traffic leaves with it).
The fallback device cannot be deleted: tear-down removes our address and sets it down.
"""

from __future__ import annotations

import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

TUNNEL_IF = "tunl0"
EEXIST = 17


class TunnelError(RuntimeError):
    """tunl0 could not be set up; the message says why."""


def ensure_tunl0(ipr: IPRoute, mtu: int, address: str | None) -> None:
    """tunl0 exists, is up, has `mtu` and exactly `address`/32 (or no address)."""
    if not ipr.link_lookup(ifname=TUNNEL_IF):
        try:
            ipr.link("add", ifname=TUNNEL_IF, kind="ipip")
        except NetlinkError as exc:
            if exc.code != EEXIST:
                raise TunnelError(
                    f"{TUNNEL_IF}: cannot create an ipip device ({exc}); is the ipip module "
                    "available? use implementation='bpf'"
                ) from None
    idx = ipr.link_lookup(ifname=TUNNEL_IF)[0]
    link = ipr.get_links(idx)[0]
    if link.get_attr("IFLA_MTU") != mtu:
        ipr.link("set", index=idx, mtu=mtu)
    have = {
        (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
        for a in ipr.get_addr(family=socket.AF_INET, index=idx)
    }
    want = {(address, 32)} if address else set()
    for addr, plen in have - want:
        ipr.addr("del", index=idx, address=addr, prefixlen=plen)
    for addr, plen in want - have:
        ipr.addr("add", index=idx, address=addr, prefixlen=plen)
    ipr.link("set", index=idx, state="up")


def teardown_tunl0(ipr: IPRoute) -> None:
    found = ipr.link_lookup(ifname=TUNNEL_IF)
    if not found:
        return
    idx = found[0]
    for a in ipr.get_addr(family=socket.AF_INET, index=idx):
        try:
            ipr.addr("del", index=idx, address=a.get_attr("IFA_ADDRESS"), prefixlen=a["prefixlen"])
        except NetlinkError:
            pass
    ipr.link("set", index=idx, state="down")
