"""NetworkSet (namespaced) and GlobalNetworkSet: labelled lists of CIDRs for policy to select."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .common import CIDR, TabbyModel
from .errors import FieldError
from .meta import Resource

# Reserved: the namespace label is what Tabby adds when it maps namespaced objects for
# selector matching; a user-set value would let a set pose as another namespace's.
RESERVED_NAMESPACE_LABEL = "projectcalico.org/namespace"


class NetworkSetSpec(TabbyModel):
    nets: list[CIDR] | None = None


class _NetworkSetBase(Resource):
    @model_validator(mode="after")
    def _no_namespace_label(self) -> _NetworkSetBase:
        if RESERVED_NAMESPACE_LABEL in (self.metadata.labels or {}):
            raise FieldError(
                ("metadata", "labels"), f"{RESERVED_NAMESPACE_LABEL} is not a valid label name here"
            )
        return self


class NetworkSet(_NetworkSetBase):
    KIND: ClassVar[str] = "NetworkSet"
    NAMESPACED: ClassVar[bool] = True

    apiVersion: Literal["projectcalico.org/v3"] = "projectcalico.org/v3"
    kind: Literal["NetworkSet"] = "NetworkSet"
    spec: NetworkSetSpec = Field(default_factory=NetworkSetSpec)


class GlobalNetworkSetSpec(TabbyModel):
    nets: list[CIDR] | None = None


class GlobalNetworkSet(_NetworkSetBase):
    KIND: ClassVar[str] = "GlobalNetworkSet"

    apiVersion: Literal["projectcalico.org/v3"] = "projectcalico.org/v3"
    kind: Literal["GlobalNetworkSet"] = "GlobalNetworkSet"
    spec: GlobalNetworkSetSpec = Field(default_factory=GlobalNetworkSetSpec)
