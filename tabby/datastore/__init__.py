"""tabby.datastore: a revisioned key/value store with compare-and-swap and watch.

`open_datastore(url)` picks the backend: `sqlite:///path` (embedded, the default) or
`etcd://host:port[,host:port]`.

The names below are loaded on first use (module `__getattr__`): importing a submodule such
as `tabby.datastore.base` runs this file first, and the CNI plugin, which imports base on
every container ADD, must not pay for url.py or the backends here.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .base import (
        KV,
        AlreadyExists,
        Compacted,
        Conflict,
        Datastore,
        DatastoreError,
        Event,
        NotFound,
        Unavailable,
        Watch,
    )
    from .url import ENV_VAR, default_url, open_datastore, parse_url

__all__ = [
    "KV",
    "AlreadyExists",
    "Compacted",
    "Conflict",
    "Datastore",
    "DatastoreError",
    "ENV_VAR",
    "Event",
    "NotFound",
    "Unavailable",
    "Watch",
    "default_url",
    "open_datastore",
    "parse_url",
]

_URL_NAMES = ("ENV_VAR", "default_url", "open_datastore", "parse_url")


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _URL_NAMES:
        from . import url as module
    else:
        from . import base as module  # type: ignore[no-redef]
    value = getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
