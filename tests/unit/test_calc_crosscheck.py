"""The calc graph agrees with the policy engine (tabby.policy) on random small clusters:

* each local endpoint's tiers and policies, per direction, in order, equal
  `PolicySet.resolved(endpoint)` (the engine's own resolution);
* its profiles equal the engine's;
* every IP set's members equal the addresses (or nets, or named ports) of the engine's
  endpoints and network sets that the set's selector matches - which checks the graph's
  incremental label inheritance against the engine's `effective_labels`.

Clusters are fed in random order, then mutated, and checked again.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tabby.calc import messages as m
from tabby.calc import samples as s
from tabby.calc.endpoints import policy_id
from tabby.calc.fold import DataplaneModel
from tabby.calc.graph import CalcGraph
from tabby.calc.rules import PROTOCOL_NAMES
from tabby.policy import PolicySet
from tabby.policy.resolve import TierPolicies

ME = "n1"
NAMESPACES = ["a", "b", "c"]
SELECTORS = ["app == 'web'", "app == 'db'", "has(role)", "role == 'r1' && app != 'db'",
             "team == 't1'", "all()", "app in {'web', 'api'}", "!has(team)",
             "pcns.env == 'x'", "projectcalico.org/serviceaccount == 'sa1'", "host == 'h'"]
ORDERS = [None, 1, 5, 5.0, 10, 100]


def _labels(rng: random.Random) -> dict[str, str]:
    out = {"app": rng.choice(["web", "db", "api"])}
    if rng.random() < 0.4:
        out["role"] = rng.choice(["r1", "r2"])
    if rng.random() < 0.2:
        out["team"] = "t2"
    return out


def _ports(rng: random.Random) -> list[dict[str, Any]] | None:
    if rng.random() < 0.5:
        return None
    return [{"name": rng.choice(["http", "dns"]), "protocol": rng.choice(["TCP", "UDP"]),
             "port": rng.randint(1, 9000)}]


def _rule(rng: random.Random, egress: bool) -> dict[str, Any]:
    peer: dict[str, Any] = {}
    if rng.random() < 0.6:
        peer["selector"] = rng.choice(SELECTORS[:-3])
    if rng.random() < 0.2:
        peer["namespaceSelector"] = rng.choice(["env == 'x'", "all()", "global()"])
    if rng.random() < 0.15:
        peer["notSelector"] = rng.choice(["app == 'db'", "has(team)"])
    rule: dict[str, Any] = {"action": rng.choice(["Allow", "Deny", "Pass", "Log"])}
    far = "destination" if egress else "source"
    if peer:
        rule[far] = peer
    if rng.random() < 0.3:
        proto = rng.choice([None, "TCP", "UDP"])
        if proto:
            rule["protocol"] = proto
        rule["destination"] = {**rule.get("destination", {}),
                               "ports": ["http"] if proto is None else ["http", 80]}
    return rule


def cluster(seed: int) -> list[tuple[str, Any]]:
    rng = random.Random(seed)
    items = []
    for ns in NAMESPACES:
        if rng.random() < 0.7:
            items.append(s.namespace(ns, {"env": rng.choice(["x", "y"])}))
    for name in ("p1", "p2"):
        items.append(s.profile(name, ingress=[{"action": "Allow"}], labels_to_apply={
            "team": rng.choice(["t1", "t2"]), "role": "r1"} if rng.random() < 0.7 else None))
    if rng.random() < 0.5:
        items.append(s.profile("kns.a", egress=[{"action": "Deny"}],
                               labels_to_apply={"pcns.env": "x", "team": "t1"}))
    if rng.random() < 0.5:
        items.append(s.profile("ksa.b.sa1", labels_to_apply={"team": "t1"}))
    for i in range(rng.randint(4, 14)):
        ns = rng.choice(NAMESPACES)
        profiles = rng.choice([None, None, ["p1"], ["p2", "p1"], ["ghost"]])
        ips = [f"10.0.{i}.{j + 1}" for j in range(rng.randint(0, 2))]
        if rng.random() < 0.2:
            ips.append(f"fd00::{i + 1}")
        items.append(s.workload(ns, f"w{i}", rng.choice([ME, ME, "n2"]), ips, _labels(rng),
                                profiles=profiles, ports=_ports(rng),
                                sa=rng.choice([None, "sa1", "sa2"])))
    for i in range(rng.randint(0, 3)):
        items.append(s.host_endpoint(f"h{i}", rng.choice([ME, "n2"]), rng.choice(["eth0", "*"]),
                                     [f"192.168.0.{i + 1}"], {"host": "h", **_labels(rng)},
                                     profiles=rng.choice([None, ["p2"]])))
    for i in range(rng.randint(0, 3)):
        ns = rng.choice([None, *NAMESPACES])
        items.append(s.network_set(ns, f"ns{i}", [f"172.16.{i}.0/24", f"172.17.{i}.1/32"],
                                   _labels(rng)))
    for name, order, action in (("t1", 10, "Deny"), ("t2", None, "Pass"),
                                ("kube-admin", None, None)):
        if rng.random() < 0.5:
            items.append(s.tier(name, order, action))
    for i in range(rng.randint(3, 12)):
        tier = rng.choice(["default", "default", "t1", "t2", "t3", "kube-admin"])
        name = f"pol{i}" if tier == "default" else f"{tier}.pol{i}"
        spec: dict[str, Any] = {"tier": tier}
        if (order := rng.choice(ORDERS)) is not None:
            spec["order"] = order
        types = rng.choice([["Ingress"], ["Egress"], ["Ingress", "Egress"]])
        spec["types"] = types
        spec["ingress"] = [_rule(rng, False) for _ in range(rng.randint(0, 2))]
        spec["egress"] = [_rule(rng, True) for _ in range(rng.randint(0, 2))]
        sel = rng.choice(SELECTORS)
        if rng.random() < 0.5:
            kind = rng.choice(["plain", "plain", "untracked", "prednat", "forward"])
            if kind == "untracked":
                spec.update(doNotTrack=True, applyOnForward=True)
            elif kind == "prednat":
                spec.update(preDNAT=True, applyOnForward=True, types=["Ingress"], egress=[])
            elif kind == "forward":
                spec["applyOnForward"] = True
            if rng.random() < 0.3:
                spec["namespaceSelector"] = "env == 'x'"
            items.append(s.global_policy(name, sel, **spec))
        else:
            items.append(s.policy(rng.choice(NAMESPACES), name, sel, **spec))
    for i in range(rng.randint(0, 2)):
        items.append(s.k8s_policy(rng.choice(NAMESPACES), f"k{i}",
                                  podSelector={"matchLabels": {"app": rng.choice(["web", "db"])}},
                                  ingress=[{"from": [{"podSelector": {}}]}]))
    return items


def _chain(tps: tuple[TierPolicies, ...]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(tp.tier.name, tp.tier.default_action, tuple(policy_id(p).name for p in tp.policies))
            for tp in tps]


def _graph_chain(tiers: tuple[m.TierInfo, ...], ingress: bool) -> list[tuple[str, str, tuple]]:
    out = []
    for t in tiers:
        pols = t.ingress_policies if ingress else t.egress_policies
        if pols:
            out.append((t.name, t.default_action, pols))
    return out


def check(graph: CalcGraph, model: DataplaneModel, items: list[tuple[str, Any]]) -> None:
    ps = PolicySet.from_resources([v for _, v in items])
    local = {k: ep for k, ep in ps.endpoints.items() if ep.node == ME}
    sent = {**model.workloads, **model.host_endpoints}
    assert set(sent) == set(local)
    for key, ep in local.items():
        want = ps.resolved(ep)
        got = sent[key]
        assert _graph_chain(got.tiers, True) == _chain(want.ingress), key
        assert _graph_chain(got.tiers, False) == _chain(want.egress), key
        assert got.profile_ids == ep.profiles, key
    # IP sets: membership by the engine's labels.
    for sid, (kind, members) in model.ipsets.items():
        spec = graph.ipsets.spec(sid)
        assert spec is not None
        sel = spec.selector
        want: set[str] = set()
        for ep in ps.endpoints.values():
            if not sel.matches(ep.labels):
                continue
            if spec.port_name is None:
                want.update(str(ip) for ip in ep.ips)
            else:
                want.update(f"{ip},{PROTOCOL_NAMES[p.protocol]}:{p.port}"
                            for p in ep.ports for ip in ep.ips
                            if p.name == spec.port_name
                            and spec.protocol in (None, p.protocol))
        if spec.port_name is None:
            for nset in ps.network_sets:
                if sel.matches(nset.labels):
                    want.update(str(n.network_address) if n.prefixlen == n.max_prefixlen
                                else str(n) for n in nset.nets)
        assert members == want, (sid, str(sel))
        assert kind == ("ip-port" if spec.port_name else
                        "net" if any("/" in x for x in want) else "ip")


@pytest.mark.parametrize("seed", range(40))
def test_graph_agrees_with_policy_engine(seed: int) -> None:
    rng = random.Random(seed * 7919)
    items = cluster(seed)
    rng.shuffle(items)
    model = DataplaneModel()
    graph = CalcGraph(ME, model.apply)
    half = len(items) // 2
    for k, v in items[:half]:
        graph.on_update(k, v)
    graph.on_in_sync()
    for k, v in items[half:]:
        graph.on_update(k, v)
    check(graph, model, items)

    # Mutate: replace some resources by those of another cluster, delete others.
    other = {k: v for k, v in cluster(seed + 1000)}
    current = dict(items)
    for key in rng.sample(sorted(current), len(current) // 3):
        if key in other and rng.random() < 0.7:
            current[key] = other[key]
        else:
            del current[key]
        graph.on_update(key, current.get(key))
    for key in rng.sample(sorted(other), len(other) // 4):
        current[key] = other[key]
        graph.on_update(key, other[key])
    check(graph, model, list(current.items()))
