"""Datastore (key, value) pairs for feeding the calc graph in tests and benchmarks.

Each builder returns `(key, value)` as the agent would see it: the key from the resource
registry, the value as `tabby.resources.to_dict` stores it. With `validate=True` (the
default) the document goes through the real resource models first, so defaults and
normalisation are exactly the datastore's; the benchmark passes `validate=False` to
build hundreds of thousands of documents quickly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tabby.ipam.store import block_key
from tabby.resources import from_dict, kind_info, to_dict

V3 = "projectcalico.org/v3"
KV = tuple[str, dict[str, Any]]


def _doc(kind: str, name: str, spec: Mapping[str, Any], namespace: str | None = None,
         labels: Mapping[str, str] | None = None, api: str = V3,
         validate: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    doc = {"apiVersion": api, "kind": kind, "metadata": meta, "spec": dict(spec)}
    return to_dict(from_dict(doc)) if validate else doc


def _kv(alias: str, doc: dict[str, Any]) -> KV:
    meta = doc["metadata"]
    return kind_info(alias).key(meta["name"], meta.get("namespace")), doc


def _drop_none(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if v is not None}


def workload(ns: str, name: str, node: str, ips: Iterable[str],
             labels: Mapping[str, str] | None = None, *, profiles: list[str] | None = None,
             ports: list[dict[str, Any]] | None = None, sa: str | None = None,
             iface: str | None = None, mac: str | None = None,
             validate: bool = True) -> KV:
    spec = _drop_none({
        "orchestrator": "k8s", "node": node, "pod": name,
        "ipNetworks": [ip if "/" in ip else f"{ip}/{128 if ':' in ip else 32}" for ip in ips],
        "interfaceName": iface or ("cali" + name)[:15], "profiles": profiles, "ports": ports,
        "serviceAccountName": sa, "mac": mac,
    })
    return _kv("workloadendpoint", _doc("WorkloadEndpoint", name, spec, ns, labels,
                                        validate=validate))


def host_endpoint(name: str, node: str, iface: str | None, ips: Iterable[str] = (),
                  labels: Mapping[str, str] | None = None, *,
                  profiles: list[str] | None = None,
                  ports: list[dict[str, Any]] | None = None) -> KV:
    spec = _drop_none({"node": node, "interfaceName": iface, "expectedIPs": list(ips) or None,
                       "profiles": profiles, "ports": ports})
    return _kv("hostendpoint", _doc("HostEndpoint", name, spec, labels=labels))


def global_policy(name: str, selector: str = "all()", *, validate: bool = True,
                  **spec: Any) -> KV:
    return _kv("globalnetworkpolicy", _doc("GlobalNetworkPolicy", name,
                                           {"selector": selector, **spec}, validate=validate))


def policy(ns: str, name: str, selector: str = "", *, validate: bool = True,
           **spec: Any) -> KV:
    body = {"selector": selector, **spec} if selector else spec
    return _kv("networkpolicy", _doc("NetworkPolicy", name, body, ns, validate=validate))


def k8s_policy(ns: str, name: str, **spec: Any) -> KV:
    return _kv("knp", _doc("NetworkPolicy", name, spec, ns, api="networking.k8s.io/v1"))


def namespace(name: str, labels: Mapping[str, str] | None = None) -> KV:
    doc = _doc("Namespace", name, {}, labels=labels, api="v1")
    return _kv("namespace", doc)


def profile(name: str, *, ingress: list[dict[str, Any]] | None = None,
            egress: list[dict[str, Any]] | None = None,
            labels_to_apply: Mapping[str, str] | None = None) -> KV:
    spec = _drop_none({"ingress": ingress, "egress": egress,
                       "labelsToApply": dict(labels_to_apply) if labels_to_apply else None})
    return _kv("profile", _doc("Profile", name, spec))


def tier(name: str, order: float | None = None, default_action: str | None = None) -> KV:
    spec = _drop_none({"order": order, "defaultAction": default_action})
    return _kv("tier", _doc("Tier", name, spec))


def network_set(ns: str | None, name: str, nets: Iterable[str],
                labels: Mapping[str, str] | None = None) -> KV:
    if ns:
        return _kv("networkset", _doc("NetworkSet", name, {"nets": list(nets)}, ns, labels))
    return _kv("globalnetworkset", _doc("GlobalNetworkSet", name, {"nets": list(nets)},
                                        labels=labels))


def pool(name: str, cidr: str, *, vxlan: str = "Never", ipip: str = "Never",
         nat: bool = False, block_size: int | None = None, disabled: bool = False) -> KV:
    spec = _drop_none({"cidr": cidr, "vxlanMode": vxlan, "ipipMode": ipip, "natOutgoing": nat,
                       "blockSize": block_size, "disabled": disabled})
    return _kv("ippool", _doc("IPPool", name, spec))


def node(name: str, ipv4: str | None = None, *, vxlan_ip: str | None = None,
         vxlan_mac: str | None = None, addresses: list[str] | None = None) -> KV:
    spec = _drop_none({
        "bgp": {"ipv4Address": ipv4} if ipv4 else None,
        "ipv4VXLANTunnelAddr": vxlan_ip, "vxlanTunnelMACAddr": vxlan_mac,
        "addresses": [{"address": a} for a in addresses] if addresses else None,
    })
    return _kv("node", _doc("Node", name, spec))


def felix_config(name: str, **spec: Any) -> KV:
    return _kv("felixconfiguration", _doc("FelixConfiguration", name, spec))


def block(cidr: str, node: str | None) -> KV:
    """An IPAM block (only the fields the calc graph reads are meaningful here)."""
    return block_key(cidr), {"cidr": cidr, "affinity": f"host:{node}" if node else None,
                             "allocations": [], "unallocated": [], "attributes": [],
                             "sequenceNumber": 0}
