"""The datastore contract: a revisioned key/value store with compare-and-swap and watch.

Both backends (sqlite, etcd) implement `Datastore`; one contract test suite runs against
both. Keys are strings ("/tabby/v3/..."), values are bytes. Every write bumps the store's
single, monotonically increasing revision; a KV's `mod_revision` is the revision of the
write that produced it, and is what compare-and-swap compares against.
"""

from __future__ import annotations

import abc

# The CNI plugin imports this module on every container ADD: `dataclasses` (which pulls in
# inspect, ast and dis) and `typing` would cost ~10 ms per exec, so KV and Event are written
# out by hand with the behaviour of frozen, slotted dataclasses, and the annotations (strings,
# PEP 563) need their names only under a type checker.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Literal


class DatastoreError(Exception):
    """Base class for datastore failures."""


class Unavailable(DatastoreError):
    """The datastore cannot be reached (CLI exit code 2)."""


class AlreadyExists(DatastoreError):
    """create() of a key that is present."""


class NotFound(DatastoreError):
    """update()/delete() of a key that is absent."""


class Conflict(DatastoreError):
    """Compare-and-swap failed: the key's revision is not the expected one."""


class Compacted(DatastoreError):
    """The watch's start revision is older than the retained history: list and resync."""

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class _Frozen:
    """What `@dataclass(frozen=True)` generates, for the fields named in `_fields`: equality
    and hash by field values (same class only), a field-by-field repr, refusal of any
    assignment (dataclasses.FrozenInstanceError), pickling. Subclasses set the fields in
    __init__ with object.__setattr__."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__qualname__}({fields})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._values() == other._values()  # type: ignore[attr-defined]
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __setattr__(self, name: str, value: object) -> None:
        from dataclasses import FrozenInstanceError  # only on this error path

        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __getstate__(self) -> list[object]:
        return list(self._values())

    def __setstate__(self, state: list[object]) -> None:
        for name, value in zip(self._fields, state, strict=True):
            object.__setattr__(self, name, value)


class KV(_Frozen):
    __slots__ = _fields = __match_args__ = ("key", "value", "mod_revision", "create_revision")

    key: str
    value: bytes
    mod_revision: int
    create_revision: int

    def __init__(self, key: str, value: bytes, mod_revision: int, create_revision: int) -> None:
        set_ = object.__setattr__
        set_(self, "key", key)
        set_(self, "value", value)
        set_(self, "mod_revision", mod_revision)
        set_(self, "create_revision", create_revision)


class Event(_Frozen):
    __slots__ = _fields = __match_args__ = ("type", "key", "value", "revision")

    type: Literal["put", "delete"]
    key: str
    value: bytes | None  # None for delete
    revision: int  # the revision of the write that caused the event

    def __init__(
        self, type: Literal["put", "delete"], key: str, value: bytes | None, revision: int
    ) -> None:
        set_ = object.__setattr__
        set_(self, "type", type)
        set_(self, "key", key)
        set_(self, "value", value)
        set_(self, "revision", revision)


class Watch(abc.ABC):
    """An ordered stream of events for a prefix. Iterate it; close() ends it from any thread.

    Iteration raises `Compacted` when the history it needs is gone, and `Unavailable` when the
    backend is lost; the caller then lists again and starts a new watch.
    """

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Event]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Datastore(abc.ABC):
    @abc.abstractmethod
    def get(self, key: str) -> KV | None: ...

    @abc.abstractmethod
    def list(self, prefix: str, revision: int | None = None) -> tuple[list[KV], int]:
        """KVs under prefix (sorted by key) at `revision` (None = now), and that revision."""

    @abc.abstractmethod
    def create(self, key: str, value: bytes) -> int:
        """Create key; raises AlreadyExists. Returns the new mod_revision."""

    @abc.abstractmethod
    def update(self, key: str, value: bytes, expected_revision: int) -> int:
        """CAS write; raises NotFound or Conflict. Returns the new mod_revision."""

    @abc.abstractmethod
    def delete(self, key: str, expected_revision: int | None = None) -> int:
        """Delete key (CAS when expected_revision is given); raises NotFound or Conflict."""

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Events for keys under prefix with revision >= start_revision, in order."""

    @abc.abstractmethod
    def revision(self) -> int:
        """The store's current revision."""

    @abc.abstractmethod
    def compact(self, revision: int) -> None:
        """Forget history before `revision`; watches from older revisions get Compacted."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Datastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
