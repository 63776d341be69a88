"""Tier: an ordered group of policies with a default action at its end.

The well-known tiers keep fixed orders (default 1,000,000; kube-admin 1,000;
kube-baseline 10,000,000): an omitted order is filled in, any other value is an error.
An omitted `defaultAction` becomes "Deny" ("Pass" for kube-admin and kube-baseline).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_serializer, model_validator

from .common import TabbyModel, is_dns_label, policy_order
from .errors import FieldError, show
from .meta import Resource

DEFAULT_TIER_ORDER = 1_000_000.0
WELL_KNOWN_TIERS: dict[str, tuple[float, str]] = {
    "default": (DEFAULT_TIER_ORDER, "Deny"),
    "kube-admin": (1_000.0, "Pass"),
    "kube-baseline": (10_000_000.0, "Pass"),
}


class TierSpec(TabbyModel):
    order: float | None = None
    # None only until the Tier validates: then the tier's default ("Deny", or "Pass" for
    # kube-admin / kube-baseline) is filled in.
    defaultAction: Literal["Deny", "Pass"] | None = None

    @field_serializer("order")
    def _order_out(self, value: float | None) -> float | int | None:
        return policy_order(value)


class Tier(Resource):
    KIND: ClassVar[str] = "Tier"

    apiVersion: Literal["projectcalico.org/v3"] = "projectcalico.org/v3"
    kind: Literal["Tier"] = "Tier"
    spec: TierSpec = Field(default_factory=TierSpec)

    @classmethod
    def name_problem(cls, name: str) -> str | None:
        if not is_dns_label(name):
            return (
                f"invalid tier name {show(name)} (lower-case alphanumerics and '-', "
                "at most 63 characters)"
            )
        return None

    @model_validator(mode="after")
    def _well_known_order(self) -> Tier:
        fixed = WELL_KNOWN_TIERS.get(self.metadata.name)
        if self.spec.defaultAction is None:
            self.spec.defaultAction = "Pass" if fixed and fixed[1] == "Pass" else "Deny"
        if fixed is not None:
            order, _ = fixed
            if self.spec.order is None:
                self.spec.order = order
            elif self.spec.order != order:
                raise FieldError(
                    ("spec", "order"),
                    f"tier {self.metadata.name} must have order {policy_order(order)}, "
                    f"not {show(policy_order(self.spec.order))}",
                )
        return self
