"""tabby.datastore: a revisioned key/value store with compare-and-swap and watch.

`open_datastore(url)` picks the backend: `sqlite:///path` (embedded, the default) or
`etcd://host:port[,host:port]`.
"""

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
