"""The WorkloadEndpoint resource that ADD writes and DEL removes.

Written as JSON straight to its datastore key (the layout of tabby.datastore.client): the
pydantic models cost ~60 ms to import, more than the plugin's whole budget. The shape is the
model's (tests validate what ADD writes against `tabby.resources`), and the inputs that come
from users (labels, names) are checked here with the same rules.
"""

from __future__ import annotations

import json
import os
import time

from tabby.datastore.base import AlreadyExists, Conflict, Datastore, NotFound

# `typing` costs ~3 ms per plugin exec; annotations are strings (PEP 563), so it is
# needed only by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PREFIX = "/tabby/v3/workloadendpoints/"
API_VERSION = "projectcalico.org/v3"
NAMESPACE_LABEL = "projectcalico.org/namespace"
ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
WRITE_ATTEMPTS = 20

# Character sets instead of regular expressions: compiling the patterns cost ~0.5 ms per
# plugin exec. The rules are Kubernetes' (DNS label, DNS subdomain, qualified name).
_LOWER_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_ALNUM = _LOWER_ALNUM | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DNS_LABEL_CHARS = _LOWER_ALNUM | {"-"}
_QNAME_CHARS = _ALNUM | frozenset("-_.")
_NAME_PART_CHARS = _LOWER_ALNUM | frozenset(".-")


def _dns_label(text: str) -> bool:
    """[a-z0-9]([-a-z0-9]*[a-z0-9])?"""
    return (
        bool(text) and text[0] in _LOWER_ALNUM and text[-1] in _LOWER_ALNUM
        and set(text) <= _DNS_LABEL_CHARS
    )


def _subdomain(text: str) -> bool:
    """DNS labels joined by '.'"""
    return all(_dns_label(part) for part in text.split("."))


def _qualified_name(text: str) -> bool:
    """([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"""
    return (
        bool(text) and text[0] in _ALNUM and text[-1] in _ALNUM and set(text) <= _QNAME_CHARS
    )


class EndpointError(ValueError):
    """Bad workload metadata (labels, names); the message names the field and the value."""


def check_labels(labels: Any, field_name: str) -> dict[str, str]:
    """Kubernetes label rules (as tabby.resources checks them), without importing pydantic."""
    if not isinstance(labels, dict):
        raise EndpointError(f"{field_name}: expected a mapping of labels, got {labels!r}")
    for k, v in labels.items():
        if not isinstance(k, str) or not _label_key_ok(k):
            raise EndpointError(f"{field_name}: invalid label key {k!r}")
        if not isinstance(v, str):
            raise EndpointError(f"{field_name}: label {k}: value must be a string, got {v!r}")
        if v and (len(v) > 63 or not _qualified_name(v)):
            raise EndpointError(f"{field_name}: label {k}: invalid value {v!r}")
    return dict(labels)


def _label_key_ok(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _subdomain(prefix)):
        return False
    return 0 < len(name) <= 63 and _qualified_name(name)


def check_name(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or len(value) > 253 or not _subdomain(value):
        raise EndpointError(
            f"{field_name}: invalid name {value!r} (lower-case alphanumerics, '-' and '.')"
        )
    return value


def check_namespace(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _dns_label(value):
        raise EndpointError(
            f"{field_name}: invalid namespace {value!r} (lower-case alphanumerics and '-')"
        )
    return value


def name_part(text: str) -> str:
    """A container ID or interface name made usable inside a resource name."""
    # Every character outside [a-z0-9.-] becomes '-' (as re.sub(r"[^a-z0-9.-]", "-", ...)).
    lowered = text.lower()
    if not set(lowered) <= _NAME_PART_CHARS:
        lowered = "".join(c if c in _NAME_PART_CHARS else "-" for c in lowered)
    out = lowered.strip("-.")
    return out or "x"


def endpoint_name(node: str, orchestrator: str, workload: str, endpoint: str) -> str:
    """Calico's WorkloadEndpoint name: the four identifiers joined by '-', each with its own
    '-' doubled so the name can be split back."""
    return "-".join(p.replace("-", "--") for p in (node, orchestrator, workload, endpoint))


def endpoint_key(namespace: str, name: str) -> str:
    return f"{PREFIX}{namespace}/{name}"


class Endpoint:
    """What ADD knows about the attachment. A plain class: creating a dataclass costs a few
    milliseconds at import, and this module is imported on every ADD."""

    def __init__(
        self,
        *,
        namespace: str,
        node: str,
        orchestrator: str,  # "k8s" or "cni"
        workload: str,
        endpoint: str,  # the interface name inside the container (CNI_IFNAME)
        container_id: str,
        interface_name: str,  # the host side
        ip_networks: list[str],
        mac: str,
        labels: dict[str, str] | None = None,
        profiles: list[str] | None = None,
        pod: str | None = None,
    ) -> None:
        self.namespace = namespace
        self.node = node
        self.orchestrator = orchestrator
        self.workload = workload
        self.endpoint = endpoint
        self.container_id = container_id
        self.interface_name = interface_name
        self.ip_networks = ip_networks
        self.mac = mac
        self.labels = dict(labels or {})
        self.profiles = list(profiles or [])
        self.pod = pod

    @property
    def name(self) -> str:
        return endpoint_name(self.node, self.orchestrator, self.workload, self.endpoint)

    @property
    def key(self) -> str:
        return endpoint_key(self.namespace, self.name)

    def to_dict(self, uid: str, created: str) -> dict[str, Any]:
        labels = dict(self.labels)
        labels[NAMESPACE_LABEL] = self.namespace
        labels[ORCHESTRATOR_LABEL] = self.orchestrator
        spec: dict[str, Any] = {
            "orchestrator": self.orchestrator,
            "workload": self.workload,
            "node": self.node,
            "containerID": self.container_id,
            "endpoint": self.endpoint,
            "interfaceName": self.interface_name,
            "ipNetworks": list(self.ip_networks),
            "mac": self.mac,
            "profiles": list(self.profiles),
        }
        if self.pod:
            spec["pod"] = self.pod
        return {
            "apiVersion": API_VERSION,
            "kind": "WorkloadEndpoint",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": uid,
                "creationTimestamp": created,
                "labels": labels,
            },
            "spec": spec,
        }


def _uuid4() -> str:
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _encode(d: dict[str, Any]) -> bytes:
    # The encoding of tabby.datastore.client: sorted keys, compact, no resourceVersion.
    return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


def write_endpoint(ds: Datastore, ep: Endpoint) -> None:
    """Create the endpoint, or replace it (keeping uid and creationTimestamp) on a repeat ADD."""
    key = ep.key
    kv = None  # usually a new container: the first attempt creates without reading first
    for attempt in range(WRITE_ATTEMPTS):
        if attempt:
            kv = ds.get(key)
        if kv is None:
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            try:
                ds.create(key, _encode(ep.to_dict(_uuid4(), created)))
                return
            except AlreadyExists:
                continue
        old = json.loads(kv.value).get("metadata") or {}
        value = ep.to_dict(old.get("uid") or _uuid4(), old.get("creationTimestamp") or "")
        if not value["metadata"]["creationTimestamp"]:
            del value["metadata"]["creationTimestamp"]
        try:
            ds.update(key, _encode(value), kv.mod_revision)
            return
        except (Conflict, NotFound):
            continue
    raise Conflict(f"WorkloadEndpoint {ep.namespace}/{ep.name}: kept changing under us")


def read_endpoint(ds: Datastore, key: str) -> tuple[dict[str, Any], int] | None:
    kv = ds.get(key)
    if kv is None:
        return None
    return json.loads(kv.value), kv.mod_revision


def delete_endpoint(
    ds: Datastore,
    key: str,
    container_id: str | None,
    found: tuple[dict[str, Any], int] | None = None,
) -> bool:
    """Delete the endpoint if it is (still) this container's. A newer sandbox of the same pod
    may have rewritten it; its DEL then must not remove the new one. `found`: what the caller
    just read with read_endpoint (saves reading it again)."""
    for attempt in range(WRITE_ATTEMPTS):
        if attempt or found is None:
            found = read_endpoint(ds, key)
        if found is None:
            return False
        data, revision = found
        owner = (data.get("spec") or {}).get("containerID")
        if container_id and owner and owner != container_id:
            return False
        try:
            ds.delete(key, revision)
            return True
        except NotFound:
            return False
        except Conflict:
            continue
    raise Conflict(f"WorkloadEndpoint {key}: kept changing under us")


def list_node_endpoints(ds: Datastore, node: str) -> list[tuple[str, dict[str, Any]]]:
    kvs, _ = ds.list(PREFIX)
    out = []
    for kv in kvs:
        data = json.loads(kv.value)
        if (data.get("spec") or {}).get("node") == node:
            out.append((kv.key, data))
    return out
