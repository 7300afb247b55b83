"""Decoding entry streams: the entries of Forward, PackedForward and CompressedPackedForward.

An entry is ``[time, record]`` or Fluent Bit's ``[[time, metadata], record]``, mixed freely.

Two decoders give the very same values:

- **fast**: msgspec with a schema that only admits what the msgpack path would decode to the
  same values (str keys, valid UTF-8, no ext or bin inside records, nesting up to
  ``_FAST_DEPTH``, empty metadata maps);
- **reference**: the C msgpack unpacker, which alone decides anything the fast path refuses,
  and raises every documented error.

Memory is bounded whatever arrives:

- a gzip stream is inflated into one buffer, refused past ``max_decompressed_bytes`` while it
  inflates (no list of pieces and their join held at once);
- a stream larger than one *slice* is walked first without building objects (``skip``), which
  checks every entry against ``max_record_bytes`` and the entry count, and is then decoded a
  slice at a time as the consumer asks: the Python objects alive at once are those of one
  slice (or one entry), never the whole message's;
- a record nested deeper than :data:`MAX_DEPTH` levels is not passed on as values: it becomes
  an :class:`UnreadableRecord` (its raw bytes and its reason), so the consumer can park it
  instead of rendering it, and the rest of the message goes on.

Errors are the ones of :mod:`logferry.common.errors`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, cast

import msgpack
import msgspec
from isal import isal_zlib

from logferry.common.errors import (
    MalformedMessageError,
    MessageTooLargeError,
    TooManyEntriesError,
)
from logferry.common.protocol.types import (
    DEFAULT_MAX_ENTRIES,
    METADATA_FIELD,
    ONE_BILLION_BE,
    U32_MAX,
    Entry,
    EventTime,
    UnicodeErrors,
    event_time_of,
    ext_hook,
)
from logferry.common.units import MiB

MSGPACK_ERRORS: Final = (ValueError, TypeError, OverflowError, msgpack.UnpackException)
MAX_DEPTH: Final = 64
"""Containers nested in a record, the record itself included, that the decoder passes on as
values. A deeper record becomes an UnreadableRecord (msgpack's own stack stops at 1024)."""
ROOM: Final = 5
"""Bytes kept free in front of a stream buffer for an array32 header (msgspec decodes one
array), so the fast path never copies a stream to put a header in front of it."""
_ARRAY32: Final = struct.Struct(">BI")
_MIN_ENTRY_BYTES: Final = 3  # 0x92, a fixint time, an empty fixmap
_WALK_PIECE: Final = MiB


@dataclass(frozen=True, slots=True)
class EntryLimits:
    """What one message's entries may take."""

    max_entries: int
    max_record_bytes: int
    slice_bytes: int
    """Streams up to this size are decoded at once; larger ones a slice of this size at a
    time (or one entry, if larger)."""
    unicode_errors: UnicodeErrors = "replace"


class UnreadableRecord(dict[str, Any]):
    """A record the decoder did not pass on as values (too deep to render safely).

    Its mapping holds only the record's ``kubernetes`` map, when it has a flat one, so routing
    still finds its tenant; ``raw`` is the entry exactly as received, ``reason`` why.
    """

    __slots__ = ("raw", "reason")

    def __init__(self, reason: str, raw: bytes, kubernetes: Any) -> None:
        super().__init__()
        self.reason = reason
        self.raw = raw
        if type(kubernetes) is dict and all(type(v) is not dict for v in kubernetes.values()):
            self["kubernetes"] = kubernetes


# -- shapes and checks ------------------------------------------------------------------------


def shape_of(value: Any, depth: int = 3) -> str:
    """msgpack type names of ``value``, containers ``depth`` levels deep: never its content."""
    kind = type(value)
    if kind is EventTime:
        return "EventTime"
    if isinstance(value, msgpack.ExtType):
        return f"ext{value.code}"
    if kind is list or kind is tuple:
        if depth <= 0 or not value:
            return f"array({len(value)})"
        inner = ", ".join(shape_of(item, depth - 1) for item in value[:3])
        more = f", ... {len(value)} in all" if len(value) > 3 else ""
        return f"array[{inner}{more}]"
    names = {bool: "bool", int: "int", float: "float", str: "str", bytes: "bin", dict: "map"}
    return "nil" if value is None else names.get(kind, kind.__name__)


def _time_ok(t: Any) -> bool:
    kind = type(t)
    if kind is EventTime:
        return True
    if kind is int or kind is float:
        return bool(0 <= t <= U32_MAX)
    return False


def _coerce_time(t: Any) -> EventTime | int:
    # Slow path of check_entries: anything but an EventTime.
    if type(t) is int:
        if 0 <= t <= U32_MAX:
            return t
    elif type(t) is float and 0.0 <= t <= U32_MAX:
        return EventTime.from_float(t)  # fluent-logger-python sends a float time if given one
    raise MalformedMessageError(
        f"event time must be int or EventTime, got {shape_of(t)}", reason="bad_entry"
    )


class _LeftToMsgpack(Exception):
    """The fast path met a value only the msgpack path may judge (a non-empty metadata map)."""


def keep_metadata(record: dict[str, Any], metadata: Any) -> None:
    """Keep a non-empty Fluent Bit metadata map with ``record`` (see METADATA_FIELD)."""
    existing = record.get(METADATA_FIELD)
    if existing is None:
        record[METADATA_FIELD] = metadata
    elif existing != metadata:
        record[METADATA_FIELD + "_wire"] = metadata


def _unwrap(slot: list[Any], record: dict[str, Any], fast: bool) -> Entry:
    """Fluent Bit's ``[time, metadata]`` time slot -> (time, record)."""
    time, metadata = slot  # ValueError unless exactly two
    if type(time) is not EventTime:
        time = _coerce_time(time)
    if type(metadata) is dict:
        if metadata:  # the usual empty map costs nothing
            if fast:
                raise _LeftToMsgpack
            keep_metadata(record, metadata)
    elif metadata is not None:
        raise ValueError("metadata must be a map")
    return time, record


def check_entries(raw: list[Any], *, fast: bool = False) -> list[Entry]:
    """Validate decoded entries and turn them into (time, record) tuples, in one pass.

    With ``fast`` (msgspec's values), a non-empty metadata map raises _LeftToMsgpack.
    """
    out: list[Entry] = []
    append = out.append
    evt = EventTime
    try:
        for time, record in raw:
            if type(record) is not dict and type(record) is not UnreadableRecord:
                raise ValueError("record must be a map")
            if type(time) is evt:
                append((time, record))
            elif type(time) is list:
                # Fluent Bit's usual [EventTime, {}] inline; anything else in _unwrap.
                if len(time) == 2 and type(time[0]) is evt and time[1] == {}:
                    append((time[0], record))
                else:
                    append(_unwrap(time, record, fast))
            else:
                append((_coerce_time(time), record))
    except (TypeError, ValueError, MalformedMessageError) as exc:
        raise _entry_error(raw) from exc
    # No separate check that each entry is a list: a 2-char str, 2-byte bin or 2-key map also
    # unpacks as a pair, but never with a dict second, so the record check above refuses them.
    return out


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with one entry, or None."""
    if type(entry) not in (list, tuple) or len(entry) != 2:
        return "an entry must be [time, record] or [[time, metadata], record]"
    time, record = entry
    if type(record) is not dict and type(record) is not UnreadableRecord:
        return "the record must be a map"
    if type(time) is list:
        if len(time) != 2:
            return "the time slot [time, metadata] must have two elements"
        if not _time_ok(time[0]):
            return "the time in [time, metadata] must be EventTime or int"
        if time[1] is not None and type(time[1]) is not dict:
            return "the metadata in [time, metadata] must be a map"
        return None
    if not _time_ok(time):
        return "the time slot must be EventTime, int or [time, metadata]"
    return None


def _entry_error(raw: Any) -> MalformedMessageError:
    """The error for the first bad entry of ``raw``: its index, the rule, its shape."""
    for position, entry in enumerate(raw):
        problem = _entry_problem(entry)
        if problem is not None:
            return MalformedMessageError(
                f"entry {position}: {problem}, got {shape_of(entry)}",
                reason="bad_entry",
                shape=shape_of(entry),
            )
    return MalformedMessageError("bad entries", reason="bad_entry", shape=shape_of(raw, 1))


def too_deep(value: Any, limit: int) -> bool:
    """True when ``value`` nests more than ``limit`` containers (itself included)."""
    stack = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        if depth > limit:
            return True
        children = item.values() if type(item) is dict else item
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                push((child, depth + 1))
    return False


# -- gzip -------------------------------------------------------------------------------------


_INFLATE_ERRORS: Final = (zlib.error, cast(type[Exception], isal_zlib.error))


def gunzip(blob: bytes | memoryview, limit: int) -> bytearray:
    """Inflate a gzip stream of one or more members into a buffer with ROOM free bytes in
    front, refusing more than ``limit`` inflated bytes while inflating."""
    out = bytearray(ROOM)
    data: bytes | memoryview = blob
    try:
        while True:  # the spec: entries MAY be several concatenated gzip members
            # ISA-L inflates the same streams as zlib in about two thirds of the time (the
            # forwarder compresses with it already); 32+15: gzip or zlib header, auto-detected.
            inflater = isal_zlib.decompressobj(47)
            while True:
                room = limit - (len(out) - ROOM) + 1
                out += inflater.decompress(data, min(room, _WALK_PIECE))
                if len(out) - ROOM > limit:
                    raise MessageTooLargeError(f"entries inflate to over {limit} bytes")
                data = inflater.unconsumed_tail
                if inflater.eof or not data:
                    break
            if not inflater.eof:
                out += inflater.flush()
                if not inflater.eof:
                    raise MalformedMessageError("truncated gzip stream", reason="bad_gzip")
            data = inflater.unused_data
            if not data:
                break
    except _INFLATE_ERRORS as exc:
        raise MalformedMessageError(f"bad gzip stream: {exc}", reason="bad_gzip") from exc
    return out


# -- the fast path ----------------------------------------------------------------------------

_FAST_DEPTH: Final = 8
"""Containers nested in a record that the fast path decodes; deeper records take the msgpack path.
The schema has two branches a level, so it grows as 2**depth (8: ~1 ms to build at import)."""


def _record_value_type(depth: int) -> Any:
    """msgspec type of a record value: no bin, no ext, str keys only, ``depth`` levels deep."""
    value: Any = bool | int | float | str | None
    for _ in range(depth):
        value = bool | int | float | str | list[value] | dict[str, value] | None
    return value


def _fast_ext_hook(code: int, data: memoryview) -> EventTime:
    # Only reached for the time of an entry (records admit no ext): an EventTime, or fall back.
    if code == 0 and len(data) == 8:
        payload = bytes(data)  # msgspec lends a view of its input
        if payload[4:] < ONE_BILLION_BE:
            return event_time_of(payload)
    raise ValueError("not an EventTime: left to the msgpack path")


_FAST_DECODER: Final[msgspec.msgpack.Decoder[Any]] = msgspec.msgpack.Decoder(
    list[tuple[Any, dict[str, _record_value_type(_FAST_DEPTH)]]],  # type: ignore[misc]
    ext_hook=_fast_ext_hook,
)


def fast_array(data: bytes | bytearray | memoryview) -> list[Entry] | None:
    """One msgpack array of entries (header included) through msgspec; None where the msgpack
    path must decide (anything msgspec refuses, or decodes to other values than msgpack)."""
    try:
        raw: list[Entry] = _FAST_DECODER.decode(data)
    except (ValueError, RecursionError):  # DecodeError, ValidationError, UnicodeDecodeError
        return None
    evt = EventTime
    for time, _ in raw:
        if type(time) is not evt:  # int, float or [time, metadata], or a bad one: check all
            try:
                return check_entries(raw, fast=True)
            except (MalformedMessageError, _LeftToMsgpack):
                return None  # so the error, or the metadata's values, are the msgpack path's
    return raw


# -- the reference path -----------------------------------------------------------------------


def _unpacker(limit: int, unicode_errors: str) -> Any:
    # Only ever fed complete data, so the length limits are plain sanity bounds.
    return msgpack.Unpacker(
        None,
        raw=False,
        use_list=True,
        ext_hook=ext_hook,
        unicode_errors=unicode_errors,
        strict_map_key=True,
        max_buffer_size=limit + 1,  # + the end-of-stream probe of decode_stream_msgpack
        max_str_len=limit,
        max_bin_len=limit,
        max_array_len=limit,
        max_map_len=limit,
        max_ext_len=limit,
    )


def decode_stream_msgpack(
    packed: bytes | bytearray | memoryview, max_entries: int, unicode_errors: UnicodeErrors
) -> list[Entry]:
    """The reference decoder of a MessagePackEventStream (concatenated entries)."""
    u = _unpacker(len(packed), unicode_errors)
    raw: list[Any] = []
    deep: list[tuple[int, int, int]] = []  # (index, start, end) of records too deep to pass on
    try:
        u.feed(packed)
        start = 0
        while len(raw) <= max_entries:
            try:
                entry = u.unpack()
            except msgpack.OutOfData:
                break
            end = u.tell()
            if _entry_too_deep(entry):
                deep.append((len(raw), start, end))
            raw.append(entry)
            start = end
    except MSGPACK_ERRORS as exc:
        raise MalformedMessageError(f"bad entry stream: {exc}") from exc
    if len(raw) > max_entries:
        raise TooManyEntriesError(f"more than {max_entries} entries")
    # tell() also counts a partial trailing entry, so probe with a nil: on a clean end it
    # decodes to None; a partial entry would swallow it (or still be incomplete).
    try:
        u.feed(b"\xc0")
        clean_end = u.unpack() is None
    except MSGPACK_ERRORS:
        clean_end = False
    if not clean_end:
        raise MalformedMessageError("entry stream ends inside an entry")
    with memoryview(packed) as view:
        for index, start, end in deep:
            raw[index] = _unreadable(raw[index], bytes(view[start:end]))
    return check_entries(raw)


def decode_array_msgpack(
    data: bytes | bytearray | memoryview, unicode_errors: UnicodeErrors
) -> list[Entry]:
    """The reference decoder of one entry array (Forward mode's entries)."""
    limit = len(data)
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            ext_hook=ext_hook,
            unicode_errors=unicode_errors,
            strict_map_key=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=limit,
        )
    except MSGPACK_ERRORS as exc:
        raise MalformedMessageError(f"bad entries array: {exc}") from exc
    if type(raw) is not list:
        raise MalformedMessageError(f"entries must be an array, got {shape_of(raw)}")
    for index, entry in enumerate(raw):
        if _entry_too_deep(entry):
            # The array's own bytes per entry are not at hand: keep the entry re-encoded
            # as far as msgpack allows, else its shape only.
            raw[index] = _unreadable(entry, _repack(entry))
    return check_entries(raw)


def _entry_too_deep(entry: Any) -> bool:
    if type(entry) is not list or len(entry) != 2:
        return False  # not an entry: check_entries refuses it with its shape
    record = entry[1]
    return type(record) is dict and too_deep(record, MAX_DEPTH)


def _unreadable(entry: list[Any], raw: bytes) -> list[Any]:
    record = entry[1]
    reason = f"record nested deeper than {MAX_DEPTH} levels"
    return [entry[0], UnreadableRecord(reason, raw, record.get("kubernetes"))]


def _repack(entry: Any) -> bytes:
    try:
        return msgpack.packb(entry, use_bin_type=True)  # type: ignore[no-any-return]
    except (ValueError, TypeError, OverflowError):
        return shape_of(entry, 8).encode()


# -- streams ----------------------------------------------------------------------------------


def _count_entries(packed: bytes | bytearray | memoryview, max_entries: int) -> int | None:
    """Complete entries in ``packed``; None past ``max_entries`` or on bad bytes. No objects."""
    u = msgpack.Unpacker(None, max_buffer_size=len(packed))
    u.feed(packed)
    skip = u.skip
    n = 0
    try:
        while n <= max_entries:
            skip()
            n += 1
    except msgpack.OutOfData:
        return n  # a partial trailing entry is left for msgspec to refuse
    except MSGPACK_ERRORS:
        return None
    return None


def decode_room_stream(
    buf: bytearray, size: Any, max_entries: int, unicode_errors: UnicodeErrors
) -> list[Entry]:
    """Decode the entry stream in ``buf[ROOM:]`` at once (``size``: ``option.size``, trusted as
    the count if plausible). The ROOM bytes in front are overwritten."""
    with memoryview(buf) as whole:
        packed = whole[ROOM:]
        plausible = type(size) is int and 0 <= size <= max_entries
        if plausible and size * _MIN_ENTRY_BYTES <= len(packed):
            count: int | None = size
        else:  # absent or implausible (some clients send a byte size): count, ~8% of a decode
            count = _count_entries(packed, max_entries)
        if count is not None:
            buf[:ROOM] = _ARRAY32.pack(0xDD, count)
            entries = fast_array(whole)
            if entries is not None:
                return entries
        return decode_stream_msgpack(packed, max_entries, unicode_errors)


def decode_entries(
    packed: bytes | bytearray | memoryview,
    size: Any = None,
    *,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    unicode_errors: UnicodeErrors = "replace",
) -> list[Entry]:
    """Decode a MessagePackEventStream (concatenated entries) at once (copies it once);
    ``size`` is ``option.size``, trusted as the count if plausible."""
    buf = bytearray(ROOM)
    buf += packed
    return decode_room_stream(buf, size, max_entries, unicode_errors)


def walk_slices(
    view: memoryview, limits: EntryLimits, *, base: int = 0
) -> list[tuple[int, int, int]]:
    """Cut an entry stream into slices without building objects: (start, end, count) each,
    offsets + ``base``. Refuses an entry over ``max_record_bytes``, more than ``max_entries``
    entries, garbage and a partial last entry."""
    limit = limits.max_record_bytes
    u = msgpack.Unpacker(None, max_buffer_size=limit + _WALK_PIECE)
    skip, tell = u.skip, u.tell
    total, fed = len(view), 0
    slices: list[tuple[int, int, int]] = []
    start = prev = count = entries = 0
    while True:
        try:
            skip()
        except msgpack.OutOfData:
            if fed >= total:
                break
            if fed - prev > limit:  # the entry in progress is already over the limit
                raise MessageTooLargeError(f"an entry over {limit} bytes") from None
            u.feed(view[fed : fed + _WALK_PIECE])
            fed = min(total, fed + _WALK_PIECE)
            continue
        except MSGPACK_ERRORS as exc:
            raise MalformedMessageError(f"bad entry stream: {exc}") from exc
        end = tell()
        if end - prev > limit:
            raise MessageTooLargeError(f"an entry of {end - prev} bytes, over {limit}")
        entries += 1
        if entries > limits.max_entries:
            raise TooManyEntriesError(f"more than {limits.max_entries} entries")
        count += 1
        prev = end
        if end - start >= limits.slice_bytes:
            slices.append((base + start, base + end, count))
            start, count = end, 0
    if prev != total:
        raise MalformedMessageError("entry stream ends inside an entry")
    if count:
        slices.append((base + start, base + prev, count))
    return slices


class EntryStream:
    """A large message's entries, decoded one slice at a time as they are iterated.

    Holds the stream's bytes (with ROOM free in front) and the slice boundaries from
    :func:`walk_slices`. Iterate it once: decoding a slice writes an array header over the
    last bytes of the slice before it.
    """

    __slots__ = ("_buf", "_slices", "_used", "count", "unicode_errors")

    def __init__(
        self, buf: bytearray, slices: list[tuple[int, int, int]], unicode_errors: UnicodeErrors
    ) -> None:
        self._buf = buf
        self._slices = slices
        self._used = False
        self.count = sum(count for _start, _end, count in slices)
        self.unicode_errors: UnicodeErrors = unicode_errors

    def __iter__(self) -> Iterator[list[Entry]]:
        if self._used:
            raise RuntimeError("an EntryStream is iterated once")
        self._used = True
        buf = self._buf
        for start, end, count in self._slices:
            buf[start - ROOM : start] = _ARRAY32.pack(0xDD, count)
            with memoryview(buf) as whole:
                entries = fast_array(whole[start - ROOM : end])
                if entries is None:
                    entries = decode_stream_msgpack(whole[start:end], count, self.unicode_errors)
            yield entries
        self._buf = bytearray()  # what was decoded is given back as soon as possible


def room_stream(buf: bytearray, size: Any, limits: EntryLimits) -> list[Entry] | EntryStream:
    """The entries in ``buf[ROOM:]``: at once when small, else an EntryStream."""
    if len(buf) - ROOM <= limits.slice_bytes:
        return decode_room_stream(buf, size, limits.max_entries, limits.unicode_errors)
    with memoryview(buf) as whole:
        slices = walk_slices(whole[ROOM:], limits, base=ROOM)
    return EntryStream(buf, slices, limits.unicode_errors)


def array_entries(array: memoryview, count: int, limits: EntryLimits) -> list[Entry] | EntryStream:
    """Forward mode's entries: one complete msgpack array of ``count`` entries."""
    if len(array) <= limits.slice_bytes:
        entries = fast_array(array)
        if entries is None:
            entries = decode_array_msgpack(array, limits.unicode_errors)
        return entries
    header = _array_header_len(array[0])
    buf = bytearray(ROOM)
    buf += array[header:]
    return room_stream(buf, count, limits)


def _array_header_len(first: int) -> int:
    return 3 if first == 0xDC else 5 if first == 0xDD else 1


__all__ = [
    "MAX_DEPTH",
    "ROOM",
    "EntryLimits",
    "EntryStream",
    "UnreadableRecord",
    "array_entries",
    "check_entries",
    "decode_array_msgpack",
    "decode_entries",
    "decode_room_stream",
    "decode_stream_msgpack",
    "fast_array",
    "gunzip",
    "keep_metadata",
    "room_stream",
    "shape_of",
    "too_deep",
    "walk_slices",
]
