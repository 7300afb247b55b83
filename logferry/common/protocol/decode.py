"""Incremental Forward Protocol decoders: :class:`ServerDecoder` and :class:`ClientDecoder`.

Decoding is done in two stages, for safety and speed:

1. **Framing.** A streaming ``msgpack.Unpacker`` with ``max_buffer_size`` walks the byte stream
   with ``skip()``, which builds no objects. This matters: a streaming unpacker that *builds*
   objects preallocates every container it has seen a header for, so a few KB of nested
   ``array32`` headers would allocate gigabytes before the data to fill them ever arrives.
2. **Decoding a complete message**, one at a time (:meth:`ServerDecoder.decode` on each frame
   :meth:`ServerDecoder.frames` returns), so at most one message is ever inflated. Its entries
   are decoded by :mod:`logferry.common.protocol.entries`: small streams at once, large ones a
   slice at a time when the consumer iterates :meth:`EventMessage.slices`.

Errors are the ones of :mod:`logferry.common.errors`; msgpack, zlib and unicode errors are
translated with ``raise ... from exc``. Import from :mod:`logferry.common.protocol`.
"""

from __future__ import annotations

import base64
from typing import Any, Final

import msgpack

from logferry.common.errors import (
    MalformedMessageError,
    MessageTooLargeError,
    ProtocolError,
    TooManyEntriesError,
)
from logferry.common.protocol.entries import (
    MSGPACK_ERRORS,
    ROOM,
    EntryLimits,
    array_entries,
    decode_stream_msgpack,
    gunzip,
    keep_metadata,
    room_stream,
    shape_of,
)
from logferry.common.protocol.types import (
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_RECORD_BYTES,
    Ack,
    EventMessage,
    Helo,
    Mode,
    Ping,
    Pong,
    UnicodeErrors,
    ext_hook,
)
from logferry.common.units import MiB

HANDSHAKE_MAX_BYTES: Final = 4096
"""What a peer may send before its PING is checked: a PING is a few hundred bytes."""
SCAN_READ_BYTES: Final = 16 * 1024
"""The framing scanner's first buffer (msgpack's default is 1 MiB, held per connection); it
grows only while a message larger than that is incomplete."""
SLICE_BYTES: Final = 256 * 1024
"""Entry streams larger than this are decoded a slice of this size at a time (or an entry at a
time, for larger entries): the Python objects alive at once are one slice's."""


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
        f"option chunk must be str or bin, got {shape_of(raw)}", reason="bad_options"
    )


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


def _raw_extent(u: Any, msg: bytes, what: str) -> tuple[int, int]:
    """Where the str-or-bin value at the cursor keeps its raw bytes (no UTF-8 decoding), as
    (start, end) in ``msg``; advances ``u`` past it."""
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
    return start, start + n


def _read_raw(u: Any, msg: bytes, what: str) -> bytes:
    """Read a str-or-bin value as its raw bytes, advancing ``u`` past it."""
    start, end = _raw_extent(u, msg, what)
    return msg[start:end]


class _Framer:
    """Cuts a byte stream into complete msgpack values without building them (see module doc)."""

    __slots__ = ("_buf", "_scanner", "_taken", "limit", "max_bytes")

    def __init__(self, max_message_bytes: int) -> None:
        self.max_bytes = max_message_bytes
        self.limit = max_message_bytes
        """The size a message may reach now (at most ``max_message_bytes``)."""
        # Made when bytes arrive and dropped when no message is left incomplete: msgpack's
        # buffer never shrinks (and starts at 1 MiB by default), so a long-lived scanner
        # would keep its largest read for the life of the connection, for every connection.
        self._scanner: Any = None
        self._buf = bytearray()  # bytes since the end of the last complete value
        self._taken = 0  # scanner.tell() at the start of _buf

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Return the complete values in ``data`` (plus what was buffered) as raw bytes."""
        out: list[bytes] = []
        view = memoryview(data)
        while view:
            limit = min(self.max_bytes, self.limit)
            room = limit - len(self._buf)
            if room <= 0:
                raise MessageTooLargeError(f"message over {limit} bytes")
            piece, view = view[:room], view[room:]
            scanner = self._scanner
            if scanner is None:
                scanner = self._scanner = msgpack.Unpacker(
                    None,
                    max_buffer_size=self.max_bytes,
                    read_size=min(SCAN_READ_BYTES, self.max_bytes),
                )
                self._taken = 0  # dropped only with _buf empty: nothing to feed again
            scanner.feed(piece)
            self._buf += piece
            start = 0
            while True:
                try:
                    scanner.skip()
                except msgpack.OutOfData:
                    break
                except MSGPACK_ERRORS as exc:
                    raise MalformedMessageError(f"not msgpack: {exc}") from exc
                end = scanner.tell() - self._taken
                with memoryview(self._buf) as buf:
                    out.append(buf[start:end].tobytes())  # one copy; the slice dies here
                start = end
            if start:
                del self._buf[:start]
                self._taken += start
            if not self._buf:
                self._scanner = None  # nothing incomplete: its buffer goes with it
        return out

    @property
    def buffered(self) -> int:
        """Bytes held for a message not yet complete."""
        return len(self._buf)


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
    tag: str,
    mode: Mode,
    entries: Any,
    options: dict[str, Any],
    size: int,
) -> EventMessage:
    chunk = _chunk_text(options.get("chunk"))
    if type(entries) is list:
        return EventMessage(tag, mode, entries, options, chunk, size)
    return EventMessage(tag, mode, [], options, chunk, size, stream=entries)


class ServerDecoder:
    """Incremental decoder of what a client sends: events in every mode, PING, heartbeats.

    :meth:`frames` cuts received bytes (split at any boundary) into complete messages and
    :meth:`decode` decodes one; decode each before the next, so only one message is ever
    inflated at a time. :meth:`feed` does both (for tests and tools). A msgpack ``nil`` (the
    spec's TCP heartbeat) decodes to None. Raises MalformedMessageError, MessageTooLargeError
    or TooManyEntriesError; after one, the connection must be closed.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        unicode_errors: UnicodeErrors = "replace",
        slice_bytes: int = SLICE_BYTES,
    ) -> None:
        """``unicode_errors`` applies to invalid UTF-8 in str values ("strict" refuses them).

        The default "replace" keeps a chunk with one bad line deliverable: Fluent Bit packs raw
        container bytes as str without checking them.
        """
        self._framer = _Framer(max_message_bytes)
        self._max_decompressed = max_decompressed_bytes
        self._limits = EntryLimits(
            max_entries=max_entries,
            max_record_bytes=max_record_bytes,
            slice_bytes=min(slice_bytes, max_record_bytes),
            unicode_errors=unicode_errors,
        )
        self._unicode_errors: UnicodeErrors = unicode_errors

    def limit_messages(self, limit: int | None) -> None:
        """Cap the next messages at ``limit`` bytes (the handshake's PING); None: the full
        ``max_message_bytes`` again."""
        self._framer.limit = self._framer.max_bytes if limit is None else limit

    @property
    def buffered(self) -> int:
        """Bytes held for a message not yet complete (what a peer makes us keep)."""
        return self._framer.buffered

    def frames(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The complete messages that ``data`` completes, undecoded, in order."""
        return self._framer.feed(data)

    def feed(self, data: bytes | bytearray | memoryview) -> list[EventMessage | Ping]:
        """Feed received bytes; return every message completed by them, decoded, in order."""
        out: list[EventMessage | Ping] = []
        for msg in self._framer.feed(data):
            decoded = self.decode(msg)
            if decoded is not None:
                out.append(decoded)
        return out

    def decode(self, msg: bytes) -> EventMessage | Ping | None:
        """Decode one complete message (from :meth:`frames`); None for a heartbeat."""
        kind = _first_byte_kind(msg[0])
        if kind == "nil":
            return None  # heartbeat (spec: "Client MAY send a msgpack nil value")
        if kind != "array":
            raise MalformedMessageError(f"a message must be an array, got {kind}", shape=kind)
        u = msgpack.Unpacker(
            None,
            raw=False,
            ext_hook=ext_hook,
            unicode_errors=self._unicode_errors,
            strict_map_key=True,
            max_buffer_size=len(msg),
        )
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
                shape = shape_of(tag)
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
        except MSGPACK_ERRORS as exc:
            raise MalformedMessageError(f"bad event message: {exc}", mode=mode) from exc
        except ProtocolError as exc:
            if exc.mode is None and mode is not None:
                exc.mode = str(mode)
            raise

    def _decode_forward(self, u: Any, msg: bytes, n: int, tag: str, start: int) -> EventMessage:
        if n > 3:
            raise MalformedMessageError("Forward mode takes at most 3 elements")
        count = _container_len(msg, start)
        if count > self._limits.max_entries:
            raise TooManyEntriesError(f"{count} entries, limit {self._limits.max_entries}")
        u.skip()  # options first: a non-log signal's payload is never decoded as entries
        end = u.tell()
        options = self._options(u, n - 2)
        signal = _signal(options)
        if signal:
            return _parked(tag, Mode.FORWARD, options, signal, msg[start:end], len(msg))
        with memoryview(msg) as view:
            entries = array_entries(view[start:end], count, self._limits)
        return _message(tag, Mode.FORWARD, entries, options, len(msg))

    def _decode_packed(self, u: Any, msg: bytes, n: int, tag: str, start: int) -> EventMessage:
        if n > 3:
            raise MalformedMessageError("PackedForward takes at most 3 elements")
        blob_start, blob_end = _raw_extent(u, msg, "entries")
        end = u.tell()
        options = self._options(u, n - 2)
        # gzip magic cannot start a valid entry stream (an entry starts with 0x92).
        gzipped = options.get("compressed") == "gzip" or msg[blob_start : blob_start + 2] == (
            b"\x1f\x8b"
        )
        mode = Mode.COMPRESSED_PACKED_FORWARD if gzipped else Mode.PACKED_FORWARD
        signal = _signal(options)
        if signal:
            return _parked(tag, mode, options, signal, msg[start:end], len(msg))
        try:
            with memoryview(msg) as view:
                blob = view[blob_start:blob_end]
                if gzipped:
                    buf = gunzip(blob, self._max_decompressed)
                else:
                    buf = bytearray(ROOM)
                    buf += blob
                del blob
            entries = room_stream(buf, options.get("size"), self._limits)
        except ProtocolError as exc:
            exc.mode = str(mode)
            raise
        return _message(tag, mode, entries, options, len(msg))

    def _decode_message(self, u: Any, msg: bytes, n: int, tag: str, start: int) -> EventMessage:
        if n < 3:
            raise MalformedMessageError("Message mode needs tag, time and record")
        u.skip()
        u.skip()
        end = u.tell()
        if end - start > self._limits.max_record_bytes:
            raise MessageTooLargeError(
                f"a record of {end - start} bytes, over {self._limits.max_record_bytes}"
            )
        options = self._options(u, n - 3)
        signal = _signal(options)
        if signal:
            return _parked(tag, Mode.MESSAGE, options, signal, msg[start:end], len(msg))
        # [time, record] as one entry of a stream: the reference path, with its depth check.
        entries = decode_stream_msgpack(b"\x92" + msg[start:end], 1, self._unicode_errors)
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
                f"option must be a map, got {shape_of(options)}",
                reason="bad_options",
                shape=shape_of(options),
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

    def __init__(self, *, max_message_bytes: int = MiB) -> None:
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
            except MSGPACK_ERRORS as exc:
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
