"""The embedded datastore: one SQLite file shared by every process on the machine.

Layout: `kv` holds the current value of each key (fast get/list/CAS); `history` holds one row
per revision (put or delete) so that `list` at a past revision and `watch` from a revision
work, also across processes: a watcher polls `history` for rows newer than the last one it
delivered. `meta` holds the store's revision and compact revision. Every write is one
`BEGIN IMMEDIATE` transaction, which serialises writers across processes and makes
revision order equal commit order, so a poller never skips a row that commits late.

Durability: WAL with synchronous=NORMAL. A commit is appended to the WAL without fsync; the
WAL is fsynced at checkpoints. A crashed *process* loses nothing (the data is in the OS page
cache); a power failure may lose the last few commits but never corrupts the file. That is
the right trade for a control-plane store whose clients resync from it, and it is what
makes thousands of CAS writes per second possible instead of one fsync per write.

History is bounded: every `compact_every` revisions the writer compacts away history older
than the last `history` revisions (10,000 by default; `sqlite:///path?history=N`, 0 = never).

Opening is cheap because every CNI plugin exec opens the store: the schema is created under
the write lock only when a read shows it missing, and the imports are the ones an open needs
(`_sqlite3` directly: the `sqlite3` wrapper imports datetime for adapters we never use;
threading, weakref, pathlib and contextlib only where watches or `.path` need them).
"""

from __future__ import annotations

import _thread
import os
import time

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

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    import weakref
    from collections.abc import Iterator
    from pathlib import Path
else:
    try:
        import _sqlite3 as sqlite3  # the same classes and connect() as sqlite3's
    except ImportError:  # pragma: no cover - an interpreter without the C module split
        import sqlite3

DEFAULT_HISTORY = 10_000
DEFAULT_COMPACT_EVERY = 1_000
BUSY_TIMEOUT = 10.0  # seconds a writer waits for the file lock before reporting Unavailable
POLL_MIN = 0.002  # watch poll interval right after activity (seconds)
POLL_MAX = 0.010  # ... backing off to this when idle
BATCH = 1000  # history rows fetched per watch poll

_PUT, _DELETE = 0, 1
_FORK_LEFTOVERS: list[sqlite3.Connection] = []

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('schema', 1), ('revision', 1), ('compact_revision', 0);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    revision INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    type INTEGER NOT NULL,
    value BLOB,
    create_revision INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS history_key_revision ON history (key, revision);
"""
_SCHEMA_OBJECTS = ("meta", "kv", "history", "history_key_revision")
_META_ROWS = ("schema", "revision", "compact_revision")


def prefix_range(prefix: str) -> tuple[str, str | None]:
    """[lo, hi) covering every key that starts with prefix; hi None = unbounded.

    SQLite compares TEXT as UTF-8 bytes, whose order is code-point order, so bumping the last
    code point gives the exclusive end.
    """
    chars = list(prefix)
    while chars and ord(chars[-1]) >= 0x10FFFF:
        chars.pop()
    if not chars:
        return prefix, None
    chars[-1] = chr(ord(chars[-1]) + 1)
    return prefix, "".join(chars)


def _where_prefix(prefix: str, column: str = "key") -> tuple[str, tuple[str, ...]]:
    lo, hi = prefix_range(prefix)
    if hi is None:
        return f"{column} >= ?", (lo,)
    return f"{column} >= ? AND {column} < ?", (lo, hi)


def _fs_path(path: str | os.PathLike[str]) -> str:
    """`str(Path(path))` without importing pathlib when that is the path unchanged: no empty
    or '.' segments (which Path collapses), not '' (which Path makes '.')."""
    text = os.fspath(path)
    if isinstance(text, str) and text:
        segments = text[1:].split("/") if text.startswith("/") else text.split("/")
        if all(seg and seg != "." for seg in segments):
            return text
    from pathlib import Path

    return str(Path(path))


def _connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # timeout= is SQLite's busy timeout (the same as PRAGMA busy_timeout).
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        _enable_wal(conn, path, busy_timeout)
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn
    except (OSError, sqlite3.Error) as exc:
        raise Unavailable(f"cannot open sqlite datastore {path}: {exc}") from exc


def _enable_wal(conn: sqlite3.Connection, path: str, busy_timeout: float) -> None:
    # Switching a new file to WAL needs an exclusive lock, and SQLite reports "locked" at
    # once (no busy handler) when several processes open a fresh file together: retry.
    deadline = time.monotonic() + busy_timeout
    delay = 0.001
    while True:
        try:
            mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            if mode == "wal":
                return
            problem = f"journal mode stays {mode!r}"
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            problem = str(exc)
        if time.monotonic() >= deadline:
            conn.close()
            raise Unavailable(f"sqlite datastore {path}: cannot enable WAL mode: {problem}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class _sqlite_errors:
    """Storage failures (lock held too long, I/O error, closed) surface as Unavailable.
    (A class, not @contextmanager: cheaper per call, and no contextlib import.)"""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, sqlite3.Error):
            raise Unavailable(f"sqlite datastore {self.path}: {exc}") from exc


class _Transaction:
    """`with store._tx() as conn:` BEGIN [IMMEDIATE] ... COMMIT, or ROLLBACK on any error,
    holding the store's lock, with sqlite errors as Unavailable."""

    __slots__ = ("store", "immediate", "conn")

    def __init__(self, store: SqliteDatastore, immediate: bool) -> None:
        self.store = store
        self.immediate = immediate

    def __enter__(self) -> sqlite3.Connection:
        store = self.store
        store._after_fork()
        store._lock.acquire()
        try:
            conn = self.conn = store._connection()
            conn.execute("BEGIN IMMEDIATE" if self.immediate else "BEGIN")
        except BaseException as exc:
            store._lock.release()
            if isinstance(exc, sqlite3.Error):
                raise Unavailable(f"sqlite datastore {store._path}: {exc}") from exc
            raise
        return conn

    def __exit__(self, typ: object, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is None:
                try:
                    self.conn.execute("COMMIT")
                    return
                except BaseException as commit_exc:
                    self._rollback()
                    if isinstance(commit_exc, sqlite3.Error):
                        raise Unavailable(
                            f"sqlite datastore {self.store._path}: {commit_exc}"
                        ) from commit_exc
                    raise
            self._rollback()
            if isinstance(exc, sqlite3.Error):
                raise Unavailable(f"sqlite datastore {self.store._path}: {exc}") from exc
        finally:
            self.store._lock.release()

    def _rollback(self) -> None:
        conn = self.conn
        if conn.in_transaction:  # also after a failed COMMIT: leave no tx open
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"datastore key must be a non-empty string, got {key!r}")


def _check_value(value: bytes) -> None:
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"datastore value must be bytes, got {type(value).__name__}")


class SqliteDatastore(Datastore):
    def __init__(
        self,
        path: str | Path,
        *,
        history: int = DEFAULT_HISTORY,
        compact_every: int = DEFAULT_COMPACT_EVERY,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        self._path = _fs_path(path)  # str(self.path), for sqlite and messages
        self.history = history
        self.compact_every = max(1, compact_every)
        self.busy_timeout = busy_timeout
        # One statement sequence at a time on the connection (threading.Lock is this type).
        self._lock = _thread.allocate_lock()
        self._pid = os.getpid()
        self._watches: weakref.WeakSet[SqliteWatch] | None = None  # made by the first watch
        self._conn: sqlite3.Connection | None = _connect(self._path, busy_timeout)
        self._ensure_schema()

    @property
    def path(self) -> Path:
        from pathlib import Path

        return Path(self._path)

    def __repr__(self) -> str:
        return f"SqliteDatastore({self._path!r})"

    def _ensure_schema(self) -> None:
        """Create the tables if a read shows any piece missing. Only a new file needs the
        write lock: taking it on every open would queue parallel CNI ADDs behind each
        other's commits just to learn that the schema is there."""
        with self._lock, _sqlite_errors(self._path):
            conn = self._connection()
            marks = ",".join("?" * len(_SCHEMA_OBJECTS))
            found = conn.execute(
                f"SELECT count(*) FROM sqlite_master WHERE name IN ({marks})", _SCHEMA_OBJECTS
            ).fetchone()[0]
            if found == len(_SCHEMA_OBJECTS):
                marks = ",".join("?" * len(_META_ROWS))
                rows = conn.execute(
                    f"SELECT count(*) FROM meta WHERE name IN ({marks})", _META_ROWS
                ).fetchone()[0]
                if rows == len(_META_ROWS):
                    return
        # executescript() would COMMIT implicitly, so run the schema statement by statement.
        with self._tx(immediate=True) as conn:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)

    # -- plumbing ---------------------------------------------------------------------------

    def _after_fork(self) -> None:
        # SQLite handles must not cross fork(); the child gets its own connection and lock
        # (the parent's lock may have been held by another thread at fork time). The
        # inherited handle is parked, never closed: closing it could touch the parent's WAL.
        if self._pid != os.getpid() and self._conn is not None:
            _FORK_LEFTOVERS.append(self._conn)
            self._lock = _thread.allocate_lock()
            self._conn = _connect(self._path, self.busy_timeout)
            self._watches = None
            self._pid = os.getpid()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DatastoreError(f"sqlite datastore {self._path} is closed")
        return self._conn

    def _tx(self, immediate: bool = False) -> _Transaction:
        return _Transaction(self, immediate)

    @staticmethod
    def _meta(conn: sqlite3.Connection) -> tuple[int, int]:
        rows = dict(conn.execute("SELECT name, value FROM meta WHERE name != 'schema'").fetchall())
        return rows["revision"], rows["compact_revision"]

    def _write(
        self, conn: sqlite3.Connection, key: str, value: bytes | None, create_rev: int
    ) -> int:
        """Record a put (value) or delete (None) at the next revision; caller holds the tx."""
        rev = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0] + 1
        if value is None:
            conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            conn.execute(
                "INSERT INTO history VALUES (?, ?, ?, NULL, ?)", (rev, key, _DELETE, create_rev)
            )
        else:
            create_rev = create_rev or rev
            conn.execute(
                "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?)", (key, value, create_rev, rev)
            )
            conn.execute(
                "INSERT INTO history VALUES (?, ?, ?, ?, ?)", (rev, key, _PUT, value, create_rev)
            )
        conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev,))
        if self.history and rev % self.compact_every == 0 and rev - self.history > 1:
            _, compact_rev = self._meta(conn)
            if rev - self.history > compact_rev:
                self._compact_tx(conn, compact_rev, rev - self.history)
        return rev

    @staticmethod
    def _compact_tx(conn: sqlite3.Connection, old: int, new: int) -> None:
        """Drop history below `new`, keeping each key's newest put below it (the state at
        `new` must stay reconstructible). Rows below `old` are already one live put per key,
        so only keys written in [old, new) can have rows to drop."""
        conn.execute(
            """DELETE FROM history WHERE revision IN (
                 SELECT h.revision FROM
                   (SELECT key, MAX(revision) AS top FROM history
                     WHERE revision >= ? AND revision < ? GROUP BY key) AS t
                   JOIN history AS h ON h.key = t.key AND h.revision < t.top)""",
            (old, new),
        )
        conn.execute(
            "DELETE FROM history WHERE revision >= ? AND revision < ? AND type = ?",
            (old, new, _DELETE),
        )
        conn.execute("UPDATE meta SET value = ? WHERE name = 'compact_revision'", (new,))

    # -- Datastore --------------------------------------------------------------------------

    def get(self, key: str) -> KV | None:
        _check_key(key)
        self._after_fork()
        with self._lock, _sqlite_errors(self._path):
            row = (
                self._connection()
                .execute(
                    "SELECT value, mod_revision, create_revision FROM kv WHERE key = ?", (key,)
                )
                .fetchone()
            )
        return None if row is None else KV(key, bytes(row[0]), row[1], row[2])

    def list(self, prefix: str, revision: int | None = None) -> tuple[list[KV], int]:
        if revision is not None and revision < 1:
            raise ValueError(f"list revision must be >= 1, got {revision}")
        where, params = _where_prefix(prefix)
        if revision is None:
            # One statement is one read snapshot: the rows and the revision they are at, in
            # a single round trip (BEGIN, meta, rows, COMMIT otherwise). No rows: no revision
            # either, so an empty prefix takes the transaction below.
            self._after_fork()
            with self._lock, _sqlite_errors(self._path):
                rows = (
                    self._connection()
                    .execute(
                        "SELECT key, value, mod_revision, create_revision,"
                        " (SELECT value FROM meta WHERE name = 'revision') FROM kv"
                        f" WHERE {where} ORDER BY key",
                        params,
                    )
                    .fetchall()
                )
            if rows:
                return [KV(k, bytes(v), m, c) for k, v, m, c, _ in rows], rows[0][4]
        with self._tx() as conn:
            current, compact_rev = self._meta(conn)
            if revision is None or revision == current:
                rows = conn.execute(
                    "SELECT key, value, mod_revision, create_revision FROM kv"
                    f" WHERE {where} ORDER BY key",
                    params,
                ).fetchall()
                revision = current
            else:
                if revision > current:
                    raise ValueError(
                        f"list revision {revision} is in the future (current {current})"
                    )
                if revision < compact_rev:
                    raise Compacted(
                        f"revision {revision} has been compacted (compact revision {compact_rev})",
                        compact_rev,
                    )
                hwhere, _ = _where_prefix(prefix, "h2.key")
                rows = conn.execute(
                    f"""SELECT h.key, h.value, h.revision, h.create_revision FROM history AS h
                        JOIN (SELECT h2.key AS key, MAX(h2.revision) AS top FROM history AS h2
                              WHERE {hwhere} AND h2.revision <= ? GROUP BY h2.key) AS t
                          ON h.revision = t.top
                        WHERE h.type = ? ORDER BY h.key""",
                    (*params, revision, _PUT),
                ).fetchall()
        return [KV(k, bytes(v), m, c) for k, v, m, c in rows], revision

    def create(self, key: str, value: bytes) -> int:
        _check_key(key)
        _check_value(value)
        with self._tx(immediate=True) as conn:
            if conn.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone():
                raise AlreadyExists(f"key {key!r} already exists")
            return self._write(conn, key, bytes(value), 0)

    def update(self, key: str, value: bytes, expected_revision: int) -> int:
        _check_key(key)
        _check_value(value)
        with self._tx(immediate=True) as conn:
            row = conn.execute(
                "SELECT mod_revision, create_revision FROM kv WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                raise NotFound(f"key {key!r} not found")
            if row[0] != expected_revision:
                raise Conflict(f"key {key!r} is at revision {row[0]}, expected {expected_revision}")
            return self._write(conn, key, bytes(value), row[1])

    def delete(self, key: str, expected_revision: int | None = None) -> int:
        _check_key(key)
        with self._tx(immediate=True) as conn:
            row = conn.execute(
                "SELECT mod_revision, create_revision FROM kv WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                raise NotFound(f"key {key!r} not found")
            if expected_revision is not None and row[0] != expected_revision:
                raise Conflict(f"key {key!r} is at revision {row[0]}, expected {expected_revision}")
            return self._write(conn, key, None, row[1])

    def watch(self, prefix: str, start_revision: int) -> Watch:
        w = SqliteWatch(self, prefix, start_revision)
        if self._watches is None:
            import weakref

            self._watches = weakref.WeakSet()
        self._watches.add(w)
        return w

    def revision(self) -> int:
        with self._tx() as conn:
            return self._meta(conn)[0]

    def compact_revision(self) -> int:
        """The oldest revision still readable (0 = nothing compacted yet)."""
        with self._tx() as conn:
            return self._meta(conn)[1]

    def compact(self, revision: int) -> None:
        with self._tx(immediate=True) as conn:
            current, compact_rev = self._meta(conn)
            if revision > current:
                raise ValueError(
                    f"compact revision {revision} is in the future (current {current})"
                )
            if revision > compact_rev:
                self._compact_tx(conn, compact_rev, revision)

    def close(self) -> None:
        for w in list(self._watches or ()):
            w.close()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class SqliteWatch(Watch):
    """Polls the history table on its own connection; close() wakes the poller at once."""

    def __init__(self, store: SqliteDatastore, prefix: str, start_revision: int) -> None:
        import threading

        self._path = store._path
        # "+key" keeps the planner off the key index: a poll must walk the few rows after
        # the last revision (rowid range), not every retained row under the prefix.
        self._where, self._params = _where_prefix(prefix, "+key")
        self._last = max(start_revision, 1) - 1  # last revision delivered
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._started = False
        self._conn: sqlite3.Connection | None = _connect(store._path, store.busy_timeout)

    def __iter__(self) -> Iterator[Event]:
        with self._lock:
            if self._started:
                raise RuntimeError("a Watch can be iterated only once")
            self._started = True
        return self._events()

    def _poll(self, conn: sqlite3.Connection) -> tuple[list[tuple[int, str, int, bytes]], int]:
        """Rows after the last delivered revision, and the store revision they were read at."""
        with _sqlite_errors(self._path):
            conn.execute("BEGIN")
            try:
                meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
                if self._last + 1 < meta["compact_revision"]:
                    raise Compacted(
                        f"watch needs revision {self._last + 1},"
                        f" history starts at {meta['compact_revision']}",
                        meta["compact_revision"],
                    )
                rows = conn.execute(
                    "SELECT revision, key, type, value FROM history"
                    f" WHERE revision > ? AND {self._where} ORDER BY revision LIMIT {BATCH}",
                    (self._last, *self._params),
                ).fetchall()
                return rows, meta["revision"]
            finally:
                conn.execute("COMMIT")

    def _events(self) -> Iterator[Event]:
        conn = self._conn
        try:
            if conn is None:
                return
            seen_version: int | None = None
            interval = POLL_MIN
            while not self._stop.is_set():
                # data_version changes only when another connection commits: an idle poll
                # costs one pragma, not a query.
                with _sqlite_errors(self._path):
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != seen_version:
                    seen_version = version
                    rows, current = self._poll(conn)
                    for rev, key, kind, value in rows:
                        if self._stop.is_set():
                            return
                        self._last = rev
                        if kind == _PUT:
                            yield Event("put", key, bytes(value), rev)
                        else:
                            yield Event("delete", key, None, rev)
                    if len(rows) == BATCH:
                        seen_version = None  # more are waiting: poll again at once
                        continue
                    # Every revision up to `current` was committed when we read, and none
                    # after the rows above matches the prefix: skip past them, so a quiet
                    # prefix neither rescans others' writes nor trips over auto-compaction.
                    self._last = max(self._last, current)
                    if rows:
                        interval = POLL_MIN
                self._stop.wait(interval)
                interval = min(interval * 2, POLL_MAX)
        finally:
            self._close_conn()

    def _close_conn(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            started = self._started
        if not started:
            self._close_conn()
