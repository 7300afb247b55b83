"""Fluent Bit's out_forward messages, assembled byte by byte as Fluent Bit lays them out.

What Fluent Bit (2.1 and later, up to 5.x) writes with its defaults, for a ``tail`` input:

- each entry is ``[[EventTime, metadata], record]``: ``0x92 0x92 0xd7 0x00 <sec:4> <nsec:4>
  <metadata map> <record map>``, the metadata map empty (``0x80``) unless a processor set keys
  (``retain_metadata_in_forward_mode`` defaults to true);
- without compression, **Forward** mode: ``[tag, array(N) + the N entries as stored, options?]``
  — the array header is written in front of the chunk's raw entry bytes;
- with ``compress gzip``, **CompressedPackedForward**: ``[tag, bin(gzip(entries)), options]``;
- the options map is written with a 32-bit map header (``0xdf`` + count, its count patched
  after the keys), keys in this order: ``chunk`` (32 hex characters of a SHA-512 of the data,
  only with ``require_ack_response``), ``size`` (entries), ``compressed: "gzip"``, and always
  ``fluent_signal`` (0 logs, 1 metrics, 2 traces, 3 blobs, 4 profiles);
- metrics and traces go out in Forward shape with a **bin** payload (the cmetrics/ctraces
  msgpack blob, gzipped when compression is on), no ``size``, and their ``fluent_signal``.

msgpack-c writes strings, binaries, arrays and integers with their smallest header, which
``msgpack.packb`` does too, so records are packed with it; every envelope byte is written here.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Sequence
from typing import Any

import msgpack

SIGNAL_LOGS = 0
SIGNAL_METRICS = 1
SIGNAL_TRACES = 2


def str_header(length: int) -> bytes:
    """msgpack str header, smallest form."""
    if length < 32:
        return bytes([0xA0 | length])
    if length < 0x100:
        return b"\xd9" + bytes([length])
    if length < 0x10000:
        return b"\xda" + struct.pack(">H", length)
    return b"\xdb" + struct.pack(">I", length)


def pack_str(text: str) -> bytes:
    data = text.encode()
    return str_header(len(data)) + data


def bin_header(length: int) -> bytes:
    """msgpack bin header, smallest form."""
    if length < 0x100:
        return b"\xc4" + bytes([length])
    if length < 0x10000:
        return b"\xc5" + struct.pack(">H", length)
    return b"\xc6" + struct.pack(">I", length)


def array_header(length: int) -> bytes:
    """msgpack array header, smallest form."""
    if length < 16:
        return bytes([0x90 | length])
    if length < 0x10000:
        return b"\xdc" + struct.pack(">H", length)
    return b"\xdd" + struct.pack(">I", length)


def event_time(seconds: int, nanoseconds: int) -> bytes:
    """EventTime as Fluent Bit writes it: fixext 8 (0xd7), ext type 0."""
    return b"\xd7\x00" + struct.pack(">II", seconds, nanoseconds)


def entry(
    seconds: int, nanoseconds: int, record: dict[str, Any], metadata: dict[str, Any] | None = None
) -> bytes:
    """One ``[[time, metadata], record]`` entry (Fluent Bit 2.1+ event format)."""
    meta = b"\x80" if not metadata else msgpack.packb(metadata, use_bin_type=True)
    return b"\x92\x92" + event_time(seconds, nanoseconds) + meta + msgpack.packb(record)


def legacy_entry(seconds: int, nanoseconds: int, record: dict[str, Any]) -> bytes:
    """One plain ``[time, record]`` entry (Fluentd, older Fluent Bit, our forwarder)."""
    return b"\x92" + event_time(seconds, nanoseconds) + msgpack.packb(record)


def chunk_id(data: bytes) -> str:
    """Fluent Bit's chunk id: the first 16 bytes of SHA-512(data) as 32 hex characters."""
    return hashlib.sha512(data).digest()[:16].hex()


def options(
    *,
    chunk: str | None,
    size: int | None,
    gzipped: bool,
    signal: int = SIGNAL_LOGS,
    metadata: dict[str, Any] | None = None,
) -> bytes:
    """The options map with Fluent Bit's 32-bit map header and key order."""
    pairs: list[bytes] = []
    if chunk is not None:
        pairs.append(pack_str("chunk") + pack_str(chunk))
    if size:
        pairs.append(pack_str("size") + msgpack.packb(size))
    if gzipped:
        pairs.append(pack_str("compressed") + pack_str("gzip"))
    pairs.append(pack_str("fluent_signal") + msgpack.packb(signal))
    if metadata:
        pairs.append(pack_str("metadata") + msgpack.packb(metadata, use_bin_type=True))
    return b"\xdf" + struct.pack(">I", len(pairs)) + b"".join(pairs)


def forward_message(tag: str, entries: Sequence[bytes], *, ack: bool) -> bytes:
    """Forward mode as Fluent Bit sends logs without compression.

    Without ``require_ack_response`` Fluent Bit (``send_options`` off) sends no options at all.
    """
    data = b"".join(entries)
    head = (b"\x93" if ack else b"\x92") + pack_str(tag) + array_header(len(entries))
    if not ack:
        return head + data
    return head + data + options(chunk=chunk_id(data), size=len(entries), gzipped=False)


def compressed_message(
    tag: str, entries: Sequence[bytes], *, ack: bool = True, members: int = 1
) -> bytes:
    """CompressedPackedForward as Fluent Bit sends logs with ``compress gzip``.

    ``members`` > 1 splits the entries over that many concatenated gzip members (as Fluentd
    does; the spec allows it).
    """
    data = b"".join(entries)
    step = max(1, -(-len(entries) // members))
    parts = [b"".join(entries[i : i + step]) for i in range(0, len(entries), step)]
    gz = b"".join(gzip.compress(part, compresslevel=6, mtime=0) for part in parts)
    chunk = chunk_id(data) if ack else None
    return (
        b"\x93"
        + pack_str(tag)
        + bin_header(len(gz))
        + gz
        + options(chunk=chunk, size=len(entries), gzipped=True)
    )


def signal_message(tag: str, payload: bytes, signal: int, *, gzipped: bool = False) -> bytes:
    """A metrics or traces message: a bin payload (not log entries) and its ``fluent_signal``."""
    body = gzip.compress(payload, mtime=0) if gzipped else payload
    return (
        b"\x93"
        + pack_str(tag)
        + bin_header(len(body))
        + body
        + options(chunk=chunk_id(payload), size=None, gzipped=gzipped, signal=signal)
    )


def message_mode(
    tag: str,
    seconds: int,
    nanoseconds: int,
    record: dict[str, Any],
    *,
    metadata: dict[str, Any] | None = None,
) -> bytes:
    """Message mode (Fluent Bit uses it for a record-accessor tag): the metadata is an option."""
    return (
        b"\x94"
        + pack_str(tag)
        + event_time(seconds, nanoseconds)
        + msgpack.packb(record)
        + options(chunk=None, size=None, gzipped=False, metadata=metadata)
    )
