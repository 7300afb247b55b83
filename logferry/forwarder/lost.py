"""How many lines a lost source never read, from the compressed copy kubelet may keep.

A source is lost when its file was rotated away and deleted before it was drained (the
forwarder was down for longer than kubelet keeps rotated files uncompressed). kubelet
compresses a rotated file before it deletes it (``0.log.<YYYYMMDD-hhmmss>.gz``), so the
content may survive beside the log: the copy whose decompressed start matches the source's
fingerprint is its file, and the complete lines after the saved offset are what was never
read. Decompressed as a stream, a chunk at a time: memory stays bounded whatever the size.

The folder is a tenant's own pod log folder: a compressed file is opened without following a
symlink and must be a regular file, and a copy is decompressed past its first bytes only
once they match the fingerprint (up to :data:`MAX_SCAN_BYTES`).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import stat
import zlib
from typing import BinaryIO

from logferry.common.units import GiB, MiB
from logferry.forwarder.positions import fingerprint_length, fingerprint_of

__all__ = ["MAX_SCAN_BYTES", "UNKNOWN", "count_lost_lines"]

UNKNOWN = -1
"""No compressed copy of the file (or an unreadable one): how much was lost is not known."""
MAX_SCAN_BYTES = 16 * GiB
"""A copy that decompresses to more than this is not counted (UNKNOWN)."""
_CHUNK = MiB
_COMPRESSED = re.compile(r"^\d+\.log\..+\.gz\Z")
_READ_ERRORS = (OSError, EOFError, zlib.error)


def count_lost_lines(directory: str, fingerprint: str, offset: int) -> int:
    """Complete lines after ``offset`` in the compressed copy in ``directory`` of the file
    whose head has ``fingerprint``; :data:`UNKNOWN` if there is none."""
    covered = fingerprint_length(fingerprint)
    try:
        names = sorted(e.name for e in os.scandir(directory) if _COMPRESSED.match(e.name))
    except OSError:
        return UNKNOWN
    for name in names:
        with (
            contextlib.suppress(*_READ_ERRORS),
            _open_regular(os.path.join(directory, name)) as raw,
        ):
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                head = stream.read(covered)
                if len(head) < covered or fingerprint_of(head) != fingerprint:
                    continue
            # The copy of this very file: count it (a damaged one counts as unknown).
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                return _lines_after(stream, offset)
    return UNKNOWN


def _open_regular(path: str) -> BinaryIO:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _lines_after(stream: gzip.GzipFile, offset: int) -> int:
    """Newline-ended lines of ``stream`` from byte ``offset`` on; UNKNOWN if it is shorter
    than ``offset``, larger than MAX_SCAN_BYTES or damaged."""
    position = lines = 0
    try:
        while chunk := stream.read(_CHUNK):
            start = max(0, offset - position)
            position += len(chunk)
            if position > MAX_SCAN_BYTES:
                return UNKNOWN
            if start < len(chunk):
                lines += chunk.count(b"\n", start)
    except _READ_ERRORS:
        return UNKNOWN
    return lines if position >= offset else UNKNOWN
