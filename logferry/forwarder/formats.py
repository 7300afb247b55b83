"""Container log file formats: docker json-file and CRI, parsed a batch at a time.

``parse`` turns the complete lines of a buffer read from a file into ``ParsedLine``s
with exact file offsets; partial lines (docker 16 KB splits, CRI ``P`` tags) are left
as parts for ``partials.PartialMerger``. Nothing is dropped here: a line that does not
have the expected shape becomes a full line flagged ``malformed`` carrying its raw text.

docker json-file::

    {"log":"text\\n","stream":"stdout","time":"2026-11-25T19:50:31.123456789Z"}

CRI (kubelet / containerd / CRI-O)::

    2026-11-25T19:50:31.123456789Z stdout F text
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Literal, NamedTuple

import orjson

__all__ = [
    "FRACTION_SCALE",
    "Format",
    "ParseResult",
    "ParsedLine",
    "Stream",
    "detect_format",
    "parse",
    "parse_rfc3339_ns",
]

Format = Literal["docker", "cri", "raw"]
"""``raw``: plain text files outside Kubernetes (``source.files``), one line per record."""
Stream = Literal["stdout", "stderr"]


class ParsedLine(NamedTuple):
    """One physical line of a container log file."""

    offset: int
    """File offset of the line's first byte (the record identity of a full line)."""
    end_offset: int
    """File offset just past the line's newline."""
    time_ns: int
    """Runtime timestamp, nanoseconds since the epoch."""
    stream: Stream
    text: bytes
    """The message without its trailing newline (raw line bytes when malformed)."""
    partial: bool
    """True for a part that continues in the next line of the same stream."""
    malformed: bool
    """True when the line did not have the format's shape; it is then a full stdout line."""


class ParseResult(NamedTuple):
    """What one ``parse`` call made of a buffer."""

    lines: list[ParsedLine]
    consumed: int
    """Bytes of the buffer consumed (complete lines); the caller keeps the rest."""
    last_time_ns: int
    """Time of the last line, to pass as ``last_time_ns`` to the next call."""


# -- timestamps ----------------------------------------------------------------------

_SECONDS_RE = re.compile(rb"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d\Z")
_SECONDS_CACHE: dict[bytes, int] = {}
_SECONDS_CACHE_MAX = 4096
_MAX_EVENT_SECONDS = 2**32 - 1
# 10 ** (9 - digits): scales a fraction of 1..9 digits to nanoseconds.
FRACTION_SCALE: list[int] = [0] + [10 ** (9 - n) for n in range(1, 10)]


def _prefix_seconds(prefix: bytes) -> int:
    """Epoch seconds of ``YYYY-MM-DDTHH:MM:SS`` (UTC), validated, cached by prefix."""
    seconds = _SECONDS_CACHE.get(prefix)
    if seconds is not None:
        return seconds
    if _SECONDS_RE.match(prefix) is None:
        raise ValueError(f"bad timestamp {prefix!r}")
    year, month, day = int(prefix[0:4]), int(prefix[5:7]), int(prefix[8:10])
    hour, minute, second = int(prefix[11:13]), int(prefix[14:16]), int(prefix[17:19])
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        raise ValueError(f"bad date {prefix!r}")
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"bad time of day {prefix!r}")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if len(_SECONDS_CACHE) >= _SECONDS_CACHE_MAX:
        _SECONDS_CACHE.clear()  # lines arrive in time order: old seconds are not needed again
    _SECONDS_CACHE[prefix] = seconds
    return seconds


def parse_rfc3339_ns(ts: bytes) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp with 0-9 fraction digits.

    Accepts ``Z`` or a ``+HH:MM``/``-HH:MM`` offset; raises ``ValueError`` otherwise, and for
    a time an EventTime cannot carry (before 1970 or after 2106).
    Only the first call for a given second does date arithmetic (the prefix cache).
    """
    seconds = _prefix_seconds(ts[:19])
    rest = ts[19:]
    last = rest[-1:]
    if last == b"Z" or last == b"z":
        body = rest[:-1]
    elif len(rest) >= 6 and rest[-6] in b"+-" and rest[-3:-2] == b":":
        hh, mm = rest[-5:-3], rest[-2:]
        if not (hh.isdigit() and mm.isdigit()) or int(hh) > 23 or int(mm) > 59:
            raise ValueError(f"bad zone offset {ts!r}")
        zone_s = int(hh) * 3600 + int(mm) * 60
        seconds -= zone_s if rest[-6] == 0x2B else -zone_s  # 0x2B is "+"
        body = rest[:-6]
    else:
        raise ValueError(f"timestamp without zone {ts!r}")
    if not 0 <= seconds <= _MAX_EVENT_SECONDS:
        raise ValueError(f"timestamp outside 1970-2106 (EventTime is uint32 seconds) {ts!r}")
    if not body:
        return seconds * 1_000_000_000
    digits = body[1:]
    if body[0] != 0x2E or not 1 <= len(digits) <= 9 or not digits.isdigit():  # 0x2E is "."
        raise ValueError(f"bad fraction {ts!r}")
    return seconds * 1_000_000_000 + int(digits) * FRACTION_SCALE[len(digits)]


# -- line parsers --------------------------------------------------------------------

_DOCKER_STREAMS: dict[str, Stream] = {"stdout": "stdout", "stderr": "stderr"}
_CRI_STREAMS: dict[bytes, Stream] = {b"stdout": "stdout", b"stderr": "stderr"}
_CRI_LINE_RE = re.compile(rb"\S+ (?:stdout|stderr) [PF](?: |\Z)")


def _parse_docker(buf: bytes, base_offset: int, last_time_ns: int) -> ParseResult:
    pieces = buf.split(b"\n")
    rest = pieces.pop()  # after the last newline: incomplete (or empty)
    lines: list[ParsedLine] = []
    append = lines.append
    loads = orjson.loads
    streams = _DOCKER_STREAMS
    new = tuple.__new__
    prefix, prefix_ns = "", 0
    offset = base_offset
    for raw in pieces:
        end = offset + len(raw) + 1
        try:
            obj = loads(raw)
            log = obj["log"]
            stream = streams[obj["stream"]]
            ts = obj["time"]
            # Fast path: docker always writes 9 fraction digits and "Z"; same second as before.
            if ts[:19] == prefix and ts[29:] == "Z" and ts[19] == "." and len(ts) == 30:
                digits = ts[20:29]
                if not (digits.isdigit() and digits.isascii()):
                    raise ValueError("bad fraction")
                time_ns = prefix_ns + int(digits)
            else:
                time_ns = parse_rfc3339_ns(ts.encode())
                prefix = ts[:19]
                prefix_ns = time_ns - time_ns % 1_000_000_000
                if ts[19:20] != "." or ts[-1:] != "Z":  # the fast path takes only this form
                    prefix = ""
            if type(log) is not str:
                raise TypeError("log is not a string")
        except (ValueError, KeyError, TypeError, AttributeError):
            append(new(ParsedLine, (offset, end, last_time_ns, "stdout", raw, False, True)))
        else:
            last_time_ns = time_ns
            if log.endswith("\n"):
                append(
                    new(ParsedLine, (offset, end, time_ns, stream, log[:-1].encode(), False, False))
                )
            else:
                append(new(ParsedLine, (offset, end, time_ns, stream, log.encode(), True, False)))
        offset = end
    return ParseResult(lines, len(buf) - len(rest), last_time_ns)


def _parse_cri(buf: bytes, base_offset: int, last_time_ns: int) -> ParseResult:
    pieces = buf.split(b"\n")
    rest = pieces.pop()
    lines: list[ParsedLine] = []
    append = lines.append
    streams = _CRI_STREAMS
    new = tuple.__new__
    prefix, prefix_ns = b"", 0
    offset = base_offset
    for raw in pieces:
        end = offset + len(raw) + 1
        fields = raw.split(b" ", 3)
        try:
            if len(fields) == 4:
                ts, stream_b, tag, text = fields
            else:
                ts, stream_b, tag = fields  # "<time> <stream> F" with no message separator
                text = b""
            stream = streams[stream_b]
            if tag != b"F" and tag != b"P":
                raise ValueError("bad tag")
            # Fast path: 9 fraction digits and "Z" within the same second as before.
            if ts[:19] == prefix and ts[29:] == b"Z" and ts[19] == 0x2E and len(ts) == 30:
                digits = ts[20:29]
                if not digits.isdigit():
                    raise ValueError("bad fraction")
                time_ns = prefix_ns + int(digits)
            else:
                time_ns = parse_rfc3339_ns(ts)
                prefix = ts[:19]
                prefix_ns = time_ns - time_ns % 1_000_000_000
                if ts[19:20] != b"." or ts[-1:] != b"Z":  # the fast path takes only this form
                    prefix = b""
        except (ValueError, KeyError):
            append(new(ParsedLine, (offset, end, last_time_ns, "stdout", raw, False, True)))
        else:
            last_time_ns = time_ns
            append(new(ParsedLine, (offset, end, time_ns, stream, text, tag == b"P", False)))
        offset = end
    return ParseResult(lines, len(buf) - len(rest), last_time_ns)


def parse(fmt: Format, buf: bytes, base_offset: int, last_time_ns: int = 0) -> ParseResult:
    """Parse every complete line of ``buf``, the bytes of a file from ``base_offset`` on.

    An incomplete last line is not consumed (``consumed`` stops after the last newline).
    A malformed line keeps its raw bytes as text, is a full ``stdout`` line, and takes the
    time of the line before it: ``last_time_ns`` carries that time across calls.
    """
    if fmt == "docker":
        return _parse_docker(buf, base_offset, last_time_ns)
    if fmt == "cri":
        return _parse_cri(buf, base_offset, last_time_ns)
    if fmt == "raw":
        return _parse_raw(buf, base_offset, last_time_ns)
    raise ValueError(f"unknown log format {fmt!r}")


def _parse_raw(buf: bytes, base_offset: int, last_time_ns: int) -> ParseResult:
    """Plain text: each line is a full stdout record, stamped with the time it was read
    (never earlier than the line before: a file has no clock of its own)."""
    pieces = buf.split(b"\n")
    rest = pieces.pop()
    now = max(time.time_ns(), last_time_ns)
    lines: list[ParsedLine] = []
    offset = base_offset
    for raw in pieces:
        end = offset + len(raw) + 1
        text = raw[:-1] if raw.endswith(b"\r") else raw
        lines.append(ParsedLine(offset, end, now, "stdout", text, False, False))
        offset = end
    return ParseResult(lines, len(buf) - len(rest), now if pieces else last_time_ns)


def detect_format(sample: bytes) -> Format | None:
    """The format of a file from its first complete line; None if unknown or incomplete."""
    newline = sample.find(b"\n")
    if newline < 0:
        return None
    first = sample[:newline]
    if first.startswith(b"{"):
        try:
            obj = orjson.loads(first)
        except orjson.JSONDecodeError:
            return None
        if isinstance(obj, dict) and isinstance(obj.get("log"), str):
            return "docker"
        return None
    if _CRI_LINE_RE.match(first) is not None:
        try:
            parse_rfc3339_ns(first.split(b" ", 1)[0])
        except ValueError:
            return None
        return "cri"
    return None
