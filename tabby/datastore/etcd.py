"""The etcd v3 backend, spoken as JSON over etcd's gRPC gateway (`POST /v3/...`).

Plain `http.client`, no client library: the gateway is part of every etcd >= 3.3, the JSON
forms are stable, and owning the socket is what lets a watch be closed from another thread
(shutdown() wakes the blocked read), be re-established from its last revision after the
stream breaks, and report compaction (etcd3gw ignores the cancel; the grpc clients pull in
grpcio and break with current protobuf). Gateway JSON quirks handled here: keys and values
are base64, int64 fields are strings, zero values are omitted (a PUT event has no "type", a
failed txn no "succeeded", an empty value no "value"). A write whose answer is lost is
settled by reading the key back (see `_read_back`): every write is a compare-and-swap.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

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

CONNECT_TIMEOUT = 1.0  # per endpoint: an unreachable store is reported within seconds
REQUEST_TIMEOUT = 10.0
RECONNECT_TIMEOUT = 5.0  # how long a broken watch keeps trying to re-establish itself
PAGE = 1000  # keys per range request when listing

# gRPC status codes the gateway returns in {"code": N}
_OUT_OF_RANGE = 11
_RETRY_ELSEWHERE = {4, 14}  # DEADLINE_EXCEEDED, UNAVAILABLE (e.g. no leader)

Endpoint = tuple[str, int]

# The gateway turns Grpc-Metadata-* headers into gRPC metadata; "hasleader" makes a member
# that loses its leader end the watch (we then re-watch elsewhere) instead of going quiet.
_WATCH_HEADERS = {"Content-Type": "application/json", "Grpc-Metadata-hasleader": "true"}


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix" (b"\\0" = to the end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _range_body(prefix: str) -> dict[str, Any]:
    raw = prefix.encode()
    # An empty prefix means every key: key "\0" with range_end "\0".
    return {"key": _b64(raw or b"\0"), "range_end": _b64(prefix_end(raw))}


def _kv(d: dict[str, Any]) -> KV:
    return KV(
        key=_unb64(d["key"]).decode(),
        value=_unb64(d.get("value")),
        mod_revision=int(d["mod_revision"]),
        create_revision=int(d["create_revision"]),
    )


def _fmt(ep: Endpoint) -> str:
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connect(ep: Endpoint, timeout: float | None) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(ep[0], ep[1], timeout=CONNECT_TIMEOUT)
    conn.connect()
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sock.settimeout(timeout)
    return conn


class _GatewayError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _OutcomeUnknown(Unavailable):
    """A request was sent and no answer came: a write may or may not have happened."""


class _NoAnswer(Exception):
    """A request was sent but no answer came in time: a write may or may not have happened,
    so it is not retried elsewhere."""


class _Client:
    """Unary JSON calls with failover across endpoints; one keep-alive connection per thread
    per endpoint (http.client connections are not thread-safe)."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        if not endpoints:
            raise ValueError("etcd datastore needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.preferred = 0  # the endpoint that answered last; racy updates are harmless
        self._reset()
        self.closed = False

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        # Weak: a connection dies with the thread that owned it; close() reaches the rest.
        self._all: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()
        self._all_lock = threading.Lock()

    def describe(self) -> str:
        return ",".join(_fmt(ep) for ep in self.endpoints)

    def order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self.preferred + i) % n for i in range(n)]

    def _conns(self) -> dict[int, http.client.HTTPConnection]:
        if self._pid != os.getpid():
            # Forked: the parent's sockets are the parent's; start afresh in the child.
            self._reset()
        conns: dict[int, http.client.HTTPConnection] = self._local.__dict__.setdefault("c", {})
        return conns

    def _post(self, idx: int, path: str, body: bytes) -> tuple[int, bytes]:
        conns = self._conns()
        for attempt in (0, 1):
            conn = conns.pop(idx, None) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = _connect(self.endpoints[idx], REQUEST_TIMEOUT)  # errors: try elsewhere
                with self._all_lock:
                    self._all.add(conn)
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except TimeoutError:
                conn.close()
                raise _NoAnswer(f"no answer within {REQUEST_TIMEOUT:g}s") from None
            except (OSError, http.client.HTTPException):
                conn.close()
                if reused:
                    continue  # the server closed an idle keep-alive connection: once more
                raise
            conns[idx] = conn
            return resp.status, data
        raise AssertionError("unreachable")

    def call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        if self.closed:
            raise DatastoreError(f"etcd datastore {self.describe()} is closed")
        body = json.dumps(payload).encode()
        errors: list[str] = []
        for idx in self.order():
            try:
                status, data = self._post(idx, path, body)
            except _NoAnswer as exc:
                raise _OutcomeUnknown(
                    f"etcd at {_fmt(self.endpoints[idx])} did not answer {path}: {exc}"
                    " (the outcome of a write is unknown; read back before retrying)"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"{_fmt(self.endpoints[idx])}: {exc or type(exc).__name__}")
                continue
            try:
                reply = json.loads(data) if data else {}
            except ValueError:
                errors.append(f"{_fmt(self.endpoints[idx])}: HTTP {status}, not JSON")
                continue
            if status == 200:
                self.preferred = idx
                return reply
            code = int(reply.get("code", 0))
            message = str(reply.get("message") or reply.get("error") or f"HTTP {status}")
            if code in _RETRY_ELSEWHERE or status in (502, 503, 504):
                errors.append(f"{_fmt(self.endpoints[idx])}: {message}")
                continue
            raise _GatewayError(status, code, message)
        raise Unavailable(f"etcd datastore unreachable at {self.describe()}: {'; '.join(errors)}")

    def close(self) -> None:
        self.closed = True
        with self._all_lock:
            conns = list(self._all)
            self._all = weakref.WeakSet()
        for conn in conns:
            conn.close()


def _translate(exc: _GatewayError, what: str) -> DatastoreError | ValueError:
    msg = exc.message
    if exc.code == _OUT_OF_RANGE and "compacted" in msg:
        return Compacted(f"{what}: {msg}")
    if exc.code == _OUT_OF_RANGE and "future" in msg:
        return ValueError(f"{what}: {msg}")
    return DatastoreError(f"{what}: etcd error {exc.code}: {msg}")


class EtcdDatastore(Datastore):
    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self._client = _Client(endpoints)
        self._watches: list[EtcdWatch] = []
        self._watches_lock = threading.Lock()
        self.revision()  # fail fast (Unavailable) when no endpoint answers

    def __repr__(self) -> str:
        return f"EtcdDatastore('etcd://{self._client.describe()}')"

    def _call(self, path: str, payload: dict[str, Any], what: str) -> dict[str, Any]:
        try:
            return self._client.call(path, payload)
        except _GatewayError as exc:
            raise _translate(exc, what) from None

    def _txn(self, what: str, compare: list[Any], success: list[Any], key: str) -> dict[str, Any]:
        # On failure read the key back (keys_only: revisions, no value) to say why.
        failure = [{"request_range": {"key": _b64(key), "keys_only": True}}]
        return self._call(
            "/v3/kv/txn", {"compare": compare, "success": success, "failure": failure}, what
        )

    @staticmethod
    def _failure_kv(reply: dict[str, Any]) -> dict[str, Any] | None:
        kvs = reply["responses"][0]["response_range"].get("kvs") or []
        return kvs[0] if kvs else None

    def get(self, key: str) -> KV | None:
        _check_key(key)
        reply = self._call("/v3/kv/range", {"key": _b64(key)}, f"get {key!r}")
        kvs = reply.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def list(self, prefix: str, revision: int | None = None) -> tuple[list[KV], int]:
        if revision is not None and revision < 1:
            raise ValueError(f"list revision must be >= 1, got {revision}")
        body = _range_body(prefix)
        out: list[KV] = []
        while True:
            # Page through big prefixes, all pages at the revision of the first one.
            req = {**body, "limit": PAGE}
            if revision is not None:
                req["revision"] = str(revision)
            reply = self._call("/v3/kv/range", req, f"list {prefix!r} at revision {revision}")
            if revision is None:
                revision = int(reply["header"]["revision"])
            kvs = reply.get("kvs") or []
            out.extend(_kv(d) for d in kvs)
            if not reply.get("more") or not kvs:
                return out, revision
            body = {**body, "key": _b64(_unb64(kvs[-1]["key"]) + b"\0")}

    # A write whose answer was lost (no reply within REQUEST_TIMEOUT) is settled by reading
    # the key back: every write is a compare-and-swap, so one that did not happen can be
    # sent again without applying twice, and one that did shows as our value at a newer
    # revision (or another writer's identical bytes, which is the same state). Only if the
    # read-back fails too is the outcome reported unknown.

    def _read_back(self, key: str, lost: _OutcomeUnknown) -> KV | None:
        try:
            return self.get(key)
        except Unavailable:
            raise lost from None

    def create(self, key: str, value: bytes) -> int:
        _check_key(key)
        return self._create(key, bytes(value), resend=1)

    def _create(self, key: str, value: bytes, resend: int) -> int:
        k = _b64(key)
        try:
            reply = self._txn(
                f"create {key!r}",
                [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                [{"request_put": {"key": k, "value": _b64(bytes(value))}}],
                key,
            )
        except _OutcomeUnknown as lost:
            kv = self._read_back(key, lost)
            if kv is not None and kv.value == bytes(value):
                return kv.mod_revision  # it happened
            if kv is None and resend:
                return self._create(key, value, resend - 1)  # it did not: once more
            if kv is None:
                raise
            raise AlreadyExists(f"key {key!r} already exists") from None
        if not reply.get("succeeded"):
            raise AlreadyExists(f"key {key!r} already exists")
        return int(reply["header"]["revision"])

    def _cas(self, key: str, expected_revision: int | None, op: dict[str, Any], what: str,
             value: bytes | None = None, _resend: int = 1) -> int:
        """Put `value` (op request_put) or delete (op request_delete_range) if the key is at
        `expected_revision` (None: any revision, delete only)."""
        try:
            return self._cas_once(key, expected_revision, op, what)
        except _OutcomeUnknown as exc:
            lost = exc
        kv = self._read_back(key, lost)
        if value is not None and kv is not None and kv.value == value and (
                expected_revision is None or kv.mod_revision > expected_revision):
            return kv.mod_revision  # the put happened
        if value is None and kv is None:
            return self.revision()  # the key is gone: the delete's effect holds
        unchanged = kv is not None and (expected_revision is None
                                        or kv.mod_revision == expected_revision)
        if unchanged and _resend:  # it did not happen: once more
            return self._cas(key, expected_revision, op, what, value, _resend - 1)
        if unchanged:
            raise lost
        if kv is None:
            raise NotFound(f"key {key!r} not found")
        raise Conflict(
            f"key {key!r} is at revision {kv.mod_revision}, expected {expected_revision}")

    def _cas_once(self, key: str, expected_revision: int | None, op: dict[str, Any],
                  what: str) -> int:
        k = _b64(key)
        compare: list[Any] = [{"key": k, "target": "VERSION", "result": "GREATER", "version": "0"}]
        if expected_revision is not None:
            compare.append(
                {
                    "key": k,
                    "target": "MOD",
                    "result": "EQUAL",
                    "mod_revision": str(expected_revision),
                }
            )
        reply = self._txn(what, compare, [op], key)
        if reply.get("succeeded"):
            return int(reply["header"]["revision"])
        current = self._failure_kv(reply)
        if current is None:
            raise NotFound(f"key {key!r} not found")
        raise Conflict(
            f"key {key!r} is at revision {current['mod_revision']}, expected {expected_revision}"
        )

    def update(self, key: str, value: bytes, expected_revision: int) -> int:
        _check_key(key)
        op = {"request_put": {"key": _b64(key), "value": _b64(bytes(value))}}
        return self._cas(key, expected_revision, op, f"update {key!r}", bytes(value))

    def delete(self, key: str, expected_revision: int | None = None) -> int:
        _check_key(key)
        op = {"request_delete_range": {"key": _b64(key)}}
        return self._cas(key, expected_revision, op, f"delete {key!r}")

    def watch(self, prefix: str, start_revision: int) -> Watch:
        w = EtcdWatch(self._client, prefix, start_revision)
        with self._watches_lock:
            self._watches = [x for x in self._watches if not x.closed]
            self._watches.append(w)
        return w

    def revision(self) -> int:
        reply = self._call("/v3/kv/range", {"key": _b64(b"\0"), "count_only": True}, "revision")
        return int(reply["header"]["revision"])

    def compact(self, revision: int) -> None:
        if revision < 1:
            raise ValueError(f"compact revision must be >= 1, got {revision}")
        try:
            self._client.call("/v3/kv/compaction", {"revision": str(revision)})
        except _GatewayError as exc:
            err = _translate(exc, f"compact to {revision}")
            if not isinstance(err, Compacted):  # already compacted that far: nothing to do
                raise err from None

    def close(self) -> None:
        with self._watches_lock:
            watches, self._watches = self._watches, []
        for w in watches:
            w.close()
        self._client.close()


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"datastore key must be a non-empty string, got {key!r}")


class EtcdWatch(Watch):
    """A watch stream on its own connection. If the stream breaks, iteration re-creates it
    from the last delivered revision + 1 (any endpoint) and raises Unavailable only if that
    fails for RECONNECT_TIMEOUT seconds, or Compacted if the revision is gone meanwhile."""

    def __init__(self, client: _Client, prefix: str, start_revision: int) -> None:
        self._client = client
        self._prefix = prefix
        self._last = max(start_revision, 1) - 1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._sock: socket.socket | None = None
        self._resp: http.client.HTTPResponse | None = None
        self._pending: DatastoreError | None = None
        self._started = False
        self._open(raise_unavailable=True)

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def _open(self, raise_unavailable: bool) -> bool:
        """Create the stream on the first endpoint that takes it; False if none did."""
        body = {
            "create_request": {**_range_body(self._prefix), "start_revision": str(self._last + 1)}
        }
        data = json.dumps(body).encode()
        errors: list[str] = []
        for idx in self._client.order():
            ep = self._client.endpoints[idx]
            conn: http.client.HTTPConnection | None = None
            try:
                conn = _connect(ep, REQUEST_TIMEOUT)
                sock = conn.sock  # kept: the response owns it from here on
                assert sock is not None
                conn.request("POST", "/v3/watch", data, _WATCH_HEADERS)
                resp = conn.getresponse()
                if resp.status != 200:
                    raise http.client.HTTPException(f"HTTP {resp.status}: {resp.read()[:200]!r}")
                first = resp.readline()
                created = json.loads(first).get("result", {}) if first.strip() else {}
                if not created.get("created"):
                    self._handle_cancel(created)
                    raise http.client.HTTPException(f"watch not created: {first[:200]!r}")
                sock.settimeout(None)  # block until events or close()
                _keepalive(sock)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if conn is not None:
                    conn.close()
                errors.append(f"{_fmt(ep)}: {exc or type(exc).__name__}")
                continue
            except DatastoreError as exc:
                conn.close()  # type: ignore[union-attr]  # set: raised after the request
                self._pending = exc  # compacted: raised by iteration
                return True
            with self._lock:
                if self._stop.is_set():
                    conn.close()
                    return True
                self._conn, self._sock, self._resp = conn, sock, resp
            self._client.preferred = idx
            return True
        if raise_unavailable:
            raise Unavailable(
                f"etcd watch on {self._prefix!r} failed at {self._client.describe()}: "
                + "; ".join(errors)
            )
        return False

    def _handle_cancel(self, result: dict[str, Any]) -> None:
        compact_rev = int(result.get("compact_revision", 0) or 0)
        if compact_rev:
            raise Compacted(
                f"watch needs revision {self._last + 1}, history starts at {compact_rev}",
                compact_rev,
            )
        if result.get("canceled"):
            raise Unavailable(f"etcd cancelled the watch: {result.get('cancel_reason', '')}")

    def _reconnect(self) -> None:
        self._drop()
        deadline = time.monotonic() + RECONNECT_TIMEOUT
        delay = 0.05
        while not self._stop.is_set():
            if self._open(raise_unavailable=False):
                return
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"etcd watch on {self._prefix!r} lost and not re-established within "
                    f"{RECONNECT_TIMEOUT:g}s at {self._client.describe()}"
                )
            self._stop.wait(delay)
            delay = min(delay * 2, 0.5)

    def __iter__(self) -> Iterator[Event]:
        with self._lock:
            if self._started:
                raise RuntimeError("a Watch can be iterated only once")
            self._started = True
        return self._events()

    def _events(self) -> Iterator[Event]:
        try:
            while not self._stop.is_set():
                if self._pending is not None:
                    raise self._pending
                resp = self._resp
                if resp is None:
                    self._reconnect()
                    continue
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException, ValueError):
                    line = b""
                if self._stop.is_set():
                    return
                if not line:
                    self._reconnect()  # stream ended: re-watch from the last revision + 1
                    continue
                if not line.strip():
                    continue
                msg = json.loads(line)
                result = msg.get("result")
                if result is None:  # {"error": ...}: the gateway lost its stream to etcd
                    self._reconnect()
                    continue
                if result.get("canceled") or result.get("compact_revision"):
                    self._handle_cancel(result)
                for ev in result.get("events") or ():
                    kv = ev["kv"]
                    rev = int(kv["mod_revision"])
                    key = _unb64(kv["key"]).decode()
                    self._last = rev
                    if ev.get("type") == "DELETE":
                        yield Event("delete", key, None, rev)
                    else:
                        yield Event("put", key, _unb64(kv.get("value")), rev)
                    if self._stop.is_set():
                        return
        finally:
            self._drop()

    def _drop(self) -> None:
        with self._lock:
            conn, sock, resp = self._conn, self._sock, self._resp
            self._conn = self._sock = self._resp = None
        if sock is not None:
            _shutdown(sock)
        if resp is not None:
            resp.close()
        if conn is not None:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            sock, started = self._sock, self._started
        if sock is not None:
            _shutdown(sock)  # wakes a reader blocked in readline(); it then drops the stream
        if not started:
            self._drop()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _keepalive(sock: socket.socket) -> None:
    # A watch may sit idle for hours; keepalives notice a peer that vanished without a FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, val in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)
