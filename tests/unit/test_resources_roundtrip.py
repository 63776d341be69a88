"""Round-trip property: any valid manifest -> model -> YAML/JSON -> model gives the same
dict, and that dict is a fixed point (printing it again changes nothing)."""

from __future__ import annotations

import ipaddress
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tabby.resources import dump_json, dump_yaml, from_dict, parse_documents, to_dict

names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
label_values = st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,8}[A-Za-z0-9])?)?", fullmatch=True)
labels = st.dictionaries(names, label_values, max_size=3)
selectors = st.sampled_from(
    ["all()", "", "app == 'web'", 'has(role) && tier != "db"', "env in {'a', 'b'}", "!has(x)"]
)


@st.composite
def v4_nets(draw: st.DrawFn) -> str:
    plen = draw(st.integers(0, 32))
    addr = draw(st.integers(0, 2**32 - 1))
    return str(ipaddress.IPv4Network((addr, plen), strict=False))


@st.composite
def v6_nets(draw: st.DrawFn) -> str:
    plen = draw(st.integers(0, 128))
    addr = draw(st.integers(0, 2**128 - 1))
    return str(ipaddress.IPv6Network((addr, plen), strict=False))


@st.composite
def numeric_ports(draw: st.DrawFn) -> int | str:
    lo = draw(st.integers(1, 65535))
    if draw(st.booleans()):
        return lo
    hi = draw(st.integers(lo, 65535))
    return f"{lo}:{hi}"


port_names = st.from_regex(r"[a-z]([a-z0-9]{0,8}[a-z])?", fullmatch=True)


@st.composite
def rules(draw: st.DrawFn) -> dict:
    rule: dict = {"action": draw(st.sampled_from(["Allow", "Deny", "Log", "Pass"]))}
    proto = draw(st.sampled_from([None, "TCP", "UDP", "SCTP", "ICMP", 17, 132]))
    if proto is not None:
        rule["protocol"] = proto
    if proto == "ICMP" and draw(st.booleans()):
        rule["icmp"] = {"type": draw(st.integers(0, 254)), "code": draw(st.integers(0, 255))}
    nets = v6_nets() if draw(st.booleans()) else v4_nets()
    for side in ("source", "destination"):
        entity: dict = {}
        if draw(st.booleans()):
            entity["nets"] = draw(st.lists(nets, max_size=3))
        if draw(st.booleans()):
            entity["selector"] = draw(selectors)
        if proto in ("TCP", "UDP", "SCTP", 17, 132):
            entity["ports"] = draw(st.lists(numeric_ports() | port_names, max_size=3))
        elif proto is None and draw(st.booleans()):
            entity["ports"] = draw(st.lists(port_names, max_size=2))
        if entity:
            rule[side] = entity
    return rule


@st.composite
def policies(draw: st.DrawFn) -> dict:
    kind = draw(st.sampled_from(["NetworkPolicy", "GlobalNetworkPolicy", "Profile"]))
    spec: dict = {}
    if draw(st.booleans()):
        spec["ingress"] = draw(st.lists(rules(), max_size=3))
    if draw(st.booleans()):
        spec["egress"] = draw(st.lists(rules(), max_size=3))
    if kind != "Profile":
        if draw(st.booleans()):
            spec["selector"] = draw(selectors)
        if draw(st.booleans()):
            spec["order"] = draw(st.sampled_from([0, 10, 100.5, 1e6]))
    meta: dict = {"name": draw(names)}
    if draw(st.booleans()):
        meta["labels"] = draw(labels)
    if kind == "NetworkPolicy" and draw(st.booleans()):
        meta["namespace"] = draw(names)
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec}


@st.composite
def pools(draw: st.DrawFn) -> dict:
    v6 = draw(st.booleans())
    if v6:
        plen = draw(st.integers(8, 120))
        addr = draw(st.integers(0xFD00 << 112, (0xFE00 << 112) - 1))
        net: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv6Network(
            (addr, plen), strict=False
        )
    else:
        plen = draw(st.integers(8, 26))
        addr = draw(st.integers(10 << 24, (11 << 24) - 1))
        net = ipaddress.IPv4Network((addr, plen), strict=False)
    spec: dict = {"cidr": str(net)}
    mode = draw(st.sampled_from(["Always", "CrossSubnet", "Never"]))
    if draw(st.booleans()):
        spec["vxlanMode"] = mode
    elif not v6:
        spec["ipipMode"] = mode
    if draw(st.booleans()):
        spec["natOutgoing"] = draw(st.booleans())
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": draw(names)},
        "spec": spec,
    }


def _assert_round_trip(manifest: dict) -> None:
    res = from_dict(manifest)
    first = to_dict(res)
    (via_yaml,) = parse_documents(dump_yaml([res]))
    (via_json,) = parse_documents(dump_json([res]))
    assert to_dict(via_yaml) == first
    assert to_dict(via_json) == first
    assert to_dict(from_dict(json.loads(json.dumps(first)))) == first


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_policy_round_trip(manifest: dict) -> None:
    _assert_round_trip(manifest)


@settings(max_examples=60, deadline=None)
@given(pools())
def test_ippool_round_trip(manifest: dict) -> None:
    _assert_round_trip(manifest)
