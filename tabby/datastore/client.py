"""Typed resources over the raw key/value datastore.

Values are the resource's JSON without `resourceVersion`; the version a reader sees is
the key's mod_revision, so `update()` with a stale resourceVersion is a CAS conflict.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from tabby.datastore.base import AlreadyExists, Conflict, Datastore, NotFound
from tabby.resources import KINDS, Resource, from_dict, to_dict
from tabby.resources.registry import KindInfo, kind_info

RESOURCE_PREFIXES = ("/tabby/v3/", "/tabby/k8s/")
Resources = list[Resource]  # (the class's own `list` method shadows the builtin in annotations)


def _label(kind: str, name: str, namespace: str | None) -> str:
    return f'{kind} "{namespace}/{name}"' if namespace else f'{kind} "{name}"'


def _info(kind: str | KindInfo) -> KindInfo:
    return kind if isinstance(kind, KindInfo) else kind_info(kind)


class ResourceClient:
    def __init__(self, ds: Datastore) -> None:
        self.ds = ds
        # Longest prefix first, so "/tabby/v3/networkpolicies/" never shadows a longer one.
        self._by_prefix = sorted(
            ((info.prefix(None), info) for info in KINDS), key=lambda p: -len(p[0])
        )

    # -- encoding -------------------------------------------------------------------------
    def _decode(self, value: bytes, mod_revision: int) -> Resource:
        data = json.loads(value)
        data.setdefault("metadata", {})["resourceVersion"] = str(mod_revision)
        return from_dict(data, where=f"stored {data.get('kind')}")

    @staticmethod
    def _encode(res: Resource) -> bytes:
        data = to_dict(res)
        data.get("metadata", {}).pop("resourceVersion", None)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def _with_version(res: Resource, revision: int) -> Resource:
        meta = res.metadata.model_copy(update={"resourceVersion": str(revision)})
        return res.model_copy(update={"metadata": meta})

    # -- reads ----------------------------------------------------------------------------
    def get(self, kind: str | KindInfo, name: str, namespace: str | None = None) -> Resource:
        info = _info(kind)
        ns = (namespace or "default") if info.namespaced else None
        kv = self.ds.get(info.key(name, ns))
        if kv is None:
            raise NotFound(f"{_label(info.kind, name, ns)} not found")
        return self._decode(kv.value, kv.mod_revision)

    def list(self, kind: str | KindInfo, namespace: str | None = None) -> Resources:
        """All resources of a kind; for namespaced kinds, namespace None means all namespaces."""
        info = _info(kind)
        kvs, _ = self.ds.list(info.prefix(namespace if info.namespaced else None))
        return [self._decode(kv.value, kv.mod_revision) for kv in kvs]

    def snapshot(self) -> tuple[Resources, int]:
        """Every stored resource of every kind, read at one revision."""
        kvs, revision = self.ds.list(RESOURCE_PREFIXES[0])
        more, _ = self.ds.list(RESOURCE_PREFIXES[1], revision=revision)
        return [self._decode(kv.value, kv.mod_revision) for kv in kvs + more], revision

    def decode_key(self, key: str, value: bytes, mod_revision: int) -> Resource | None:
        """A watched key/value as a resource, or None when the key is not a resource."""
        if not any(key.startswith(p) for p in RESOURCE_PREFIXES):
            return None
        return self._decode(value, mod_revision)

    def kind_of_key(self, key: str) -> str | None:
        for prefix, info in self._by_prefix:
            if key.startswith(prefix):
                return info.kind
        return None

    # -- writes ---------------------------------------------------------------------------
    def create(self, res: Resource) -> Resource:
        meta = res.metadata.model_copy(
            update={
                "uid": res.metadata.uid or str(uuid.uuid4()),
                "creationTimestamp": res.metadata.creationTimestamp
                or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "resourceVersion": None,
            }
        )
        res = res.model_copy(update={"metadata": meta})
        try:
            revision = self.ds.create(res.key, self._encode(res))
        except AlreadyExists:
            raise AlreadyExists(f"{self._describe(res)} already exists") from None
        return self._with_version(res, revision)

    def update(self, res: Resource) -> Resource:
        """Replace an existing resource. With metadata.resourceVersion set, only if unchanged."""
        kv = self.ds.get(res.key)
        if kv is None:
            raise NotFound(f"{self._describe(res)} not found")
        expected = kv.mod_revision
        if res.metadata.resourceVersion:
            expected = int(res.metadata.resourceVersion)
        current = self._decode(kv.value, kv.mod_revision)
        meta = res.metadata.model_copy(
            update={
                "uid": current.metadata.uid,
                "creationTimestamp": current.metadata.creationTimestamp,
                "resourceVersion": None,
            }
        )
        res = res.model_copy(update={"metadata": meta})
        try:
            revision = self.ds.update(res.key, self._encode(res), expected)
        except Conflict:
            raise Conflict(
                f"{self._describe(res)}: resourceVersion {expected} is stale "
                f"(the resource was modified); get it again and retry"
            ) from None
        except NotFound:
            raise NotFound(f"{self._describe(res)} not found") from None
        return self._with_version(res, revision)

    def apply(self, res: Resource) -> Resource:
        """Create, or update when present."""
        if self.ds.get(res.key) is None:
            try:
                return self.create(res)
            except AlreadyExists:
                pass  # lost a race with another creator: fall through to update
        return self.update(res)

    def exists(self, res: Resource) -> bool:
        return self.ds.get(res.key) is not None

    def delete(
        self,
        kind: str | KindInfo,
        name: str,
        namespace: str | None = None,
        resource_version: str | None = None,
    ) -> Resource:
        info = _info(kind)
        ns = (namespace or "default") if info.namespaced else None
        key = info.key(name, ns)
        kv = self.ds.get(key)
        if kv is None:
            raise NotFound(f"{_label(info.kind, name, ns)} not found")
        expected = int(resource_version) if resource_version else kv.mod_revision
        try:
            self.ds.delete(key, expected)
        except Conflict:
            raise Conflict(
                f"{_label(info.kind, name, ns)}: resourceVersion {expected} is stale"
            ) from None
        return self._decode(kv.value, kv.mod_revision)

    @staticmethod
    def _describe(res: Resource) -> str:
        return res.describe()
