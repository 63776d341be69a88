"""Typha wire protocol: round trips for every message type, framing, and bad input."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tabby.typha import protocol as p
from tabby.typha.merge import ResyncMerger

# Keys and names are text without surrogates (they must be valid UTF-8 on the wire).
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
uint = st.integers(min_value=0, max_value=2**53)
finite = st.floats(allow_nan=False, allow_infinity=False)
value = st.binary(max_size=40) | text.map(str.encode)

MESSAGE = st.one_of(
    st.builds(p.Hello, text, uint, text, text),
    st.builds(p.HelloAck, text, uint, text),
    st.builds(p.Goodbye, text),
    st.builds(p.SnapshotChunk, st.lists(st.tuples(text, value, uint), max_size=8).map(tuple)),
    st.builds(p.SnapshotDone, uint, uint),
    st.builds(
        p.Deltas,
        st.lists(st.builds(p.Delta, text, st.none() | value, uint), max_size=8).map(tuple),
    ),
    st.builds(p.InSync, uint),
    st.builds(p.OutOfSync, text),
    st.builds(p.Ping, finite),
    st.builds(p.Pong, finite),
)


def test_every_message_class_is_in_the_table() -> None:
    classes = {spec.cls for spec in p.MESSAGES}
    assert classes == set(p.Message.__args__)  # type: ignore[attr-defined]
    assert len({spec.tag for spec in p.MESSAGES}) == len(p.MESSAGES)


@settings(max_examples=300)
@given(MESSAGE)
def test_round_trip(msg: p.Message) -> None:
    frame = p.encode(msg)
    assert p.decode(frame) == msg
    # The same bytes split anywhere decode the same through the stream decoder.
    reader = p.FrameReader()
    cut = len(frame) // 2
    assert reader.feed(frame[:cut]) == []
    assert reader.feed(frame[cut:]) == [msg]


@given(st.lists(MESSAGE, max_size=6), st.integers(min_value=1, max_value=7))
def test_stream_of_frames_in_small_pieces(msgs: list[p.Message], step: int) -> None:
    data = b"".join(p.encode(m) for m in msgs)
    reader = p.FrameReader()
    out: list[p.Message] = []
    for i in range(0, len(data), step):
        out += reader.feed(data[i : i + step])
    assert out == msgs


def test_values_travel_as_text_when_utf8_and_base64_otherwise() -> None:
    frame = p.encode(p.SnapshotChunk((("/a", b'{"x":1}', 3), ("/b", b"\xff\x00", 4))))
    obj = json.loads(frame[4:])
    assert obj == {"t": "snapshot", "kvs": [["/a", '{"x":1}', 3], ["/b", {"b64": "/wA="}, 4]]}


def test_optional_fields_default_and_unknown_fields_are_ignored() -> None:
    payload = json.dumps({"t": "hello", "name": "n1", "version": 1, "future": [1]}).encode()
    assert p.decode_payload(payload) == p.Hello("n1", 1, p.DEFAULT_SYNCER_TYPE, "")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\x01garbage", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"t": "nope"}', "frame.t: expected a known message type"),
        (b'{"t": "hello", "version": 1}', "hello: missing field 'name'"),
        (b'{"t": "hello", "name": 5, "version": 1}', "hello.name: expected a string"),
        (b'{"t": "in_sync", "rev": -1}', "in_sync.rev: expected a non-negative integer"),
        (b'{"t": "in_sync", "rev": true}', "in_sync.rev: expected a non-negative integer"),
        (b'{"t": "ping", "ts": "x"}', "ping.ts: expected a finite number"),
        (b'{"t": "deltas", "d": [[1, "/k"]]}', "deltas.d[0]: expected [revision, key"),
        (b'{"t": "snapshot", "kvs": [["/k", {"b64": "!!"}, 1]]}', "snapshot.kvs[0].value"),
    ],
)
def test_bad_payloads_name_the_field(payload: bytes, message: str) -> None:
    with pytest.raises(p.ProtocolError, match=message.replace("[", r"\[").replace("(", r"\(")):
        p.decode_payload(payload)


def test_oversized_length_prefix_is_garbage() -> None:
    # "GET / HTTP/1.1" read as a length prefix is about 1.2 GB.
    with pytest.raises(p.ProtocolError, match="exceeds the maximum"):
        p.FrameReader().feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(p.ProtocolError, match="header says"):
        p.decode(struct.pack(">I", 10) + b"{}")


def test_snapshot_frames_chunk_by_size() -> None:
    items = [(f"/k/{i:04d}", b"v" * 100, i) for i in range(1000)]
    frames = p.snapshot_frames(items, chunk_bytes=10_000)
    assert 8 <= len(frames) <= 15
    got = [kv for f in frames for kv in p.decode(f).kvs]  # type: ignore[union-attr]
    assert got == items


# -- the resync merge (what makes a failover invisible to the consumer) -----------------------

state = st.dictionaries(st.sampled_from([f"/k/{i}" for i in range(8)]),
                        st.tuples(st.binary(max_size=3), st.integers(1, 5)), max_size=8)


@given(state, state)
def test_merge_delivers_exactly_the_difference(old: dict, new: dict) -> None:
    seen: list = []
    m = ResyncMerger(seen.append)
    m.start_source()
    for key, (val, rev) in old.items():
        m.put(key, val, rev)
    m.source_in_sync(10)
    view = {u.key: (u.value, u.revision) for u in seen if hasattr(u, "key")}
    assert view == old
    seen.clear()
    m.source_lost("failover")
    m.start_source()
    for key, (val, rev) in new.items():
        m.put(key, val, rev)
    assert [type(i).__name__ for i in seen] == ["OutOfSync"]  # nothing else until InSync
    m.source_in_sync(20)
    updates = [i for i in seen if hasattr(i, "key")]
    changed = {k for k in new if old.get(k) != new[k]}
    vanished = set(old) - set(new)
    assert {u.key for u in updates} == changed | vanished
    assert all(u.value is None for u in updates if u.key in vanished)
    assert type(seen[-1]).__name__ == "InSync"
    assert m.delivered == {k: (r, hash(v)) for k, (v, r) in new.items()}


def test_conversation_tables() -> None:
    # Every message type has a place in the conversation.
    used = {cls for table in (p.CLIENT_MESSAGES, p.SERVER_MESSAGES)
            for moves in table.values() for cls in moves}
    assert used == set(p.Message.__args__)  # type: ignore[attr-defined]
    # Every phase a table leads to is a phase of that table (or the end).
    for table in (p.CLIENT_MESSAGES, p.SERVER_MESSAGES):
        assert {n for moves in table.values() for n in moves.values()} <= set(table) | {p.CLOSED}
    # A server run that follows the protocol...
    phase = "hello"
    for msg in (p.HelloAck("s", 1, "felix"), p.SnapshotChunk(()), p.SnapshotDone(5, 0),
                p.InSync(5), p.Deltas(()), p.OutOfSync("x"), p.Ping(1.0), p.Goodbye("bye")):
        phase = p.next_phase(p.SERVER_MESSAGES, phase, msg)
    assert phase == p.CLOSED
    # ...and ones that do not.
    with pytest.raises(p.ProtocolError, match="unexpected Deltas while in phase 'snapshot'"):
        p.next_phase(p.SERVER_MESSAGES, "snapshot", p.Deltas(()))
    with pytest.raises(p.ProtocolError, match="unexpected SnapshotChunk while in phase 'hello'"):
        p.next_phase(p.SERVER_MESSAGES, "hello", p.SnapshotChunk(()))
    with pytest.raises(p.ProtocolError, match="unexpected Hello while in phase 'serving'"):
        p.next_phase(p.CLIENT_MESSAGES, "serving", p.Hello("again", 1))
