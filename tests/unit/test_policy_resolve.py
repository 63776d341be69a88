"""Tier and policy ordering, per-endpoint resolution, and the incremental PolicyOrder."""

from __future__ import annotations

import random
from typing import Any

from tabby.policy.model import PolicySet, Tier, compile_policy
from tabby.policy.resolve import PolicyOrder, applicable, order_policies

V3 = "projectcalico.org/v3"


def gnp(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": V3, "kind": "GlobalNetworkPolicy", "metadata": {"name": name},
            "spec": spec}


def netpol(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": V3, "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def names(ordered: Any) -> list[tuple[str, list[str]]]:
    return [(tp.tier.name, [p.key for p in tp.policies]) for tp in ordered]


def test_tier_order() -> None:
    tiers = [Tier("b", None), Tier("a", None), Tier("z", 1.0), Tier("y", 1.0),
             Tier("default", 1e6), Tier("ghost", 0.0, defined=False)]
    assert [tp.tier.name for tp in order_policies(tiers, [])] == [
        "y", "z", "default", "a", "b", "ghost"]


def test_policy_order_and_tie_break() -> None:
    pols = [compile_policy(d) for d in [
        gnp("c", order=1), gnp("a"), gnp("b", order=1),
        netpol("ns1", "b", order=1), netpol("ns0", "b", order=1), gnp("b-x", order=1),
        netpol("ns", "k", order=0.5)]]
    ordered = order_policies([Tier("default", 1e6)], pols)
    # "b/" < "b-" is false ('-' 0x2d < '/' 0x2f), so b-x sorts before b.
    assert names(ordered) == [("default", ["ns/k", "b-x", "b", "ns0/b", "ns1/b", "c", "a"])]


def test_k8s_policy_kind_in_tie_break() -> None:
    ps = PolicySet.from_resources([
        netpol("x", "knp.default.p", order=1000),
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {}}}])
    kinds = [p.kind for p in ps.ordered()[0].policies]
    # "knp.default.p/x/KubernetesNetworkPolicy" < "knp.default.p/x/NetworkPolicy"
    assert kinds == ["KubernetesNetworkPolicy", "NetworkPolicy"]


def test_applicable_filters_by_direction_selector_and_chain() -> None:
    pols = [compile_policy(d) for d in [
        gnp("in", selector="app == 'a'", ingress=[{"action": "Allow"}]),
        gnp("out", selector="app == 'a'", egress=[{"action": "Allow"}]),
        gnp("both", selector="all()", types=["Ingress", "Egress"]),
        gnp("other", selector="app == 'b'", ingress=[{"action": "Allow"}]),
        gnp("raw", selector="all()", doNotTrack=True, applyOnForward=True,
            ingress=[{"action": "Allow"}]),
        gnp("t1.p", tier="t1", selector="app == 'b'")]]
    ordered = order_policies([Tier("default", 1e6), Tier("t1", 10)], pols)
    labels = {"app": "a"}
    got_in = applicable(ordered, "Ingress", lambda p: p.selector.matches(labels))
    got_out = applicable(ordered, "Egress", lambda p: p.selector.matches(labels))
    assert names(got_in) == [("default", ["both", "in"])]
    assert names(got_out) == [("default", ["both", "out"])]


def test_policy_order_incremental_matches_batch() -> None:
    rng = random.Random(7)
    tiers = {f"t{i}": Tier(f"t{i}", rng.choice([None, 1.0, 2.0, 5.0])) for i in range(4)}
    tiers["default"] = Tier("default", 1e6)
    docs = {}
    order = PolicyOrder()
    for t in tiers.values():
        order.set_tier(t)
    for step in range(400):
        name = f"p{rng.randrange(30)}"
        op = rng.random()
        if op < 0.7:
            doc = gnp(name, tier=rng.choice(list(tiers)), order=rng.choice([None, 1, 2, 3]))
            if doc["spec"]["order"] is None:
                del doc["spec"]["order"]
            docs[name] = compile_policy(doc)
            order.set_policy(docs[name])
        elif name in docs:
            order.remove_policy(PolicyOrder.policy_id(docs.pop(name)))
        if step % 20 == 0:
            expected = order_policies(tiers.values(), docs.values())
            assert names(order.sorted()) == names(expected)
    # A policy in a tier that has no Tier resource sorts in a last, undefined tier.
    order.set_policy(compile_policy(gnp("orphan", tier="nowhere")))
    assert order.sorted()[-1].tier == Tier("nowhere", None, "Deny", defined=False)
    order.remove_tier("default")
    assert any(tp.tier.name == "default" for tp in order.sorted())
