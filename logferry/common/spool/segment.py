"""On-disk format of the spool: frames, segment files, the committed-position file.

A segment is an append-only file named after the sequence number of its first record
(``00000000000000000042.seg``). It holds frames, one per ``append`` call::

    frame   = header payload
    header  = magic "LFS1" | payload_len u32 | count u32 | first_seq u64 | time_ms u64 | crc u32
    payload = (record_len u32 | record bytes) * count          (all integers little-endian)

``crc`` is ``crc32(header fields, crc32(payload))`` (zlib's CRC-32): over the payload, then
the four header fields after the magic, so a payload CRC can be computed when the batch is
queued and the header (sequence number, time) completed when it is written.

A frame is valid only when its magic, length, CRC and record framing all agree, so a torn
write or a flipped bit is always detected; :func:`scan_frames` resyncs after damage by
searching for the next magic that starts a valid frame.

Everything here is synchronous and blocking: the spool runs it in worker threads.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from logferry.common.deflate import crc32

MAGIC = b"LFS1"
_FIELDS = struct.Struct("<IIQQ")  # payload_len, count, first_seq, time_ms
_CRC = struct.Struct("<I")
_LEN = struct.Struct("<I")
HEADER_SIZE = len(MAGIC) + _FIELDS.size + _CRC.size  # 32
RECORD_OVERHEAD = _LEN.size
MAX_PAYLOAD = 2**32 - 1

SEGMENT_SUFFIX = ".seg"
_SEGMENT_RE = re.compile(r"^(\d{20})\.seg\Z")

_COMMIT_MAGIC = b"LFC1"
_COMMIT = struct.Struct("<4sQI")  # magic, low-water mark, crc32 of the mark


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """A decoded frame header. ``end`` is the byte offset just past the frame."""

    offset: int
    payload_len: int
    count: int
    first_seq: int
    time_ms: int

    @property
    def size(self) -> int:
        """Total frame size in bytes, header included."""
        return HEADER_SIZE + self.payload_len

    @property
    def end(self) -> int:
        """Byte offset just past this frame."""
        return self.offset + self.size

    @property
    def end_seq(self) -> int:
        """Sequence number just past this frame's last record."""
        return self.first_seq + self.count


def encode_payload(records: Sequence[bytes]) -> bytes:
    """Length-prefix and concatenate ``records`` (one join, no per-record I/O)."""
    parts: list[bytes] = []
    pack = _LEN.pack
    for record in records:
        parts.append(pack(len(record)))
        parts.append(record)
    return b"".join(parts)


def encode_header(
    payload_len: int, count: int, first_seq: int, time_ms: int, payload_crc: int
) -> bytes:
    """The 32-byte header of a frame whose payload CRC32 is ``payload_crc``."""
    fields = _FIELDS.pack(payload_len, count, first_seq, time_ms)
    return MAGIC + fields + _CRC.pack(crc32(fields, payload_crc))


def decode_records(payload: bytes | memoryview, count: int) -> list[bytes] | None:
    """Split a payload into its ``count`` records, or None if the framing does not add up."""
    view = memoryview(payload)
    records: list[bytes] = []
    pos, end = 0, len(view)
    unpack = _LEN.unpack_from
    for _ in range(count):
        if pos + RECORD_OVERHEAD > end:
            return None
        (length,) = unpack(view, pos)
        pos += RECORD_OVERHEAD
        if pos + length > end:
            return None
        records.append(bytes(view[pos : pos + length]))
        pos += length
    return records if pos == end else None


def frame_size_at(data: bytes | memoryview, pos: int) -> int | None:
    """Size the header at ``data[pos]`` claims for its frame, or None if no header is there."""
    if pos + HEADER_SIZE > len(data) or bytes(data[pos : pos + 4]) != MAGIC:
        return None
    (payload_len,) = _LEN.unpack_from(data, pos + 4)
    return HEADER_SIZE + int(payload_len)


def read_frame(
    data: bytes | memoryview, pos: int, base: int = 0
) -> tuple[FrameHeader, list[bytes]] | None:
    """The frame starting at ``data[pos]`` and its records if complete and valid, else None.

    ``base`` is the file offset of ``data[0]`` (reported in the header's ``offset``).
    """
    if pos + HEADER_SIZE > len(data) or bytes(data[pos : pos + 4]) != MAGIC:
        return None
    fields = bytes(data[pos + 4 : pos + 4 + _FIELDS.size])
    payload_len, count, first_seq, time_ms = _FIELDS.unpack(fields)
    (crc,) = _CRC.unpack_from(data, pos + 4 + _FIELDS.size)
    start = pos + HEADER_SIZE
    if count == 0 or start + payload_len > len(data):
        return None
    payload = memoryview(data)[start : start + payload_len]
    if crc32(fields, crc32(payload)) != crc:
        return None
    records = decode_records(payload, count)
    if records is None:
        return None
    return FrameHeader(base + pos, payload_len, count, first_seq, time_ms), records


def parse_frame(data: bytes | memoryview, pos: int) -> FrameHeader | None:
    """The header of the valid, complete frame at ``data[pos]``, else None."""
    found = read_frame(data, pos)
    return found[0] if found is not None else None


@dataclass(frozen=True, slots=True)
class DamagedRange:
    """Bytes ``[offset, offset + length)`` of a segment that hold no valid frame."""

    offset: int
    length: int


def scan_frames(data: bytes, min_seq: int) -> Iterator[FrameHeader | DamagedRange]:
    """Yield the valid frames and damaged ranges of a whole segment's bytes, in file order.

    After damage, scanning resyncs at the next magic that starts a valid frame whose
    sequence number is not below the last good one (so one flipped bit loses one frame,
    and a frame-shaped record inside a payload cannot be mistaken for a newer frame).
    """
    pos, next_seq = 0, min_seq
    while pos < len(data):
        header = parse_frame(data, pos)
        if header is not None and header.first_seq >= next_seq:
            next_seq = header.end_seq
            pos = header.end
            yield header
            continue
        resume = _resync(data, pos + 1, next_seq)
        yield DamagedRange(pos, resume - pos)
        pos = resume


def _resync(data: bytes, start: int, min_seq: int) -> int:
    """Offset of the next valid frame at or after ``start`` (``len(data)`` if none)."""
    pos = data.find(MAGIC, start)
    while pos != -1:
        header = parse_frame(data, pos)
        if header is not None and header.first_seq >= min_seq:
            return pos
        pos = data.find(MAGIC, pos + 1)
    return len(data)


def segment_name(first_seq: int) -> str:
    """File name of the segment whose first record has sequence number ``first_seq``."""
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The first sequence number encoded in a segment file name, or None if not a segment."""
    match = _SEGMENT_RE.match(name)
    return int(match.group(1)) if match else None


def encode_commit(low_water: int) -> bytes:
    """Contents of the committed-position file for ``low_water``."""
    return _COMMIT.pack(_COMMIT_MAGIC, low_water, crc32(struct.pack("<Q", low_water)))


def decode_commit(data: bytes) -> int | None:
    """The low-water mark in a committed-position file, or None if it is damaged."""
    if len(data) != _COMMIT.size:
        return None
    magic, low_water, crc = _COMMIT.unpack(data)
    if magic != _COMMIT_MAGIC or crc32(struct.pack("<Q", low_water)) != crc:
        return None
    return int(low_water)


@dataclass(eq=False, slots=True)
class Segment:
    """A segment file in memory: ``size`` durable bytes holding ``[first_seq, end_seq)``.

    Only the newest segment grows; ``size`` moves only after an fsync, so a reader that
    stays below it never sees bytes that are not durable.
    """

    first_seq: int
    size: int
    end_seq: int
    path: str


def frame_time_at(data: bytes | memoryview, pos: int) -> int | None:
    """The append time in the header at ``data[pos]`` (unverified), or None if none is there."""
    if pos + HEADER_SIZE > len(data) or bytes(data[pos : pos + 4]) != MAGIC:
        return None
    return int(_FIELDS.unpack_from(data, pos + 4)[3])
