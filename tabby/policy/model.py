"""An in-memory view of everything policy decisions depend on.

`PolicySet.from_resources(resources)` takes v3 resources (models or JSON-shaped dicts) plus
Kubernetes Namespaces and NetworkPolicies, and builds:

* endpoints: WorkloadEndpoints and HostEndpoints with their effective labels (own labels,
  the automatic ``projectcalico.org/namespace|orchestrator|serviceaccount`` labels, then
  labels inherited from their profiles' ``labelsToApply``; the endpoint's own label wins,
  and among profiles the first listed wins, as Felix's label inheritance does);
* network sets (namespaced and global) whose labels rule selectors can pick, so their nets
  match as source/destination addresses;
* tiers (the implicit ``default`` tier: order 1,000,000, defaultAction Deny), policies and
  profiles with compiled rules and combined selectors;
* per node, the FelixConfiguration settings that policy depends on (failsafe ports,
  DefaultEndpointToHostAction: `tabby.policy.host`).

Profiles of a workload: the ones its spec lists. A workload that lists none, in a namespace
that exists as a Kubernetes Namespace, gets ``kns.<ns>`` (and ``ksa.<ns>.<sa>`` if such a
profile exists), as Calico gives every pod; otherwise it has no profile, so traffic that no
policy allows is denied (fail closed).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tabby.policy import k8s
from tabby.policy.errors import PolicyError
from tabby.policy.host import HostConfig, merged_spec
from tabby.policy.rules import IPAddress, IPNetwork, Rule, compile_rules, parse_net, protocol_number
from tabby.policy.selectors import (
    LABEL_NAMESPACE,
    LABEL_ORCHESTRATOR,
    LABEL_SERVICE_ACCOUNT,
    NAMESPACE_PROFILE_PREFIX,
    SERVICE_ACCOUNT_PROFILE_PREFIX,
    Scope,
    policy_selector,
)

INGRESS = "Ingress"
EGRESS = "Egress"
DIRECTIONS = (INGRESS, EGRESS)

# Tiers Calico knows by name: (order, defaultAction). Used when a policy names one of them
# and no Tier resource says otherwise.
WELL_KNOWN_TIERS = {
    "default": (1_000_000.0, "Deny"),
    "kube-admin": (1_000.0, "Pass"),
    "kube-baseline": (10_000_000.0, "Pass"),
}


@dataclass(frozen=True)
class NamedPort:
    name: str
    protocol: int
    port: int


@dataclass(eq=False)
class Endpoint:
    """A WorkloadEndpoint or HostEndpoint as policy sees it."""

    kind: str  # "WorkloadEndpoint" | "HostEndpoint"
    name: str
    namespace: str  # "" for host endpoints
    labels: Mapping[str, str]
    profiles: tuple[str, ...] = ()
    ips: tuple[IPAddress, ...] = ()
    ports: tuple[NamedPort, ...] = ()
    node: str = ""
    interface_name: str = ""

    @property
    def key(self) -> str:
        """``namespace/name`` for workloads, ``name`` for host endpoints."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def ip(self, version: int) -> IPAddress | None:
        for ip in self.ips:
            if ip.version == version:
                return ip
        return None


@dataclass(eq=False)
class NetworkSet:
    name: str
    namespace: str  # "" for GlobalNetworkSet
    labels: Mapping[str, str]
    nets: tuple[IPNetwork, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Tier:
    name: str
    order: float | None
    default_action: str = "Deny"
    defined: bool = True  # False: policies name it but no Tier resource exists


@dataclass(eq=False)
class Policy:
    kind: str  # NetworkPolicy | GlobalNetworkPolicy | KubernetesNetworkPolicy
    name: str
    namespace: str  # "" for global policies
    tier: str
    order: float | None
    selector: Any  # tabby.selector Selector, already combined (namespace, pcns., pcsa.)
    types: frozenset[str]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    do_not_track: bool = False
    pre_dnat: bool = False
    apply_on_forward: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def sort_key(self) -> tuple[float, str]:
        # Felix: order ascending (none = +Inf), ties by the string "name/namespace/kind".
        order = math.inf if self.order is None else self.order
        return (order, f"{self.name}/{self.namespace}/{self.kind}")

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == INGRESS else self.egress


@dataclass(eq=False)
class Profile:
    name: str
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    labels_to_apply: Mapping[str, str] = field(default_factory=dict)

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == INGRESS else self.egress


def as_dict(resource: Any) -> dict[str, Any]:
    """A resource model or dict as its JSON-shaped dict (Calico field names)."""
    if isinstance(resource, Mapping):
        return dict(resource)
    from tabby.resources import to_dict

    return to_dict(resource)


def _meta(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return doc.get("metadata") or {}


def _spec(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return doc.get("spec") or {}


def _where(doc: Mapping[str, Any]) -> str:
    meta = _meta(doc)
    ns = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{doc.get('kind')} {ns + '/' if ns else ''}{name}"


def _order(value: Any, where: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{where}.order: invalid value {value!r} (a number)") from None


def default_types(spec: Mapping[str, Any]) -> list[str]:
    """Calico's types defaulting when `types` is empty."""
    if spec.get("types"):
        return list(spec["types"])
    has_ingress, has_egress = bool(spec.get("ingress")), bool(spec.get("egress"))
    if has_egress and not has_ingress:
        return [EGRESS]
    if has_egress and has_ingress:
        return [INGRESS, EGRESS]
    return [INGRESS]


def compile_policy(doc: Mapping[str, Any], kind: str | None = None) -> Policy:
    """A v3 NetworkPolicy / GlobalNetworkPolicy dict compiled; `kind` overrides the key kind."""
    meta, spec = _meta(doc), _spec(doc)
    doc_kind = doc.get("kind")
    name = meta.get("name")
    if not name:
        raise PolicyError(f"{doc_kind} metadata.name: missing")
    namespace = (meta.get("namespace") or "default") if doc_kind == "NetworkPolicy" else ""
    where = f"{_where(doc)} spec"
    types = default_types(spec)
    for t in types:
        if t not in DIRECTIONS:
            raise PolicyError(f"{where}.types: invalid value {t!r} (Ingress, Egress)")
    scope = Scope(namespace)
    return Policy(
        kind=kind or str(doc_kind),
        name=name,
        namespace=namespace,
        tier=spec.get("tier") or "default",
        order=_order(spec.get("order"), where),
        selector=policy_selector(
            namespace=namespace,
            selector=spec.get("selector") or "",
            namespace_selector="" if namespace else spec.get("namespaceSelector") or "",
            service_account_selector=spec.get("serviceAccountSelector") or "",
            where=where,
        ),
        types=frozenset(types),
        ingress=compile_rules(spec.get("ingress"), scope, f"{where}.ingress"),
        egress=compile_rules(spec.get("egress"), scope, f"{where}.egress"),
        do_not_track=bool(spec.get("doNotTrack")),
        pre_dnat=bool(spec.get("preDNAT")),
        apply_on_forward=bool(spec.get("applyOnForward")),
    )


def compile_profile(doc: Mapping[str, Any]) -> Profile:
    meta, spec = _meta(doc), _spec(doc)
    name = meta.get("name")
    if not name:
        raise PolicyError("Profile metadata.name: missing")
    where = f"Profile {name} spec"
    return Profile(
        name=name,
        ingress=compile_rules(spec.get("ingress"), Scope(), f"{where}.ingress"),
        egress=compile_rules(spec.get("egress"), Scope(), f"{where}.egress"),
        labels_to_apply=dict(spec.get("labelsToApply") or {}),
    )


def _ips(values: Iterable[Any] | None, where: str) -> tuple[IPAddress, ...]:
    out = []
    for v in values or ():
        try:
            out.append(ipaddress.ip_interface(str(v).strip()).ip)
        except ValueError:
            raise PolicyError(f"{where}: invalid IP {v!r}") from None
    return tuple(out)


def _named_ports(values: Iterable[Any] | None, where: str) -> tuple[NamedPort, ...]:
    out = []
    for i, p in enumerate(values or ()):
        if not p.get("name"):
            continue
        proto = protocol_number(p.get("protocol") or "TCP", f"{where}[{i}].protocol")
        out.append(NamedPort(p["name"], proto, int(p.get("port") or 0)))
    return tuple(out)


def effective_labels(own: Mapping[str, str], profiles: Iterable[str],
                     known: Mapping[str, Profile]) -> dict[str, str]:
    """Own labels over inherited `labelsToApply`; among profiles the first listed wins."""
    labels: dict[str, str] = {}
    for name in reversed(tuple(profiles)):  # first profile wins: apply it last
        prof = known.get(name)
        if prof is not None:
            labels.update(prof.labels_to_apply)
    labels.update(own)
    return labels


def workload_profiles(namespace: str, spec: Mapping[str, Any], known: Mapping[str, Profile],
                      namespaces: Container[str]) -> tuple[str, ...]:
    """The profiles a workload uses: its listed ones, else kns.<ns> (+ ksa.<ns>.<sa>) when
    its namespace exists as a Kubernetes Namespace, else none."""
    listed = tuple(spec.get("profiles") or ())
    if listed or namespace not in namespaces:
        return listed
    out = [NAMESPACE_PROFILE_PREFIX + namespace]
    sa = spec.get("serviceAccountName")
    if sa and f"{SERVICE_ACCOUNT_PROFILE_PREFIX}{namespace}.{sa}" in known:
        out.append(f"{SERVICE_ACCOUNT_PROFILE_PREFIX}{namespace}.{sa}")
    return tuple(out)


def workload_endpoint(doc: Mapping[str, Any], known: Mapping[str, Profile],
                      namespaces: Container[str]) -> Endpoint:
    """A WorkloadEndpoint dict as an Endpoint, given the profiles and Namespaces that exist."""
    meta, spec = _meta(doc), _spec(doc)
    name, namespace = meta.get("name"), meta.get("namespace") or "default"
    if not name:
        raise PolicyError("WorkloadEndpoint metadata.name: missing")
    where = f"WorkloadEndpoint {namespace}/{name} spec"
    own = dict(meta.get("labels") or {})
    # Set by Calico on storage, overriding anything the user wrote.
    own[LABEL_NAMESPACE] = namespace
    own[LABEL_ORCHESTRATOR] = spec.get("orchestrator") or ""
    if spec.get("serviceAccountName"):
        own[LABEL_SERVICE_ACCOUNT] = spec["serviceAccountName"]
    profiles = workload_profiles(namespace, spec, known, namespaces)
    return Endpoint(
        kind="WorkloadEndpoint",
        name=name,
        namespace=namespace,
        labels=effective_labels(own, profiles, known),
        profiles=profiles,
        ips=_ips(spec.get("ipNetworks"), f"{where}.ipNetworks"),
        ports=_named_ports(spec.get("ports"), f"{where}.ports"),
        node=spec.get("node") or "",
        interface_name=spec.get("interfaceName") or "",
    )


def host_endpoint(doc: Mapping[str, Any], known: Mapping[str, Profile]) -> Endpoint:
    meta, spec = _meta(doc), _spec(doc)
    name = meta.get("name")
    if not name:
        raise PolicyError("HostEndpoint metadata.name: missing")
    where = f"HostEndpoint {name} spec"
    profiles = tuple(spec.get("profiles") or ())
    return Endpoint(
        kind="HostEndpoint",
        name=name,
        namespace="",
        labels=effective_labels(dict(meta.get("labels") or {}), profiles, known),
        profiles=profiles,
        ips=_ips(spec.get("expectedIPs"), f"{where}.expectedIPs"),
        ports=_named_ports(spec.get("ports"), f"{where}.ports"),
        node=spec.get("node") or "",
        interface_name=spec.get("interfaceName") or "",
    )


def network_set(doc: Mapping[str, Any], known: Mapping[str, Profile]) -> NetworkSet:
    """A NetworkSet / GlobalNetworkSet dict; namespaced sets get the namespace label and the
    kns.<ns> profile's labels, as Calico gives them."""
    meta, spec = _meta(doc), _spec(doc)
    name = meta.get("name")
    if not name:
        raise PolicyError(f"{doc.get('kind')} metadata.name: missing")
    namespaced = doc.get("kind") == "NetworkSet"
    namespace = (meta.get("namespace") or "default") if namespaced else ""
    labels = dict(meta.get("labels") or {})
    if namespaced:
        labels[LABEL_NAMESPACE] = namespace
        labels = effective_labels(labels, (NAMESPACE_PROFILE_PREFIX + namespace,), known)
    where = f"{_where(doc)} spec.nets"
    nets = tuple(parse_net(n, where) for n in spec.get("nets") or ())
    return NetworkSet(name, namespace, labels, nets)


class PolicySet:
    """Everything needed to resolve and evaluate policy, built once from resources."""

    def __init__(self) -> None:
        self.tiers: dict[str, Tier] = {}
        self.policies: list[Policy] = []
        self.profiles: dict[str, Profile] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.network_sets: list[NetworkSet] = []
        self.namespaces: dict[str, dict[str, str]] = {}  # name -> labels
        self.warnings: list[str] = []
        self.felix_configs: dict[str, dict[str, Any]] = {}  # FelixConfiguration specs by name
        # The cluster's own tunnels, which the dataplane lets past host endpoint policy:
        # nodes' IPv4 underlay addresses, and the encapsulations some pool uses.
        self.node_ips: set[IPAddress] = set()
        self.tunnel_encaps: set[str] = set()  # "vxlan", "ipip"
        self._ordered: Any = None
        self._resolved: dict[int, Any] = {}
        self._resolved_host: dict[int, Any] = {}
        self._host_configs: dict[str, HostConfig] = {}
        self._by_ip: dict[IPAddress, list[Endpoint]] | None = None

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_resources(cls, resources: Iterable[Any]) -> PolicySet:
        ps = cls()
        docs = [as_dict(r) for r in resources]
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for doc in docs:
            if k8s.is_k8s_namespace(doc):
                kind = "KubernetesNamespace"
            elif k8s.is_k8s_network_policy(doc):
                kind = "KubernetesNetworkPolicy"
            else:
                kind = str(doc.get("kind"))
            by_kind.setdefault(kind, []).append(doc)

        for doc in by_kind.get("KubernetesNamespace", []):
            ps._guard(doc, lambda d: ps._add_namespace(d))
        for doc in by_kind.get("Profile", []):
            ps._guard(doc, lambda d: ps._set_profile(compile_profile(d), explicit=True))
        for doc in by_kind.get("Tier", []):
            ps._guard(doc, ps._add_tier)
        for kind in ("NetworkPolicy", "GlobalNetworkPolicy"):
            for doc in by_kind.get(kind, []):
                ps._guard(doc, lambda d: ps.policies.append(compile_policy(d)))
        for doc in by_kind.get("KubernetesNetworkPolicy", []):
            ps._guard(doc, lambda d: ps.policies.append(
                compile_policy(k8s.convert_network_policy(d), kind=k8s.K8S_POLICY_KIND)))
        for doc in by_kind.get("WorkloadEndpoint", []):
            ps._guard(doc, ps._add_workload)
        for doc in by_kind.get("HostEndpoint", []):
            ps._guard(doc, ps._add_host_endpoint)
        for kind in ("NetworkSet", "GlobalNetworkSet"):
            for doc in by_kind.get(kind, []):
                ps._guard(doc, ps._add_network_set)
        for doc in by_kind.get("FelixConfiguration", []):
            ps._guard(doc, ps._add_felix_config)
        for doc in by_kind.get("Node", []):
            ps._guard(doc, ps._add_node)
        for doc in by_kind.get("IPPool", []):
            ps._guard(doc, ps._add_pool)
        ps._fill_tiers()
        return ps

    def _guard(self, doc: Mapping[str, Any], fn: Any) -> None:
        # One unusable resource must not hide every other decision: record and skip it.
        try:
            fn(doc)
        except (PolicyError, ValueError) as exc:
            self.warnings.append(f"{_where(doc)} skipped: {exc}")

    def _add_namespace(self, doc: Mapping[str, Any]) -> None:
        name = _meta(doc).get("name")
        if not name:
            raise PolicyError("Namespace metadata.name: missing")
        self.namespaces[name] = k8s.namespace_labels(doc)
        self._set_profile(compile_profile(k8s.namespace_to_profile(doc)), explicit=False)

    def _set_profile(self, prof: Profile, explicit: bool) -> None:
        if not explicit and prof.name in self.profiles:
            return  # an explicit Profile resource of the same name wins
        self.profiles[prof.name] = prof

    def _add_tier(self, doc: Mapping[str, Any]) -> None:
        name = _meta(doc).get("name")
        if not name:
            raise PolicyError("Tier metadata.name: missing")
        spec = _spec(doc)
        order = _order(spec.get("order"), f"Tier {name} spec")
        if order is None and name in WELL_KNOWN_TIERS:
            order = WELL_KNOWN_TIERS[name][0]
        action = spec.get("defaultAction") or (
            WELL_KNOWN_TIERS[name][1] if name in WELL_KNOWN_TIERS else "Deny")
        if action not in ("Deny", "Pass"):
            raise PolicyError(f"Tier {name} spec.defaultAction: invalid value {action!r} (Deny, Pass)")
        self.tiers[name] = Tier(name, order, action)

    def _fill_tiers(self) -> None:
        if "default" not in self.tiers:
            self.tiers["default"] = Tier("default", *WELL_KNOWN_TIERS["default"])
        for pol in self.policies:
            if pol.tier in self.tiers:
                continue
            if pol.tier in WELL_KNOWN_TIERS:
                self.tiers[pol.tier] = Tier(pol.tier, *WELL_KNOWN_TIERS[pol.tier])
            else:
                self.warnings.append(f"policy {pol.key} names tier {pol.tier!r}, which does not exist")
                self.tiers[pol.tier] = Tier(pol.tier, None, "Deny", defined=False)

    def _add_workload(self, doc: Mapping[str, Any]) -> None:
        ep = workload_endpoint(doc, self.profiles, self.namespaces)
        self.endpoints[ep.key] = ep

    def _add_host_endpoint(self, doc: Mapping[str, Any]) -> None:
        ep = host_endpoint(doc, self.profiles)
        if ep.key in self.endpoints:
            raise PolicyError(f"HostEndpoint {ep.name}: name clashes with another endpoint")
        self.endpoints[ep.key] = ep

    def _add_network_set(self, doc: Mapping[str, Any]) -> None:
        self.network_sets.append(network_set(doc, self.profiles))

    def _add_node(self, doc: Mapping[str, Any]) -> None:
        addr = str((_spec(doc).get("bgp") or {}).get("ipv4Address") or "").split("/")[0]
        if addr:
            self.node_ips.add(ipaddress.ip_address(addr))

    def _add_pool(self, doc: Mapping[str, Any]) -> None:
        # Disabled pools count, as in the dataplane: their blocks may still be in use.
        spec = _spec(doc)
        for mode, encap in (("vxlanMode", "vxlan"), ("ipipMode", "ipip")):
            if (spec.get(mode) or "Never") != "Never":
                self.tunnel_encaps.add(encap)

    def _add_felix_config(self, doc: Mapping[str, Any]) -> None:
        name = _meta(doc).get("name")
        if not name:
            raise PolicyError("FelixConfiguration metadata.name: missing")
        spec = dict(_spec(doc))
        HostConfig.from_spec(spec, f"FelixConfiguration {name} spec")  # reject it whole
        self.felix_configs[name] = spec

    # -- queries --------------------------------------------------------------------------
    def endpoint(self, key: str) -> Endpoint | None:
        return self.endpoints.get(key)

    def workload_endpoints(self, namespace: str | None = None) -> list[Endpoint]:
        """Workload endpoints (of one namespace, or all), sorted by key."""
        return sorted(
            (ep for ep in self.endpoints.values() if ep.kind == "WorkloadEndpoint"
             and (namespace is None or ep.namespace == namespace)),
            key=lambda ep: ep.key,
        )

    def host_endpoints_on(self, node: str) -> list[Endpoint]:
        """The host endpoints of one node, sorted by name."""
        return sorted((ep for ep in self.endpoints.values()
                       if ep.kind == "HostEndpoint" and ep.node == node), key=lambda ep: ep.key)

    def host_config(self, node: str) -> HostConfig:
        """FelixConfiguration `default` merged with `node.<node>` (Calico's defaults
        for what neither sets)."""
        got = self._host_configs.get(node)
        if got is None:
            got = self._host_configs[node] = HostConfig.from_spec(
                merged_spec(self.felix_configs, node))
        return got

    def endpoints_at(self, ip: IPAddress) -> list[Endpoint]:
        if self._by_ip is None:
            self._by_ip = {}
            for ep in self.endpoints.values():
                for addr in ep.ips:
                    self._by_ip.setdefault(addr, []).append(ep)
        return self._by_ip.get(ip, [])

    def ordered(self) -> Any:
        """All tiers with their policies, in evaluation order (see tabby.policy.resolve)."""
        if self._ordered is None:
            from tabby.policy.resolve import order_policies

            self._ordered = order_policies(self.tiers.values(), self.policies)
        return self._ordered

    def resolved(self, endpoint: Endpoint) -> Any:
        """The endpoint's applicable (tier, policies) per direction, cached."""
        got = self._resolved.get(id(endpoint))
        if got is None or got[0] is not endpoint:
            from tabby.policy.resolve import resolve_endpoint

            got = (endpoint, resolve_endpoint(self.ordered(), endpoint))
            self._resolved[id(endpoint)] = got
        return got[1]

    def resolved_host(self, endpoint: Endpoint) -> Any:
        """A host endpoint's untracked, preDNAT and forward chains, cached."""
        got = self._resolved_host.get(id(endpoint))
        if got is None or got[0] is not endpoint:
            from tabby.policy.resolve import resolve_host_endpoint

            got = (endpoint, resolve_host_endpoint(self.ordered(), endpoint))
            self._resolved_host[id(endpoint)] = got
        return got[1]
