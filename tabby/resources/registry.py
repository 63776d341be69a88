"""The table of kinds: apiVersion, class, plural, scope, CLI aliases and datastore keys.

Key layout (values are the resources' JSON):
    /tabby/v3/<plural>/<name>                 cluster-scoped Calico kinds
    /tabby/v3/<plural>/<namespace>/<name>     namespaced Calico kinds
    /tabby/k8s/<plural>/[<namespace>/]<name>  Kubernetes inputs (Namespace, NetworkPolicy)
<plural> is the lower-case plural kind name (ippools, networkpolicies, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .bgp import BGPConfiguration, BGPFilter, BGPPeer
from .endpoint import HostEndpoint, WorkloadEndpoint
from .errors import ResourceError, show
from .felix import FelixConfiguration
from .ippool import IPPool
from .kubernetes import KubernetesNamespace, KubernetesNetworkPolicy
from .meta import CALICO_API_VERSION, Resource
from .networkset import GlobalNetworkSet, NetworkSet
from .node import Node
from .policy import GlobalNetworkPolicy, NetworkPolicy
from .profile import Profile
from .tier import Tier

KEY_ROOT = "/tabby"


@dataclass(frozen=True)
class KindInfo:
    kind: str
    api_version: str
    cls: type[Resource]
    plural: str
    namespaced: bool
    aliases: tuple[str, ...] = field(default=())
    # The name `tabby get` and errors use; differs from `kind` only for Kubernetes kinds.
    display: str = ""

    @property
    def root(self) -> str:
        group = "v3" if self.api_version == CALICO_API_VERSION else "k8s"
        return f"{KEY_ROOT}/{group}/{self.plural}"

    def key(self, name: str, namespace: str | None = None) -> str:
        """The datastore key of one object; namespaced kinds need a namespace."""
        if self.namespaced:
            if not namespace:
                raise ResourceError(f"{self.kind} {name}: a namespace is required")
            return f"{self.root}/{namespace}/{name}"
        if namespace:
            raise ResourceError(f"{self.kind} {name}: {self.kind} is not namespaced")
        return f"{self.root}/{name}"

    def prefix(self, namespace: str | None = None) -> str:
        """The key prefix for listing/watching: all objects, or one namespace's objects."""
        if namespace:
            if not self.namespaced:
                raise ResourceError(f"{self.kind} is not namespaced")
            return f"{self.root}/{namespace}/"
        return f"{self.root}/"

    def parse_key(self, key: str) -> tuple[str | None, str]:
        """(namespace, name) from a key under this kind's root."""
        rest = key[len(self.root) + 1 :] if key.startswith(self.root + "/") else None
        if not rest:
            raise ResourceError(f"key {key!r} is not a {self.kind} key")
        if self.namespaced:
            ns, _, name = rest.partition("/")
            if not name or "/" in name:
                raise ResourceError(f"key {key!r} is not a {self.kind} key")
            return ns, name
        if "/" in rest:
            raise ResourceError(f"key {key!r} is not a {self.kind} key")
        return None, rest


def _info(
    cls: type[Resource], plural: str, aliases: tuple[str, ...], display: str = ""
) -> KindInfo:
    return KindInfo(
        kind=cls.KIND,
        api_version=cls.API_VERSION,
        cls=cls,
        plural=plural,
        namespaced=cls.NAMESPACED,
        aliases=aliases,
        display=display or cls.KIND,
    )


KINDS: tuple[KindInfo, ...] = (
    _info(IPPool, "ippools", ("ippool", "ippools", "ipp", "ipps", "pool", "pools")),
    _info(Node, "nodes", ("node", "nodes", "no", "nos")),
    _info(
        WorkloadEndpoint,
        "workloadendpoints",
        ("workloadendpoint", "workloadendpoints", "wep", "weps"),
    ),
    _info(HostEndpoint, "hostendpoints", ("hostendpoint", "hostendpoints", "hep", "heps")),
    _info(
        NetworkPolicy,
        "networkpolicies",
        ("networkpolicy", "networkpolicies", "policy", "policies", "np", "nps", "pol", "pols"),
    ),
    _info(
        GlobalNetworkPolicy,
        "globalnetworkpolicies",
        ("globalnetworkpolicy", "globalnetworkpolicies", "gnp", "gnps"),
    ),
    _info(NetworkSet, "networksets", ("networkset", "networksets", "netset", "netsets")),
    _info(
        GlobalNetworkSet,
        "globalnetworksets",
        ("globalnetworkset", "globalnetworksets", "gns", "gnss"),
    ),
    _info(Profile, "profiles", ("profile", "profiles", "pro", "pros")),
    _info(Tier, "tiers", ("tier", "tiers")),
    _info(BGPPeer, "bgppeers", ("bgppeer", "bgppeers", "bgpp", "bgpps", "bp", "bps")),
    _info(
        BGPConfiguration,
        "bgpconfigurations",
        ("bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs"),
    ),
    _info(BGPFilter, "bgpfilters", ("bgpfilter", "bgpfilters")),
    _info(
        FelixConfiguration,
        "felixconfigurations",
        ("felixconfiguration", "felixconfigurations", "felixconfig", "felixconfigs"),
    ),
    _info(
        KubernetesNetworkPolicy,
        "networkpolicies",
        (
            "k8snetworkpolicy",
            "k8snetworkpolicies",
            "knp",
            "knps",
            "kubernetesnetworkpolicy",
            "kubernetesnetworkpolicies",
            "networkpolicy.networking.k8s.io",
            "networkpolicies.networking.k8s.io",
        ),
        display="KubernetesNetworkPolicy",
    ),
    _info(
        KubernetesNamespace,
        "namespaces",
        ("namespace", "namespaces", "ns", "k8snamespace", "k8snamespaces"),
        display="Namespace",
    ),
)

_BY_ALIAS: dict[str, KindInfo] = {}
for _ki in KINDS:
    for _name in (_ki.kind.lower(), _ki.display.lower(), *_ki.aliases):
        # The Calico kind wins "networkpolicy": Kubernetes policy has its own aliases.
        _BY_ALIAS.setdefault(_name, _ki)
_BY_TYPE: dict[tuple[str, str], KindInfo] = {(k.api_version, k.kind): k for k in KINDS}
_BY_CLASS: dict[type[Resource], KindInfo] = {k.cls: k for k in KINDS}


def valid_kinds() -> str:
    return ", ".join(k.display for k in KINDS)


def kind_info(name: str) -> KindInfo:
    """The kind a CLI argument names: kind, plural or alias, case-insensitive."""
    found = _BY_ALIAS.get(name.strip().lower())
    if found is None:
        raise ResourceError(f"unknown resource type {show(name)}; valid types: {valid_kinds()}")
    return found


def kind_for(api_version: str, kind: str) -> KindInfo:
    """The kind of a manifest document, from its apiVersion and kind."""
    found = _BY_TYPE.get((api_version, kind))
    if found is not None:
        return found
    known = [k for k in KINDS if k.kind == kind]
    if known:
        want = " or ".join(sorted({k.api_version for k in known}))
        raise ResourceError(
            f"unsupported apiVersion {show(api_version)} for kind {kind} (want {want})"
        )
    raise ResourceError(f"unknown kind {show(kind)}; valid kinds: {valid_kinds()}")


def info_for_class(cls: type[Resource]) -> KindInfo:
    for klass in cls.__mro__:
        if klass in _BY_CLASS:
            return _BY_CLASS[klass]  # type: ignore[index]
    raise ResourceError(f"{cls.__name__} is not a registered kind")
