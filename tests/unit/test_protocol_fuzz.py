"""Fuzzing the decoders: random bytes and mutated valid messages raise only documented errors."""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Callable, Iterator
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
    ClientDecoder,
    Entry,
    EventTime,
    Helo,
    Ping,
    Pong,
    ServerDecoder,
    encode_ack,
    encode_compressed_packed_forward,
    encode_forward,
    encode_message,
    encode_packed_forward,
    pack_entries,
)
from logferry.common.protocol.entries import (
    EntryLimits,
    array_entries,
    decode_array_msgpack,
    decode_entries,
    decode_stream_msgpack,
)
from logferry.common.protocol.handshake import encode_helo, encode_ping, encode_pong

DOCUMENTED = (MalformedMessageError, MessageTooLargeError, TooManyEntriesError)
LIMITS = {"max_message_bytes": 8192, "max_entries": 64, "max_decompressed_bytes": 16384}
FUZZ = settings(
    max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

_ENTRIES: list[Entry] = [
    (EventTime(1_700_000_000, i * 7919), {"log": f"line {i}", "n": i, "k": {"a": [1, None]}})
    for i in range(4)
]
_PACKED = pack_entries(_ENTRIES)
SERVER_SAMPLES = [
    encode_message("app.web", EventTime(1_700_000_000, 5), {"log": "hi", "b": b"\x00"}),
    encode_message("app.web", 1_700_000_000, {"x": 1.5}, chunk="abc"),
    encode_forward("t", _ENTRIES, chunk="c1"),
    encode_packed_forward("t", _PACKED, 4, chunk="c2"),
    encode_compressed_packed_forward("t", _PACKED, 4, chunk="c3"),
    encode_ping(Ping("host", b"salt", "ab" * 64, "u", "cd" * 64)),
    msgpack.packb(None),
]
CLIENT_SAMPLES = [
    encode_helo(Helo(b"nonce", b"auth", True)),
    encode_pong(Pong(True, "", "srv", "ef" * 64)),
    encode_ack("p8n9gmxTQVC8/nh2wlKKeQ=="),
]


def feed_all(decoder: ServerDecoder | ClientDecoder, data: bytes, cuts: list[int]) -> None:
    """Feed ``data`` in pieces of the given sizes (the rest at the end)."""
    pos = 0
    for size in cuts:
        decoder.feed(data[pos : pos + size])
        pos += size
    decoder.feed(data[pos:])


@st.composite
def mutated(draw: st.DrawFn, samples: list[bytes]) -> bytes:
    """A valid stream of samples with bit flips, truncation, insertions and deletions."""
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(samples), min_size=1, max_size=4))))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "byte"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif data:
            data[pos] = draw(
                st.sampled_from([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xC6, 0xDD, 0xDF, 0xFF])
            )
    return bytes(data)


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(1, 64), max_size=8))
def test_random_bytes_raise_only_documented_errors(data: bytes, cuts: list[int]) -> None:
    decoders = (
        ServerDecoder(**LIMITS),
        ServerDecoder(**LIMITS, unicode_errors="strict"),
        ClientDecoder(max_message_bytes=8192),
    )
    for decoder in decoders:
        with contextlib.suppress(DOCUMENTED):
            feed_all(decoder, data, cuts)


@FUZZ
@given(mutated(SERVER_SAMPLES), st.lists(st.integers(1, 97), max_size=8))
def test_mutated_server_messages_raise_only_documented_errors(data: bytes, cuts: list[int]) -> None:
    with contextlib.suppress(DOCUMENTED):
        feed_all(ServerDecoder(**LIMITS), data, cuts)


@FUZZ
@given(mutated(CLIENT_SAMPLES), st.lists(st.integers(1, 97), max_size=8))
def test_mutated_client_messages_raise_only_documented_errors(data: bytes, cuts: list[int]) -> None:
    with contextlib.suppress(DOCUMENTED):
        feed_all(ClientDecoder(max_message_bytes=8192), data, cuts)


def feed_until_refused(decoder: ServerDecoder, pieces: Iterator[bytes]) -> tuple[int, Exception]:
    """Feed pieces until the decoder raises; return bytes fed (with that piece) and the error."""
    fed = 0
    for piece in pieces:
        fed += len(piece)
        try:
            decoder.feed(piece)
        except ProtocolError as exc:
            return fed, exc
    raise AssertionError(f"{fed} bytes of garbage accepted")


@pytest.mark.parametrize("seed", range(20))
def test_a_stream_of_garbage_is_refused_within_the_message_limit(seed: int) -> None:
    # Whatever the garbage, the decoder refuses it before buffering more than one message's
    # worth: it never waits for ever while its buffer grows.
    rng = random.Random(seed)
    limit, piece = 64 * 1024, 4096
    garbage = (rng.randbytes(piece) for _ in range(10 * limit // piece))
    fed, exc = feed_until_refused(ServerDecoder(max_message_bytes=limit), garbage)
    assert isinstance(exc, DOCUMENTED)
    assert fed <= limit + piece


def test_an_endless_string_is_refused_at_the_limit() -> None:
    limit = 64 * 1024
    endless = itertools.chain(
        [b"\x93\xa1t\xdb\xff\xff\xff\xff"], itertools.repeat(b"a" * 4096, 100)
    )
    fed, exc = feed_until_refused(ServerDecoder(max_message_bytes=limit), endless)
    assert isinstance(exc, MessageTooLargeError)
    assert fed <= limit + 4096


_PLAIN = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
)
_ODD = (
    st.binary(max_size=8)
    | st.builds(EventTime, st.integers(0, 2**32 - 1), st.integers(0, 10**9 - 1))
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=9))
)
_KEYS = st.text(max_size=4) | st.sampled_from([b"k", 1, -1, None, 1.5, True])
# Records the fast path takes (str keys, no bin or ext), and records it leaves to msgpack.
_PLAIN_VALUES = st.recursive(
    _PLAIN,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=10,
)
_ODD_VALUES = st.recursive(
    _PLAIN | _ODD,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_KEYS, children, max_size=3),
    max_leaves=10,
)
_TIMES = (
    st.builds(EventTime, st.integers(0, 2**32 - 1), st.integers(0, 10**9 - 1))
    | st.integers(0, 2**32 - 1)
    | st.floats(0, 2**32)
    | _PLAIN
    | _ODD
)
# Fluent Bit's [time, metadata] time slot, with metadata of every kind (and wrong arities).
_SLOTS = _TIMES | st.lists(
    _TIMES
    | st.none()
    | st.dictionaries(st.text(max_size=4), _PLAIN_VALUES, max_size=2)
    | st.dictionaries(_KEYS, _ODD_VALUES, max_size=2)
    | _ODD_VALUES,
    min_size=1,
    max_size=3,
)
_WELL_FORMED_SLOTS = st.tuples(
    st.builds(EventTime, st.integers(0, 2**32 - 1), st.integers(0, 10**9 - 1))
    | st.integers(0, 2**32 - 1),
    st.dictionaries(st.text(max_size=4), _PLAIN_VALUES, max_size=2)
    | st.dictionaries(_KEYS, _ODD_VALUES, max_size=2),
)
_RAW_ENTRIES = st.lists(
    st.tuples(_SLOTS, st.dictionaries(st.text(max_size=4), _PLAIN_VALUES, max_size=4))
    | st.tuples(_WELL_FORMED_SLOTS, st.dictionaries(st.text(max_size=4), _PLAIN_VALUES, max_size=3))
    | st.tuples(_SLOTS, st.dictionaries(_KEYS, _ODD_VALUES, max_size=4))
    | _ODD_VALUES,
    max_size=5,
)


@st.composite
def entry_streams(draw: st.DrawFn) -> bytes:
    """Packed entries with odd times, keys and values, then a few byte-level mutations."""
    packer = msgpack.Packer(use_bin_type=True, strict_types=False)
    data = bytearray(b"".join(packer.pack(e) for e in draw(_RAW_ENTRIES)))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "truncate", "insert"]))
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc0", b"\xc1"]))
    return bytes(data)


@FUZZ
@given(
    entry_streams(),
    st.none() | st.integers(-1, 8) | st.just(2**32 - 1),
    st.sampled_from(["replace", "strict", "surrogateescape"]),
)
def test_entry_decoding_agrees_with_the_msgpack_path(
    packed: bytes, size: int | None, unicode_errors: Any
) -> None:
    # The fast path must return exactly what the reference decoder returns (repr: True is not
    # 1, b"x" is not "x"), or raise the same documented error.
    def run(decode: Callable[[], object]) -> str:
        try:
            return repr(decode())
        except DOCUMENTED as exc:
            return type(exc).__name__

    fast = run(lambda: decode_entries(packed, size, max_entries=5, unicode_errors=unicode_errors))
    reference = run(lambda: decode_stream_msgpack(packed, 5, unicode_errors))
    assert fast == reference


@FUZZ
@given(entry_streams(), st.integers(0, 6), st.sampled_from(["replace", "strict"]))
def test_forward_entry_arrays_agree_with_the_msgpack_path(
    packed: bytes, count: int, unicode_errors: Any
) -> None:
    # Forward mode's entries are one array: its fast path must match its reference decoder.
    array = bytes([0x90 | count]) + packed

    def run(decode: Callable[[], object]) -> str:
        try:
            return repr(decode())
        except DOCUMENTED as exc:
            return type(exc).__name__

    limits = EntryLimits(
        max_entries=16, max_record_bytes=1 << 20, slice_bytes=1 << 20, unicode_errors=unicode_errors
    )
    fast = run(lambda: array_entries(memoryview(array), count, limits))
    reference = run(lambda: decode_array_msgpack(array, unicode_errors))
    assert fast == reference
