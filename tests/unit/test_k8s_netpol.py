"""Kubernetes NetworkPolicy semantics as truth tables over the upstream e2e layout.

Namespaces x, y, z (labels ns=<name> plus kubernetes.io/metadata.name), pods a, b, c in each
(label pod=<name>), every pod serving 80 and 81 over TCP, UDP and SCTP with named ports
serve-<port>-<proto>. Pod IP of <ns>/<pod> is 10.<1|2|3>.0.<1|2|3>, so 10.2.0.0/16 is
namespace y. Each case lists the policies, then per probe the pairs that must be DENIED
(everything else must be allowed); pairs from a pod to itself are not judged, as upstream.
Every case is checked with the reference evaluator and with the fast matrix.
"""

from __future__ import annotations

from typing import Any

import pytest

from tabby.policy.errors import PolicyError
from tabby.policy.evaluate import evaluate, make_flow
from tabby.policy.k8s import convert_network_policy, namespace_to_profile, simplify_ports
from tabby.policy.matrix import reachability
from tabby.policy.model import PolicySet
from tabby.policy.rules import protocol_number

NAMESPACES = {"x": 1, "y": 2, "z": 3}
PODS = {"a": 1, "b": 2, "c": 3}
ALL_PODS = [f"{ns}/{p}" for ns in NAMESPACES for p in PODS]


def pod_ip(key: str) -> str:
    ns, pod = key.split("/")
    return f"10.{NAMESPACES[ns]}.0.{PODS[pod]}"


def layout() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ns in NAMESPACES:
        out.append({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns, "labels": {"ns": ns}}})
        for pod in PODS:
            key = f"{ns}/{pod}"
            out.append({
                "apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
                "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod}},
                "spec": {
                    "orchestrator": "k8s", "node": "node1", "pod": pod,
                    "interfaceName": f"cali{ns}{pod}",
                    "ipNetworks": [pod_ip(key) + "/32"],
                    "ports": [{"name": f"serve-{port}-{proto.lower()}", "protocol": proto,
                               "port": port}
                              for port in (80, 81) for proto in ("TCP", "UDP", "SCTP")],
                },
            })
    return out


def expand(pattern: str) -> list[str]:
    ns, _, pod = pattern.partition("/")
    return [k for k in ALL_PODS
            if (ns in ("*", k.split("/")[0])) and (pod in ("*", "", k.split("/")[1]))]


def pairs(srcs: str | list[str], dsts: str | list[str]) -> set[tuple[str, str]]:
    """Pairs from every pod matching srcs to every pod matching dsts ("x/*", "*/a", "*")."""
    src_list = [srcs] if isinstance(srcs, str) else srcs
    dst_list = [dsts] if isinstance(dsts, str) else dsts
    return {(s, d) for sp in src_list for s in expand(sp) for dp in dst_list for d in expand(dp)
            if s != d}


def to(dst: str, *, allowed_from: list[str]) -> set[tuple[str, str]]:
    """Denied pairs when `dst` accepts only the pods in allowed_from."""
    allowed = set().union(*(pairs(a, dst) for a in allowed_from)) if allowed_from else set()
    return pairs("*", dst) - allowed


def frm(src: str, *, allowed_to: list[str]) -> set[tuple[str, str]]:
    """Denied pairs when `src` may reach only the pods in allowed_to."""
    allowed = set().union(*(pairs(src, a) for a in allowed_to)) if allowed_to else set()
    return pairs(src, "*") - allowed


NONE: set[tuple[str, str]] = set()


def np(name: str, *, ns: str = "x", pods: dict[str, Any] | None = None,
       types: list[str] | None = None, ingress: list[Any] | None = None,
       egress: list[Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": pods or {}}
    if types is not None:
        spec["policyTypes"] = types
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def labels(**kv: str) -> dict[str, Any]:
    return {"matchLabels": dict(kv)}


def ns_name(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


POD_A = labels(pod="a")

# (id, policies, [(protocol, port, denied pairs)])
CASES: list[tuple[str, list[dict[str, Any]], list[tuple[str, int, set[tuple[str, str]]]]]] = [
    ("no-policy", [], [("TCP", 80, NONE), ("UDP", 81, NONE)]),
    ("default-deny-ingress", [np("deny", types=["Ingress"])],
     [("TCP", 80, pairs("*", "x/*")), ("UDP", 80, pairs("*", "x/*"))]),
    ("default-deny-ingress-empty-list", [np("deny", types=["Ingress"], ingress=[])],
     [("TCP", 80, pairs("*", "x/*"))]),
    ("default-deny-egress", [np("deny", types=["Egress"])],
     [("TCP", 80, pairs("x/*", "*")), ("SCTP", 81, pairs("x/*", "*"))]),
    ("default-deny-both", [np("deny", types=["Ingress", "Egress"])],
     [("TCP", 80, pairs("x/*", "*") | pairs("*", "x/*"))]),
    ("allow-all-ingress-rule", [np("deny", types=["Ingress"]),
                                np("allow", types=["Ingress"], ingress=[{}])],
     [("TCP", 80, NONE), ("UDP", 81, NONE)]),
    ("allow-all-egress-rule", [np("deny", types=["Egress"]),
                               np("allow", types=["Egress"], egress=[{}])],
     [("TCP", 80, NONE)]),
    ("deny-ingress-to-one-pod", [np("deny-a", pods=POD_A, types=["Ingress"])],
     [("TCP", 80, pairs("*", "x/a"))]),
    ("podselector-alone-is-same-namespace",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"from": [{"podSelector": {}}]}])],
     [("TCP", 80, to("x/a", allowed_from=["x/*"]))]),
    ("podselector-labels",
     [np("p", pods=POD_A, types=["Ingress"],
         ingress=[{"from": [{"podSelector": labels(pod="b")}]}])],
     [("TCP", 80, to("x/a", allowed_from=["x/b"]))]),
    ("namespaceselector-labels",
     [np("p", pods=POD_A, types=["Ingress"],
         ingress=[{"from": [{"namespaceSelector": labels(ns="y")}]}])],
     [("TCP", 80, to("x/a", allowed_from=["y/*"]))]),
    ("namespaceselector-metadata-name-excludes-own",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"from": [ns_name("y")]}])],
     [("TCP", 80, to("x/a", allowed_from=["y/*"]))]),
    ("namespaceselector-empty-is-all-namespaces",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"from": [{"namespaceSelector": {}}]}])],
     [("TCP", 80, NONE)]),
    ("ns-and-pod-in-one-peer",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"from": [{
         "namespaceSelector": {"matchExpressions": [
             {"key": "ns", "operator": "In", "values": ["y", "z"]}]},
         "podSelector": labels(pod="b")}]}])],
     [("TCP", 80, to("x/a", allowed_from=["y/b", "z/b"]))]),
    ("ns-or-pod-two-peers",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"from": [
         {"namespaceSelector": labels(ns="y")}, {"podSelector": labels(pod="b")}]}])],
     [("TCP", 80, to("x/a", allowed_from=["y/*", "x/b"]))]),
    ("all-namespaces-all-pods-one-peer",
     [np("deny", types=["Ingress"]),
      np("p", types=["Ingress"], ingress=[{"from": [{"namespaceSelector": {},
                                                     "podSelector": {}}]}])],
     [("TCP", 80, NONE)]),
    ("namespace-notin",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"from": [{"namespaceSelector": {
         "matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]}}]}])],
     [("TCP", 80, to("x/a", allowed_from=["y/*", "z/*"]))]),
    ("pod-notin-same-namespace",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"from": [{"podSelector": {
         "matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["b"]}]}}]}])],
     [("TCP", 80, to("x/a", allowed_from=["x/c"]))]),
    ("pod-exists-and-doesnotexist",
     [np("p", pods={"matchExpressions": [{"key": "pod", "operator": "Exists"}]},
         types=["Ingress"], ingress=[{"from": [{"namespaceSelector": {}, "podSelector": {
             "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"},
                                  {"key": "pod", "operator": "In", "values": ["c"]}]}}]}])],
     [("TCP", 80, set().union(*(to(d, allowed_from=["*/c"]) for d in expand("x/*"))))]),
    ("matchlabels-and-expressions-anded",
     [np("p", pods={"matchLabels": {"pod": "a"},
                    "matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
         types=["Ingress"])],
     [("TCP", 80, pairs("*", "x/a"))]),
    ("port-only-rule",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"ports": [{"port": 81}]}])],
     [("TCP", 80, pairs("*", "x/a")), ("TCP", 81, NONE), ("UDP", 81, pairs("*", "x/a"))]),
    ("udp-only-policy-still-isolates-tcp",
     [np("p", pods=POD_A, types=["Ingress"],
         ingress=[{"ports": [{"protocol": "UDP", "port": 80}]}])],
     [("TCP", 80, pairs("*", "x/a")), ("UDP", 80, NONE), ("UDP", 81, pairs("*", "x/a"))]),
    ("sctp-only-policy",
     [np("p", pods=POD_A, types=["Ingress"],
         ingress=[{"ports": [{"protocol": "SCTP", "port": 80}]}])],
     [("TCP", 81, pairs("*", "x/a")), ("SCTP", 80, NONE), ("UDP", 80, pairs("*", "x/a"))]),
    ("protocol-without-port-is-all-ports",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"ports": [{"protocol": "TCP"}]}])],
     [("TCP", 80, NONE), ("TCP", 81, NONE), ("UDP", 80, pairs("*", "x/a"))]),
    ("endport-range-includes",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"ports": [{"port": 79, "endPort": 80}]}])],
     [("TCP", 80, NONE), ("TCP", 81, pairs("*", "x/a"))]),
    ("endport-range-excludes",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"ports": [{"port": 81, "endPort": 90}]}])],
     [("TCP", 80, pairs("*", "x/a")), ("TCP", 81, NONE)]),
    ("named-port-ingress",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"ports": [{"port": "serve-80-tcp"}]}])],
     [("TCP", 80, NONE), ("TCP", 81, pairs("*", "x/a")), ("UDP", 80, pairs("*", "x/a"))]),
    ("named-port-udp",
     [np("p", pods=POD_A, types=["Ingress"],
         ingress=[{"ports": [{"protocol": "UDP", "port": "serve-81-udp"}]}])],
     [("UDP", 81, NONE), ("UDP", 80, pairs("*", "x/a")), ("TCP", 81, pairs("*", "x/a"))]),
    ("named-port-protocol-mismatch-never-matches",
     [np("p", pods=POD_A, types=["Ingress"],
         ingress=[{"ports": [{"protocol": "UDP", "port": "serve-80-tcp"}]}])],
     [("UDP", 80, pairs("*", "x/a")), ("TCP", 80, pairs("*", "x/a"))]),
    ("named-port-egress-resolves-on-remote-pod",
     [np("p", pods=POD_A, types=["Egress"], egress=[{"ports": [{"port": "serve-81-tcp"}]}])],
     [("TCP", 81, NONE), ("TCP", 80, pairs("x/a", "*"))]),
    ("ipblock",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"from": [{"ipBlock": {
         "cidr": "10.2.0.0/16"}}]}])],
     [("TCP", 80, to("x/a", allowed_from=["y/*"]))]),
    ("ipblock-except",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"from": [{"ipBlock": {
         "cidr": "10.0.0.0/8", "except": ["10.2.0.0/16", "10.3.0.3/32"]}}]}])],
     [("TCP", 80, to("x/a", allowed_from=["x/*", "z/a", "z/b"]))]),
    ("ipblock-host-bits-masked",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{"from": [{"ipBlock": {
         "cidr": "10.1.0.2/16"}}]}])],
     [("TCP", 80, to("x/a", allowed_from=["x/*"]))]),
    ("egress-ipblock",
     [np("p", pods=POD_A, types=["Egress"], egress=[{"to": [{"ipBlock": {
         "cidr": "10.3.0.0/16"}}]}])],
     [("TCP", 80, frm("x/a", allowed_to=["z/*"]))]),
    ("ingress-and-egress-in-one-policy",
     [np("p", pods=POD_A, types=["Ingress", "Egress"],
         ingress=[{"from": [{"podSelector": labels(pod="b")}]}],
         egress=[{"to": [{"namespaceSelector": labels(ns="y")}]}])],
     [("TCP", 80, to("x/a", allowed_from=["x/b"]) | frm("x/a", allowed_to=["y/*"]))]),
    ("policies-add-up",
     [np("p1", pods=POD_A, types=["Ingress"],
         ingress=[{"from": [{"podSelector": labels(pod="b")}]}]),
      np("p2", pods=POD_A, types=["Ingress"],
         ingress=[{"from": [{"namespaceSelector": labels(ns="y"),
                             "podSelector": labels(pod="c")}]}])],
     [("TCP", 80, to("x/a", allowed_from=["x/b", "y/c"]))]),
    ("policy-in-other-namespace",
     [np("p", ns="y", types=["Ingress"], ingress=[{"from": [ns_name("x")]}])],
     [("TCP", 80, pairs(["y/*", "z/*"], "y/*"))]),
    ("egress-to-pod-a-everywhere",
     [np("p", types=["Egress"],
         egress=[{"to": [{"namespaceSelector": {}, "podSelector": labels(pod="a")}]}])],
     [("TCP", 80, frm("x/a", allowed_to=["*/a"]) | frm("x/b", allowed_to=["*/a"])
       | frm("x/c", allowed_to=["*/a"]))]),
    ("client-egress-deny-wins-over-server-allow",
     [np("deny-out", pods=POD_A, types=["Egress"]),
      np("allow-in", pods=labels(pod="b"), types=["Ingress"],
         ingress=[{"from": [{"podSelector": labels(pod="a")}]}])],
     [("TCP", 80, pairs("x/a", "*") | to("x/b", allowed_from=["x/a"]))]),
    ("policytypes-defaulted-with-egress-rules",
     [np("p", pods=POD_A, egress=[{"to": [{"namespaceSelector": labels(ns="y")}]}])],
     [("TCP", 80, pairs("*", "x/a") | frm("x/a", allowed_to=["y/*"]))]),
    ("egress-udp-only-blocks-tcp",
     [np("p", pods=POD_A, types=["Egress"],
         egress=[{"ports": [{"protocol": "UDP", "port": 80}]}])],
     [("TCP", 80, pairs("x/a", "*")), ("UDP", 80, NONE)]),
    ("several-ports-and-protocols-in-one-rule",
     [np("p", pods=POD_A, types=["Ingress"], ingress=[{
         "from": [{"podSelector": labels(pod="b")}, {"namespaceSelector": labels(ns="z")}],
         "ports": [{"port": 80}, {"protocol": "UDP", "port": 81}, {"protocol": "SCTP"}]}])],
     [("TCP", 80, to("x/a", allowed_from=["x/b", "z/*"])),
      ("TCP", 81, pairs("*", "x/a")),
      ("UDP", 81, to("x/a", allowed_from=["x/b", "z/*"])),
      ("UDP", 80, pairs("*", "x/a")),
      ("SCTP", 81, to("x/a", allowed_from=["x/b", "z/*"]))]),
]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return layout()


def test_case_count() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_truth_table(case: Any, base: list[dict[str, Any]]) -> None:
    _, policies, probes = case
    ps = PolicySet.from_resources(base + policies)
    assert ps.warnings == []
    eps = ps.workload_endpoints()
    for proto, port, denied in probes:
        expected = {(s, d): (s, d) not in denied for s in ALL_PODS for d in ALL_PODS if s != d}
        got_eval = {}
        for s, d in expected:
            verdict = evaluate(ps, make_flow(ps, s, d, protocol=proto, port=port))
            got_eval[(s, d)] = verdict.allowed
        matrix = reachability(ps, eps, protocol=protocol_number(proto), port=port)
        got_matrix = {(s, d): ok for s, row in matrix.items() for d, ok in row.items()}
        wrong = sorted(k for k in expected if got_eval[k] != expected[k])
        assert not wrong, f"{proto}/{port}: evaluator wrong for {wrong}"
        assert got_matrix == expected, f"{proto}/{port}: matrix differs"


# -- conversion details -------------------------------------------------------------------

def test_conversion_shape() -> None:
    knp = np("web", ns="x", pods=labels(app="web"), types=["Ingress", "Egress"],
             ingress=[{"from": [{"podSelector": labels(role="fe"),
                                 "namespaceSelector": labels(team="a")},
                                {"ipBlock": {"cidr": "10.0.0.10/8", "except": ["10.1.0.0/16"]}}],
                       "ports": [{"port": 80}, {"port": 81}, {"port": 82},
                                 {"protocol": "UDP", "port": "dns"}]}],
             egress=[{}])
    out = convert_network_policy(knp)
    assert out["metadata"] == {"name": "knp.default.web", "namespace": "x"}
    spec = out["spec"]
    assert spec["order"] == 1000.0 and spec["tier"] == "default"
    assert spec["types"] == ["Ingress", "Egress"]
    assert spec["selector"] == "projectcalico.org/orchestrator == 'k8s' && app == 'web'"
    peer_sel = {"selector": "projectcalico.org/orchestrator == 'k8s' && role == 'fe'",
                "namespaceSelector": "team == 'a'"}
    block = {"nets": ["10.0.0.0/8"], "notNets": ["10.1.0.0/16"]}
    assert spec["ingress"] == [
        {"action": "Allow", "protocol": "TCP", "source": peer_sel,
         "destination": {"ports": ["80:82"]}},
        {"action": "Allow", "protocol": "TCP", "source": block,
         "destination": {"ports": ["80:82"]}},
        {"action": "Allow", "protocol": "UDP", "source": peer_sel,
         "destination": {"ports": ["dns"]}},
        {"action": "Allow", "protocol": "UDP", "source": block,
         "destination": {"ports": ["dns"]}},
    ]
    assert spec["egress"] == [{"action": "Allow"}]


def test_conversion_all_ports_wins() -> None:
    knp = np("p", ingress=[{"ports": [{"port": 80}, {"protocol": "TCP"}, {"port": 81}]}],
             types=["Ingress"])
    assert convert_network_policy(knp)["spec"]["ingress"] == [
        {"action": "Allow", "protocol": "TCP"}]


def test_conversion_expressions() -> None:
    knp = np("p", pods={"matchExpressions": [
        {"key": "a", "operator": "In", "values": ["1", "2"]},
        {"key": "b", "operator": "NotIn", "values": ["3"]},
        {"key": "c", "operator": "Exists"},
        {"key": "d", "operator": "DoesNotExist"}]}, types=["Ingress"])
    assert convert_network_policy(knp)["spec"]["selector"] == (
        "projectcalico.org/orchestrator == 'k8s' && a in { '1', '2' } && b not in { '3' } "
        "&& has(c) && ! has(d)")


def test_conversion_default_types_without_egress() -> None:
    assert convert_network_policy(np("p"))["spec"]["types"] == ["Ingress"]


@pytest.mark.parametrize("bad, field", [
    ({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}, "ingress[0].ports[0].protocol"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "nope"}}]}]}, "ingress[0].from[0].ipBlock.cidr"),
    ({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}, "ingress[0].ports[0].endPort"),
    ({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}, "ingress[0].ports[0].endPort"),
    ({"policyTypes": ["Sideways"]}, "policyTypes"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Gt"}]}},
     "podSelector.matchExpressions[0].operator"),
])
def test_conversion_errors_name_the_field(bad: dict[str, Any], field: str) -> None:
    knp = np("p")
    knp["spec"].update(bad)
    with pytest.raises(PolicyError, match=field.replace("[", r"\[").replace("]", r"\]")):
        convert_network_policy(knp)


def test_bad_policy_is_skipped_with_warning(base: list[dict[str, Any]]) -> None:
    bad = np("bad", ingress=[{"ports": [{"protocol": "ICMP"}]}], types=["Ingress"])
    ps = PolicySet.from_resources(base + [bad])
    assert len(ps.warnings) == 1 and "knp" not in ps.warnings[0] and "bad" in ps.warnings[0]


def test_namespace_profile() -> None:
    prof = namespace_to_profile({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": "y", "labels": {"team": "b"}}})
    assert prof["metadata"]["name"] == "kns.y"
    assert prof["spec"]["ingress"] == [{"action": "Allow"}]
    assert prof["spec"]["egress"] == [{"action": "Allow"}]
    assert prof["spec"]["labelsToApply"] == {
        "pcns.team": "b", "pcns.kubernetes.io/metadata.name": "y",
        "pcns.projectcalico.org/name": "y"}


def test_namespace_label_change_moves_selection(base: list[dict[str, Any]]) -> None:
    pol = np("p", pods=POD_A, types=["Ingress"],
             ingress=[{"from": [{"namespaceSelector": labels(team="blue")}]}])
    ps = PolicySet.from_resources(base + [pol])
    assert not evaluate(ps, make_flow(ps, "y/b", "x/a", port=80)).allowed
    relabelled = [dict(d, metadata={**d["metadata"], "labels": {"ns": "y", "team": "blue"}})
                  if d["kind"] == "Namespace" and d["metadata"]["name"] == "y" else d
                  for d in base]
    ps = PolicySet.from_resources(relabelled + [pol])
    assert evaluate(ps, make_flow(ps, "y/b", "x/a", port=80)).allowed
    assert not evaluate(ps, make_flow(ps, "z/b", "x/a", port=80)).allowed


def test_simplify_ports() -> None:
    assert simplify_ports([80, 81, 82, 9090, "foo"]) == ["foo", "80:82", 9090]
    assert simplify_ports([80]) == [80]
    assert simplify_ports(["100:102", 99, 104]) == ["99:102", 104]
