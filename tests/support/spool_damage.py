"""A node spool on disk, for tests that look inside it or damage it: its segment files, the
frames and records they hold, and a byte flipped in place."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from logferry.common.protocol import decode_entries
from logferry.common.spool.segment import parse_segment_name, read_frame
from logferry.forwarder.entries import block_stream


def segments(spool_dir: Path) -> list[Path]:
    """The spool's segment files, oldest first."""
    named = [(parse_segment_name(p.name), p) for p in spool_dir.iterdir()]
    return [p for seq, p in sorted((s, p) for s, p in named if s is not None)]


def frames(segment: Path) -> list[tuple[int, int, list[bytes]]]:
    """(offset, size, records) of every valid frame of a segment, in order."""
    data = segment.read_bytes()
    out = []
    pos = 0
    while pos < len(data):
        found = read_frame(data, pos)
        if found is None:
            break
        header, records = found
        out.append((pos, header.size, records))
        pos += header.size
    return out


def forwarder_records(blocks: list[bytes]) -> Counter[str]:
    """How many records of each source the forwarder spool blocks hold (its checkpoint
    records are not log records)."""
    held: Counter[str] = Counter()
    for block in blocks:
        for _time, record in decode_entries(block_stream(block)):
            if "kind" not in record["_lf"]:
                held[record["_lf"]["src"]] += 1
    return held


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte in place (a bit flip's worth of damage the CRC must catch)."""
    fd = os.open(path, os.O_RDWR)
    try:
        (byte,) = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte ^ 0xFF]), offset)
        os.fsync(fd)
    finally:
        os.close(fd)
