"""How a container runtime writes a message to its log file: docker json-file and CRI lines,
and the split of a long message into ``PART_BYTES`` parts (``P``/``F`` tags in CRI, a ``log``
without its newline in docker), as :mod:`logferry.tools.loadgen` writes them.
"""

from __future__ import annotations

import time
from typing import Literal

import orjson

Format = Literal["docker", "cri"]
Stream = Literal["stdout", "stderr"]

PART_BYTES = 16384
"""The runtimes' line buffer: a longer message is written as several lines (docker, CRI)."""


def split_message(text: bytes, limit: int = PART_BYTES) -> list[bytes]:
    """The parts a runtime writes ``text`` as: ``limit``-byte parts, then the rest.

    Like docker's copier, a message whose length is a multiple of ``limit`` ends with an
    empty part (the buffer filled before the newline came). Cuts back off to a UTF-8
    character start, so each docker part is a valid JSON string.
    """
    parts: list[bytes] = []
    start = 0
    while len(text) - start >= limit:
        cut = start + limit
        while cut < len(text) and cut > start + 1 and text[cut] & 0xC0 == 0x80:
            cut -= 1
        parts.append(text[start:cut])
        start = cut
    parts.append(text[start:])
    return parts


def _docker_line(text: str, stream: Stream, timestamp: str) -> bytes:
    line = orjson.dumps({"log": text, "stream": stream, "time": timestamp})
    # Docker's Go encoder escapes these for HTML safety; readers must undo it.
    return line.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")


def render_message(fmt: Format, stream: Stream, text: bytes, timestamp: str) -> tuple[bytes, int]:
    """The bytes a runtime writes for one message (no newline in ``text``) and their lines."""
    parts = split_message(text)
    if fmt == "cri":
        head = f"{timestamp} {stream} ".encode()
        lines = [head + b"P " + part + b"\n" for part in parts[:-1]]
        lines.append(head + b"F " + parts[-1] + b"\n")
    else:
        lines = [_docker_line(part.decode(), stream, timestamp) + b"\n" for part in parts[:-1]]
        lines.append(_docker_line(parts[-1].decode() + "\n", stream, timestamp) + b"\n")
    return b"".join(lines), len(lines)


def rfc3339_ns(time_ns: int) -> str:
    """``time_ns`` as the runtimes stamp a line: RFC 3339 UTC with nanoseconds."""
    seconds, fraction = divmod(time_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"
