"""Forward Protocol v1 encoders: the four carrier modes and acks, the way logferry sends.

We send bin type for bytes, EventTime as ext 0, ``size`` and ``chunk`` options (chunk as str).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgpack

from logferry.common.protocol.types import Entry, EventTime


def packb(obj: Any) -> bytes:
    """msgpack-encode ``obj`` the way logferry sends: bin type for bytes, EventTime as ext 0."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _array_header_len(n: int) -> int:
    return 1 if n < 16 else 3 if n < 0x10000 else 5


def pack_entries(entries: Sequence[Entry] | Iterable[Entry]) -> bytes:
    """Pack entries once into a MessagePackEventStream (concatenated ``[time, record]`` arrays).

    The forwarder keeps these bytes in its spool and wraps them with
    :func:`encode_packed_forward` / :func:`gzip_entries` later without re-encoding. Packing the
    whole list in one C call and cutting the array header off is the fast path.
    """
    seq = entries if isinstance(entries, list | tuple) else list(entries)
    packed: bytes = msgpack.packb(seq, use_bin_type=True)
    return packed[_array_header_len(len(seq)) :]


def gzip_entries(packed: bytes, level: int = 6) -> bytes:
    """gzip a packed entry stream (one gzip member) for CompressedPackedForward."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: gzip container
    return compressor.compress(packed) + compressor.flush()


def _options(
    size: int | None, chunk: str | bytes | None, extra: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    opts: dict[str, Any] = dict(extra) if extra else {}
    if size is not None:
        opts["size"] = size
    if chunk is not None:
        opts["chunk"] = chunk
    return opts or None


def encode_message(
    tag: str,
    time: EventTime | int,
    record: Mapping[str, Any],
    *,
    chunk: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> bytes:
    """Message mode: ``[tag, time, record, option?]``."""
    opts = _options(None, chunk, options)
    return packb([tag, time, record] if opts is None else [tag, time, record, opts])


def encode_forward(
    tag: str,
    entries: Sequence[Entry],
    *,
    chunk: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> bytes:
    """Forward mode: ``[tag, [[time, record], ...], option?]`` with ``size`` set."""
    opts = _options(len(entries), chunk, options)
    return packb([tag, entries, opts])


def encode_packed_forward(
    tag: str,
    packed: bytes,
    size: int,
    *,
    chunk: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> bytes:
    """PackedForward mode: ``[tag, bin(packed entries), option]``; ``packed`` from pack_entries."""
    return packb([tag, packed, _options(size, chunk, options)])


def encode_compressed_packed_forward(
    tag: str,
    packed: bytes,
    size: int,
    *,
    chunk: str | None = None,
    options: Mapping[str, Any] | None = None,
    gzipped: bytes | None = None,
) -> bytes:
    """CompressedPackedForward: ``[tag, bin(gzip(packed)), {compressed: "gzip", size, chunk}]``.

    Pass ``gzipped`` (from :func:`gzip_entries`) to reuse an already compressed stream.
    """
    opts = _options(size, chunk, options) or {}
    opts["compressed"] = "gzip"  # the spec: client MUST send it
    return packb([tag, gzip_entries(packed) if gzipped is None else gzipped, opts])


def encode_ack(chunk: str | bytes) -> bytes:
    """Server response ``{"ack": chunk}``; the spec requires the value given by ``option.chunk``."""
    return packb({"ack": chunk})
