"""Datastore URLs and `open_datastore`.

Accepted forms (see docs in `open_datastore`):

    sqlite:///abs/path/tabby.db          absolute path
    sqlite://rel/path/tabby.db           relative to the current directory
    sqlite:///abs/path?history=20000     keep this many revisions of history (0 = keep all)
    etcd://host:port[,host:port...]      etcd v3 endpoints (port defaults to 2379)
    etcd://[::1]:2379                    IPv6 literal in brackets
"""

from __future__ import annotations

import os

from .base import _Frozen

# `open_datastore` runs in every CNI plugin exec: pathlib, urllib.parse and dataclasses are
# imported only where a caller needs them (parse_url's Path, a URL with options), not to
# open a plain sqlite:///path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from .base import Datastore

ENV_VAR = "TABBY_DATASTORE"
ETCD_DEFAULT_PORT = 2379


class SqliteURL(_Frozen):
    """A parsed sqlite URL (behaves as a frozen dataclass)."""

    _fields = __match_args__ = ("path", "history")

    path: Path
    history: int | None  # None = backend default

    def __init__(self, path: Path, history: int | None = None) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "history", history)


class EtcdURL(_Frozen):
    """A parsed etcd URL (behaves as a frozen dataclass)."""

    _fields = __match_args__ = ("endpoints",)

    endpoints: tuple[tuple[str, int], ...]

    def __init__(self, endpoints: tuple[tuple[str, int], ...] = ()) -> None:
        object.__setattr__(self, "endpoints", endpoints)


def default_url() -> str:
    """`sqlite:///` URL of the per-user database ($XDG_DATA_HOME/tabby/tabby.db)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return "sqlite://" + os.path.abspath(os.path.join(base, "tabby", "tabby.db"))


def _bad(url: str, why: str) -> ValueError:
    return ValueError(f"invalid datastore URL {url!r}: {why}")


def parse_url(url: str) -> SqliteURL | EtcdURL:
    """Parse a datastore URL; raises ValueError with a one-line message naming the URL."""
    if not isinstance(url, str) or "://" not in url:
        raise _bad(str(url), "expected sqlite:///path or etcd://host:port[,host:port]")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme == "sqlite":
        return _parse_sqlite(url, rest)
    if scheme == "etcd":
        return _parse_etcd(url, rest)
    raise _bad(url, f"unknown scheme {scheme!r} (expected 'sqlite' or 'etcd')")


def _parse_sqlite(url: str, rest: str) -> SqliteURL:
    from pathlib import Path

    path_text, history = _sqlite_parts(url, rest)
    # "sqlite:///abs" keeps its leading slash in `rest`; anything else is relative to cwd.
    return SqliteURL(path=Path(path_text).expanduser().absolute(), history=history)


def _sqlite_parts(url: str, rest: str) -> tuple[str, int | None]:
    """The path as written and the history option of a sqlite URL, checked."""
    path_text, _, query = rest.partition("?")
    if not path_text or path_text == "/":
        raise _bad(url, "missing database file path")
    if path_text.endswith("/"):
        raise _bad(url, "path names a directory, not a database file")
    history: int | None = None
    if not query:
        return path_text, history
    from urllib.parse import parse_qsl

    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if name != "history":
            raise _bad(url, f"unknown option {name!r} (known: history)")
        try:
            history = int(value)
        except ValueError:
            raise _bad(url, f"history={value!r} is not an integer") from None
        if history < 0:
            raise _bad(url, f"history={value!r} must be >= 0")
    return path_text, history


def _plain_absolute(path_text: str) -> bool:
    """True when pathlib would leave the path as it is: absolute, no '~', no empty or '.'
    segments (Path collapses those; it keeps '..')."""
    return (
        path_text.startswith("/")
        and not path_text.startswith("//")
        and all(seg and seg != "." for seg in path_text[1:].split("/"))
    )


def _parse_etcd(url: str, rest: str) -> EtcdURL:
    netloc, sep, tail = rest.partition("/")
    if (sep and tail) or "?" in netloc or "#" in netloc:
        raise _bad(url, "etcd URLs take no path or options")
    endpoints: list[tuple[str, int]] = []
    for part in netloc.split(","):
        part = part.strip()
        if not part:
            raise _bad(url, "empty endpoint (expected host:port)")
        if part.startswith("["):
            host, bracket, after = part[1:].partition("]")
            if not bracket or not host:
                raise _bad(url, f"bad IPv6 endpoint {part!r}")
            port_text = after[1:] if after.startswith(":") else ""
            if after and not after.startswith(":"):
                raise _bad(url, f"bad endpoint {part!r}")
        else:
            if part.count(":") > 1:
                raise _bad(url, f"IPv6 endpoint {part!r} must be in brackets: [addr]:port")
            host, _, port_text = part.partition(":")
            if not host:
                raise _bad(url, f"endpoint {part!r} has no host")
        port = ETCD_DEFAULT_PORT
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise _bad(url, f"bad port {port_text!r} in endpoint {part!r}")
            port = int(port_text)
        endpoints.append((host, port))
    return EtcdURL(endpoints=tuple(endpoints))


def open_datastore(url: str | None = None) -> Datastore:
    """Open the datastore named by `url`, else $TABBY_DATASTORE, else the per-user sqlite file.

    Raises ValueError for a malformed URL and `Unavailable` when the store cannot be reached
    (within a couple of seconds; an etcd store is probed once at open).
    """
    if url is None:
        url = os.environ.get(ENV_VAR) or default_url()
    if isinstance(url, str) and url[:9].lower() == "sqlite://":
        # The common case, without building a SqliteURL (and importing pathlib) for it.
        path_text, history = _sqlite_parts(url, url[9:])
        path: str | Path = (
            path_text if _plain_absolute(path_text) else _parse_sqlite(url, url[9:]).path
        )
        from .sqlite import SqliteDatastore

        kwargs = {} if history is None else {"history": history}
        return SqliteDatastore(path, **kwargs)
    parsed = parse_url(url)
    assert isinstance(parsed, EtcdURL)  # every sqlite URL was opened above
    from .etcd import EtcdDatastore

    return EtcdDatastore(list(parsed.endpoints))
