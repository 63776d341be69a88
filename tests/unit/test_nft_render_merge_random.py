# The messages coerce friendly inputs ("tcp", 80, ("tier", "name")); mypy sees the
# normalised field types, so argument types are not checked in this file.
# mypy: disable-error-code="arg-type"
"""Randomised check of rule merging (pure, no root).

Random rule lists (built so that many rules share a shape and merge) are rendered twice,
merged and one nft rule per policy rule, and both renderings are run by a small
interpreter of the nft subset the renderer writes, over random packets. Both must give
what a direct reading of Calico's rule semantics gives: the verdict of the first rule
that matches (allow / deny / pass, or none) and the Log rules met on the way.
"""

from __future__ import annotations

import functools
import ipaddress
import random
from dataclasses import dataclass
from typing import Any

import pytest

from tabby.calc.messages import (
    IPSetUpdate,
    PolicyId,
    PolicyUpdate,
    Rule,
    TierInfo,
    WorkloadEndpointUpdate,
)
from tabby.dataplane.nft import build, merge
from tabby.dataplane.nft.model import Ruleset
from tabby.dataplane.nft.names import MARK_ACCEPT, MARK_PASS, policy_chain
from tabby.dataplane.nft.render import DataplaneState

IPSETS = {
    "a": IPSetUpdate("a", "ip", frozenset({"10.0.0.1", "10.0.0.2", "fd00::1"})),
    "b": IPSetUpdate("b", "net", frozenset({"10.0.0.0/30"})),
    "c": IPSetUpdate("c", "ip", frozenset({"10.0.0.5"})),  # no IPv6 member: no IPv6 set
    "np1": IPSetUpdate("np1", "ip-port", frozenset({"10.0.0.1,tcp:80", "10.0.0.2,udp:443",
                                                    "fd00::1,tcp:81"})),
    "np2": IPSetUpdate("np2", "ip-port", frozenset({"10.0.0.3,tcp:1001"})),
}
ADDRS = {4: ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6", "10.0.1.5", "10.9.0.1"],
         6: ["fd00::1", "fd00::2", "fd00::5"]}
NETS = ["10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32", "10.0.0.5/32", "10.0.0.0/30",
        "10.0.0.4/31", "10.0.1.0/24", "10.0.0.0/16", "fd00::1/128", "fd00::2/128", "fd00::/126"]
PORTS: list[Any] = [80, 81, 82, 443, "80:81", "1000:1002", 1001, 5]
PKT_PORTS = [80, 81, 82, 443, 1000, 1001, 1002, 5]
PORT_PROTOS = {"tcp": 6, "udp": 17, "sctp": 132}
PROTO_NUM = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "ipv6-icmp": 58, "udplite": 136}
NAME_OF = {v: k for k, v in PROTO_NUM.items()}


@dataclass(frozen=True)
class Packet:
    family: int
    proto: int
    saddr: str
    daddr: str
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None


# --- the reference: Calico's rule semantics, read directly -----------------------------------


_net = functools.cache(ipaddress.ip_network)
_addr = functools.cache(ipaddress.ip_address)


def _in_nets(addr: str, nets: tuple[str, ...]) -> bool:
    a = _addr(addr)
    return any(a in _net(net) for net in nets)


def _in_set(addr: str, set_id: str) -> bool:
    s = IPSETS[set_id]
    if s.kind == "ip":
        return addr in s.members
    return _in_nets(addr, tuple(s.members))


def _in_ports(port: int | None, ports: tuple[Any, ...]) -> bool:
    return port is not None and any(p.first <= port <= p.last for p in ports)


def _in_named(addr: str, proto: int, port: int | None, set_id: str) -> bool:
    return port is not None and any(
        m == f"{addr},{NAME_OF.get(proto, '?')}:{port}" for m in IPSETS[set_id].members)


def ref_matches(r: Rule, p: Packet) -> bool:
    if r.ip_version is not None and r.ip_version != p.family:
        return False
    if r.protocol is not None and r.protocol != p.proto:
        return False
    if r.not_protocol is not None and r.not_protocol == p.proto:
        return False
    for side, addr, port in (("src", p.saddr, p.sport), ("dst", p.daddr, p.dport)):
        nets, not_nets = getattr(r, f"{side}_nets"), getattr(r, f"not_{side}_nets")
        if nets and not _in_nets(addr, nets):
            return False
        if not_nets and _in_nets(addr, not_nets):
            return False
        if not all(_in_set(addr, s) for s in getattr(r, f"{side}_ip_set_ids")):
            return False
        if any(_in_set(addr, s) for s in getattr(r, f"not_{side}_ip_set_ids")):
            return False
        ports, named = getattr(r, f"{side}_ports"), getattr(r, f"{side}_named_port_ip_set_ids")
        if (ports or named) and not (_in_ports(port, ports) or any(
                _in_named(addr, p.proto, port, s) for s in named)):
            return False
        if _in_ports(port, getattr(r, f"not_{side}_ports")):
            return False
        if any(_in_named(addr, p.proto, port, s)
               for s in getattr(r, f"not_{side}_named_port_ip_set_ids")):
            return False
    if r.icmp_type is not None and (p.icmp_type != r.icmp_type or (
            r.icmp_code is not None and p.icmp_code != r.icmp_code)):
        return False
    if r.not_icmp_type is not None and p.icmp_type == r.not_icmp_type and (
            r.not_icmp_code is None or p.icmp_code == r.not_icmp_code):
        return False
    return True


def reference(rules: tuple[Rule, ...], p: Packet) -> tuple[str, list[str]]:
    logs: list[str] = []
    for r in rules:
        if ref_matches(r, p):
            if r.action != "log":
                return r.action, logs
            logs.append(r.log_prefix or "tabby-packet")
    return "none", logs


# --- a small interpreter of the nft the renderer writes --------------------------------------

NOPE = object()  # the field does not exist for this packet: the match fails either way


@functools.cache
def _tokens(line: str) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(line):
        c = line[i]
        if c == " ":
            i += 1
        elif c in '"{':
            j = line.index('"' if c == '"' else "}", i + 1)
            out.append(line[i:j + 1])
            i = j + 1
        else:
            j = line.find(" ", i)
            j = len(line) if j < 0 else j
            out.append(line[i:j])
            i = j
    return tuple(out)


def _field(sel: tuple[str, str], p: Packet) -> Any:
    proto, what = sel
    if proto in ("ip", "ip6"):
        if p.family != (4 if proto == "ip" else 6):
            return NOPE
        return _addr(p.saddr if what == "saddr" else p.daddr)
    if proto == "meta":
        return p.proto if what == "l4proto" else p.family
    if proto in ("icmp", "icmpv6"):
        if p.proto != (1 if proto == "icmp" else 58):
            return NOPE
        return p.icmp_type if what == "type" else p.icmp_code
    port = p.sport if what == "sport" else p.dport
    if proto == "th":  # no protocol check: for ICMP it reads the checksum
        return port if port is not None else -1
    return port if p.proto == PROTO_NUM[proto] else NOPE


def _part_matches(sel: tuple[str, str], text: str, value: Any) -> bool:
    proto, what = sel
    if proto in ("ip", "ip6"):
        if "-" in text:
            lo, hi = text.split("-")
            return _addr(lo) <= value <= _addr(hi)
        return value in _net(text)
    if (proto, what) == ("meta", "l4proto"):
        return value == (int(text) if text.isdigit() else PROTO_NUM[text])
    if (proto, what) == ("meta", "nfproto"):
        return value == int(text[-1])
    lo, _, hi = text.partition("-")
    return int(lo) <= value <= int(hi or lo)


def _elements(value: str, sets: Ruleset) -> list[str]:
    if value.startswith("@"):
        return list(sets.sets[value[1:]].elements)
    if value.startswith("{"):
        return [e.strip() for e in value[1:-1].split(",")]
    return [value]


def run_chain(lines: tuple[str, ...], rs: Ruleset, p: Packet) -> tuple[str, list[str]]:
    mark, logs = 0, []
    for line in lines:
        toks, i, ok = _tokens(line), 0, True
        while ok and i < len(toks):
            t = toks[i]
            if t == "comment":
                i += 2
            elif t == "log":
                logs.append(toks[i + 2].strip('"').rstrip())
                i += 3
            elif t == "return":
                verdict = "allow" if mark & MARK_ACCEPT else "pass" if mark & MARK_PASS else "?"
                return verdict, logs
            elif t == "drop":
                return "deny", logs
            elif toks[i:i + 3] == ("meta", "mark", "set"):
                op, val = toks[i + 5], int(toks[i + 6], 16)
                mark = mark & val if op == "&" else mark | val
                i += 7
            elif toks[i:i + 3] == ("meta", "mark", "&"):
                ok = mark & int(toks[i + 3], 16) == int(toks[i + 5], 16)
                i += 6
            else:
                ok, i = match_term(toks, i, rs, p)
    return "none", logs


def match_term(toks: tuple[str, ...], i: int, rs: Ruleset, p: Packet) -> tuple[bool, int]:
    """`selector [. selector ...] [!=] value` at toks[i]: (matches, index after it)."""
    sels = [(toks[i], toks[i + 1])]
    i += 2
    while i < len(toks) and toks[i] == ".":
        sels.append((toks[i + 1], toks[i + 2]))
        i += 3
    neg = toks[i] == "!="
    i += neg
    values = [_field(s, p) for s in sels]
    if any(v is NOPE for v in values):
        return False, i
    hit = any(all(_part_matches(s, part.strip(), v) for s, part, v in
                  zip(sels, elem.split(" . "), values, strict=True))
              for elem in _elements(toks[i], rs))
    return hit != neg, i + 1


# --- random rule lists -----------------------------------------------------------------------


def _pick(rng: random.Random, pool: list[Any], most: int = 2) -> tuple[Any, ...]:
    return tuple(rng.sample(pool, rng.randint(1, most)))


def random_template(rng: random.Random) -> dict[str, Any]:
    """A rule shape: everything but the four mergeable dimensions, plus which of them
    are in use."""
    t: dict[str, Any] = {"protocol": rng.choice([None, None, "tcp", "tcp", "udp", "sctp",
                                                 "icmp", "icmpv6"])}
    ports_ok = t["protocol"] in PORT_PROTOS
    if rng.random() < 0.15:
        t["ip_version"] = rng.choice([4, 6])
    if t["protocol"] is None and rng.random() < 0.2:
        t["not_protocol"] = rng.choice(["udp", "icmp"])
    for side in ("src", "dst"):
        if rng.random() < 0.2:
            t[f"{side}_ip_set_ids"] = _pick(rng, ["a", "b", "c"])
        if rng.random() < 0.1:
            t[f"not_{side}_ip_set_ids"] = _pick(rng, ["a", "c"], 1)
        if rng.random() < 0.15:
            t[f"not_{side}_nets"] = _pick(rng, NETS)
        if (ports_ok or t["protocol"] is None) and rng.random() < 0.15:
            t[f"{side}_named_port_ip_set_ids"] = _pick(rng, ["np1", "np2"])
        if ports_ok and rng.random() < 0.1:
            t[f"not_{side}_named_port_ip_set_ids"] = ("np2",)
        if ports_ok and rng.random() < 0.15:
            t[f"not_{side}_ports"] = _pick(rng, PORTS)
    if t["protocol"] in ("icmp", "icmpv6") and rng.random() < 0.5:
        if rng.random() < 0.5:
            t["icmp_type"] = rng.choice([0, 8])
            if rng.random() < 0.5:
                t["icmp_code"] = 0
        else:
            t["not_icmp_type"] = 3
            if rng.random() < 0.5:
                t["not_icmp_code"] = 4
    dims = ["src_nets", "dst_nets"] + (["src_ports", "dst_ports"] if ports_ok else [])
    t["_dims"] = [d for d in dims if rng.random() < 0.5]
    return t


def random_rules(rng: random.Random, n: int) -> tuple[Rule, ...]:
    templates = [random_template(rng) for _ in range(rng.randint(1, 3))]
    action = rng.choice(["allow", "deny", "pass"])
    out = []
    for i in range(n):
        if rng.random() < 0.15:
            action = rng.choice(["allow", "deny", "pass", "log"])
        t = rng.choice(templates)
        kw = {k: v for k, v in t.items() if not k.startswith("_")}
        for d in t["_dims"]:
            kw[d] = _pick(rng, NETS if d.endswith("nets") else PORTS)
        if action == "log":
            kw["log_prefix"] = f"log{i}"
        out.append(Rule(action, rule_id=f"r{i}", **kw))
        if action == "log":
            action = rng.choice(["allow", "deny", "pass"])
    return tuple(out)


def random_packet(rng: random.Random) -> Packet:
    fam = rng.choice([4, 4, 6])
    proto = rng.choice(["tcp", "tcp", "udp", "sctp", "icmp"])
    if proto == "icmp":
        return Packet(fam, 1 if fam == 4 else 58, rng.choice(ADDRS[fam]), rng.choice(ADDRS[fam]),
                      icmp_type=rng.choice([0, 3, 8]), icmp_code=rng.choice([0, 4]))
    return Packet(fam, PROTO_NUM[proto], rng.choice(ADDRS[fam]), rng.choice(ADDRS[fam]),
                  rng.choice(PKT_PORTS), rng.choice(PKT_PORTS))


def render(rules: tuple[Rule, ...], merge_rules: bool) -> tuple[tuple[str, ...], Ruleset]:
    s = DataplaneState(ipsets=dict(IPSETS))
    s.policies[PolicyId("t", "p")] = PolicyUpdate(("t", "p"), rules)
    s.workloads["w"] = WorkloadEndpointUpdate("w", "cali1", tiers=(TierInfo("t", "Deny", ("p",)),))
    r = build(s, merge=merge_rules)
    assert r.problems == {}, r.problems
    return r.ruleset.chains[policy_chain("t/p", True)].rules, r.ruleset


@pytest.mark.parametrize("seed", range(20))
def test_merged_and_unmerged_agree_with_the_reference(seed: int, monkeypatch) -> None:
    rng = random.Random(seed)
    if seed % 2:  # small named-set threshold: exercise the named-set path with short lists
        monkeypatch.setattr(merge, "ANON_MAX", 2)
    merged_lines = plain_lines = 0
    for _ in range(15):
        rules = random_rules(rng, rng.randint(1, 40))
        merged, mrs = render(rules, True)
        plain, prs = render(rules, False)
        merged_lines += len(merged)
        plain_lines += len(plain)
        for _ in range(40):
            p = random_packet(rng)
            want = reference(rules, p)
            assert run_chain(plain, prs, p) == want, (p, rules, plain)
            assert run_chain(merged, mrs, p) == want, (p, rules, merged)
    assert merged_lines < plain_lines  # the lists are built to merge


def test_the_interpreter_reads_the_renderer_language() -> None:
    rules = (Rule("log", log_prefix="x"),
             Rule("allow", protocol="tcp", src_nets=("10.0.0.1/32",), dst_ports=(80,)),
             Rule("allow", protocol="tcp", src_nets=("10.0.0.2/32",), dst_ports=(443,)),
             Rule("pass", protocol="icmp", not_icmp_type=3, not_icmp_code=4))
    merged, rs = render(rules, True)
    assert len(merged) == 3 and " . tcp dport { " in merged[1]
    tcp = Packet(4, 6, "10.0.0.2", "10.0.0.9", 1, 443)
    assert run_chain(merged, rs, tcp) == ("allow", ["x"])
    assert run_chain(merged, rs, Packet(4, 6, "10.0.0.2", "10.0.0.9", 1, 80)) == ("none", ["x"])
    assert run_chain(merged, rs, Packet(4, 1, "10.0.0.2", "10.0.0.9", icmp_type=3,
                                        icmp_code=4)) == ("none", ["x"])
    assert run_chain(merged, rs, Packet(4, 1, "10.0.0.2", "10.0.0.9", icmp_type=3,
                                        icmp_code=1)) == ("pass", ["x"])
