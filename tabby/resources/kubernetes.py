"""Kubernetes inputs: `v1 Namespace` and `networking.k8s.io/v1 NetworkPolicy`.

Tabby plays the API server's part for these, so the API server's defaulting is
materialised here: a port's `protocol` becomes TCP, `policyTypes` becomes [Ingress]
plus Egress when egress rules exist, and a namespace gets the immutable label
`kubernetes.io/metadata.name=<name>`. Conversion to Calico policy (knp.default.*,
kns.* profiles) belongs to tabby.policy, not here.

The JSON keys `from` and `except` are Python keywords, so those two fields are the only
ones in the package with aliases: attributes `from_` and `except_`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, ConfigDict, Field, model_validator

from .common import (
    CIDR,
    Labels,
    TabbyModel,
    check_port_name,
    check_qualified_name,
    is_dns_label,
    parse_net,
)
from .errors import FieldError, show
from .meta import Resource

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _label_key(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a label key, got {show(value)}")
    why = check_qualified_name(value)
    if why:
        raise ValueError(why)
    return value


class LabelSelectorRequirement(TabbyModel):
    key: Annotated[str, BeforeValidator(_label_key)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise FieldError("values", f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise FieldError("values", f"operator {self.operator} takes no values")
        return self


class LabelSelector(TabbyModel):
    """A Kubernetes label selector; empty selects everything in its scope."""

    matchLabels: Labels | None = None
    matchExpressions: list[LabelSelectorRequirement] | None = None

    def is_empty(self) -> bool:
        return not self.matchLabels and not self.matchExpressions


class IPBlock(TabbyModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    cidr: CIDR
    except_: list[CIDR] | None = Field(default=None, alias="except")

    @model_validator(mode="after")
    def _except_inside(self) -> IPBlock:
        outer = parse_net(self.cidr)
        for i, text in enumerate(self.except_ or ()):
            inner = parse_net(text)
            if (
                inner.version != outer.version
                or not inner.subnet_of(outer)  # type: ignore[arg-type]
                or inner.prefixlen <= outer.prefixlen
            ):
                raise FieldError(
                    ("except", i),
                    f"except {show(text)} must be a strict subset of cidr {show(self.cidr)}",
                )
        return self

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The cidr masked to its network (the apiserver accepts host bits; Calico masks)."""
        return parse_net(self.cidr)


class NetworkPolicyPeer(TabbyModel):
    podSelector: LabelSelector | None = None
    namespaceSelector: LabelSelector | None = None
    ipBlock: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkPolicyPeer:
        if self.ipBlock is not None and (
            self.podSelector is not None or self.namespaceSelector is not None
        ):
            raise FieldError(
                "ipBlock", "ipBlock cannot be combined with podSelector or namespaceSelector"
            )
        if self.ipBlock is None and self.podSelector is None and self.namespaceSelector is None:
            raise FieldError((), "a peer needs podSelector, namespaceSelector or ipBlock")
        return self


def _k8s_port(value: Any) -> int | str:
    if isinstance(value, bool):
        raise ValueError(f"invalid port {show(value)}")
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise ValueError(f"invalid port {value} (want 1-65535)")
        return value
    if isinstance(value, str):
        return check_port_name(value)
    raise ValueError(f"invalid port {show(value)} (want a number 1-65535 or a port name)")


class NetworkPolicyPort(TabbyModel):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: Annotated[int | str, BeforeValidator(_k8s_port)] | None = None
    endPort: int | None = None

    @model_validator(mode="after")
    def _end_port(self) -> NetworkPolicyPort:
        if self.endPort is None:
            return self
        if not isinstance(self.port, int):
            raise FieldError("endPort", "endPort needs a numeric port")
        if not self.port <= self.endPort <= 65535:
            raise FieldError(
                "endPort", f"endPort {self.endPort} must be between port {self.port} and 65535"
            )
        return self


class NetworkPolicyIngressRule(TabbyModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    ports: list[NetworkPolicyPort] | None = None
    from_: list[NetworkPolicyPeer] | None = Field(default=None, alias="from")


class NetworkPolicyEgressRule(TabbyModel):
    ports: list[NetworkPolicyPort] | None = None
    to: list[NetworkPolicyPeer] | None = None


class KubernetesNetworkPolicySpec(TabbyModel):
    podSelector: LabelSelector = Field(default_factory=LabelSelector)
    ingress: list[NetworkPolicyIngressRule] | None = None
    egress: list[NetworkPolicyEgressRule] | None = None
    policyTypes: list[Literal["Ingress", "Egress"]] | None = None

    @model_validator(mode="after")
    def _default_types(self) -> KubernetesNetworkPolicySpec:
        if self.policyTypes:
            if len(set(self.policyTypes)) != len(self.policyTypes):
                raise FieldError(
                    "policyTypes", f"duplicate policy type in {show(self.policyTypes)}"
                )
        else:
            # The API server's rule (not Calico's): Ingress always, Egress if egress rules exist.
            self.policyTypes = ["Ingress", "Egress"] if self.egress else ["Ingress"]
        return self


class KubernetesNetworkPolicy(Resource):
    KIND: ClassVar[str] = "NetworkPolicy"
    API_VERSION: ClassVar[str] = "networking.k8s.io/v1"
    NAMESPACED: ClassVar[bool] = True

    apiVersion: Literal["networking.k8s.io/v1"] = "networking.k8s.io/v1"
    kind: Literal["NetworkPolicy"] = "NetworkPolicy"
    spec: KubernetesNetworkPolicySpec = Field(default_factory=KubernetesNetworkPolicySpec)
    # Kubernetes 1.24-1.26 had an (alpha, always empty) status; `kubectl get -o yaml` prints it.
    status: dict[str, Any] | None = None


class NamespaceSpec(TabbyModel):
    finalizers: list[str] | None = None


class KubernetesNamespace(Resource):
    KIND: ClassVar[str] = "Namespace"
    API_VERSION: ClassVar[str] = "v1"

    apiVersion: Literal["v1"] = "v1"
    kind: Literal["Namespace"] = "Namespace"
    spec: NamespaceSpec | None = None
    status: dict[str, Any] | None = None

    @classmethod
    def name_problem(cls, name: str) -> str | None:
        if not is_dns_label(name):
            return (
                f"invalid namespace name {show(name)} (lower-case alphanumerics and '-', "
                "at most 63 characters)"
            )
        return None

    @model_validator(mode="after")
    def _name_label(self) -> KubernetesNamespace:
        labels = dict(self.metadata.labels or {})
        labels[NAMESPACE_NAME_LABEL] = self.metadata.name
        self.metadata.labels = labels
        return self
