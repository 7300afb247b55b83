"""Incremental Forward Protocol decoders: :class:`ServerDecoder` and :class:`ClientDecoder`.

Decoding is done in two stages, for safety and speed:

1. **Framing.** A streaming ``msgpack.Unpacker`` with ``max_buffer_size`` walks the byte stream
   with ``skip()``, which builds no objects. This matters: a streaming unpacker that *builds*
   objects preallocates every container it has seen a header for, so a few KB of nested
   ``array32`` headers would allocate gigabytes before the data to fill them ever arrives.
2. **Decoding a complete message** (and a complete entry stream) with the C unpacker, in one
   call per message or chunk. Every declared container is then backed by real bytes, so
   allocation is bounded by the input; the per-entry Python work is one validation loop.

An entry stream (PackedForward) first tries a faster, stricter decoder: msgspec, with a schema
that only admits what the msgpack path would decode to the very same values (str keys, valid
UTF-8, no ext or bin inside records, nesting up to ``_FAST_DEPTH``). Anything else, and any
error, falls back to the msgpack path, which alone decides what to return or raise.

Errors are the ones of :mod:`logferry.common.errors`; msgpack, zlib and unicode errors are
translated with ``raise ... from exc``. Import from :mod:`logferry.common.protocol`.
"""

from __future__ import annotations

import base64
import struct
import zlib
from itertools import islice
from typing import Any, Final

import msgpack
import msgspec

from logferry.common.errors import (
    MalformedMessageError,
    MessageTooLargeError,
    ProtocolError,
    TooManyEntriesError,
)
from logferry.common.protocol_types import (
    _ONE_BILLION_BE,
    _U32_MAX,
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_MESSAGE_BYTES,
    METADATA_FIELD,
    Ack,
    Entry,
    EventMessage,
    EventTime,
    Helo,
    Mode,
    Ping,
    Pong,
    UnicodeErrors,
    _tuple_new,
    ext_hook,
)

_MSGPACK_ERRORS: Final = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


def _unpacker(limit: int, unicode_errors: str) -> Any:
    # Only ever fed complete data, so the length limits are plain sanity bounds.
    return msgpack.Unpacker(
        None,
        raw=False,
        use_list=True,
        ext_hook=ext_hook,
        unicode_errors=unicode_errors,
        strict_map_key=True,
        max_buffer_size=limit + 1,  # + the end-of-stream probe of decode_entries
        max_str_len=limit,
        max_bin_len=limit,
        max_array_len=limit,
        max_map_len=limit,
        max_ext_len=limit,
    )


def _text(value: Any, what: str) -> str:
    """Liberal str-or-bin field -> str (the spec lets peers differ on str vs bin)."""
    return _as_bytes(value, what).decode("utf-8", "replace")


def _as_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise MalformedMessageError(f"{what} must be str or bin, got {type(value).__name__}")


def _chunk_text(raw: Any) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, bytes):
        # spec: "a string of Base64 representation of 128 bits unique_id"; raw ids become base64.
        return raw.decode("ascii") if raw.isascii() else base64.b64encode(raw).decode("ascii")
    raise MalformedMessageError(
        f"option chunk must be str or bin, got {_shape(raw)}", reason="bad_options"
    )


def _shape(value: Any, depth: int = 3) -> str:
    """msgpack type names of ``value``, containers ``depth`` levels deep: never its content."""
    kind = type(value)
    if kind is EventTime:
        return "EventTime"
    if isinstance(value, msgpack.ExtType):
        return f"ext{value.code}"
    if kind is list or kind is tuple:
        if depth <= 0 or not value:
            return f"array({len(value)})"
        inner = ", ".join(_shape(item, depth - 1) for item in value[:3])
        more = f", ... {len(value)} in all" if len(value) > 3 else ""
        return f"array[{inner}{more}]"
    names = {bool: "bool", int: "int", float: "float", str: "str", bytes: "bin", dict: "map"}
    return "nil" if value is None else names.get(kind, kind.__name__)


def _time_ok(t: Any) -> bool:
    kind = type(t)
    if kind is EventTime:
        return True
    if kind is int or kind is float:
        return bool(0 <= t <= _U32_MAX)
    return False


def _coerce_time(t: Any) -> EventTime | int:
    # Slow path of _check_entries: anything but an EventTime.
    if type(t) is int:
        if 0 <= t <= _U32_MAX:
            return t
    elif type(t) is float and 0.0 <= t <= _U32_MAX:
        return EventTime.from_float(t)  # fluent-logger-python sends a float time if given one
    raise MalformedMessageError(
        f"event time must be int or EventTime, got {_shape(t)}", reason="bad_entry"
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


def _check_entries(raw: list[Any], *, fast: bool = False) -> list[Entry]:
    """Validate decoded entries and turn them into (time, record) tuples, in one pass.

    An entry is ``[time, record]`` or Fluent Bit's ``[[time, metadata], record]``, mixed
    freely. With ``fast`` (msgspec's values), a non-empty metadata map raises _LeftToMsgpack.
    """
    out: list[Entry] = []
    append = out.append
    evt = EventTime
    try:
        for time, record in raw:
            if type(record) is not dict:
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
    if type(record) is not dict:
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
                f"entry {position}: {problem}, got {_shape(entry)}",
                reason="bad_entry",
                shape=_shape(entry),
            )
    return MalformedMessageError("bad entries", reason="bad_entry", shape=_shape(raw, 1))


def _gunzip(blob: bytes, limit: int) -> bytes:
    """Decompress a gzip stream of one or more members, refusing more than ``limit`` bytes."""
    parts: list[bytes] = []
    total = 0
    data = blob
    try:
        while True:
            d = zlib.decompressobj(47)  # 32+15: gzip or zlib header, auto-detected
            part = d.decompress(data, limit - total + 1)
            total += len(part)
            parts.append(part)
            if total > limit:
                raise MessageTooLargeError(f"decompressed entries over {limit} bytes")
            if not d.eof:
                raise MalformedMessageError("truncated gzip stream", reason="bad_gzip")
            data = d.unused_data
            if not data:  # the spec: entries MAY be several concatenated gzip members
                break
    except zlib.error as exc:
        raise MalformedMessageError(f"bad gzip stream: {exc}", reason="bad_gzip") from exc
    return b"".join(parts)


_FAST_DEPTH: Final = 8
"""Containers nested in a record that the fast path decodes; deeper records take the msgpack path.
The schema has two branches a level, so it grows as 2**depth (8: ~1 ms to build at import)."""
_MIN_ENTRY_BYTES: Final = 3  # 0x92, a fixint time, an empty fixmap
_ARRAY32: Final = struct.Struct(">BI")


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
        if payload[4:] < _ONE_BILLION_BE:
            return _tuple_new(EventTime, (0, payload))
    raise ValueError("not an EventTime: left to the msgpack path")


_FAST_DECODER: Final[msgspec.msgpack.Decoder[Any]] = msgspec.msgpack.Decoder(
    list[tuple[Any, dict[str, _record_value_type(_FAST_DEPTH)]]],  # type: ignore[misc]
    ext_hook=_fast_ext_hook,
)


def _count_entries(packed: bytes, max_entries: int) -> int | None:
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
    except _MSGPACK_ERRORS:
        return None
    return None


def _decode_entries_fast(packed: bytes, count: int) -> list[Entry] | None:
    """Decode exactly ``count`` entries with msgspec; None where the msgpack path must decide.

    msgspec checks every declared length against the bytes left before allocating, so memory
    stays bounded by the input, like the msgpack path. What it accepts here decodes to the same
    values as there; what it refuses (invalid UTF-8 that "replace" would mend, bin, non-str keys,
    deep nesting, a wrong ``count``) is decoded, or refused, by the msgpack path instead.
    """
    return _fast_array(_ARRAY32.pack(0xDD, count) + packed)


def _fast_array(data: bytes | memoryview) -> list[Entry] | None:
    """One msgpack array of entries (header included) through msgspec, or None (see above)."""
    try:
        raw: list[Entry] = _FAST_DECODER.decode(data)
    except (ValueError, RecursionError):  # DecodeError, ValidationError, UnicodeDecodeError
        return None
    evt = EventTime
    for time, _ in raw:
        if type(time) is not evt:  # int, float or [time, metadata], or a bad one: check all
            try:
                return _check_entries(raw, fast=True)
            except (MalformedMessageError, _LeftToMsgpack):
                return None  # so the error, or the metadata's values, are the msgpack path's
    return raw


def _decode_entry_array(data: memoryview, unicode_errors: UnicodeErrors) -> list[Entry]:
    """Forward mode's entries (one complete msgpack array, its count already checked)."""
    entries = _fast_array(data)
    if entries is not None:
        return entries
    return _decode_entry_array_msgpack(data, unicode_errors)


def _decode_entry_array_msgpack(
    data: bytes | memoryview, unicode_errors: UnicodeErrors
) -> list[Entry]:
    """The reference decoder of an entry array: the C unpacker, every error documented."""
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
    except _MSGPACK_ERRORS as exc:
        raise MalformedMessageError(f"bad entries array: {exc}") from exc
    if type(raw) is not list:
        raise MalformedMessageError(f"entries must be an array, got {_shape(raw)}")
    return _check_entries(raw)


def decode_entries(
    packed: bytes,
    *,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    unicode_errors: UnicodeErrors = "replace",
) -> list[Entry]:
    """Decode a MessagePackEventStream (concatenated entries) in one batch."""
    return _decode_entries(packed, None, max_entries, unicode_errors)


def _decode_entries(
    packed: bytes, size: Any, max_entries: int, unicode_errors: UnicodeErrors
) -> list[Entry]:
    """:func:`decode_entries`, trusting ``size`` (``option.size``) as the count if plausible."""
    if type(size) is int and 0 <= size <= max_entries and size * _MIN_ENTRY_BYTES <= len(packed):
        count: int | None = size
    else:  # absent or implausible (some clients send a byte size): count, ~8% of a decode
        count = _count_entries(packed, max_entries)
    if count is not None:
        entries = _decode_entries_fast(packed, count)
        if entries is not None:
            return entries
    return _decode_entries_msgpack(packed, max_entries, unicode_errors)


def _decode_entries_msgpack(
    packed: bytes, max_entries: int, unicode_errors: UnicodeErrors
) -> list[Entry]:
    """The reference decoder: the C unpacker, any valid input, every error documented."""
    u = _unpacker(len(packed), unicode_errors)
    try:
        u.feed(packed)
        raw = list(islice(u, max_entries + 1))
    except _MSGPACK_ERRORS as exc:
        raise MalformedMessageError(f"bad entry stream: {exc}") from exc
    if len(raw) > max_entries:
        raise TooManyEntriesError(f"more than {max_entries} entries")
    # tell() also counts a partial trailing entry, so probe with a nil: on a clean end it
    # decodes to None; a partial entry would swallow it (or still be incomplete).
    try:
        u.feed(b"\xc0")
        clean_end = u.unpack() is None
    except _MSGPACK_ERRORS:
        clean_end = False
    if not clean_end:
        raise MalformedMessageError("entry stream ends inside an entry")
    return _check_entries(raw)


def _first_byte_kind(b: int) -> str:
    """Kind of the msgpack value starting with byte ``b`` (the spec detects modes by type)."""
    if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
        return "array"
    if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
        return "map"
    if b in (0xC4, 0xC5, 0xC6):
        return "bin"
    if 0xA0 <= b <= 0xBF or b in (0xD9, 0xDA, 0xDB):
        return "str"
    if b == 0xC0:
        return "nil"
    return "other"


def _container_len(msg: bytes, pos: int) -> int:
    """Element count of the array or map whose header starts at ``msg[pos]``."""
    b = msg[pos]
    if b in (0xDC, 0xDE):
        return int.from_bytes(msg[pos + 1 : pos + 3], "big")
    if b in (0xDD, 0xDF):
        return int.from_bytes(msg[pos + 1 : pos + 5], "big")
    return b & 0x0F


def _read_raw(u: Any, msg: bytes, what: str) -> bytes:
    """Read a str-or-bin value as its raw bytes (no UTF-8 decoding), advancing ``u`` past it."""
    pos = u.tell()
    b = msg[pos]
    if b == 0xC0:  # nil where a string belongs: treat as empty (e.g. PING's username)
        start, n = pos + 1, 0
    elif 0xA0 <= b <= 0xBF:
        start, n = pos + 1, b & 0x1F
    elif b in (0xC4, 0xD9):
        start, n = pos + 2, msg[pos + 1]
    elif b in (0xC5, 0xDA):
        start, n = pos + 3, int.from_bytes(msg[pos + 1 : pos + 3], "big")
    elif b in (0xC6, 0xDB):
        start, n = pos + 5, int.from_bytes(msg[pos + 1 : pos + 5], "big")
    else:
        raise MalformedMessageError(f"{what} must be str or bin")
    u.skip()
    return msg[start : start + n]


class _Framer:
    """Cuts a byte stream into complete msgpack values without building them (see module doc)."""

    __slots__ = ("_buf", "_max", "_scanner", "_taken")

    def __init__(self, max_message_bytes: int) -> None:
        self._max = max_message_bytes
        self._scanner: Any = msgpack.Unpacker(None, max_buffer_size=max_message_bytes)
        self._buf = bytearray()  # bytes since the end of the last complete value
        self._taken = 0  # scanner.tell() at the start of _buf

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Return the complete values in ``data`` (plus what was buffered) as raw bytes."""
        out: list[bytes] = []
        view = memoryview(data)
        while view:
            room = self._max - len(self._buf)
            if room <= 0:
                raise MessageTooLargeError(f"message over {self._max} bytes")
            piece, view = view[:room], view[room:]
            self._scanner.feed(piece)
            self._buf += piece
            start = 0
            while True:
                try:
                    self._scanner.skip()
                except msgpack.OutOfData:
                    break
                except _MSGPACK_ERRORS as exc:
                    raise MalformedMessageError(f"not msgpack: {exc}") from exc
                end = self._scanner.tell() - self._taken
                with memoryview(self._buf) as buf:
                    out.append(buf[start:end].tobytes())  # one copy; the slice dies here
                start = end
            if start:
                del self._buf[:start]
                self._taken += start
        return out


def _signal(options: dict[str, Any]) -> int:
    """``option.fluent_signal``: 0 (logs) when absent or nil, -1 when not an integer."""
    value = options.get("fluent_signal")
    if value is None:
        return 0
    return value if type(value) is int else -1


def _parked(
    tag: str, mode: Mode, options: dict[str, Any], signal: int, payload: bytes, size: int
) -> EventMessage:
    """A non-log signal's message: no entries, its payload kept as sent for the DLQ."""
    chunk = _chunk_text(options.get("chunk"))
    return EventMessage(tag, mode, [], options, chunk, size, signal=signal, payload=payload)


def _message(
    tag: str, mode: Mode, entries: list[Entry], options: dict[str, Any], size: int
) -> EventMessage:
    return EventMessage(tag, mode, entries, options, _chunk_text(options.get("chunk")), size)


class ServerDecoder:
    """Incremental decoder of what a client sends: events in every mode, PING, heartbeats.

    ``feed`` accepts bytes split at any boundary and returns the complete messages so far. A
    msgpack ``nil`` (the spec's TCP heartbeat) is skipped. Raises MalformedMessageError,
    MessageTooLargeError or TooManyEntriesError; after one, the connection must be closed.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
        unicode_errors: UnicodeErrors = "replace",
    ) -> None:
        """``unicode_errors`` applies to invalid UTF-8 in str values ("strict" refuses them).

        The default "replace" keeps a chunk with one bad line deliverable: Fluent Bit packs raw
        container bytes as str without checking them.
        """
        self._framer = _Framer(max_message_bytes)
        self._max_entries = max_entries
        self._max_decompressed = max_decompressed_bytes
        self._unicode_errors: UnicodeErrors = unicode_errors

    def feed(self, data: bytes | bytearray | memoryview) -> list[EventMessage | Ping]:
        """Feed received bytes; return every message completed by them, in order."""
        out: list[EventMessage | Ping] = []
        for msg in self._framer.feed(data):
            decoded = self._decode(msg)
            if decoded is not None:
                out.append(decoded)
        return out

    def _decode(self, msg: bytes) -> EventMessage | Ping | None:
        kind = _first_byte_kind(msg[0])
        if kind == "nil":
            return None  # heartbeat (spec: "Client MAY send a msgpack nil value")
        if kind != "array":
            raise MalformedMessageError(f"a message must be an array, got {kind}", shape=kind)
        u = _unpacker(len(msg), self._unicode_errors)
        mode: Mode | None = None
        try:
            u.feed(msg)
            n = u.read_array_header()
            if n == 6:
                return self._decode_ping(u, msg)
            if not 2 <= n <= 4:
                raise MalformedMessageError(f"event message of {n} elements", shape=f"array({n})")
            tag = u.unpack()
            if type(tag) is not str:
                shape = _shape(tag)
                raise MalformedMessageError(f"tag must be str, got {shape}", shape=shape)
            start = u.tell()
            kind = _first_byte_kind(msg[start])
            if kind == "array":
                mode = Mode.FORWARD
                return self._decode_forward(u, msg, n, tag, start)
            if kind in ("bin", "str"):  # the spec: server MUST accept both for PackedForward
                mode = Mode.PACKED_FORWARD
                return self._decode_packed(u, msg, n, tag, start)
            mode = Mode.MESSAGE
            return self._decode_message(u, msg, n, tag, start)
        except _MSGPACK_ERRORS as exc:
            raise MalformedMessageError(f"bad event message: {exc}", mode=mode) from exc
        except ProtocolError as exc:
            if exc.mode is None and mode is not None:
                exc.mode = str(mode)
            raise

    def _decode_forward(self, u: Any, msg: bytes, n: int, tag: str, start: int) -> EventMessage:
        if n > 3:
            raise MalformedMessageError("Forward mode takes at most 3 elements")
        count = _container_len(msg, start)
        if count > self._max_entries:
            raise TooManyEntriesError(f"{count} entries, limit {self._max_entries}")
        u.skip()  # options first: a non-log signal's payload is never decoded as entries
        end = u.tell()
        options = self._options(u, n - 2)
        signal = _signal(options)
        if signal:
            return _parked(tag, Mode.FORWARD, options, signal, msg[start:end], len(msg))
        with memoryview(msg) as view:
            entries = _decode_entry_array(view[start:end], self._unicode_errors)
        return _message(tag, Mode.FORWARD, entries, options, len(msg))

    def _decode_packed(self, u: Any, msg: bytes, n: int, tag: str, start: int) -> EventMessage:
        if n > 3:
            raise MalformedMessageError("PackedForward takes at most 3 elements")
        blob = _read_raw(u, msg, "entries")
        end = u.tell()
        options = self._options(u, n - 2)
        # gzip magic cannot start a valid entry stream (an entry starts with 0x92).
        gzipped = options.get("compressed") == "gzip" or blob[:2] == b"\x1f\x8b"
        mode = Mode.COMPRESSED_PACKED_FORWARD if gzipped else Mode.PACKED_FORWARD
        signal = _signal(options)
        if signal:
            return _parked(tag, mode, options, signal, msg[start:end], len(msg))
        if gzipped:
            try:
                blob = _gunzip(blob, self._max_decompressed)
            except ProtocolError as exc:
                exc.mode = str(mode)
                raise
        try:
            entries = _decode_entries(
                blob, options.get("size"), self._max_entries, self._unicode_errors
            )
        except ProtocolError as exc:
            exc.mode = str(mode)
            raise
        return _message(tag, mode, entries, options, len(msg))

    def _decode_message(self, u: Any, msg: bytes, n: int, tag: str, start: int) -> EventMessage:
        if n < 3:
            raise MalformedMessageError("Message mode needs tag, time and record")
        time, record = u.unpack(), u.unpack()
        end = u.tell()
        options = self._options(u, n - 3)
        signal = _signal(options)
        if signal:
            return _parked(tag, Mode.MESSAGE, options, signal, msg[start:end], len(msg))
        entries = _check_entries([[time, record]])
        metadata = options.get("metadata")  # Fluent Bit's Message mode sends it as an option
        if metadata:
            keep_metadata(entries[0][1], metadata)
        return _message(tag, Mode.MESSAGE, entries, options, len(msg))

    @staticmethod
    def _options(u: Any, remaining: int) -> dict[str, Any]:
        if remaining == 0:
            return {}
        options = u.unpack()
        if options is None:  # some clients send nil for "no options"
            return {}
        if type(options) is not dict:
            raise MalformedMessageError(
                f"option must be a map, got {_shape(options)}",
                reason="bad_options",
                shape=_shape(options),
            )
        return options

    @staticmethod
    def _decode_ping(u: Any, msg: bytes) -> Ping:
        # spec PING: [type, client_hostname, shared_key_salt, hexdigest, username, password]
        if _read_raw(u, msg, "type") != b"PING":
            raise MalformedMessageError("6-element message that is not PING")
        fields = [_read_raw(u, msg, name) for name in ("hostname", "salt", "digest", "user", "pw")]
        host, salt, digest, user, password = fields
        text = [f.decode("utf-8", "replace") for f in (host, digest, user, password)]
        return Ping(text[0], salt, text[1], text[2], text[3])


class ClientDecoder:
    """Incremental decoder of what a server sends: HELO, PONG and ``{"ack": chunk}`` maps."""

    def __init__(self, *, max_message_bytes: int = 1024 * 1024) -> None:
        self._framer = _Framer(max_message_bytes)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Helo | Pong | Ack]:
        """Feed received bytes; return every message completed by them, in order."""
        out: list[Helo | Pong | Ack] = []
        for msg in self._framer.feed(data):
            try:
                # surrogateescape: nonces and salts sent as str must round-trip to their bytes.
                obj = msgpack.unpackb(
                    msg, raw=False, unicode_errors="surrogateescape", strict_map_key=False
                )
            except _MSGPACK_ERRORS as exc:
                raise MalformedMessageError(f"bad server message: {exc}") from exc
            out.append(self._decode(obj))
        return out

    @staticmethod
    def _decode(obj: Any) -> Helo | Pong | Ack:
        if type(obj) is dict and "ack" in obj:
            raw = obj["ack"]
            text = _chunk_text(raw)
            if text is None:
                raise MalformedMessageError("ack without a chunk id")
            return Ack(text, raw)
        if type(obj) is list and obj and obj[0] == "HELO" and len(obj) == 2:
            opts = obj[1] if obj[1] is not None else {}
            if type(opts) is not dict:
                raise MalformedMessageError("HELO options must be a map")
            keepalive = opts.get("keepalive", True)
            return Helo(
                nonce=_as_bytes(opts.get("nonce", b""), "nonce"),
                auth=_as_bytes(opts.get("auth", b"") or b"", "auth"),
                keepalive=keepalive if isinstance(keepalive, bool) else True,
            )
        if type(obj) is list and obj and obj[0] == "PONG" and len(obj) == 5:
            _, ok, reason, host, digest = obj
            if type(ok) is not bool:
                raise MalformedMessageError("PONG auth_result must be a bool")
            return Pong(ok, _text(reason, "reason"), _text(host, "host"), _text(digest, "digest"))
        raise MalformedMessageError(f"unexpected server message of type {type(obj).__name__}")
