"""Decoder limits that keep memory bounded whatever arrives: inflation, record size, slices of
objects, nesting depth, the handshake's small PING; and a memory-ceiling fuzz of messages."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logferry.common.errors import MalformedMessageError, MessageTooLargeError, ProtocolError
from logferry.common.protocol import (
    EventMessage,
    EventTime,
    ServerDecoder,
    encode_compressed_packed_forward,
    encode_forward,
    encode_message,
    encode_packed_forward,
    pack_entries,
)
from logferry.common.protocol.entries import MAX_DEPTH, UnreadableRecord
from logferry.common.units import MiB

T = EventTime(1_764_000_000, 1)


@contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """The peak of Python allocations inside the block (tracemalloc)."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def decode(data: bytes, **limits: Any) -> EventMessage:
    decoder = ServerDecoder(**limits)
    (frame,) = decoder.frames(data)
    message = decoder.decode(frame)
    assert isinstance(message, EventMessage)
    return message


def decode_all(data: bytes, **limits: Any) -> list[Any]:
    """Every entry of one message, through its slices."""
    return [entry for part in decode(data, **limits).slices() for entry in part]


def nested(depth: int) -> Any:
    """A record whose nesting, the record itself included, is ``depth`` containers."""
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"deep": value} if depth > 1 else {"x": 1}


def test_a_gzip_bomb_is_refused_while_inflating_without_holding_it() -> None:
    # 64 MiB of one log line, gzipped to ~64 KiB: refused at 4 MiB inflated.
    record = {"log": "a" * (64 * MiB)}
    packed = pack_entries([(T, record)])
    del record
    wire = encode_compressed_packed_forward("t", packed, 1, chunk="bomb")
    del packed
    assert len(wire) < 200 * 1024
    with peak_memory() as peak, pytest.raises(MessageTooLargeError, match="inflate"):
        decode(wire, max_decompressed_bytes=4 * MiB, max_record_bytes=4 * MiB)
    assert peak() < 12 * MiB


def test_an_entry_over_the_record_cap_is_refused_in_every_mode() -> None:
    big = {"log": "x" * (300 * 1024)}
    small = [(T, {"log": f"line {i}"}) for i in range(2000)]
    limits = {"max_record_bytes": 256 * 1024, "slice_bytes": 64 * 1024}
    packed = pack_entries([*small, (T, big), *small])
    for wire in (
        encode_packed_forward("t", packed, 4001),
        encode_compressed_packed_forward("t", packed, 4001),
        encode_forward("t", [*small, (T, big)]),
        encode_message("t", T, big),
    ):
        with pytest.raises(MessageTooLargeError):
            decode_all(wire, **limits)


def test_a_large_stream_is_decoded_a_slice_at_a_time_to_the_same_entries() -> None:
    entries = [
        (EventTime(1_764_000_000, i), {"log": f"line {i} " + "y" * 200}) for i in range(9000)
    ]
    wire = encode_compressed_packed_forward("t", pack_entries(entries), len(entries), chunk="c")
    message = decode(wire, slice_bytes=256 * 1024)
    assert message.stream is not None
    assert message.entries == []
    assert message.count == 9000
    slices = list(message.slices())
    assert len(slices) > 5
    assert [e for part in slices for e in part] == entries


def test_many_tiny_containers_never_become_all_their_objects_at_once() -> None:
    # 4 MiB of empty maps (one byte each on the wire, ~64 bytes each as Python dicts): at once
    # they would be ~300 MB of objects; a slice at a time, one slice's worth.
    empties = msgpack.packb([{}] * 4000)
    entry = b"\x92" + msgpack.packb(T) + b"\x81\xa4many" + empties
    packed = entry * 1000
    wire = encode_packed_forward("t", packed, 1000)
    assert len(wire) > 3 * MiB
    message = decode(wire, slice_bytes=64 * 1024, max_record_bytes=64 * 1024)
    with peak_memory() as peak:
        seen = 0
        for part in message.slices():
            seen += len(part)
            del part
    assert seen == 1000
    assert peak() < 40 * MiB


@pytest.mark.parametrize("eager", [True, False])
def test_a_record_nested_too_deep_is_kept_as_bytes_and_the_rest_goes_on(eager: bool) -> None:
    entries = [
        (T, {"log": "before"}),
        (T, {"kubernetes": {"namespace_name": "a"}, **nested(MAX_DEPTH + 10)}),
        (T, nested(MAX_DEPTH)),
        (T, {"log": "after"}),
    ]
    packed = pack_entries(entries)
    slice_bytes = 1 * MiB if eager else 16
    message = decode(encode_packed_forward("t", packed, 4), slice_bytes=slice_bytes)
    got = [e for part in message.slices() for e in part]
    assert [r.get("log") for _t, r in got] == ["before", None, None, "after"]
    unreadable = got[1][1]
    assert isinstance(unreadable, UnreadableRecord)
    assert unreadable == {"kubernetes": {"namespace_name": "a"}}
    assert msgpack.unpackb(unreadable.raw)[1]["kubernetes"] == {"namespace_name": "a"}
    assert "deeper than 64" in unreadable.reason
    assert not isinstance(got[2][1], UnreadableRecord)  # exactly the cap is fine


def test_message_mode_and_forward_mode_keep_deep_records_aside_too() -> None:
    for wire in (
        encode_message("t", T, nested(MAX_DEPTH + 1)),
        encode_forward("t", [(T, {"log": "x"}), (T, nested(MAX_DEPTH + 1))]),
    ):
        got = [e for part in decode(wire).slices() for e in part]
        assert isinstance(got[-1][1], UnreadableRecord)


def test_idle_connections_keep_no_read_buffer_of_their_last_message() -> None:
    # msgpack's streaming scanner starts with a 1 MiB buffer and never shrinks it: one per
    # connection made 64 connections hold 64 MiB before their first byte, and a large
    # message's buffer for as long as the connection lived.
    entries = [(T, {"log": "x" * 1000, "n": n}) for n in range(600)]
    wire = encode_packed_forward("t", pack_entries(entries), len(entries))
    with peak_memory() as peak:
        decoders = [ServerDecoder() for _ in range(64)]
        for decoder in decoders:
            for piece in (wire[: len(wire) // 2], wire[len(wire) // 2 :]):
                assert decoder.frames(piece) in ([], [wire])
            assert decoder.buffered == 0
        held = tracemalloc.get_traced_memory()[0]
        assert peak() < 4 * len(wire) + 2 * MiB  # one message in hand at a time
    assert held < 64 * 64 * 1024, f"{held} bytes kept by 64 idle decoders"


def test_during_the_handshake_only_a_small_ping_is_read() -> None:
    decoder = ServerDecoder()
    decoder.limit_messages(4096)
    with pytest.raises(MessageTooLargeError):
        decoder.frames(encode_message("t", T, {"log": "x" * 5000}))
    decoder = ServerDecoder()
    decoder.limit_messages(4096)
    decoder.limit_messages(None)  # after the PONG: the full limit again
    assert len(decoder.frames(encode_message("t", T, {"log": "x" * 5000}))) == 1


def test_a_stream_cut_inside_an_entry_is_refused_when_sliced() -> None:
    packed = pack_entries([(T, {"log": "z" * 1000})] * 50)[:-10]
    with pytest.raises(MalformedMessageError):
        decode(encode_packed_forward("t", packed, 50), slice_bytes=4096)


# -- a memory ceiling for whatever arrives --------------------------------------------------

_LEAVES = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
_VALUES = st.recursive(
    _LEAVES,
    lambda children: (
        st.lists(children, max_size=40) | st.dictionaries(st.text(max_size=2), children, max_size=8)
    ),
    max_leaves=400,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_VALUES, min_size=1, max_size=30), st.sampled_from(["forward", "packed", "gzip"]))
def test_whatever_arrives_stays_under_a_memory_ceiling(values: list[Any], mode: str) -> None:
    # Random records, repeated to a few MiB, through every entry mode with small slices: the
    # peak of allocations while decoding stays a small multiple of one slice, not of the message.
    records = [{"v": v} for v in values]
    entries = [(T, records[i % len(records)]) for i in range(5_000)]
    packed = pack_entries(entries)
    expanded = len(packed)
    if mode == "forward":
        wire = encode_forward("t", entries)
    elif mode == "packed":
        wire = encode_packed_forward("t", packed, len(entries))
    else:
        wire = encode_compressed_packed_forward("t", packed, len(entries))
    del entries, packed
    limits = {
        "max_message_bytes": 64 * MiB,
        "max_record_bytes": 256 * 1024,
        "slice_bytes": 64 * 1024,
    }
    with peak_memory() as peak:
        try:
            message = decode(wire, **limits)
            for part in message.slices():
                del part
        except ProtocolError:
            pass
    # The message's bytes a few times (wire, inflated), plus one slice's objects: never the
    # objects of the whole message.
    ceiling = 3 * len(wire) + 2 * expanded + 80 * 64 * 1024 + 4 * MiB
    assert peak() < ceiling
