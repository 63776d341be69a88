"""Profile: rules and labels that endpoints listing the profile inherit.

Profile rules are evaluated after every tier; `labelsToApply` are added to each
endpoint that uses the profile (the endpoint's own label wins on conflict).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .common import Labels, TabbyModel
from .meta import Resource
from .rule import Rule


class ProfileSpec(TabbyModel):
    ingress: list[Rule] | None = None
    egress: list[Rule] | None = None
    labelsToApply: Labels | None = None


class Profile(Resource):
    KIND: ClassVar[str] = "Profile"

    apiVersion: Literal["projectcalico.org/v3"] = "projectcalico.org/v3"
    kind: Literal["Profile"] = "Profile"
    spec: ProfileSpec = Field(default_factory=ProfileSpec)
