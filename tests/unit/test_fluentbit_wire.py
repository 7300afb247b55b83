"""Fluent Bit's wire shapes, byte for byte, through both entry decoders (msgspec and msgpack).

Fluent Bit 2.1+ sends ``[[time, metadata], record]`` entries by default, in Forward mode
without compression and CompressedPackedForward with ``compress gzip``, options in a 32-bit
map header with ``fluent_signal``; metrics and traces carry a non-log payload. See
tests/support/fluentbit_wire.py for the layout.
"""

from __future__ import annotations

import gzip
import struct
from typing import Any

import msgpack
import pytest

from logferry.common.errors import MalformedMessageError, TooManyEntriesError
from logferry.common.protocol import EventMessage, EventTime, Mode, ServerDecoder
from logferry.common.protocol.entries import (
    decode_array_msgpack,
    decode_entries,
    decode_stream_msgpack,
    fast_array,
)
from logferry.common.protocol.types import METADATA_FIELD
from tests.support import fluentbit_wire as wire

HEALTHZ = {"log": "GET /healthz 200\n", "stream": "stdout"}
T1, T2 = EventTime(1764442800, 5), EventTime(1764442801, 999_999_999)

# A Fluent Bit Forward-mode message with require_ack_response on: two tail entries with empty
# metadata. Written out by hand from the layout in tests/support/fluentbit_wire.py.
FORWARD_WITH_ACK = bytes.fromhex(
    "93"  # [tag, entries, options]
    "ac 6b7562652e7661722e6c6f67"  # tag "kube.var.log"
    "92"  # entries: an array of 2, then the chunk's entry bytes as stored
    "92 92 d700 692b42b0 00000005 80"  # [[EventTime(1764442800, 5), {}],
    "82 a3 6c6f67 b1 474554202f6865616c74687a203230300a"  # {"log": "GET /healthz 200\n",
    "a6 73747265616d a6 7374646f7574"  # "stream": "stdout"}]
    "92 92 d700 692b42b1 3b9ac9ff 80"  # [[EventTime(1764442801, 999999999), {}],
    "82 a3 6c6f67 b1 474554202f6865616c74687a203230300a"
    "a6 73747265616d a6 7374646f7574"
    "df 00000003"  # options: map32 of 3 (Fluent Bit patches the count after the keys)
    "a5 6368756e6b d920 3865663932636361626139366530353865616631346366383933333665636134"
    "a4 73697a65 02"  # "size": 2
    "ad 666c75656e745f7369676e616c 00"  # "fluent_signal": 0 (logs)
)
CHUNK = "8ef92ccaba96e058eaf14cf89336eca4"


def decode_one(data: bytes, **limits: Any) -> EventMessage:
    out = ServerDecoder(**limits).feed(data)
    assert len(out) == 1
    assert isinstance(out[0], EventMessage)
    return out[0]


def entries_of(*pairs: tuple[EventTime, dict[str, Any], dict[str, Any] | None]) -> list[bytes]:
    return [wire.entry(t.seconds, t.nanoseconds, record, metadata) for t, record, metadata in pairs]


def both_paths_packed(packed: bytes, size: int | None) -> tuple[str, str]:
    """repr of what the fast and the reference decoder make of a packed entry stream."""
    return repr(decode_entries(packed, size, max_entries=1000)), repr(
        decode_stream_msgpack(packed, 1000, "replace")
    )


def fast_only(packed: bytes, count: int) -> list[Any] | None:
    """What the fast path alone makes of ``count`` packed entries (None: left to msgpack)."""
    return fast_array(struct.pack(">BI", 0xDD, count) + packed)


def test_the_builder_reproduces_the_hand_written_fixture() -> None:
    built = wire.forward_message(
        "kube.var.log",
        entries_of((T1, HEALTHZ, None), (T2, HEALTHZ, None)),
        ack=True,
    )
    assert built == FORWARD_WITH_ACK


def test_fluent_bit_forward_mode_with_ack_decodes_and_acks_its_chunk() -> None:
    message = decode_one(FORWARD_WITH_ACK)
    assert message.mode == Mode.FORWARD
    assert message.tag == "kube.var.log"
    assert message.entries == [(T1, HEALTHZ), (T2, HEALTHZ)]
    assert message.chunk == CHUNK
    assert message.signal == 0
    assert message.encode_ack() == msgpack.packb({"ack": CHUNK})


def test_fluent_bit_forward_mode_without_options() -> None:
    data = wire.forward_message("app", entries_of((T1, HEALTHZ, None)), ack=False)
    assert data[0] == 0x92  # Fluent Bit sends no options map at all here
    message = decode_one(data)
    assert (message.mode, message.entries, message.chunk) == (Mode.FORWARD, [(T1, HEALTHZ)], None)


def test_forward_mode_entries_agree_on_both_paths() -> None:
    # The entries element of a Forward message is an array: msgspec and msgpack must agree.
    array = FORWARD_WITH_ACK[14 : FORWARD_WITH_ACK.index(b"\xdf\x00\x00\x00\x03")]
    fast = fast_array(memoryview(array))
    assert fast == [(T1, HEALTHZ), (T2, HEALTHZ)]
    assert repr(fast) == repr(decode_array_msgpack(array, "replace"))


@pytest.mark.parametrize("members", [1, 2, 3])
def test_fluent_bit_compressed_packed_forward_with_gzip_members(members: int) -> None:
    records = [{"log": f"line {i}", "stream": "stderr", "n": i} for i in range(7)]
    entries = [wire.entry(1764442800, i, record) for i, record in enumerate(records)]
    data = wire.compressed_message("kube.app", entries, members=members)
    message = decode_one(data)
    assert message.mode == Mode.COMPRESSED_PACKED_FORWARD
    assert message.entries == [(EventTime(1764442800, i), r) for i, r in enumerate(records)]
    assert message.options["compressed"] == "gzip"
    assert message.options["fluent_signal"] == 0
    assert message.chunk == wire.chunk_id(b"".join(entries))


def test_compressed_entries_agree_on_both_paths() -> None:
    packed = b"".join(entries_of((T1, HEALTHZ, None), (T2, {"x": [1, {"y": None}]}, None)))
    assert fast_only(packed, 2) is not None  # the fast path takes the usual shape
    fast, reference = both_paths_packed(packed, 2)
    assert fast == reference
    assert "fluent_metadata" not in fast  # an empty metadata map adds nothing


def test_metadata_is_kept_in_its_own_field_on_both_paths() -> None:
    metadata = {"otel": {"trace_id": "abc"}, "level": 3}
    packed = b"".join(entries_of((T1, HEALTHZ, metadata), (T2, HEALTHZ, None)))
    assert fast_only(packed, 2) is None  # metadata values: the msgpack path decides
    fast, reference = both_paths_packed(packed, 2)
    assert fast == reference
    message = decode_one(wire.compressed_message("t", [packed]))
    (_, first), (_, second) = message.entries
    assert first[METADATA_FIELD] == metadata
    assert METADATA_FIELD not in second
    assert set(first) == {"log", "stream", METADATA_FIELD}  # never inside _lf or kubernetes


def test_metadata_never_overwrites_a_field_the_record_already_has() -> None:
    record = {"log": "x", METADATA_FIELD: "mine"}
    message = decode_one(wire.compressed_message("t", [wire.entry(1, 0, record, {"k": "v"})]))
    ((_, got),) = message.entries
    assert got[METADATA_FIELD] == "mine"
    assert got[METADATA_FIELD + "_wire"] == {"k": "v"}


def test_mixed_shapes_in_one_message_in_every_entry_mode() -> None:
    plain = wire.legacy_entry(1764442800, 1, {"log": "plain"})
    wrapped = wire.entry(1764442800, 2, {"log": "wrapped"})
    with_meta = wire.entry(1764442800, 3, {"log": "meta"}, {"k": 1})
    int_time = b"\x92\x92\xce" + (1764442800).to_bytes(4, "big") + b"\x80" + msgpack.packb({})
    entries = [plain, wrapped, with_meta, int_time, plain]
    expected = [
        (EventTime(1764442800, 1), {"log": "plain"}),
        (EventTime(1764442800, 2), {"log": "wrapped"}),
        (EventTime(1764442800, 3), {"log": "meta", METADATA_FIELD: {"k": 1}}),
        (1764442800, {}),
        (EventTime(1764442800, 1), {"log": "plain"}),
    ]
    packed = b"".join(entries)
    forward = wire.forward_message("t", entries, ack=True)
    packed_forward = msgpack.packb(["t", packed, {"size": len(entries)}])
    compressed = wire.compressed_message("t", entries)
    for data, mode in [
        (forward, Mode.FORWARD),
        (packed_forward, Mode.PACKED_FORWARD),
        (compressed, Mode.COMPRESSED_PACKED_FORWARD),
    ]:
        message = decode_one(data)
        assert (message.mode, message.entries) == (mode, expected)
    fast, reference = both_paths_packed(packed, len(entries))
    assert fast == reference


def test_message_mode_metadata_option_is_kept() -> None:
    data = wire.message_mode("t", 1764442800, 7, {"log": "m"}, metadata={"k": "v"})
    message = decode_one(data)
    assert message.mode == Mode.MESSAGE
    assert message.entries == [(EventTime(1764442800, 7), {"log": "m", METADATA_FIELD: {"k": "v"}})]


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize(
    ("signal", "name"), [(wire.SIGNAL_METRICS, "metrics"), (wire.SIGNAL_TRACES, "traces")]
)
def test_non_log_signals_are_not_decoded_as_entries(gzipped: bool, signal: int, name: str) -> None:
    # A cmetrics payload is not an entry stream: it must not be refused as a bad one.
    payload = msgpack.packb({"meta": {"cmetrics": {}}, "metrics": [1, 2, 3]}) + b"\xc1 not entries"
    data = wire.signal_message("fluentbit.metrics", payload, signal, gzipped=gzipped)
    message = decode_one(data)
    assert (message.signal, message.signal_name, message.entries) == (signal, name, [])
    body = gzip.compress(payload, mtime=0) if gzipped else payload
    assert message.payload == wire.bin_header(len(body)) + body
    assert message.encode_ack() == msgpack.packb({"ack": wire.chunk_id(payload)})


def test_a_signal_in_forward_shape_and_an_odd_signal_value_are_parked_too() -> None:
    forward = msgpack.packb(["t", [[1, [{"cmetrics": 1}]]], {"fluent_signal": 1, "chunk": "c"}])
    assert decode_one(forward).signal == 1
    odd = msgpack.packb(["t", b"x", {"fluent_signal": "metrics"}])
    message = decode_one(odd)
    assert (message.signal, message.signal_name) == (-1, "unknown")


def test_a_refused_entry_names_the_mode_and_shape_but_no_content() -> None:
    secret = "card=4111111111111111"
    bad = (
        b"\x92\x92\xd7\x00" + bytes(8) + msgpack.packb("not a map") + msgpack.packb({"log": secret})
    )
    entries = [wire.entry(1, 0, {"log": secret}), bad]
    with pytest.raises(MalformedMessageError) as info:
        decode_one(wire.compressed_message("t", entries))
    error = info.value
    assert error.reason == "bad_entry"
    assert error.mode == "CompressedPackedForward"
    assert error.shape == "array[array[EventTime, str], map]"
    assert "entry 1" in str(error)
    assert secret not in str(error)
    assert secret not in (error.shape or "")


def test_a_refused_forward_entry_names_forward_mode() -> None:
    data = msgpack.packb(["t", [[[1, {}, 3], {}]]])
    with pytest.raises(MalformedMessageError) as info:
        decode_one(data)
    assert (info.value.mode, info.value.reason) == ("Forward", "bad_entry")
    assert info.value.shape == "array[array[int, map, int], map]"


def test_the_entry_limit_applies_to_the_fluent_bit_shape() -> None:
    entries = entries_of(*[(T1, {}, None)] * 5)
    with pytest.raises(TooManyEntriesError):
        decode_one(wire.compressed_message("t", entries), max_entries=4)
    with pytest.raises(TooManyEntriesError):
        decode_one(wire.forward_message("t", entries, ack=True), max_entries=4)
