"""The tc programs of bpf/ipip.c on one underlay interface: load, fill the maps, attach,
detach, read counters.

`decap=True` (the BPF implementation): both programs, encapsulation on egress and
decapsulation on ingress. `decap=False` (beside a kernel tunl0): only the ingress program,
as a filter that drops protocol-4 packets from non-nodes and leaves the rest to tunl0.

The maps live as long as the programs: a new `TcPrograms` loads a fresh object, fills its
maps from the desired state, and then *replaces* the attached programs in one netlink
request per direction, so a restarted agent takes over without a gap and without pins.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

from pyroute2 import IPRoute

from tabby.dataplane.ipip import bpf_maps as bm
from tabby.dataplane.ipip import tc
from tabby.dataplane.ipip.libbpf import BpfError, BpfMap, BpfObject, map_fd_by_id, prog_fd_by_id
from tabby.dataplane.ipip.libbpf import prog_info as _prog_info


class TcPrograms:
    def __init__(self, underlay_if: str, local_ip: str, object_path: Path, *, decap: bool) -> None:
        self.underlay_if = underlay_if
        self.local_ip = local_ip
        self.object_path = object_path
        self.decap = decap
        self.obj: BpfObject | None = None
        self._maps: dict[str, BpfMap] = {}
        self.lpm: dict[str, tuple[str, str]] = {}  # mirror of ipip_routes
        self.nodes: set[str] = set()  # mirror of ipip_nodes
        self.attached = False

    @property
    def roles(self) -> dict[str, str]:
        """role -> program name, for the programs this mode attaches."""
        if self.decap:
            return {"decap": bm.PROG_DECAP, "encap": bm.PROG_ENCAP}
        return {"decap": bm.PROG_DECAP}

    # --- object and maps -------------------------------------------------------------

    def load(self) -> None:
        if self.obj is not None:
            return
        obj = BpfObject(self.object_path)
        try:
            self._maps = {
                name: obj.map(name)
                for name in (bm.MAP_ROUTES, bm.MAP_NODES, bm.MAP_CONFIG, bm.MAP_COUNTERS)
            }
            flags = bm.CFG_DECAP if self.decap else 0
            self._maps[bm.MAP_CONFIG].update(bm.CONFIG_KEY, bm.config_value(self.local_ip, flags))
        except BaseException:
            obj.close()
            raise
        self.obj = obj
        self.lpm, self.nodes, self.attached = {}, set(), False

    def close(self) -> None:
        """Drop our fds; attached programs (and their maps) stay in the kernel."""
        if self.obj is not None:
            self.obj.close()
        self.obj, self._maps, self.attached = None, {}, False
        self.lpm, self.nodes = {}, set()

    def _map(self, name: str) -> BpfMap:
        if self.obj is None:
            raise BpfError(9, f"ipip: programs not loaded (map {name})")
        return self._maps[name]

    def lpm_set(self, dst: str, value: tuple[str, str]) -> None:
        self._map(bm.MAP_ROUTES).update(bm.route_key(dst), bm.route_value(*value))
        self.lpm[dst] = value

    def lpm_del(self, dst: str) -> None:
        self._map(bm.MAP_ROUTES).delete(bm.route_key(dst))
        self.lpm.pop(dst, None)

    def allow_node(self, ip: str) -> None:
        self._map(bm.MAP_NODES).update(bm.node_key(ip), bm.NODE_VALUE)
        self.nodes.add(ip)

    def forget_node(self, ip: str) -> None:
        self._map(bm.MAP_NODES).delete(bm.node_key(ip))
        self.nodes.discard(ip)

    def read_maps(self) -> tuple[dict[str, tuple[str, str]], set[str]]:
        """What the kernel maps hold (for checks; the mirrors should agree)."""
        lpm = {
            bm.decode_route_key(k): bm.decode_route_value(v)
            for k, v in self._map(bm.MAP_ROUTES).items()
        }
        nodes = {bm.decode_node_key(k) for k in self._map(bm.MAP_NODES).keys()}
        return lpm, nodes

    def counters(self) -> dict[str, int]:
        if self.obj is None:
            return {}
        return _read_counters(self._map(bm.MAP_COUNTERS))

    def program_ids(self) -> dict[str, int]:
        if self.obj is None:
            return {}
        return {r: _prog_info(self.obj.program_fd(p))[0] for r, p in self.roles.items()}

    def map_ids(self) -> dict[str, int]:
        return {name: m.id for name, m in self._maps.items()}

    # --- tc --------------------------------------------------------------------------

    def attach(self, ipr: IPRoute) -> None:
        """Attach (or atomically replace) our programs; remove stray filters of ours."""
        if self.obj is None:
            raise BpfError(9, "ipip: attach before load")
        idx = _index(ipr, self.underlay_if)
        direction = {"decap": "ingress", "encap": "egress"}
        for role, prog in self.roles.items():
            tc.attach(ipr, idx, direction[role], self.obj.program_fd(prog), role)
        keep = {(direction[r], tc.filter_name(r)) for r in self.roles}
        for flt in tc.list_filters(ipr, idx):
            if not flt.ours:
                continue
            if (flt.direction, flt.name) not in keep or (flt.prio, flt.handle) != (
                tc.TC_PRIO,
                tc.TC_HANDLE,
            ):
                tc.detach(ipr, idx, flt)
        self.attached = True

    def is_attached(self, ipr: IPRoute) -> bool:
        idx = _index(ipr, self.underlay_if)
        want = {("ingress" if r == "decap" else "egress", tc.filter_name(r)) for r in self.roles}
        have = {
            (f.direction, f.name)
            for f in tc.list_filters(ipr, idx)
            if f.ours and (f.prio, f.handle) == (tc.TC_PRIO, tc.TC_HANDLE)
        }
        return want <= have


def detach_all(ipr: IPRoute, underlay_if: str) -> int:
    """Remove every filter of ours from `underlay_if` (and clsact if it is left empty)."""
    found = ipr.link_lookup(ifname=underlay_if)
    if not found:
        return 0
    idx = found[0]
    n = 0
    for flt in tc.list_filters(ipr, idx):
        if flt.ours:
            tc.detach(ipr, idx, flt)
            n += 1
    if n:
        tc.remove_clsact_if_empty(ipr, idx)
    return n


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise BpfError(19, f"underlay_if: no interface {ifname!r}")
    return int(found[0])


def _read_counters(m: BpfMap) -> dict[str, int]:
    out = {}
    for i, name in enumerate(bm.COUNTERS):
        v = m.lookup(bm.counter_key(i))
        out[name] = bm.sum_percpu(v) if v is not None else 0
    return out


def attached_program_ids(netns: str | None, underlay_if: str) -> dict[str, int]:
    """role -> id of our attached programs, read with `tc -j` (pyroute2 does not decode
    TCA_BPF_ID). For diagnostics from any process, e.g. `tabby node status`."""
    argv = ["tc"] + (["-n", netns] if netns else []) + ["-j", "filter", "show", "dev", underlay_if]
    out: dict[str, int] = {}
    for direction in ("ingress", "egress"):
        proc = subprocess.run(argv + [direction], capture_output=True, text=True, timeout=10)
        if proc.returncode != 0:
            continue
        for entry in json.loads(proc.stdout or "[]"):
            opts = entry.get("options") or {}
            name = opts.get("bpf_name", "")
            prog = opts.get("prog") or {}
            if name.startswith(tc.NAME_PREFIX) and "id" in prog:
                out[name[len(tc.NAME_PREFIX) + 1 :]] = int(prog["id"])
    return out


def read_counters(netns: str | None, underlay_if: str) -> dict[str, int]:
    """The counters of the programs attached to `underlay_if` (any process may ask):
    found through the decap program's id, then its map ids."""
    ids = attached_program_ids(netns, underlay_if)
    prog_id = ids.get("decap") or ids.get("encap")
    if prog_id is None:
        return {}
    pfd = prog_fd_by_id(prog_id)
    try:
        _, _, map_ids = _prog_info(pfd)
    finally:
        os.close(pfd)
    for mid in map_ids:
        fd = map_fd_by_id(mid)
        m = BpfMap(fd, owned=True)
        try:
            if m.name == bm.MAP_COUNTERS:
                return _read_counters(m)
        finally:
            m.close()
    return {}


def check_ipv4(value: str, field: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{field}: not an IPv4 address: {value!r}") from None
