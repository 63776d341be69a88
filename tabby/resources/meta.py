"""ObjectMeta and the Resource base class shared by every kind."""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BeforeValidator, model_validator

from .common import AnnotationMap, Labels, TabbyModel, is_dns_label, is_dns_subdomain
from .errors import FieldError, show

if TYPE_CHECKING:
    from .registry import KindInfo

CALICO_API_VERSION = "projectcalico.org/v3"
DEFAULT_NAMESPACE = "default"


def _timestamp(value: Any) -> Any:
    # A YAML loader other than ours may turn an RFC 3339 time into a datetime.
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return value.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def _version_string(value: Any) -> Any:
    # resourceVersion is an opaque string, but hand-written YAML often leaves it unquoted.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Timestamp = Annotated[str, BeforeValidator(_timestamp)]


class ObjectMeta(TabbyModel):
    """Kubernetes ObjectMeta, as every v3 resource carries it. Unset fields stay None."""

    name: str
    generateName: str | None = None
    namespace: str | None = None
    selfLink: str | None = None
    uid: str | None = None
    resourceVersion: Annotated[str, BeforeValidator(_version_string)] | None = None
    generation: int | None = None
    creationTimestamp: Timestamp | None = None
    deletionTimestamp: Timestamp | None = None
    deletionGracePeriodSeconds: int | None = None
    labels: Labels | None = None
    annotations: AnnotationMap | None = None
    ownerReferences: list[dict[str, Any]] | None = None
    finalizers: list[str] | None = None
    managedFields: list[dict[str, Any]] | None = None


class Resource(TabbyModel):
    """Base of every kind: apiVersion, kind, metadata; subclasses add spec (and status)."""

    KIND: ClassVar[str] = ""
    API_VERSION: ClassVar[str] = CALICO_API_VERSION
    NAMESPACED: ClassVar[bool] = False

    apiVersion: str
    kind: str
    metadata: ObjectMeta

    @classmethod
    def name_problem(cls, name: str) -> str | None:
        """Why `name` is not a valid name for this kind (None if it is valid)."""
        if not is_dns_subdomain(name):
            return (
                f"invalid name {show(name)} (lower-case alphanumerics, '-' and '.', "
                "starting and ending alphanumeric, at most 253 characters)"
            )
        return None

    @model_validator(mode="before")
    @classmethod
    def _null_spec_is_empty(cls, data: Any) -> Any:
        # `spec:` with nothing under it is YAML null; Calico decodes it as an empty spec.
        if isinstance(data, dict) and "spec" in data and data["spec"] is None:
            data = {**data, "spec": {}}
        return data

    @model_validator(mode="after")
    def _check_metadata(self) -> Resource:
        why = self.name_problem(self.metadata.name)
        if why:
            raise FieldError(("metadata", "name"), why)
        ns = self.metadata.namespace
        if self.NAMESPACED:
            if not ns:
                self.metadata.namespace = DEFAULT_NAMESPACE
            elif not is_dns_label(ns):
                raise FieldError(
                    ("metadata", "namespace"),
                    f"invalid namespace {show(ns)} (lower-case alphanumerics and '-', at most 63)",
                )
        elif ns:
            raise FieldError(
                ("metadata", "namespace"), f"{self.KIND} is not namespaced (got {show(ns)})"
            )
        else:
            self.metadata.namespace = None
        return self

    @classmethod
    def kind_info(cls) -> KindInfo:
        from .registry import info_for_class

        return info_for_class(cls)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace

    @property
    def key(self) -> str:
        """The datastore key of this resource ("/tabby/v3/<plural>/[<ns>/]<name>")."""
        return self.kind_info().key(self.metadata.name, self.metadata.namespace)

    def describe(self) -> str:
        """How logs and messages name this object: "Kind name" or "Kind ns/name"
        ("KubernetesNetworkPolicy ns/name" for the Kubernetes kind)."""
        kind = self.kind_info().display
        if self.metadata.namespace:
            return f"{kind} {self.metadata.namespace}/{self.metadata.name}"
        return f"{kind} {self.metadata.name}"
