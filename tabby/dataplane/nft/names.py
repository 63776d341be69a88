"""Names, marks and quoting for Tabby's nftables table (pure; no I/O).

Everything lives in one table, `inet tabby`; names only need to be unique inside it.
Chain and set names are nft identifiers ([A-Za-z][A-Za-z0-9_.-]*), derived from the
calc graph's ids: readable when the id is short and plain, otherwise a sanitised prefix
plus a hash, so two ids never share a name (render checks and refuses a clash).
"""

from __future__ import annotations

import functools
import hashlib
import re

from tabby.dataplane.encap import IPIP_PROTOCOL

FAMILY = "inet"
TABLE = "tabby"

# Packet mark bits (Felix keeps its bits in the top half of the mark too). ACCEPT/PASS
# are per-stage scratch: every endpoint chain clears them on entry. UNTRACKED/PREDNAT
# record an earlier stage's Allow for the filter chains of the same packet. SCRATCH0/1
# OR the alternatives of one rule (numeric ports OR named ports) without a cross product.
MARK_ACCEPT = 0x10000
MARK_PASS = 0x20000
MARK_SCRATCH0 = 0x40000
MARK_SCRATCH1 = 0x80000
MARK_UNTRACKED = 0x100000  # an untracked (doNotTrack) policy allowed this packet
MARK_PREDNAT = 0x200000  # a preDNAT policy allowed this packet
MARK_ALL = 0x3F0000


def hx(value: int) -> str:
    return f"0x{value:x}"


def mark_set(bits: int) -> str:
    return f"meta mark set meta mark | {hx(bits)}"


def mark_clear(bits: int) -> str:
    return f"meta mark set meta mark & {hx(0xFFFFFFFF & ~bits)}"


def mark_is_set(bits: int) -> str:
    return f"meta mark & {hx(bits)} == {hx(bits)}"


def mark_is_clear(bits: int) -> str:
    return f"meta mark & {hx(bits)} == 0x0"


_PLAIN = re.compile(r"^[A-Za-z0-9_.-]+$")


def short_hash(text: str, n: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


@functools.lru_cache(maxsize=1 << 16)
def ident(prefix: str, key: str, maxlen: int = 48) -> str:
    """`prefix-key` if key is plain and short, else `prefix-<sanitised>-<hash>`.

    A plain id that itself ends in "-<10 hex>" is hashed too, so the two shapes cannot
    collide."""
    plain = bool(_PLAIN.match(key)) and not re.search(r"-[0-9a-f]{10}$", key)
    if plain and len(prefix) + 1 + len(key) <= maxlen:
        return f"{prefix}-{key}"
    room = max(1, maxlen - len(prefix) - 12)
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:room].rstrip("-") or "_"
    return f"{prefix}-{clean}-{short_hash(key)}"


def quote(text: str, maxlen: int = 127) -> str:
    """An nft double-quoted string: nft strings cannot escape quotes or backslashes, so
    those (and non-printables) become '_'; truncated to `maxlen` bytes."""
    clean = "".join(c if (" " <= c <= "~" and c not in '"\\') else "_" for c in text)
    return '"' + clean[:maxlen] + '"'


def comment(text: str) -> str:
    return "comment " + quote(text, 120)


# Chain kinds for endpoints. Directions are from the endpoint's point of view.
WL_TO = "tw"  # to workload: its ingress policy
WL_FROM = "fw"  # from workload: its egress policy
HEP_FROM = "fh"  # from host endpoint to the host: ingress, input hook
HEP_TO = "th"  # from the host out of a host endpoint: egress, output hook
HEP_FWD_FROM = "fhf"  # forwarded, arriving on a host endpoint (applyOnForward ingress)
HEP_FWD_TO = "thf"  # forwarded, leaving by a host endpoint (applyOnForward egress)
HEP_RAW_FROM = "fhu"  # untracked ingress (raw prerouting)
HEP_RAW_TO = "thu"  # untracked egress (raw output)
HEP_PREDNAT = "fhp"  # preDNAT ingress (mangle-priority prerouting)


# Every node's underlay (IPv4) address: tunnel packets from/to these bypass host
# endpoint policy (Felix's all-hosts / all-vxlan-net sets).
HOSTS_SET = "tabby-hosts4"
IPIP_PROTO = IPIP_PROTOCOL  # IP-in-IP (ipencap)


def endpoint_chain(kind: str, ifname: str) -> str:
    # "*" (all interfaces) gets its own kind letter so no interface name can clash.
    if ifname == "*":
        return f"tabby-{kind}a-any"
    return f"tabby-{kind}-{ifname}"


def dispatch_map(kind: str) -> str:
    return f"tabby-{kind}-map"


def dispatch_chain(kind: str) -> str:
    return f"tabby-{kind}-dispatch"


def policy_chain(policy: str, inbound: bool) -> str:
    return ident("tabby-pi" if inbound else "tabby-po", policy)


def profile_chain(profile: str, inbound: bool) -> str:
    return ident("tabby-ri" if inbound else "tabby-ro", profile)


def ipset_name(set_id: str, kind: str, version: int) -> str:
    """Kind and family are in the name: a set whose kind changes gets a new name, so an
    incremental update never has to retype a set that rules still reference."""
    k = {"ip": "ip", "net": "net", "ip-port": "np"}[kind]
    return ident(f"tabby-{k}{version}", set_id)


def wl_iface_matches(prefixes: tuple[str, ...], key: str) -> list[str]:
    """`iifname "cali*"` (one per prefix)."""
    return [f'{key} "{p}*"' for p in prefixes]
