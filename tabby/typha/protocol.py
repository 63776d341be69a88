"""Typha's wire protocol: length-prefixed frames of compact JSON, one message per frame.

A frame is a 4-byte big-endian payload length followed by that many bytes of UTF-8 JSON,
an object whose "t" names the message type. The messages and their fields are data (the
`MESSAGES` table below): `encode` and `decode` both walk that table, so the two directions
cannot drift apart, and the round-trip property test covers every type.

Values are bytes in the datastore. Nearly all of them are UTF-8 JSON text, which travels as
a JSON string; anything else travels as {"b64": "..."}. Unknown fields inside a known message
are ignored (a newer peer of the same protocol version may add optional fields); an unknown
message type, a missing field or a field of the wrong type is a `ProtocolError`.

See docs/design/typha.md for the conversation (who sends what, when).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
MAX_FRAME = 16 * 1024 * 1024  # bytes; a larger length prefix is garbage, not a big message
DEFAULT_SYNCER_TYPE = "felix"


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame or message of our protocol."""


# -- messages --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Client -> server, first frame: who the client is and what it wants."""

    client_name: str
    version: int
    syncer_type: str = DEFAULT_SYNCER_TYPE
    info: str = ""


@dataclass(frozen=True, slots=True)
class HelloAck:
    """Server -> client: hello accepted, the snapshot follows."""

    server_name: str
    version: int
    syncer_type: str


@dataclass(frozen=True, slots=True)
class Goodbye:
    """Either direction, last frame before closing: why the connection ends."""

    reason: str


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """Server -> client: a batch of the snapshot's (key, value, mod_revision), keys in order."""

    kvs: tuple[tuple[str, bytes, int], ...]


@dataclass(frozen=True, slots=True)
class SnapshotDone:
    """Server -> client: the snapshot is complete; it is the state at `revision`."""

    revision: int
    keys: int


@dataclass(frozen=True, slots=True)
class Delta:
    """One change: value None = the key was deleted. Not a message: carried in `Deltas`."""

    key: str
    value: bytes | None
    revision: int


@dataclass(frozen=True, slots=True)
class Deltas:
    """Server -> client: changes after the snapshot, in datastore order."""

    deltas: tuple[Delta, ...]


@dataclass(frozen=True, slots=True)
class InSync:
    """Server -> client: the state sent so far is a complete view of the datastore."""

    revision: int


@dataclass(frozen=True, slots=True)
class OutOfSync:
    """Server -> client: the server's own datastore stream broke; changes may be missing
    until the next InSync (the server's syncer then sends only the difference)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ping:
    """Either direction: keepalive; the receiver answers with Pong(same timestamp)."""

    timestamp: float


@dataclass(frozen=True, slots=True)
class Pong:
    timestamp: float


Message = (
    Hello | HelloAck | Goodbye | SnapshotChunk | SnapshotDone | Deltas | InSync | OutOfSync
    | Ping | Pong
)


# -- field codecs ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldCodec:
    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any, str], Any]  # (wire value, where) -> python value


def _bad(where: str, what: str, value: Any) -> ProtocolError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ProtocolError(f"{where}: expected {what}, got {shown}")


def _dec_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(where, "a string", value)
    return value


def _dec_uint(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(where, "a non-negative integer", value)
    return value


def _dec_float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(where, "a finite number", value)
    return float(value)


def encode_value(value: bytes) -> str | dict[str, str]:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def decode_value(value: Any, where: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and isinstance(value.get("b64"), str) and len(value) == 1:
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            pass
    raise _bad(where, 'a string or {"b64": ...}', value)


def _enc_kvs(kvs: Iterable[tuple[str, bytes, int]]) -> list[list[Any]]:
    return [[key, encode_value(value), rev] for key, value, rev in kvs]


def _dec_kvs(value: Any, where: str) -> tuple[tuple[str, bytes, int], ...]:
    if not isinstance(value, list):
        raise _bad(where, "a list of [key, value, revision]", value)
    out = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, list) or len(item) != 3:
            raise _bad(at, "[key, value, revision]", item)
        out.append((
            _dec_str(item[0], f"{at}.key"),
            decode_value(item[1], f"{at}.value"),
            _dec_uint(item[2], f"{at}.revision"),
        ))
    return tuple(out)


def _enc_deltas(deltas: Iterable[Delta]) -> list[list[Any]]:
    return [
        [d.revision, d.key, None if d.value is None else encode_value(d.value)] for d in deltas
    ]


def _dec_deltas(value: Any, where: str) -> tuple[Delta, ...]:
    if not isinstance(value, list):
        raise _bad(where, "a list of [revision, key, value|null]", value)
    out = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, list) or len(item) != 3:
            raise _bad(at, "[revision, key, value|null]", item)
        rev = _dec_uint(item[0], f"{at}.revision")
        key = _dec_str(item[1], f"{at}.key")
        val = None if item[2] is None else decode_value(item[2], f"{at}.value")
        out.append(Delta(key, val, rev))
    return tuple(out)


def _same(value: Any) -> Any:
    return value


STR = FieldCodec("str", _same, _dec_str)
UINT = FieldCodec("uint", _same, _dec_uint)
FLOAT = FieldCodec("float", _same, _dec_float)
KVS = FieldCodec("kvs", _enc_kvs, _dec_kvs)
DELTAS = FieldCodec("deltas", _enc_deltas, _dec_deltas)

_REQUIRED = object()


@dataclass(frozen=True, slots=True)
class Field:
    wire: str  # JSON member name
    attr: str  # dataclass attribute
    codec: FieldCodec
    default: Any = _REQUIRED


@dataclass(frozen=True, slots=True)
class MessageSpec:
    tag: str  # the "t" member
    cls: type
    fields: tuple[Field, ...]


MESSAGES: tuple[MessageSpec, ...] = (
    MessageSpec("hello", Hello, (
        Field("name", "client_name", STR),
        Field("version", "version", UINT),
        Field("syncer", "syncer_type", STR, DEFAULT_SYNCER_TYPE),
        Field("info", "info", STR, ""),
    )),
    MessageSpec("hello_ack", HelloAck, (
        Field("name", "server_name", STR),
        Field("version", "version", UINT),
        Field("syncer", "syncer_type", STR),
    )),
    MessageSpec("goodbye", Goodbye, (Field("reason", "reason", STR),)),
    MessageSpec("snapshot", SnapshotChunk, (Field("kvs", "kvs", KVS),)),
    MessageSpec("snapshot_done", SnapshotDone, (
        Field("rev", "revision", UINT),
        Field("keys", "keys", UINT),
    )),
    MessageSpec("deltas", Deltas, (Field("d", "deltas", DELTAS),)),
    MessageSpec("in_sync", InSync, (Field("rev", "revision", UINT),)),
    MessageSpec("out_of_sync", OutOfSync, (Field("reason", "reason", STR),)),
    MessageSpec("ping", Ping, (Field("ts", "timestamp", FLOAT),)),
    MessageSpec("pong", Pong, (Field("ts", "timestamp", FLOAT),)),
)  # fmt: skip

_BY_TAG = {spec.tag: spec for spec in MESSAGES}
_BY_CLASS = {spec.cls: spec for spec in MESSAGES}


# -- the conversation, as transition tables ----------------------------------------------------
# phase -> {message type that may arrive: next phase}. Anything else is a ProtocolError.

CLOSED = "closed"

# What the server accepts from a client.
CLIENT_MESSAGES: dict[str, dict[type, str]] = {
    "hello": {Hello: "serving"},
    "serving": {Ping: "serving", Pong: "serving", Goodbye: CLOSED},
}

# What a client accepts from the server, after sending its Hello.
SERVER_MESSAGES: dict[str, dict[type, str]] = {
    "hello": {HelloAck: "snapshot", Goodbye: CLOSED},
    "snapshot": {SnapshotChunk: "snapshot", SnapshotDone: "streaming", Ping: "snapshot",
                 Pong: "snapshot", Goodbye: CLOSED},
    "streaming": {Deltas: "streaming", InSync: "streaming", OutOfSync: "streaming",
                  Ping: "streaming", Pong: "streaming", Goodbye: CLOSED},
}  # fmt: skip


def next_phase(table: dict[str, dict[type, str]], phase: str, msg: Message) -> str:
    """The phase after `msg` arrives in `phase`; ProtocolError when it may not arrive now."""
    nxt = table[phase].get(type(msg))
    if nxt is None:
        raise ProtocolError(f"unexpected {type(msg).__name__} while in phase {phase!r}")
    return nxt


# -- encode / decode -------------------------------------------------------------------------


def encode_payload(msg: Message) -> bytes:
    spec = _BY_CLASS[type(msg)]
    obj: dict[str, Any] = {"t": spec.tag}
    for f in spec.fields:
        obj[f.wire] = f.codec.encode(getattr(msg, f.attr))
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def encode(msg: Message) -> bytes:
    """One complete frame (length prefix + payload)."""
    payload = encode_payload(msg)
    if len(payload) > MAX_FRAME:
        raise ValueError(f"{type(msg).__name__} frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> Message:
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _bad("frame", "a JSON object", obj)
    tag = obj.get("t")
    spec = _BY_TAG.get(tag) if isinstance(tag, str) else None
    if spec is None:
        raise _bad("frame.t", "a known message type", tag)
    kwargs: dict[str, Any] = {}
    for f in spec.fields:
        if f.wire in obj:
            kwargs[f.attr] = f.codec.decode(obj[f.wire], f"{spec.tag}.{f.wire}")
        elif f.default is _REQUIRED:
            raise ProtocolError(f"{spec.tag}: missing field {f.wire!r}")
    msg: Message = spec.cls(**kwargs)
    return msg


def decode(frame: bytes) -> Message:
    """Decode one complete frame (tests and tools; streams use `FrameReader`/`read_message`)."""
    if len(frame) < HEADER.size:
        raise ProtocolError(f"frame of {len(frame)} bytes is shorter than its header")
    (length,) = HEADER.unpack_from(frame)
    if length != len(frame) - HEADER.size:
        raise ProtocolError(f"frame header says {length} bytes, got {len(frame) - HEADER.size}")
    return decode_payload(frame[HEADER.size :])


def check_length(length: int, max_frame: int = MAX_FRAME) -> None:
    if length > max_frame:
        raise ProtocolError(f"frame length {length} exceeds the maximum {max_frame}")


async def read_message(reader: asyncio.StreamReader, max_frame: int = MAX_FRAME) -> Message:
    """Next message from a stream; `asyncio.IncompleteReadError` at EOF (clean or not)."""
    header = await reader.readexactly(HEADER.size)
    (length,) = HEADER.unpack(header)
    check_length(length, max_frame)
    return decode_payload(await reader.readexactly(length))


class FrameReader:
    """Incremental decoder for callers that receive raw bytes (protocols, benchmarks)."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        pos = 0
        while len(self._buf) - pos >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buf, pos)
            check_length(length, self._max)
            end = pos + HEADER.size + length
            if end > len(self._buf):
                break
            out.append(decode_payload(bytes(self._buf[pos + HEADER.size : end])))
            pos = end
        del self._buf[:pos]
        return out


def snapshot_frames(
    items: Iterable[tuple[str, bytes, int]], chunk_bytes: int = 64 * 1024
) -> list[bytes]:
    """Encode a snapshot as SnapshotChunk frames of roughly `chunk_bytes` each."""
    frames: list[bytes] = []
    batch: list[tuple[str, bytes, int]] = []
    size = 0
    for key, value, rev in items:
        batch.append((key, value, rev))
        size += len(key) + len(value) + 16
        if size >= chunk_bytes:
            frames.append(encode(SnapshotChunk(tuple(batch))))
            batch, size = [], 0
    if batch:
        frames.append(encode(SnapshotChunk(tuple(batch))))
    return frames
