"""Kubernetes inputs converted as Calico converts them.

* `networking.k8s.io/v1` NetworkPolicy -> a namespaced v3 NetworkPolicy named
  ``knp.default.<name>`` in the default tier at order 1000 whose rules all Allow; a selected
  pod that no rule allows is then dropped at the end of the default tier, which gives
  Kubernetes' isolation semantics.
* `v1` Namespace -> profile ``kns.<ns>``: allow-all ingress and egress, and the namespace's
  labels as ``pcns.<key>`` labels for the pods in it (how namespaceSelectors see them).

Both functions take and return plain JSON-shaped dicts (Calico's field names), so the
result can be fed to the policy model, printed or stored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from tabby.policy.errors import PolicyError
from tabby.policy.selectors import (
    LABEL_NAME,
    LABEL_ORCHESTRATOR,
    NAMESPACE_LABEL_PREFIX,
    NAMESPACE_PROFILE_PREFIX,
)

K8S_POLICY_PREFIX = "knp.default."
K8S_POLICY_ORDER = 1000.0
K8S_NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
K8S_POLICY_KIND = "KubernetesNetworkPolicy"  # Felix's policy key kind (tie-break string)

_K8S_PROTOCOLS = {"TCP", "UDP", "SCTP"}


def is_k8s_network_policy(doc: Mapping[str, Any]) -> bool:
    kind = doc.get("kind")
    return kind == "KubernetesNetworkPolicy" or (
        kind == "NetworkPolicy" and str(doc.get("apiVersion", "")).startswith("networking.k8s.io/")
    )


def is_k8s_namespace(doc: Mapping[str, Any]) -> bool:
    kind = doc.get("kind")
    return kind == "KubernetesNamespace" or (kind == "Namespace" and doc.get("apiVersion") == "v1")


def namespace_labels(ns: Mapping[str, Any]) -> dict[str, str]:
    """A namespace's labels including the one the API server always sets."""
    meta = ns.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    labels.setdefault(K8S_NAMESPACE_NAME_LABEL, meta.get("name", ""))
    return labels


def namespace_to_profile(ns: Mapping[str, Any]) -> dict[str, Any]:
    """`v1` Namespace -> the ``kns.<ns>`` Profile (allow-all, namespace labels to apply)."""
    name = (ns.get("metadata") or {}).get("name")
    if not name:
        raise PolicyError("Namespace metadata.name: missing")
    labels = {NAMESPACE_LABEL_PREFIX + k: v for k, v in namespace_labels(ns).items()}
    labels[NAMESPACE_LABEL_PREFIX + LABEL_NAME] = name
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "Profile",
        "metadata": {"name": NAMESPACE_PROFILE_PREFIX + name},
        "spec": {
            "ingress": [{"action": "Allow"}],
            "egress": [{"action": "Allow"}],
            "labelsToApply": labels,
        },
    }


def label_selector_to_calico(sel: Mapping[str, Any] | None, *, pod: bool, where: str) -> str:
    """A Kubernetes LabelSelector as Calico selector text (k8sSelectorToCalico).

    Pod selectors always start with the orchestrator clause, so they only match pods; an
    absent namespace selector is "" and an empty one is all() (every namespace).
    """
    terms = [f"{LABEL_ORCHESTRATOR} == 'k8s'"] if pod else []
    if sel is None:
        return " && ".join(terms)
    if not isinstance(sel, Mapping):
        raise PolicyError(f"{where}: expected a label selector mapping")
    match_labels = sel.get("matchLabels") or {}
    match_exprs = sel.get("matchExpressions") or []
    if not pod and not match_labels and not match_exprs:
        return "all()"
    for key in sorted(match_labels):
        terms.append(f"{key} == '{match_labels[key]}'")
    for i, expr in enumerate(match_exprs):
        key = expr.get("key")
        op = expr.get("operator")
        values = expr.get("values") or []
        joined = "', '".join(values)
        if op == "In":
            terms.append(f"{key} in {{ '{joined}' }}")
        elif op == "NotIn":
            terms.append(f"{key} not in {{ '{joined}' }}")
        elif op == "Exists":
            terms.append(f"has({key})")
        elif op == "DoesNotExist":
            terms.append(f"! has({key})")
        else:
            raise PolicyError(
                f"{where}.matchExpressions[{i}].operator: invalid value {op!r} "
                "(In, NotIn, Exists, DoesNotExist)"
            )
    return " && ".join(terms)


def convert_network_policy(knp: Mapping[str, Any]) -> dict[str, Any]:
    """`networking.k8s.io/v1` NetworkPolicy -> v3 NetworkPolicy dict (K8sNetworkPolicyToCalico)."""
    meta = knp.get("metadata") or {}
    name = meta.get("name")
    namespace = meta.get("namespace") or "default"
    if not name:
        raise PolicyError("NetworkPolicy metadata.name: missing")
    spec = knp.get("spec") or {}
    where = f"NetworkPolicy {namespace}/{name} spec"

    ingress: list[dict[str, Any]] = []
    for i, rule in enumerate(spec.get("ingress") or []):
        rule = rule or {}
        ingress += _rule(rule.get("from"), rule.get("ports"), True, f"{where}.ingress[{i}]")
    egress: list[dict[str, Any]] = []
    for i, rule in enumerate(spec.get("egress") or []):
        rule = rule or {}
        egress += _rule(rule.get("to"), rule.get("ports"), False, f"{where}.egress[{i}]")

    given = spec.get("policyTypes") or []
    for t in given:
        if t not in ("Ingress", "Egress"):
            raise PolicyError(f"{where}.policyTypes: invalid value {t!r} (Ingress, Egress)")
    if not given:
        # There is no API server in front of us, so apply its defaulting here: Ingress, plus
        # Egress when egress rules exist. (Calico itself, given no types, assumes Ingress.)
        given = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    types = [t for t in ("Ingress", "Egress") if t in given]  # always in this order

    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "NetworkPolicy",
        "metadata": {"name": K8S_POLICY_PREFIX + name, "namespace": namespace},
        "spec": {
            "tier": "default",
            "order": K8S_POLICY_ORDER,
            "selector": label_selector_to_calico(
                spec.get("podSelector") or {}, pod=True, where=f"{where}.podSelector"),
            "types": types,
            "ingress": ingress,
            "egress": egress,
        },
    }


def _rule(peers: Sequence[Any] | None, ports: Sequence[Any] | None, ingress: bool,
          where: str) -> list[dict[str, Any]]:
    """One Kubernetes rule -> Calico rules: one per (protocol group, peer) pair."""
    peer_fields = [_peer(p, f"{where}.{'from' if ingress else 'to'}[{i}]")
                   for i, p in enumerate(peers or [])] or [{}]

    # protocol -> list of ports, None meaning every port of the protocol. "" = any protocol.
    by_proto: dict[str, list[Any] | None] = {}
    for i, port in enumerate(ports or []):
        port = port or {}
        proto = port.get("protocol") or "TCP"
        if proto not in _K8S_PROTOCOLS:
            raise PolicyError(f"{where}.ports[{i}].protocol: invalid value {proto!r} (TCP, UDP, SCTP)")
        calico_ports = _port(port, f"{where}.ports[{i}]")
        if calico_ports is None:
            by_proto[proto] = None  # "all ports" wins over specific ones
        elif proto not in by_proto or by_proto[proto] is not None:
            by_proto.setdefault(proto, [])
            by_proto[proto].extend(calico_ports)  # type: ignore[union-attr]
    if not by_proto:
        by_proto = {"": None}

    rules: list[dict[str, Any]] = []
    for proto in sorted(by_proto):
        proto_ports = simplify_ports(by_proto[proto])
        for fields in peer_fields:
            rule: dict[str, Any] = {"action": "Allow"}
            if proto:
                rule["protocol"] = proto
            ports_part = {"ports": proto_ports} if proto_ports else {}
            if ingress:
                if fields:
                    rule["source"] = dict(fields)
                if ports_part:
                    rule["destination"] = ports_part
            elif fields or ports_part:
                rule["destination"] = {**ports_part, **fields}
            rules.append(rule)
    return rules


def _peer(peer: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    if not peer:
        # An empty peer selects nothing in Kubernetes' API validation; Calico would treat
        # it as "all pods of this namespace" via nil selectors. Reject it clearly.
        raise PolicyError(f"{where}: a peer needs podSelector, namespaceSelector or ipBlock")
    block = peer.get("ipBlock")
    if block is not None:
        if peer.get("podSelector") is not None or peer.get("namespaceSelector") is not None:
            raise PolicyError(f"{where}: ipBlock cannot be combined with selectors")
        out: dict[str, Any] = {"nets": [_masked(block.get("cidr"), f"{where}.ipBlock.cidr")]}
        excepts = [_masked(c, f"{where}.ipBlock.except") for c in block.get("except") or []]
        if excepts:
            out["notNets"] = excepts
        return out
    out = {"selector": label_selector_to_calico(peer.get("podSelector"), pod=True,
                                                where=f"{where}.podSelector")}
    ns_sel = label_selector_to_calico(peer.get("namespaceSelector"), pod=False,
                                      where=f"{where}.namespaceSelector")
    if ns_sel:
        out["namespaceSelector"] = ns_sel
    return out


def _masked(cidr: Any, where: str) -> str:
    try:
        return str(ipaddress.ip_network(str(cidr), strict=False))
    except ValueError:
        raise PolicyError(f"{where}: invalid CIDR {cidr!r}") from None


def _port(port: Mapping[str, Any], where: str) -> list[Any] | None:
    """A NetworkPolicyPort's port part: None = all ports of the protocol."""
    value = port.get("port")
    end = port.get("endPort")
    if value is None:
        if end is not None:
            raise PolicyError(f"{where}.endPort: requires port")
        return None
    if isinstance(value, str) and not value.isdigit():
        if end is not None:
            raise PolicyError(f"{where}.endPort: not allowed with named port {value!r}")
        return [value]
    num = int(value)
    if not 1 <= num <= 65535:
        raise PolicyError(f"{where}.port: invalid value {value!r} (1-65535)")
    if end is None:
        return [num]
    if not isinstance(end, int) or not num <= end <= 65535:
        raise PolicyError(f"{where}.endPort: invalid value {end!r} (port..65535)")
    return [f"{num}:{end}"]


def simplify_ports(ports: list[Any] | None) -> list[Any] | None:
    """Merge numeric ports and ranges into the fewest ranges (Calico's SimplifyPorts)."""
    if not ports or len(ports) <= 1:
        return ports
    named = [p for p in ports if isinstance(p, str) and ":" not in p]
    numbers: set[int] = set()
    for p in ports:
        if isinstance(p, int):
            numbers.add(p)
        elif isinstance(p, str) and ":" in p:
            lo, hi = (int(x) for x in p.split(":"))
            numbers.update(range(lo, hi + 1))
    if len(numbers) <= 1:
        return ports
    out: list[Any] = list(named)
    ordered = sorted(numbers)
    start = prev = ordered[0]
    for n in ordered[1:] + [None]:  # type: ignore[list-item]
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(start if start == prev else f"{start}:{prev}")
        if n is not None:
            start = prev = n
    return out
