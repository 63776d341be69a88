"""The fast matrix must agree with the reference evaluator on every pair.

Random clusters (fixed seeds) mix tiers with both default actions, every rule action,
profiles that allow, deny and pass, network sets, host-endpoint-free namespaces, selectors,
notSelectors, nets, ports, named ports and ICMP, then compare all pairs.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tabby.policy.evaluate import evaluate
from tabby.policy.match import Flow, Matcher, Peer
from tabby.policy.matrix import reachability, reachability_naive
from tabby.policy.model import PolicySet

V3 = "projectcalico.org/v3"
APPS = ["web", "db", "cache"]


def _entity(rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rng.random() < 0.4:
        out["selector"] = rng.choice([f"app == '{rng.choice(APPS)}'", "has(role)", "!has(role)",
                                      "role == 'ext'", "all()"])
    if rng.random() < 0.2:
        out["notSelector"] = rng.choice(["app == 'db'", "has(role)"])
    if rng.random() < 0.2:
        out["namespaceSelector"] = rng.choice(["team == 'a'", "all()", "global()"])
    if rng.random() < 0.2:
        out["nets"] = [rng.choice(["10.1.0.0/16", "10.0.0.0/8", "10.2.0.4/30", "fd00::/8"])]
    if rng.random() < 0.15:
        out["notNets"] = [rng.choice(["10.1.0.0/24", "10.2.0.0/16"])]
    return out


def _rule(rng: random.Random) -> dict[str, Any]:
    rule: dict[str, Any] = {"action": rng.choice(["Allow", "Allow", "Deny", "Pass", "Log"])}
    proto = rng.choice([None, None, "TCP", "UDP", "ICMP"])
    if proto:
        rule["protocol"] = proto
    src, dst = _entity(rng), _entity(rng)
    if proto in ("TCP", "UDP") and rng.random() < 0.5:
        key = "ports" if rng.random() < 0.7 else "notPorts"
        dst[key] = [rng.choice([80, 53, "50:90", "http", "dns"])]
    if proto == "ICMP" and rng.random() < 0.5:
        rule["icmp" if rng.random() < 0.5 else "notICMP"] = {"type": 8}
    if src:
        rule["source"] = src
    if dst:
        rule["destination"] = dst
    return rule


def random_cluster(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n1", "labels": {"team": "a"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n2", "labels": {"team": "b"}}},
        {"apiVersion": V3, "kind": "Tier", "metadata": {"name": "first"},
         "spec": {"order": 10, "defaultAction": rng.choice(["Deny", "Pass"])}},
        {"apiVersion": V3, "kind": "Profile", "metadata": {"name": "mixed"},
         "spec": {"ingress": [_rule(rng) for _ in range(2)],
                  "egress": [_rule(rng) for _ in range(2)]}},
        {"apiVersion": V3, "kind": "GlobalNetworkSet", "metadata": {"name": "ext",
                                                                     "labels": {"role": "ext"}},
         "spec": {"nets": ["10.2.0.0/24"]}},
    ]
    for i in range(14):
        ns = ["n1", "n2", "n3"][i % 3]
        labels = {"app": rng.choice(APPS)}
        if rng.random() < 0.3:
            labels["role"] = rng.choice(["ext", "admin"])
        spec: dict[str, Any] = {
            "orchestrator": "k8s", "node": "n", "ipNetworks": [f"10.{i % 3}.0.{i}/32"],
            "ports": [{"name": "http", "protocol": "TCP", "port": rng.choice([80, 8080])},
                      {"name": "dns", "protocol": "UDP", "port": 53}]}
        if ns == "n3" or rng.random() < 0.2:
            spec["profiles"] = rng.choice([["mixed"], ["mixed", "kns.n1"], []])
        docs.append({"apiVersion": V3, "kind": "WorkloadEndpoint",
                     "metadata": {"name": f"w{i}", "namespace": ns, "labels": labels},
                     "spec": spec})
    for p in range(rng.randrange(3, 9)):
        spec = {"selector": rng.choice([f"app == '{rng.choice(APPS)}'", "all()", "has(role)"]),
                "types": rng.choice([["Ingress"], ["Egress"], ["Ingress", "Egress"]]),
                "ingress": [_rule(rng) for _ in range(rng.randrange(0, 4))],
                "egress": [_rule(rng) for _ in range(rng.randrange(0, 4))]}
        if rng.random() < 0.5:
            spec["order"] = rng.choice([1, 2, 100])
        if rng.random() < 0.4:
            spec["tier"] = "first"
        if rng.random() < 0.4:
            docs.append({"apiVersion": V3, "kind": "NetworkPolicy",
                         "metadata": {"name": f"p{p}", "namespace": rng.choice(["n1", "n2"])},
                         "spec": spec})
        else:
            docs.append({"apiVersion": V3, "kind": "GlobalNetworkPolicy",
                         "metadata": {"name": f"p{p}"}, "spec": spec})
    return docs


PROBES = [(6, 80, None), (6, 8080, None), (17, 53, None), (1, None, 8), (1, None, 0),
          (132, 80, None)]


@pytest.mark.parametrize("seed", range(40))
def test_matrix_agrees_with_evaluator(seed: int) -> None:
    ps = PolicySet.from_resources(random_cluster(seed))
    assert ps.warnings == []
    eps = ps.workload_endpoints()
    m = Matcher(ps)
    for proto, port, icmp_type in PROBES:
        fast = reachability(ps, eps, protocol=proto, port=port, icmp_type=icmp_type)
        for s in eps:
            for d in eps:
                if s is d:
                    continue
                flow = Flow(Peer(s, s.ip(4)), Peer(d, d.ip(4)), proto, dst_port=port,
                            icmp_type=icmp_type)
                want = evaluate(ps, flow, matcher=m).allowed
                assert fast[s.key][d.key] == want, (seed, proto, port, s.key, d.key)


def test_naive_baseline_agrees() -> None:
    ps = PolicySet.from_resources(random_cluster(3))
    eps = ps.workload_endpoints()
    assert reachability_naive(ps, eps, protocol=6, port=80) == reachability(
        ps, eps, protocol=6, port=80)


def test_random_clusters_are_not_trivial() -> None:
    """The generator must produce both verdicts and several deciders, or the test above
    proves little."""
    deciders = set()
    verdicts = set()
    for seed in range(40):
        ps = PolicySet.from_resources(random_cluster(seed))
        eps = ps.workload_endpoints()
        for s in eps[:5]:
            for d in eps[5:10]:
                v = evaluate(ps, Flow(Peer(s, s.ip(4)), Peer(d, d.ip(4)), 6, dst_port=80))
                verdicts.add(v.allowed)
                for side in (v.egress, v.ingress):
                    deciders.add(side.decider.get("action") or side.decider.get("default"))
    assert verdicts == {True, False}
    assert {"Allow", "Deny", "deny: end of tier", "deny: no policy or profile allowed"} <= deciders
