"""Attach / detach BPF programs as tc `clsact` filters, by file descriptor, over netlink.

One filter per direction, always at the same priority and handle, named
`tabby-ipip-<encap|decap>`: attaching again *replaces* the program atomically (no window
without a filter), and after a restart with no memory the filters are still recognisably
ours by name. Other filters on the interface (someone else's) are never touched; the
clsact qdisc is removed only when no filter at all is left on it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

INGRESS = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
EGRESS = 0xFFFFFFF3
DIRECTIONS = {"ingress": INGRESS, "egress": EGRESS}
ETH_P_IP = 0x0800
TC_PRIO = 0x7AB  # our fixed filter priority (tc "pref")
TC_HANDLE = 1
NAME_PREFIX = "tabby-ipip"
ENOENT, EEXIST, EINVAL = 2, 17, 22


@dataclass(frozen=True)
class Filter:
    direction: str
    prio: int
    protocol: int
    handle: int
    kind: str
    name: str

    @property
    def ours(self) -> bool:
        return self.kind == "bpf" and self.name.startswith(NAME_PREFIX)


def filter_name(role: str) -> str:
    return f"{NAME_PREFIX}-{role}"


def ensure_clsact(ipr: IPRoute, index: int) -> None:
    try:
        ipr.tc("add", "clsact", index)
    except NetlinkError as exc:
        if exc.code != EEXIST:
            raise


def _nla(msg: Any, name: str) -> Any:
    return msg.get_attr(name) if hasattr(msg, "get_attr") else None


def list_filters(ipr: IPRoute, index: int) -> list[Filter]:
    """Every filter on both clsact hooks of `index` (empty without a clsact qdisc)."""
    out: list[Filter] = []
    for direction, parent in DIRECTIONS.items():
        try:
            msgs = list(ipr.get_filters(index=index, parent=parent))
        except NetlinkError as exc:
            if exc.code in (ENOENT, EINVAL):
                continue
            raise
        for msg in msgs:
            kind = _nla(msg, "TCA_KIND") or ""
            if not kind or not msg["handle"]:  # a priority's chain header, not a filter
                continue
            opts = _nla(msg, "TCA_OPTIONS")
            name = (opts.get_attr("TCA_BPF_NAME") if opts is not None and kind == "bpf" else "")
            info = int(msg["info"])
            out.append(
                Filter(
                    direction=direction,
                    prio=info >> 16,
                    protocol=((info & 0xFF) << 8) | ((info >> 8) & 0xFF),  # network order
                    handle=int(msg["handle"]),
                    kind=kind,
                    name=name or "",
                )
            )
    return out


def attach(ipr: IPRoute, index: int, direction: str, prog_fd: int, role: str) -> None:
    """Put program `prog_fd` on `direction` of `index` at our priority (replacing ours)."""
    ensure_clsact(ipr, index)
    ipr.tc(
        "replace-filter",
        "bpf",
        index,
        TC_HANDLE,
        parent=DIRECTIONS[direction],
        prio=TC_PRIO,
        protocol=ETH_P_IP,
        fd=prog_fd,
        name=filter_name(role),
        direct_action=True,
    )


def detach(ipr: IPRoute, index: int, flt: Filter) -> None:
    """Delete one filter (no error if it is already gone)."""
    with contextlib.suppress(NetlinkError):
        ipr.tc(
            "del-filter",
            "bpf",
            index,
            flt.handle,
            parent=DIRECTIONS[flt.direction],
            prio=flt.prio,
            protocol=flt.protocol,
        )


def remove_clsact_if_empty(ipr: IPRoute, index: int) -> None:
    if list_filters(ipr, index):
        return
    with contextlib.suppress(NetlinkError):
        ipr.tc("del", "clsact", index)


def has_clsact(ipr: IPRoute, index: int) -> bool:
    for msg in ipr.tc("dump", index=index):
        if msg.get("index") == index and _nla(msg, "TCA_KIND") == "clsact":
            return True
    return False
