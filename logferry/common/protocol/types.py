"""Forward Protocol v1 vocabulary: EventTime (ext type 0), carrier modes and message types.

Reference: https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1 ("the spec").
Import from :mod:`logferry.common.protocol`, which re-exports everything public here.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeAlias

import msgpack

from logferry.common.errors import MalformedMessageError
from logferry.common.units import MiB

DEFAULT_MAX_MESSAGE_BYTES: Final = 8 * MiB
DEFAULT_MAX_ENTRIES: Final = 100_000
DEFAULT_MAX_DECOMPRESSED_BYTES: Final = 16 * MiB
DEFAULT_MAX_RECORD_BYTES: Final = 1280 * 1024
_NS_PER_S: Final = 1_000_000_000
_U32_MAX: Final = 0xFFFF_FFFF
_TIME_STRUCT: Final = struct.Struct(">II")
_ONE_BILLION_BE: Final = _TIME_STRUCT.pack(0, _NS_PER_S)[4:]
_tuple_new = tuple.__new__
ONE_BILLION_BE: Final = _ONE_BILLION_BE
"""10**9 as a big-endian uint32: an EventTime payload's nanoseconds must sort below it."""
U32_MAX: Final = _U32_MAX

UnicodeErrors: TypeAlias = Literal["strict", "replace", "surrogateescape"]


class EventTime(msgpack.ExtType):  # type: ignore[misc]  # msgpack ships no type stubs
    """Nanosecond event time: msgpack ext type 0, big-endian uint32 seconds + uint32 nanoseconds.

    A subclass of ``msgpack.ExtType`` so the C packer writes it natively (no ``default`` hook per
    entry) and the decoder builds it with one C call. Instances compare, hash and sort
    chronologically (big-endian bytes order like the numbers they hold).
    """

    __slots__ = ()

    def __new__(cls, seconds: int, nanoseconds: int = 0) -> EventTime:
        if not (0 <= seconds <= _U32_MAX and 0 <= nanoseconds < _NS_PER_S):
            raise ValueError(f"EventTime out of range: {seconds}s {nanoseconds}ns")
        return _tuple_new(cls, (0, _TIME_STRUCT.pack(seconds, nanoseconds)))

    def __getnewargs__(self) -> tuple[int, int]:
        return self.seconds, self.nanoseconds

    def __repr__(self) -> str:
        return f"EventTime({self.seconds}, {self.nanoseconds})"

    @classmethod
    def from_bytes(cls, data: bytes) -> EventTime:
        """Build from the 8-byte ext payload; raises MalformedMessageError if it is not one."""
        if len(data) != 8 or data[4:] >= _ONE_BILLION_BE:
            raise MalformedMessageError(f"bad EventTime payload {data[:16]!r}")
        return _tuple_new(cls, (0, bytes(data)))

    @classmethod
    def from_ns(cls, ns: int) -> EventTime:
        """From integer nanoseconds since the Unix epoch."""
        seconds, nanoseconds = divmod(ns, _NS_PER_S)
        return cls(seconds, nanoseconds)

    @classmethod
    def from_float(cls, t: float) -> EventTime:
        """From float seconds since the Unix epoch (rounded to the nearest nanosecond)."""
        # Split first: t * 1e9 would lose ~100 ns at today's epoch; t - floor(t) is exact.
        seconds = math.floor(t)
        return cls.from_ns(seconds * _NS_PER_S + round((t - seconds) * _NS_PER_S))

    @classmethod
    def from_time(cls, t: EventTime | int | float) -> EventTime:
        """Normalise any accepted wire time (EventTime, int seconds, float seconds)."""
        if isinstance(t, EventTime):
            return t
        if isinstance(t, int):
            return cls(t, 0)
        return cls.from_float(t)

    @property
    def seconds(self) -> int:
        """Whole seconds since the Unix epoch."""
        return int.from_bytes(self.data[:4], "big")

    @property
    def nanoseconds(self) -> int:
        """Nanoseconds within the second, 0..999_999_999."""
        return int.from_bytes(self.data[4:], "big")

    def to_ns(self) -> int:
        """Integer nanoseconds since the Unix epoch (exact)."""
        seconds, nanoseconds = _TIME_STRUCT.unpack(self.data)
        return seconds * _NS_PER_S + nanoseconds  # type: ignore[no-any-return]

    def to_float(self) -> float:
        """Float seconds since the Unix epoch (loses precision below ~100 ns)."""
        seconds, nanoseconds = _TIME_STRUCT.unpack(self.data)
        return seconds + nanoseconds / _NS_PER_S  # type: ignore[no-any-return]


Record: TypeAlias = dict[str, Any]
Entry: TypeAlias = tuple[EventTime | int, Record]
"""One event of a stream: (time, record). Time is an EventTime, or int seconds (spec: Entry).

On the wire the time slot may also be Fluent Bit's ``[time, metadata]`` (its default event
format since 2.1); the decoders unwrap it, so an Entry always holds the plain time."""

METADATA_FIELD: Final = "fluent_metadata"
"""Record field that keeps a non-empty Fluent Bit metadata map (``[[time, metadata], record]``,
or ``option.metadata`` in Message mode). An empty map adds nothing. Should the record already
hold a different value under this name, the wire's map goes to ``fluent_metadata_wire``."""

SIGNAL_NAMES: Final = {1: "metrics", 2: "traces", 3: "blobs", 4: "profiles"}
"""Fluent Bit's ``option.fluent_signal`` values other than 0 (logs): payloads that are not log
entries. Any other non-zero or non-integer value is the signal ``unknown``."""


class EntrySlices(Protocol):
    """A large message's entries, decoded a slice at a time as they are iterated (once)."""

    count: int

    def __iter__(self) -> Iterator[list[Entry]]: ...


class Mode(enum.StrEnum):
    """The four carrier modes of the spec ("Event Modes")."""

    MESSAGE = "Message"
    FORWARD = "Forward"
    PACKED_FORWARD = "PackedForward"
    COMPRESSED_PACKED_FORWARD = "CompressedPackedForward"


@dataclass(slots=True)
class EventMessage:
    """One decoded event message, whatever its mode."""

    tag: str
    mode: Mode
    entries: list[Entry]
    options: dict[str, Any]
    """The option map as sent (``chunk`` keeps its wire type here, for the ack)."""
    chunk: str | None
    """``option.chunk`` normalised to str (bin: ASCII-decoded, else base64), or None."""
    wire_bytes: int
    """Size of the whole message on the wire, in bytes."""
    signal: int = 0
    """``option.fluent_signal``: 0 for log entries; anything else means ``entries`` is empty
    and ``payload`` holds what was sent (-1 when the option was not an integer)."""
    payload: bytes = b""
    """For a non-log signal: the message's payload element exactly as sent (msgpack bytes)."""
    stream: EntrySlices | None = None
    """A large message's entries, left encoded and decoded a slice at a time (``entries`` is
    then empty): read every message's entries through :meth:`slices`."""

    @property
    def count(self) -> int:
        """How many entries the message carries."""
        return len(self.entries) if self.stream is None else self.stream.count

    def slices(self) -> Iterator[list[Entry]]:
        """The entries, in order, in one or more lists (memory: one list at a time)."""
        if self.stream is None:
            if self.entries:
                yield self.entries
        else:
            yield from self.stream

    @property
    def signal_name(self) -> str:
        """``logs``, or the name of a non-log signal (``metrics``, ``traces``, ...)."""
        return "logs" if self.signal == 0 else SIGNAL_NAMES.get(self.signal, "unknown")

    def encode_ack(self) -> bytes | None:
        """``{"ack": chunk}`` echoing the chunk exactly as sent; None if there is no chunk."""
        raw = self.options.get("chunk")
        return None if raw is None else msgpack.packb({"ack": raw}, use_bin_type=True)


@dataclass(slots=True, frozen=True)
class Helo:
    """Server -> client, first handshake message (spec: HELO)."""

    nonce: bytes
    auth: bytes = b""
    """Salt for the user password digest; empty means no user authentication."""
    keepalive: bool = True


@dataclass(slots=True, frozen=True)
class Ping:
    """Client -> server, answer to HELO (spec: PING)."""

    client_hostname: str
    shared_key_salt: bytes
    shared_key_hexdigest: str
    username: str = ""
    password_hexdigest: str = ""


@dataclass(slots=True, frozen=True)
class Pong:
    """Server -> client, result of the handshake (spec: PONG)."""

    auth_result: bool
    reason: str
    server_hostname: str
    shared_key_hexdigest: str


@dataclass(slots=True, frozen=True)
class Ack:
    """Server -> client ``{"ack": chunk}`` (spec: Response)."""

    chunk: str
    raw: str | bytes = field(default="", compare=False)
    """The value exactly as sent."""


def event_time_of(payload: bytes) -> EventTime:
    """An EventTime from an 8-byte payload already checked (the decoders' hot path)."""
    return _tuple_new(EventTime, (0, payload))


def ext_hook(code: int, data: bytes) -> Any:
    """msgpack ``ext_hook``: ext type 0 becomes an EventTime, other types stay ``ExtType``.

    Called by the C unpacker for every ext value, so it is one branch and one C call. Raises
    MalformedMessageError for an ext 0 that is not 8 bytes or has nanoseconds >= 10**9.
    """
    if code == 0:
        if len(data) == 8 and data[4:] < _ONE_BILLION_BE:
            return _tuple_new(EventTime, (0, data))
        raise MalformedMessageError(f"bad EventTime payload of {len(data)} bytes")
    return msgpack.ExtType(code, data)
