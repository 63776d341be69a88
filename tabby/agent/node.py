"""This host as the cluster sees it: its underlay address and its Node resource.

    underlay = detect_underlay()                   # the default route's interface, or --underlay-if
    reg = NodeRegistrar(ds, "n1", underlay, as_number=None, annotations={"k": "v"})
    state = reg.reconcile()                        # idempotent: call again whenever pools change

`reconcile()` makes the Node resource say what this host is: `spec.addresses`
(CalicoNodeIP with its prefix length, InternalIP), `spec.bgp.ipv4Address` (address/prefix,
which is also how other nodes decide CrossSubnet), `spec.bgp.ipv6Address` with
`ip6_autodetect` (calico/node's IP6=autodetect: the underlay's first global IPv6 address),
`spec.bgp.asNumber` when given, the
annotations the agent manages (`tabby.dev/ipip-implementation` while its IP-in-IP
dataplane programs IPIP routes), and - while a VXLAN pool that allows tunnel addresses selects this node - a VXLAN tunnel address
(`spec.ipv4VXLANTunnelAddr`, allocated from IPAM with handle `vxlan-tunnel-addr-<node>`,
as Calico does) and a VTEP MAC (`spec.vxlanTunnelMACAddr`). The MAC, unless one is already
set, is derived from the node name, so it survives restarts and re-registration. With no
such pool any more, the tunnel address is released and both fields are cleared. Every
write is a compare-and-swap on the Node's revision, retried on conflict; other fields
(labels, ExternalIP addresses, bgp fields we do not manage) are kept.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from tabby.datastore.base import Conflict, Datastore, NotFound
from tabby.datastore.client import ResourceClient
from tabby.ipam.allocator import IPAM
from tabby.ipam.pools import Pool, read_pools
from tabby.ipam.store import IPAMError
from tabby.resources import from_dict, to_dict

log = logging.getLogger(__name__)

IFA_F_TENTATIVE = 0x40  # an IPv6 address still in duplicate address detection
TUNNEL_HANDLE_PREFIX = "vxlan-tunnel-addr-"
TUNNEL_ATTR_TYPE = "vxlanTunnelAddress"
CAS_RETRIES = 10


class UnderlayError(RuntimeError):
    """The underlay interface or address cannot be found (message names the flag)."""


@dataclass(frozen=True)
class Underlay:
    ifname: str
    index: int
    ip: str
    prefixlen: int
    mtu: int
    ip6: str | None = None  # the interface's first global IPv6 address, if it has one
    prefixlen6: int | None = None

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefixlen}"

    @property
    def cidr6(self) -> str | None:
        return f"{self.ip6}/{self.prefixlen6}" if self.ip6 else None


def detect_underlay(ifname: str | None = None, netns: str | None = None) -> Underlay:
    """The interface given (or the one holding the IPv4 default route), its first global
    IPv4 address and, if it has one, its first global IPv6 address (not still in duplicate
    address detection), read in this process's namespace (or `netns`, for tests)."""
    with IPRoute(netns=netns, flags=0) if netns else IPRoute() as ipr:
        if ifname is None:
            index = None
            for r in ipr.route("dump", family=2):
                table = r.get_attr("RTA_TABLE") or r["table"]
                if r["dst_len"] == 0 and table == 254 and r.get_attr("RTA_OIF"):
                    index = int(r.get_attr("RTA_OIF"))
                    break
            if index is None:
                raise UnderlayError("--underlay-if: there is no IPv4 default route to find "
                                    "the underlay interface by; name it")
        else:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise UnderlayError(f"--underlay-if: no interface {ifname!r} here")
            index = int(found[0])
        (link,) = ipr.link("get", index=index)
        name = link.get_attr("IFLA_IFNAME")
        mtu = int(link.get_attr("IFLA_MTU"))
        v6 = [(a.get_attr("IFA_ADDRESS"), int(a["prefixlen"]))
              for a in ipr.addr("dump", index=index, family=10)
              if a["scope"] == 0 and not a["flags"] & IFA_F_TENTATIVE]
        ip6, plen6 = v6[0] if v6 else (None, None)
        for a in ipr.addr("dump", index=index, family=2):
            if a["scope"] == 0:  # global
                return Underlay(name, index, a.get_attr("IFA_ADDRESS"), int(a["prefixlen"]),
                                mtu, ip6, plen6)
    raise UnderlayError(f"--underlay-if: interface {name!r} has no global IPv4 address")


def vtep_mac(node_name: str) -> str:
    """A stable VTEP MAC for a node: locally administered, unicast, from the name's hash."""
    b = bytearray(hashlib.sha256(f"tabby-vxlan/{node_name}".encode()).digest()[:6])
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


@dataclass(frozen=True)
class NodeState:
    """What registration settled on (what the route driver needs of this node)."""

    name: str
    underlay: Underlay
    tunnel_ip: str | None
    mac: str | None
    revision: int
    changed: bool = False


class NodeRegistrar:
    def __init__(self, ds: Datastore, node_name: str, underlay: Underlay, *,
                 as_number: int | None = None,
                 annotations: Mapping[str, str | None] | None = None,
                 ip6_autodetect: bool = False) -> None:
        self.ds = ds
        # calico/node's IP6=autodetect: register the underlay's IPv6 address as
        # spec.bgp.ipv6Address. Off (IP6=none, Calico's default): leave that field alone.
        self.ip6_autodetect = ip6_autodetect
        self.client = ResourceClient(ds)
        self.node_name = node_name
        self.underlay = underlay
        self.as_number = as_number
        # Annotations this agent manages: set to the value, or removed where it is None
        # (e.g. tabby.dev/ipip-implementation, which tells BGP who programs IPIP routes).
        self.annotations = dict(annotations or {})
        self.handle = TUNNEL_HANDLE_PREFIX + node_name

    # -- VXLAN tunnel address ----------------------------------------------------------------

    def _tunnel_pools(self, labels: dict[str, str]) -> list[Pool]:
        """IPv4 pools that want VXLAN, allow tunnel addresses and select this node."""
        out = []
        for p in read_pools(self.ds):
            spec = p.raw.get("spec") or {}
            if (p.version == 4 and not p.disabled and "Tunnel" in p.allowed_uses
                    and (spec.get("vxlanMode") or "Never") != "Never"
                    and p.selects_node(labels)):
                out.append(p)
        return out

    def _tunnel_address(self, current: str | None, labels: dict[str, str]) -> str | None:
        ipam = IPAM(self.ds)
        pools = self._tunnel_pools(labels)
        if not pools:
            if ipam.ips_by_handle(self.handle):
                released = ipam.release_by_handle(self.handle)
                log.info("no VXLAN pool selects this node: released tunnel address %s",
                         ", ".join(map(str, released)))
            return None
        held = [ip for ip in ipam.ips_by_handle(self.handle) if ip.version == 4]

        def usable(ip: Any) -> bool:
            return any(ip in p.cidr for p in pools)

        if current is not None:
            addr = ipaddress.IPv4Address(current)
            if addr in held and usable(addr):
                return current
            if addr not in held and usable(addr):
                try:  # IPAM lost it (or never had it): take it back if it is free
                    ipam.assign_ip(addr, self.handle, self._attrs(), node=self.node_name)
                    return current
                except IPAMError:
                    pass
        for ip in held:
            if usable(ip):
                return str(ip)
        if held:
            ipam.release_by_handle(self.handle)
        got = ipam.auto_assign(self.handle, self.node_name, num_v4=1, attrs=self._attrs(),
                               pools=[p.name or str(p.cidr) for p in pools],
                               node_labels=labels, use="Tunnel")
        addr_s = str(got.v4[0].ip)
        log.info("allocated VXLAN tunnel address %s", addr_s)
        return addr_s

    def _attrs(self) -> dict[str, str]:
        return {"node": self.node_name, "type": TUNNEL_ATTR_TYPE}

    # -- the Node resource ---------------------------------------------------------------------

    def _desired(self, doc: dict[str, Any]) -> dict[str, Any]:
        doc = json.loads(json.dumps(doc))  # a deep copy we may change
        meta = doc.setdefault("metadata", {})
        if self.annotations:
            notes = dict(meta.get("annotations") or {})
            for key, value in self.annotations.items():
                if value is None:
                    notes.pop(key, None)
                else:
                    notes[key] = value
            if notes:
                meta["annotations"] = notes
            else:
                meta.pop("annotations", None)
        spec = doc.setdefault("spec", {})
        ul = self.underlay
        others = [a for a in spec.get("addresses") or []
                  if a.get("type") not in ("CalicoNodeIP", "InternalIP")]
        spec["addresses"] = [{"address": ul.cidr, "type": "CalicoNodeIP"},
                             {"address": ul.ip, "type": "InternalIP"}, *others]
        bgp = spec.setdefault("bgp", {})
        bgp["ipv4Address"] = ul.cidr
        if self.ip6_autodetect and ul.cidr6:
            bgp["ipv6Address"] = ul.cidr6
        if self.as_number is not None:
            bgp["asNumber"] = self.as_number
        labels = dict((doc.get("metadata") or {}).get("labels") or {})
        tunnel = self._tunnel_address(spec.get("ipv4VXLANTunnelAddr"), labels)
        if tunnel is None:
            spec.pop("ipv4VXLANTunnelAddr", None)
            spec.pop("vxlanTunnelMACAddr", None)
        else:
            spec["ipv4VXLANTunnelAddr"] = tunnel
            spec["vxlanTunnelMACAddr"] = (spec.get("vxlanTunnelMACAddr")
                                          or vtep_mac(self.node_name)).lower()
        return doc

    def reconcile(self) -> NodeState:
        """Create or update this node's Node resource (CAS, retried on conflict)."""
        for _ in range(CAS_RETRIES):
            try:
                res = self.client.get("Node", self.node_name)
                current = to_dict(res)
                version = res.metadata.resourceVersion
            except NotFound:
                current = {"apiVersion": "projectcalico.org/v3", "kind": "Node",
                           "metadata": {"name": self.node_name}, "spec": {}}
                version = None
            current.get("metadata", {}).pop("resourceVersion", None)
            want = self._desired(current)
            changed = want != current
            try:
                if version is None:
                    saved = self.client.create(from_dict(want))
                elif changed:
                    want["metadata"]["resourceVersion"] = version
                    saved = self.client.update(from_dict(want))
                else:
                    saved = res
            except Conflict:
                continue  # someone else wrote the Node meanwhile: read it again
            except NotFound:
                continue  # deleted meanwhile: create it
            spec = saved.spec  # type: ignore[attr-defined]  # a Node
            if changed or version is None:
                log.info("node %s registered: address %s, tunnel %s, mac %s",
                         self.node_name, self.underlay.cidr, spec.ipv4VXLANTunnelAddr,
                         spec.vxlanTunnelMACAddr)
            return NodeState(self.node_name, self.underlay,
                             str(spec.ipv4VXLANTunnelAddr) if spec.ipv4VXLANTunnelAddr else None,
                             str(spec.vxlanTunnelMACAddr).lower()
                             if spec.vxlanTunnelMACAddr else None,
                             int(saved.metadata.resourceVersion or 0),
                             changed or version is None)
        raise Conflict(f"Node {self.node_name!r}: still conflicting after {CAS_RETRIES} tries")


def tunnel_from_node(doc: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(tunnel IP, VTEP MAC) from a Node's JSON, as the syncer delivers it."""
    spec = (doc or {}).get("spec") or {}
    mac = spec.get("vxlanTunnelMACAddr")
    return spec.get("ipv4VXLANTunnelAddr"), (mac.lower() if mac else None)


def node_ipv4(doc: dict[str, Any] | None) -> str | None:
    """A Node's underlay IPv4 address (`spec.bgp.ipv4Address` without its prefix), or None
    when it has none or it is not a valid IPv4 address."""
    spec = (doc or {}).get("spec") or {}
    text = str((spec.get("bgp") or {}).get("ipv4Address") or "").split("/")[0]
    try:
        return str(ipaddress.IPv4Address(text)) if text else None
    except ValueError:
        return None


def named_netns() -> str | None:
    """The `ip netns` name of the namespace this process is in, or None when it is in no
    named namespace (the host's own, typically). Fails closed: None when unsure."""
    try:
        me = os.stat("/proc/self/ns/net")
        entries = list(os.scandir("/run/netns"))
    except OSError:
        return None
    for entry in entries:
        try:
            st = os.stat(entry.path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
            return entry.name
    return None
