"""NetworkPolicy (namespaced) and GlobalNetworkPolicy (cluster-wide).

Defaults are materialised on validation, as Calico's API server does: `tier` becomes
"default" and an empty `types` is inferred from which rule lists are present
(`default_policy_types`). Order is kept as given (None = after every ordered policy).
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_serializer, model_validator

from .common import Selector, TabbyModel, check_label_name, policy_order
from .errors import FieldError, show
from .meta import Resource
from .rule import MAX_RULES, PolicyType, Rule

DEFAULT_TIER = "default"

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NP_NAME_RE = re.compile(rf"^({_LABEL}(\.{_LABEL})?|(knp|ossg)\.default\.{_LABEL}(\.{_LABEL})*)\Z")
_GNP_NAME_RE = re.compile(rf"^({_LABEL}\.)?{_LABEL}\Z")
_POLICY_NAME_HELP = (
    "lower-case alphanumerics and '-', optionally prefixed by the tier and a dot, "
    "at most 253 characters"
)


def default_policy_types(ingress: list[Rule] | None, egress: list[Rule] | None) -> list[PolicyType]:
    """Calico's rule for an empty `types`: egress rules make it an Egress policy;
    Ingress is included unless the policy has egress rules and no ingress rules."""
    if not egress:
        return ["Ingress"]
    if not ingress:
        return ["Egress"]
    return ["Ingress", "Egress"]


Rules = Annotated[list[Rule], Field(max_length=MAX_RULES)]
TierName = Annotated[str, BeforeValidator(check_label_name)]


class _PolicySpec(TabbyModel):
    tier: TierName = DEFAULT_TIER
    order: float | None = None
    ingress: Rules | None = None
    egress: Rules | None = None
    selector: Selector | None = None
    types: list[PolicyType] | None = None
    serviceAccountSelector: Selector | None = None
    performanceHints: list[Literal["AssumeNeededOnEveryNode"]] | None = None

    @field_serializer("order")
    def _order_out(self, value: float | None) -> float | int | None:
        return policy_order(value)

    @model_validator(mode="after")
    def _types_and_rules(self) -> _PolicySpec:
        if self.types:
            if len(set(self.types)) != len(self.types):
                raise FieldError("types", f"duplicate policy type in {show(self.types)}")
        else:
            self.types = default_policy_types(self.ingress, self.egress)
        for i, rule in enumerate(self.egress or ()):
            if rule.source.services is not None:
                raise FieldError(
                    ("egress", i, "source", "services"),
                    "services not allowed in an egress rule source",
                )
            if rule.http is not None:
                raise FieldError(("egress", i, "http"), "HTTP match not allowed in an egress rule")
        for i, rule in enumerate(self.ingress or ()):
            if rule.destination.services is not None:
                raise FieldError(
                    ("ingress", i, "destination", "services"),
                    "services not allowed in an ingress rule destination",
                )
        return self

    def applies_to(self, direction: PolicyType) -> bool:
        return direction in (self.types or ())


class NetworkPolicySpec(_PolicySpec):
    pass


class GlobalNetworkPolicySpec(_PolicySpec):
    doNotTrack: bool | None = None
    preDNAT: bool | None = None
    applyOnForward: bool | None = None
    namespaceSelector: Selector | None = None

    @model_validator(mode="after")
    def _gnp_rules(self) -> GlobalNetworkPolicySpec:
        if self.doNotTrack and self.preDNAT:
            raise FieldError("preDNAT", "preDNAT and doNotTrack cannot both be true")
        if self.preDNAT and self.egress:
            raise FieldError("egress", "a preDNAT policy cannot have egress rules")
        if self.preDNAT and "Egress" in (self.types or ()):
            raise FieldError("types", "a preDNAT policy cannot have type Egress")
        if (self.doNotTrack or self.preDNAT) and not self.applyOnForward:
            flag = "doNotTrack" if self.doNotTrack else "preDNAT"
            raise FieldError("applyOnForward", f"applyOnForward must be true when {flag} is true")
        for direction, side in (("egress", "destination"), ("ingress", "source")):
            for i, rule in enumerate(getattr(self, direction) or ()):
                services = getattr(rule, side).services
                if services is not None and not services.namespace:
                    raise FieldError(
                        (direction, i, side, "services", "namespace"),
                        "services in a GlobalNetworkPolicy must give a namespace",
                    )
        return self


def _tier_prefix_problem(name: str, tier: str) -> FieldError | None:
    # A dotted name carries its tier ("security.allow-dns"); it must match spec.tier.
    if name.startswith(("knp.default.", "ossg.default.")) or "." not in name:
        return None
    prefix = name.split(".", 1)[0]
    if prefix != tier:
        return FieldError(
            ("metadata", "name"),
            f"policy name {show(name)} has tier prefix {show(prefix)} but spec.tier is {show(tier)}",
        )
    return None


class NetworkPolicy(Resource):
    KIND: ClassVar[str] = "NetworkPolicy"
    NAMESPACED: ClassVar[bool] = True

    apiVersion: Literal["projectcalico.org/v3"] = "projectcalico.org/v3"
    kind: Literal["NetworkPolicy"] = "NetworkPolicy"
    spec: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)

    @classmethod
    def name_problem(cls, name: str) -> str | None:
        if len(name) > 253 or not _NP_NAME_RE.match(name):
            return f"invalid policy name {show(name)} ({_POLICY_NAME_HELP})"
        return None

    @model_validator(mode="after")
    def _tier_prefix(self) -> NetworkPolicy:
        err = _tier_prefix_problem(self.metadata.name, self.spec.tier)
        if err:
            raise err
        return self


class GlobalNetworkPolicy(Resource):
    KIND: ClassVar[str] = "GlobalNetworkPolicy"

    apiVersion: Literal["projectcalico.org/v3"] = "projectcalico.org/v3"
    kind: Literal["GlobalNetworkPolicy"] = "GlobalNetworkPolicy"
    spec: GlobalNetworkPolicySpec = Field(default_factory=GlobalNetworkPolicySpec)

    @classmethod
    def name_problem(cls, name: str) -> str | None:
        if len(name) > 253 or not _GNP_NAME_RE.match(name):
            return f"invalid policy name {show(name)} ({_POLICY_NAME_HELP})"
        return None

    @model_validator(mode="after")
    def _tier_prefix(self) -> GlobalNetworkPolicy:
        err = _tier_prefix_problem(self.metadata.name, self.spec.tier)
        if err:
            raise err
        return self
