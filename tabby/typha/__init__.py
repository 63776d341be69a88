"""tabby.typha: one datastore watch fanned out to many agents (Calico's Typha).

Server side: `TyphaDaemon` (syncer + snapshot cache + TCP server + health/metrics), or its
parts `SnapshotCache`, `TyphaServer`/`ServerConfig`, `SyncerFeed`. Agent side: `TyphaClient`,
a drop-in for `tabby.datastore.syncer.Syncer`. Wire format: `protocol`. Design notes:
docs/design/typha.md.
"""

from .cache import SnapshotCache
from .client import TyphaClient, parse_addresses
from .daemon import TyphaDaemon
from .server import ServerConfig, TyphaServer
from .tls import PeerIdentity, client_context, server_context
from .upstream import SyncerFeed

__all__ = [
    "PeerIdentity",
    "ServerConfig",
    "SnapshotCache",
    "SyncerFeed",
    "TyphaClient",
    "TyphaDaemon",
    "TyphaServer",
    "client_context",
    "parse_addresses",
    "server_context",
]
