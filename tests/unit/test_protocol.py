"""Forward Protocol v1 codec: round trips, streaming, spec byte vectors, limits and wrong types."""

from __future__ import annotations

import gzip
import pickle
import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logferry.common.errors import (
    MalformedMessageError,
    MessageTooLargeError,
    ProtocolError,
    TooManyEntriesError,
)
from logferry.common.protocol import (
    Ack,
    ClientDecoder,
    Entry,
    EventMessage,
    EventTime,
    Helo,
    Mode,
    Pong,
    ServerDecoder,
    decode_entries,
    encode_ack,
    encode_compressed_packed_forward,
    encode_forward,
    encode_message,
    encode_packed_forward,
    gzip_entries,
    pack_entries,
)

T0 = 1441588984  # the spec's example time
T0_BE = struct.pack(">I", T0)  # 55 ed 2c f8


def decode_one(wire: bytes, **limits: Any) -> EventMessage:
    """Decode exactly one event message from ``wire``."""
    out = ServerDecoder(**limits).feed(wire)
    assert len(out) == 1
    assert isinstance(out[0], EventMessage)
    return out[0]


# ------------------------------------------------------------------------------------ strategies

event_times = st.builds(EventTime, st.integers(0, 2**32 - 1), st.integers(0, 10**9 - 1))
times = event_times | st.integers(0, 2**32 - 1)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | event_times
    | st.builds(msgpack.ExtType, st.integers(1, 127), st.binary(max_size=8))
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
records = st.dictionaries(st.text(max_size=10), values, max_size=6)
tags = st.text(min_size=1, max_size=30)
entry_lists = st.lists(st.tuples(times, records), max_size=12)
chunks = st.none() | st.text(min_size=1, max_size=32)


# ------------------------------------------------------------------------------------ EventTime


def test_event_time_conversions_are_exact() -> None:
    t = EventTime(T0, 123_456_789)
    assert (t.seconds, t.nanoseconds) == (T0, 123_456_789)
    assert t.to_ns() == T0 * 10**9 + 123_456_789
    assert EventTime.from_ns(t.to_ns()) == t
    assert EventTime.from_float(1.5) == EventTime(1, 500_000_000)
    assert EventTime.from_float(1_700_000_000.25) == EventTime(1_700_000_000, 250_000_000)
    assert EventTime.from_float(0.9999999999) == EventTime(1, 0)
    assert EventTime(1, 500_000_000).to_float() == 1.5
    assert EventTime.from_time(7) == EventTime(7, 0)
    assert EventTime.from_time(t) is t
    assert pickle.loads(pickle.dumps(t)) == t
    assert repr(t) == f"EventTime({T0}, 123456789)"


def test_event_time_orders_chronologically() -> None:
    times_ = [EventTime(2, 0), EventTime(1, 999_999_999), EventTime(1, 5), EventTime(0, 10**9 - 1)]
    assert sorted(times_) == sorted(times_, key=EventTime.to_ns)


@pytest.mark.parametrize(("s", "ns"), [(-1, 0), (2**32, 0), (0, 10**9), (0, -1)])
def test_event_time_out_of_range_is_refused(s: int, ns: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        EventTime(s, ns)


@given(st.integers(0, (2**32) * 10**9 - 1))
def test_event_time_ns_round_trip(ns: int) -> None:
    assert EventTime.from_ns(ns).to_ns() == ns


# ------------------------------------------------------------------------------------ byte vectors


def test_message_mode_bytes_from_the_spec() -> None:
    # ["app.x", EventTime(T0, 1), {"message": "bar"}]: fixarray 3, fixstr 5, fixext8 type 0
    # (uint32 BE seconds, uint32 BE nanoseconds), fixmap 1.
    wire = (
        b"\x93"
        + b"\xa5app.x"
        + b"\xd7\x00" + T0_BE + b"\x00\x00\x00\x01"
        + b"\x81" + b"\xa7message" + b"\xa3bar"
    )  # fmt: skip
    assert encode_message("app.x", EventTime(T0, 1), {"message": "bar"}) == wire
    msg = decode_one(wire)
    assert (msg.tag, msg.mode, msg.options, msg.chunk) == ("app.x", Mode.MESSAGE, {}, None)
    assert msg.entries == [(EventTime(T0, 1), {"message": "bar"})]
    assert msg.wire_bytes == len(wire)
    assert msg.encode_ack() is None


def test_event_time_as_ext8_is_accepted() -> None:
    # The spec allows "fixext or ext (with length 8)": c7 08 00 + payload.
    wire = b"\x93\xa1t" + b"\xc7\x08\x00" + T0_BE + b"\x00\x00\x00\x02" + b"\x80"
    assert decode_one(wire).entries == [(EventTime(T0, 2), {})]


def test_forward_mode_bytes_with_integer_time() -> None:
    # ["tag", [[T0, {}]], {"size": 1}]; T0 > 0xffff so it is a uint32 (ce).
    wire = b"\x93\xa3tag" + b"\x91\x92\xce" + T0_BE + b"\x80" + b"\x81\xa4size\x01"
    assert encode_forward("tag", [(T0, {})]) == wire
    msg = decode_one(wire)
    assert (msg.mode, msg.entries, msg.options) == (Mode.FORWARD, [(T0, {})], {"size": 1})


def test_packed_forward_bytes_with_size_and_chunk() -> None:
    chunk = "p8n9gmxTQVC8/nh2wlKKeQ=="  # the spec's example, 24 chars: fixstr b8
    entry = b"\x92" + b"\xd7\x00" + T0_BE + b"\x00\x00\x00\x00" + b"\x81\xa1k\xa1v"
    wire = (
        b"\x93\xa1t"
        + b"\xc4" + bytes([len(entry)]) + entry
        + b"\x82" + b"\xa4size\x01" + b"\xa5chunk\xb8" + chunk.encode()
    )  # fmt: skip
    assert pack_entries([(EventTime(T0, 0), {"k": "v"})]) == entry
    assert encode_packed_forward("t", entry, 1, chunk=chunk) == wire
    msg = decode_one(wire)
    assert msg.mode == Mode.PACKED_FORWARD
    assert msg.entries == [(EventTime(T0, 0), {"k": "v"})]
    assert (msg.chunk, msg.options) == (chunk, {"size": 1, "chunk": chunk})
    assert msg.encode_ack() == b"\x81\xa3ack\xb8" + chunk.encode()


def test_ack_bytes() -> None:
    wire = b"\x81\xa3ack\xb8p8n9gmxTQVC8/nh2wlKKeQ=="
    assert encode_ack("p8n9gmxTQVC8/nh2wlKKeQ==") == wire
    assert ClientDecoder().feed(wire) == [Ack("p8n9gmxTQVC8/nh2wlKKeQ==")]


def test_compressed_packed_forward_sets_the_option_and_decodes() -> None:
    entries: list[Entry] = [(EventTime(T0, i), {"i": i}) for i in range(3)]
    wire = encode_compressed_packed_forward("t", pack_entries(entries), 3, chunk="c")
    raw = msgpack.unpackb(wire)
    assert raw[2] == {"size": 3, "chunk": "c", "compressed": "gzip"}
    assert gzip.decompress(raw[1]) == pack_entries(entries)
    msg = decode_one(wire)
    assert (msg.mode, msg.entries, msg.chunk) == (Mode.COMPRESSED_PACKED_FORWARD, entries, "c")


# ------------------------------------------------------------------------------------ round trips


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(tags, times, records, chunks)
def test_message_mode_round_trip(tag: str, time: Any, record: Any, chunk: str | None) -> None:
    wire = encode_message(tag, time, record, chunk=chunk)
    msg = decode_one(wire)
    assert (msg.tag, msg.mode, msg.entries, msg.chunk) == (
        tag,
        Mode.MESSAGE,
        [(time, record)],
        chunk,
    )
    assert msg.wire_bytes == len(wire)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(tags, entry_lists, chunks, st.sampled_from(list(Mode)[1:]))
def test_stream_modes_round_trip(
    tag: str, entries: list[Entry], chunk: str | None, mode: Mode
) -> None:
    if mode == Mode.FORWARD:
        wire = encode_forward(tag, entries, chunk=chunk)
    elif mode == Mode.PACKED_FORWARD:
        wire = encode_packed_forward(tag, pack_entries(entries), len(entries), chunk=chunk)
    else:
        wire = encode_compressed_packed_forward(
            tag, pack_entries(entries), len(entries), chunk=chunk
        )
    msg = decode_one(wire)
    assert (msg.tag, msg.mode, msg.entries, msg.chunk) == (tag, mode, entries, chunk)
    assert msg.options["size"] == len(entries)
    assert msg.wire_bytes == len(wire)
    assert msg.encode_ack() == (None if chunk is None else encode_ack(chunk))


@given(entry_lists)
def test_pack_entries_decode_entries_round_trip(entries: list[Entry]) -> None:
    assert decode_entries(pack_entries(entries)) == entries
    assert decode_entries(pack_entries(iter(entries))) == entries


def test_pack_entries_handles_every_array_header_size() -> None:
    for n in (0, 15, 16, 65535, 65536):
        entries: list[Entry] = [(1, {})] * n
        assert pack_entries(entries) == b"\x92\x01\x80" * n


# ------------------------------------------------------------------------------------ streaming


def _sample_stream() -> tuple[bytes, int]:
    entries: list[Entry] = [(EventTime(T0, i), {"log": "x" * i, "n": i}) for i in range(5)]
    packed = pack_entries(entries)
    parts = [
        encode_message("a", EventTime(T0, 9), {"m": 1}),
        msgpack.packb(None),  # heartbeat
        encode_forward("b", entries, chunk="c1"),
        encode_packed_forward("c", packed, 5, chunk="c2"),
        encode_compressed_packed_forward("d", packed, 5, chunk="c3"),
    ]
    return b"".join(parts), 4


def test_every_split_point_decodes_the_same() -> None:
    wire, count = _sample_stream()
    whole = ServerDecoder().feed(wire)
    assert len(whole) == count
    for i in range(len(wire) + 1):
        d = ServerDecoder()
        assert d.feed(wire[:i]) + d.feed(wire[i:]) == whole


def test_byte_at_a_time_decodes_the_same() -> None:
    wire, _ = _sample_stream()
    d = ServerDecoder()
    out = [m for i in range(len(wire)) for m in d.feed(wire[i : i + 1])]
    assert out == ServerDecoder().feed(wire)


@given(st.lists(st.integers(1, 400), max_size=40))
def test_random_chunking_decodes_the_same(cuts: list[int]) -> None:
    wire, _n = _sample_stream()
    d = ServerDecoder()
    out = []
    pos = 0
    for size in cuts:
        out += d.feed(wire[pos : pos + size])
        pos += size
    out += d.feed(wire[pos:])
    assert out == ServerDecoder().feed(wire)


def test_feed_accepts_bytearray_and_memoryview() -> None:
    wire = encode_message("t", 1, {})
    assert ServerDecoder().feed(bytearray(wire)) == ServerDecoder().feed(memoryview(wire))


# ------------------------------------------------------------------------------------ liberal input


def test_packed_forward_entries_as_str_are_accepted() -> None:
    # Fluentd's out_forward sends MessagePackEventStream as str (the spec: server MUST accept).
    entries: list[Entry] = [(EventTime(T0, 7), {"k": "v"}), (T0, {"b": b"\xff"})]
    packed = pack_entries(entries)
    wire = msgpack.packb(["t", packed, {"size": 2}], use_bin_type=False)
    assert 0xA0 <= wire[3] <= 0xBF  # really str-typed (fixstr)
    msg = decode_one(wire)
    assert (msg.mode, msg.entries) == (Mode.PACKED_FORWARD, entries)


def test_gzip_of_several_members_and_str_blob_are_accepted() -> None:
    entries: list[Entry] = [(T0 + i, {"i": i}) for i in range(6)]
    members = gzip_entries(pack_entries(entries[:2])) + gzip.compress(pack_entries(entries[2:]))
    for use_bin_type in (True, False):
        wire = msgpack.packb(["t", members, {"compressed": "gzip"}], use_bin_type=use_bin_type)
        msg = decode_one(wire)
        assert (msg.mode, msg.entries) == (Mode.COMPRESSED_PACKED_FORWARD, entries)


def test_gzip_without_the_compressed_option_is_recognised() -> None:
    entries: list[Entry] = [(1, {"a": 1})]
    wire = msgpack.packb(["t", gzip_entries(pack_entries(entries))])
    msg = decode_one(wire)
    assert (msg.mode, msg.entries) == (Mode.COMPRESSED_PACKED_FORWARD, entries)


def test_compressed_option_on_forward_mode_is_ignored() -> None:
    msg = decode_one(msgpack.packb(["t", [[1, {}]], {"compressed": "gzip"}]))
    assert (msg.mode, msg.entries) == (Mode.FORWARD, [(1, {})])


def test_unknown_compressed_value_means_plain_packed_forward() -> None:
    # The spec: "Other values will be ignored".
    msg = decode_one(msgpack.packb(["t", pack_entries([(1, {})]), {"compressed": "zstd"}]))
    assert msg.mode == Mode.PACKED_FORWARD


def test_chunk_as_bin_is_normalised_and_acked_as_sent() -> None:
    msg = decode_one(encode_packed_forward("t", b"", 0, options={"chunk": b"abc"}))
    assert msg.chunk == "abc"
    assert msg.encode_ack() == msgpack.packb({"ack": b"abc"})
    raw_id = bytes(range(250, 256)) + b"\x00" * 10
    msg = decode_one(encode_packed_forward("t", b"", 0, options={"chunk": raw_id}))
    assert msg.chunk == "+vv8/f7/AAAAAAAAAAAAAA=="  # base64 of the 128-bit id


def test_float_time_is_accepted_as_event_time() -> None:
    # fluent-logger-python sends a float when given one without nanosecond_precision.
    msg = decode_one(msgpack.packb(["t", 1.25, {"a": 1}]))
    assert msg.entries == [(EventTime(1, 250_000_000), {"a": 1})]


def test_nil_option_and_heartbeat_are_accepted() -> None:
    d = ServerDecoder()
    assert d.feed(b"\xc0\xc0") == []
    (msg,) = d.feed(msgpack.packb(["t", 1, {}, None]))
    assert msg.options == {}


def test_tag_named_ping_in_message_mode_is_an_event() -> None:
    msg = decode_one(encode_message("PING", 1, {}))
    assert (msg.tag, msg.mode) == ("PING", Mode.MESSAGE)


def test_invalid_utf8_in_a_record_is_replaced_by_default_or_refused_when_strict() -> None:
    # Fluent Bit packs raw container bytes as str without checking UTF-8.
    wire = b"\x93\xa1t\x01\x81\xa3log\xa3a\xffb"
    assert decode_one(wire).entries == [(1, {"log": "a\ufffdb"})]
    with pytest.raises(MalformedMessageError):
        ServerDecoder(unicode_errors="strict").feed(wire)


def test_invalid_utf8_in_packed_entries_is_replaced_by_default_or_refused_when_strict() -> None:
    packed = b"\x92\x01\x81\xa3log\xa3a\xffb" + pack_entries([(2, {"log": "ok"})])
    for wire in (
        encode_packed_forward("t", packed, 2),
        encode_compressed_packed_forward("t", packed, 2),
    ):
        assert decode_one(wire).entries == [(1, {"log": "a\ufffdb"}), (2, {"log": "ok"})]
        with pytest.raises(MalformedMessageError):
            ServerDecoder(unicode_errors="strict").feed(wire)


# Records outside the fast decoder's schema (bin, ext, bytes keys, deep nesting) and times it
# does not take directly (int, float, ext 0 of the wrong length) must decode as before.
UNUSUAL_ENTRIES: list[Entry] = [
    (EventTime(T0, 1), {"log": "plain"}),
    (T0, {"b": b"\x00\xff"}),
    (EventTime(T0, 2), {"t": EventTime(T0, 3), "x": msgpack.ExtType(5, b"ab")}),
    (EventTime(T0, 4), {b"k": 1, "k": [b"v"]}),  # type: ignore[dict-item]
    (EventTime(T0, 5), {"deep": [[[[[[[[[[[[{"k": True}]]]]]]]]]]]]}),
    (
        EventTime(T0, 6),
        {"n": -(2**63), "u": 2**64 - 1, "f": 1.5, "z": None, "s": "\u00e9\U0001f600"},
    ),
]


@pytest.mark.parametrize(
    "size",
    [None, 6, 5, 7, 2, 0, -1, 2**32 - 1, "6", 6.0, True],
    ids=lambda size: repr(size),
)
def test_packed_entries_decode_the_same_whatever_the_size_option(size: Any) -> None:
    # option.size is trusted as the entry count only when it is right: a wrong one (some
    # clients send a byte size) costs time, never a different result.
    packed = pack_entries(UNUSUAL_ENTRIES)
    wire = msgpack.packb(["t", packed, {"size": size}])
    msg = decode_one(wire)
    assert repr(msg.entries) == repr(UNUSUAL_ENTRIES)  # repr: bool is not int, bytes not str
    assert repr(decode_one(encode_compressed_packed_forward("t", packed, 6)).entries) == repr(
        UNUSUAL_ENTRIES
    )
    assert repr(decode_entries(packed)) == repr(UNUSUAL_ENTRIES)


def test_float_and_int_times_in_packed_entries_are_normalised_as_in_other_modes() -> None:
    packed = msgpack.packb([1.25, {}]) + msgpack.packb([7, {"a": 1}])
    assert decode_entries(packed) == [(EventTime(1, 250_000_000), {}), (7, {"a": 1})]
    assert [type(t) for t, _ in decode_entries(packed)] == [EventTime, int]


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(b"\x92\x01\x81\xa1k\x81\x01\x02", id="nested int key"),
        pytest.param(b"\x92\x01\x81\xa1k\x81\x91\x01\x02", id="nested array key"),
        pytest.param(b"\x92\x01\x81\xa1k\x81\xc0\x02", id="nested nil key"),
        pytest.param(b"\x92\x81\x01\x02\x80", id="time is a map"),
        pytest.param(b"\x92" + b"\x91" * 100_000 + b"\x01\x80", id="deep time"),
        pytest.param(b"\x92\x01" + b"\x81\xa1k" * 100_000 + b"\xc0", id="deep record"),
        pytest.param(b"\x92\xd7\x00" + b"\x00\x00\x00\x01\x3b\x9a\xca\x00" + b"\x80", id="ns 1e9"),
        pytest.param(b"\x92\xd7\xff" + b"\x00" * 8 + b"\x80", id="timestamp ext"),
        pytest.param(b"\x92\x01\x80\x92\x01", id="partial entry"),
    ],
)
def test_bad_packed_entries_are_malformed_whatever_the_size(blob: bytes) -> None:
    for size in (None, 1, 2):
        with pytest.raises(MalformedMessageError):
            ServerDecoder().feed(msgpack.packb(["t", blob, {"size": size}]))


# ------------------------------------------------------------------------------------ limits


def test_message_at_the_byte_limit_passes_and_one_byte_more_is_refused() -> None:
    wire = encode_message("t", 1, {"log": "x" * 1000})
    assert decode_one(wire, max_message_bytes=len(wire)).wire_bytes == len(wire)
    with pytest.raises(MessageTooLargeError):
        ServerDecoder(max_message_bytes=len(wire) - 1).feed(wire)
    d = ServerDecoder(max_message_bytes=len(wire) - 1)
    assert d.feed(wire[:10]) == []
    with pytest.raises(MessageTooLargeError):
        d.feed(wire[10:])


def test_many_small_messages_in_one_feed_are_not_a_large_message() -> None:
    wire = encode_message("t", 1, {"log": "x" * 100})
    out = ServerDecoder(max_message_bytes=len(wire)).feed(wire * 1000)
    assert len(out) == 1000


def test_declared_huge_bin_is_refused_at_the_limit_without_buffering_more() -> None:
    d = ServerDecoder(max_message_bytes=4096)
    assert d.feed(b"\x93\xa1t\xc6\xff\xff\xff\xff") == []
    assert d.feed(b"\x00" * (4096 - 8)) == []  # exactly at the limit: still waiting
    with pytest.raises(MessageTooLargeError):
        d.feed(b"\x00")


@pytest.mark.parametrize(
    "mode", [Mode.FORWARD, Mode.PACKED_FORWARD, Mode.COMPRESSED_PACKED_FORWARD]
)
def test_entry_count_limit(mode: Mode) -> None:
    def wire(n: int) -> bytes:
        entries: list[Entry] = [(1, {})] * n
        if mode == Mode.FORWARD:
            return encode_forward("t", entries)
        if mode == Mode.PACKED_FORWARD:
            return encode_packed_forward("t", pack_entries(entries), n)
        return encode_compressed_packed_forward("t", pack_entries(entries), n)

    assert len(decode_one(wire(50), max_entries=50).entries) == 50
    with pytest.raises(TooManyEntriesError):
        ServerDecoder(max_entries=50).feed(wire(51))


def test_decompression_bomb_is_refused_without_inflating_it() -> None:
    member = gzip.compress(b"\x00" * (1 << 20), mtime=0)  # 1 MiB of zeros, ~1 KB
    bomb = msgpack.packb(["t", member * 200, {"compressed": "gzip"}])  # 200 MiB inflated
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooLargeError):
            ServerDecoder(max_decompressed_bytes=4 << 20).feed(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


def test_decompressed_size_at_the_limit_passes() -> None:
    packed = pack_entries([(1, {"log": "x" * 100})] * 10)
    wire = encode_compressed_packed_forward("t", packed, 10)
    assert len(decode_one(wire, max_decompressed_bytes=len(packed)).entries) == 10
    with pytest.raises(MessageTooLargeError):
        ServerDecoder(max_decompressed_bytes=len(packed) - 1).feed(wire)


@pytest.mark.parametrize("header", [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff"])
def test_nested_container_headers_do_not_allocate(header: bytes) -> None:
    # A building streaming unpacker would preallocate every declared container here
    # (1000 x 4G slots); framing with skip() builds nothing until the message is complete.
    d = ServerDecoder(max_message_bytes=64 << 10)
    tracemalloc.start()
    try:
        assert d.feed(b"\x93\xa1t" + header * 1000) == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    with pytest.raises(ProtocolError):  # deeper than msgpack's stack, or over the byte limit
        d.feed(header * 20_000)


@pytest.mark.parametrize(
    "header", [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"]
)
@pytest.mark.parametrize("size", [None, 1, 1000, 2**32 - 1])
def test_declared_container_sizes_in_complete_entries_do_not_allocate(
    header: bytes, size: int | None
) -> None:
    # A complete message whose entries declare 4G-element containers (or a 4G size option):
    # refused with memory bounded by the input, never by what the headers declare.
    entry = b"\x92\x01\x81\xa1k" + header + b"\xc0" * 1000
    wire = msgpack.packb(["t", entry * 100, {"size": size}])
    tracemalloc.start()
    try:
        with pytest.raises(MalformedMessageError):
            ServerDecoder().feed(wire)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_deep_nesting_in_a_complete_message_is_malformed() -> None:
    with pytest.raises(MalformedMessageError):
        ServerDecoder().feed(b"\x93\xa1t\x01" + b"\x81\xa1k" * 5000 + b"\xc0")


# ------------------------------------------------------------------------------------ wrong types

WRONG: dict[str, Any] = {
    "tag is int": [1, 1, {}],
    "tag is bin": [b"t", 1, {}],
    "tag is nil": [None, 1, {}],
    "entries is a map": ["t", {}, {}],
    "entries is nil": ["t", None],
    "two elements, int second": ["t", 1],
    "time is str": ["t", "1441588984", {}],
    "time is nil": ["t", None, {}],
    "time is bool": ["t", True, {}],
    "time is negative": ["t", -1, {}],
    "time is too big": ["t", 2**40, {}],
    "time is another ext": ["t", msgpack.ExtType(1, b"\0" * 8), {}],
    "EventTime of 4 bytes": ["t", msgpack.ExtType(0, b"\0" * 4), {}],
    "EventTime ns over 1e9": ["t", msgpack.ExtType(0, b"\0\0\0\1\x3b\x9a\xca\x00"), {}],
    "record is array": ["t", 1, [1, 2]],
    "record is str": ["t", 1, "x"],
    "record is nil": ["t", 1, None],
    "forward entry not array": ["t", [1, 2]],
    "forward entry of 3": ["t", [[1, {}, 1]]],
    "forward entry of 1": ["t", [[1]]],
    "forward entry is 2-key map": ["t", [{"a": {}, "b": {}}]],
    "forward entry is 2-char str": ["t", ["ab"]],
    "forward record not map": ["t", [[1, "x"]]],
    "forward with 4 elements": ["t", [[1, {}]], {}, {}],
    "option is int": ["t", 1, {}, 5],
    "option is array": ["t", [[1, {}]], [1]],
    "chunk is int": ["t", 1, {}, {"chunk": 5}],
    "five elements": ["t", 1, {}, {}, {}],
    "one element": ["t"],
    "six elements, not PING": ["PONG", "a", "b", "c", "d", "e"],
    "top level int": 5,
    "top level map": {"a": 1},
    "top level str": "hello",
    "map key not str": ["t", 1, {1: 2}],
}


@pytest.mark.parametrize("case", list(WRONG))
def test_wrong_types_are_malformed(case: str) -> None:
    with pytest.raises(MalformedMessageError):
        ServerDecoder().feed(msgpack.packb(WRONG[case], strict_types=False))


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(b"\x01", id="entry is int"),
        pytest.param(b"\x92\x01", id="truncated entry"),
        pytest.param(b"\x92\x01\x80\x92", id="trailing partial entry"),
        pytest.param(b"\x92\x01\xa1x", id="record is str"),
        pytest.param(b"\xc1", id="invalid byte"),
    ],
)
def test_bad_packed_entries_are_malformed(blob: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        ServerDecoder().feed(encode_packed_forward("t", blob, 1))


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(b"\x1f\x8bnot gzip at all", id="bad gzip"),
        pytest.param(gzip.compress(b"\x92\x01\x80")[:-5], id="truncated gzip"),
        pytest.param(gzip.compress(b"\x92\x01\x80") + b"junk", id="junk after member"),
        pytest.param(b"", id="empty"),
        pytest.param(gzip.compress(b"\x92\x01"), id="gzip of a truncated entry"),
    ],
)
def test_bad_gzip_is_malformed(blob: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        ServerDecoder().feed(msgpack.packb(["t", blob, {"compressed": "gzip"}]))


def test_invalid_msgpack_byte_is_malformed() -> None:
    with pytest.raises(MalformedMessageError):
        ServerDecoder().feed(b"\x93\xa1t\xc1")


def test_errors_are_protocol_errors_chained_from_the_cause() -> None:
    with pytest.raises(MalformedMessageError) as info:
        ServerDecoder().feed(b"\xc1")
    assert isinstance(info.value, ProtocolError)
    assert info.value.__cause__ is not None


# ------------------------------------------------------------------------------------ client side


def test_client_decoder_reads_helo_pong_and_acks_in_str_or_bin() -> None:
    wire = b"".join(
        [
            msgpack.packb(["HELO", {"nonce": b"\x01\xff", "auth": "", "keepalive": False}]),
            msgpack.packb(["HELO", {"nonce": "abc", "auth": b"salt"}]),
            msgpack.packb(["HELO", {"nonce": "abc"}]),
            msgpack.packb(["PONG", True, "", "srv", "ab" * 64]),
            msgpack.packb(["PONG", False, "shared_key mismatch", b"srv", b"cd"]),
            msgpack.packb({"ack": "id1"}),
            msgpack.packb({"ack": b"id2"}),
        ]
    )
    d = ClientDecoder()
    out = [m for i in range(len(wire)) for m in d.feed(wire[i : i + 1])]
    assert out == [
        Helo(b"\x01\xff", b"", keepalive=False),
        Helo(b"abc", b"salt", keepalive=True),
        Helo(b"abc", b"", keepalive=True),
        Pong(True, "", "srv", "ab" * 64),
        Pong(False, "shared_key mismatch", "srv", "cd"),
        Ack("id1"),
        Ack("id2"),
    ]
    ack = out[-1]
    assert isinstance(ack, Ack)
    assert ack.raw == b"id2"


@pytest.mark.parametrize(
    "obj",
    [
        ["HELO"],
        ["HELO", 5],
        ["HELO", {"nonce": 5}],
        ["PONG", "yes", "", "srv", "d"],
        ["PONG", True, "", "srv"],
        ["PONG", True, "", 5, "d"],
        {"ack": 5},
        {"nack": "x"},
        [1, 2],
        5,
        None,
    ],
)
def test_client_decoder_refuses_unexpected_messages(obj: Any) -> None:
    with pytest.raises(MalformedMessageError):
        ClientDecoder().feed(msgpack.packb(obj))


def test_client_decoder_refuses_oversized_and_garbage() -> None:
    with pytest.raises(MessageTooLargeError):
        ClientDecoder(max_message_bytes=100).feed(msgpack.packb({"ack": "x" * 200}))
    with pytest.raises(MalformedMessageError):
        ClientDecoder().feed(b"\xc1")
