"""The common case in one loop: complete, well-formed lines straight to entries.

Almost every line of a container log is whole (not split by the runtime), well formed, and
stamped within the same second as the line before. For those, parsing, numbering and
building the entry happen in a single pass with one C call to decode a docker line and no
intermediate objects. At the first line that is anything else (a part of a split line, a
malformed line, a line near the length cap) the fast path stops, and the general path
(``formats`` -> ``partials`` -> ``reader``) takes the rest of the buffer from that line on.

The reader calls this only where the general path would be in the same state (no split line
open, nothing pending), and a unit test checks that both paths make byte-identical entries,
offsets and sequence numbers for any input.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import msgspec
from msgspec.msgpack import Ext

from logferry.forwarder.entries import Body, Entry, LfMeta, pack_event_time
from logferry.forwarder.formats import FRACTION_SCALE, Format, parse_rfc3339_ns

__all__ = ["FastResult", "fast_entries"]

_NS = 1_000_000_000


class FastResult(NamedTuple):
    """The entries of the leading run of plain lines of a buffer."""

    entries: list[Entry]
    consumed: int
    """Bytes of the buffer those lines took (whole lines with their newlines)."""
    last_time_ns: int


class _DockerLine(msgspec.Struct, gc=False):
    log: str
    stream: Literal["stdout", "stderr"]
    time: str


_decode_docker = msgspec.json.Decoder(_DockerLine).decode
_CRI_STREAMS: dict[bytes, str] = {b"stdout": "stdout", b"stderr": "stderr"}


def fast_entries(
    fmt: Format,
    buf: bytes,
    base_offset: int,
    next_seq: int,
    last_time_ns: int,
    max_line_bytes: int,
    source: str,
    kubernetes: msgspec.Raw,
) -> FastResult:
    """Entries for the lines at the start of ``buf`` (file bytes from ``base_offset``) that
    are complete, well formed, not split and shorter than ``max_line_bytes``, numbered from
    ``next_seq``; stops at the first other line."""
    if fmt == "raw":
        return FastResult([], 0, last_time_ns)  # plain files: the general path only
    pieces = buf.split(b"\n")
    pieces.pop()  # after the last newline: an incomplete line, left to the caller
    if fmt == "docker":
        return _docker(
            pieces, base_offset, next_seq, last_time_ns, max_line_bytes, source, kubernetes
        )
    return _cri(pieces, base_offset, next_seq, last_time_ns, max_line_bytes, source, kubernetes)


def _docker(
    pieces: list[bytes],
    offset: int,
    seq: int,
    last_time_ns: int,
    max_line_bytes: int,
    source: str,
    kubernetes: msgspec.Raw,
) -> FastResult:
    entries: list[Entry] = []
    append = entries.append
    decode = _decode_docker
    scale = FRACTION_SCALE
    start = offset
    prefix, prefix_s = "", 0
    for raw in pieces:
        # The text is never longer in UTF-8 than its JSON encoding: no line here is truncated.
        if len(raw) > max_line_bytes:
            break
        try:
            line = decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError):  # ValidationError is a DecodeError
            break
        log = line.log
        ts = line.time
        if log[-1:] != "\n":
            break  # a part of a split line
        if ts[:19] == prefix and ts[19:20] == "." and ts[-1:] == "Z" and len(ts) <= 30:
            digits = ts[20:-1]
            if not (digits.isdigit() and digits.isascii()):
                break
            seconds, nanos = prefix_s, int(digits) * scale[len(digits)]
            last_time_ns = seconds * _NS + nanos
        else:
            try:
                last_time_ns = parse_rfc3339_ns(ts.encode())
            except (ValueError, UnicodeEncodeError):
                break
            seconds, nanos = divmod(last_time_ns, _NS)
            # Only a UTC ("Z") stamp may seed the same-second shortcut above.
            prefix, prefix_s = (ts[:19] if ts[-1:] == "Z" else ""), seconds
        lf = LfMeta(f"{source}-{offset:x}", source, seq)
        append(
            Entry(
                Ext(0, pack_event_time(seconds, nanos)), Body(log[:-1], line.stream, kubernetes, lf)
            )
        )
        offset += len(raw) + 1
        seq += 1
    return FastResult(entries, offset - start, last_time_ns)


def _cri(
    pieces: list[bytes],
    offset: int,
    seq: int,
    last_time_ns: int,
    max_line_bytes: int,
    source: str,
    kubernetes: msgspec.Raw,
) -> FastResult:
    entries: list[Entry] = []
    append = entries.append
    streams = _CRI_STREAMS
    scale = FRACTION_SCALE
    start = offset
    prefix, prefix_s = b"", 0
    for raw in pieces:
        if len(raw) > max_line_bytes:
            break
        fields = raw.split(b" ", 3)
        if len(fields) != 4:
            break
        ts, stream_b, tag, text = fields
        stream = streams.get(stream_b)
        if stream is None or tag != b"F":
            break
        if ts[:19] == prefix and ts[19:20] == b"." and ts[-1:] == b"Z" and len(ts) <= 30:
            digits = ts[20:-1]
            if not digits.isdigit():  # bytes.isdigit: ASCII digits only
                break
            seconds, nanos = prefix_s, int(digits) * scale[len(digits)]
            last_time_ns = seconds * _NS + nanos
        else:
            try:
                last_time_ns = parse_rfc3339_ns(ts)
            except ValueError:
                break
            seconds, nanos = divmod(last_time_ns, _NS)
            prefix, prefix_s = (ts[:19] if ts[-1:] == b"Z" else b""), seconds
        lf = LfMeta(f"{source}-{offset:x}", source, seq)
        body = Body(text.decode("utf-8", "replace"), stream, kubernetes, lf)
        append(Entry(Ext(0, pack_event_time(seconds, nanos)), body))
        offset += len(raw) + 1
        seq += 1
    return FastResult(entries, offset - start, last_time_ns)
