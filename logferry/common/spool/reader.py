"""The consumer side of the spool: a cursor over the segment files, and commit tracking.

Reads go to disk (through the page cache) in buffered chunks of whole frames, so memory is
one read buffer, never the backlog (guarantee 6). The reader stops at each segment's
durable size, which the writer moves only after an fsync: it never returns a record that
is not durable.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from logferry.common.errors import SpoolCorruptError, SpoolError
from logferry.common.spool.segment import (
    HEADER_SIZE,
    RECORD_OVERHEAD,
    FrameHeader,
    Segment,
    frame_size_at,
    frame_time_at,
    read_frame,
)

_READ_CHUNK = 256 * 1024


class SegmentReader:
    """The consumer cursor over the segment list: whole frames read from disk, in order.

    Memory is one read buffer (bounded by the request), never the backlog. The cursor is
    (segment, byte offset of the next frame, sequence number of the next record), so a
    batch may end inside a frame and the next one resumes there.
    """

    def __init__(
        self,
        segments: list[Segment],
        read_offset: int,
        next_seq: int,
        unread_records: int,
        unread_oldest_ms: int | None,
    ) -> None:
        self._segments = segments  # shared with the spool, which appends and deletes
        self.segment: Segment | None = segments[0] if segments else None
        self._offset = read_offset if segments else 0
        self._fd: int | None = None
        # Read-ahead: the last buffer read and the file offset it starts at (one buffer, so
        # memory stays bounded); consecutive small batches are cut from it without a syscall.
        self._buf: bytes = b""
        self._buf_offset = 0
        self.next_seq = next_seq
        self.unread_records = unread_records
        self._oldest_ms = unread_oldest_ms
        self._oldest_stale = False  # recomputed on demand (a metrics scrape), not per read
        self.corrupt_reads = 0

    def appended(self, count: int, time_ms: int) -> None:
        """Account for ``count`` records made durable by the writer."""
        if self.unread_records == 0:
            self._oldest_ms, self._oldest_stale = time_ms, False
        self.unread_records += count

    @property
    def unread_oldest_ms(self) -> int | None:
        """Append time of the oldest unread record (None when everything was read)."""
        if not self.unread_records:
            return None
        if self._oldest_stale:
            self._oldest_ms, self._oldest_stale = self._next_frame_time(), False
        return self._oldest_ms

    def forget(self, segment: Segment) -> None:
        """``segment`` leaves the list (deleted or empty): never read it again."""
        if self.segment is segment:
            self.close()
            self.segment, self._offset = None, 0

    def close(self) -> None:
        """Close the file descriptor of the current segment."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._buf, self._buf_offset = b"", 0

    async def read(
        self,
        max_records: int,
        max_bytes: int,
        weigh: Callable[[bytes], int] | None = None,
        size: Callable[[bytes], int] | None = None,
    ) -> tuple[int, list[bytes], int] | None:
        """The next records as (first_seq, records, append_time_ms); None if none is durable.

        ``weigh`` makes ``max_records`` a limit on the sum of the records' weights, ``size``
        makes ``max_bytes`` one on the sum of their sizes (see :meth:`Spool.read`).
        Raises :class:`SpoolCorruptError` for a frame damaged on disk since open.
        """
        batch = _BatchBuilder(max_records, max_bytes, weigh, size)
        while not batch.records and self._position() is not None:
            await self._read_into(batch)
        if not batch.records:
            return None
        # No await from here on: a cancelled read must not lose a consumed batch.
        self.unread_records -= len(batch.records)
        self._oldest_stale = True
        return batch.first_seq, batch.records, batch.time_ms

    async def _read_into(self, batch: _BatchBuilder) -> None:
        """Fill ``batch`` from one buffered read at the cursor, then move the cursor."""
        segment = self._position()
        assert segment is not None
        base = self._offset
        avail = segment.size - base
        if batch.weigh is None and batch.size is None:
            budget = batch.max_bytes + batch.max_records * RECORD_OVERHEAD + HEADER_SIZE
        else:
            budget = _READ_CHUNK  # record sizes on disk are not what the limits count

        data = self._cached(base)
        if data is None:
            data = memoryview(await self._pread(min(avail, max(_READ_CHUNK, budget)), base))
        pos = 0
        while pos < len(data) and not batch.full:
            if pos > 0 and pos + HEADER_SIZE > len(data) and pos + HEADER_SIZE <= avail:
                break  # the buffer ends inside the next header: the next call reads it whole
            size = frame_size_at(data, pos)
            if size is None or pos + size > avail:
                raise self._corrupt(segment, base + pos)
            if pos + size > len(data):
                if pos > 0:
                    break  # the rest of this frame is read by the next call
                data = memoryview(await self._pread(size, base))  # a frame over the buffer
                if len(data) < size:
                    raise self._corrupt(segment, base)
                continue
            found = read_frame(data, pos, base)
            if found is None:
                raise self._corrupt(segment, base + pos)
            header, records = found
            if header.first_seq > self.next_seq:  # a gap left by quarantined frames
                if batch.records:
                    break  # a batch is a contiguous range
                self.next_seq = header.first_seq
            self.next_seq += batch.take(records, self.next_seq - header.first_seq, header)
            if self.next_seq < header.end_seq:
                break  # batch full inside this frame: resume in it
            pos += size
        self._offset = base + pos

    def _position(self) -> Segment | None:
        """The segment holding the next unread byte, or None if everything durable is read."""
        if self.segment is None:
            if not self._segments:
                return None
            self.segment, self._offset = self._segments[0], 0
        while self._offset >= self.segment.size:
            index = self._segments.index(self.segment)
            if index + 1 >= len(self._segments):
                return None  # the newest segment: more may come
            self.close()
            self.segment, self._offset = self._segments[index + 1], 0
        return self.segment

    async def _pread(self, size: int, offset: int) -> bytes:
        data = await asyncio.to_thread(os.pread, self._open_fd(), size, offset)
        self._buf, self._buf_offset = data, offset
        return data

    def _cached(self, offset: int) -> memoryview | None:
        """The read-ahead from ``offset`` on, if it holds at least one whole frame."""
        start = offset - self._buf_offset
        if start < 0 or start >= len(self._buf):
            return None
        view = memoryview(self._buf)[start:]
        size = frame_size_at(view, 0)
        return view if size is not None and size <= len(view) else None

    def _open_fd(self) -> int:
        assert self.segment is not None
        if self._fd is None:
            self._fd = os.open(self.segment.path, os.O_RDONLY | os.O_CLOEXEC)
        return self._fd

    def _next_frame_time(self) -> int | None:
        """Append time of the frame holding the next unread record.

        From the read-ahead, else one 32-byte pread of a header just written (page cache):
        synchronous, and only when the metric is asked for.
        """
        if self._position() is None:
            return None
        cached = self._cached(self._offset)
        if cached is not None:
            return frame_time_at(cached, 0)
        return frame_time_at(os.pread(self._open_fd(), HEADER_SIZE, self._offset), 0)

    def _corrupt(self, segment: Segment, offset: int) -> SpoolCorruptError:
        self.corrupt_reads += 1
        name = os.path.basename(segment.path)
        return SpoolCorruptError(
            f"damaged frame in spool segment {name} at offset {offset}; "
            "reopening the spool quarantines it"
        )


class _BatchBuilder:
    """Collects records for one batch within its record (or weight) and byte limits."""

    def __init__(
        self,
        max_records: int,
        max_bytes: int,
        weigh: Callable[[bytes], int] | None = None,
        size: Callable[[bytes], int] | None = None,
    ) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.weigh = weigh
        self.size = size
        self.records: list[bytes] = []
        self.nbytes = 0
        self.weight = 0
        self.first_seq = 0
        self.time_ms = 0
        self.full = False

    def take(self, records: list[bytes], skip: int, header: FrameHeader) -> int:
        """Append ``records[skip:]`` while within limits; return how many were taken.

        A batch always takes its first record, even one larger than the limits.
        """
        taken = 0
        weigh, size = self.weigh, self.size
        for record in records[skip:]:
            weight = 1 if weigh is None else weigh(record)
            nbytes = len(record) if size is None else size(record)
            if self.records and (
                self.weight + weight > self.max_records or self.nbytes + nbytes > self.max_bytes
            ):
                self.full = True
                break
            if not self.records:
                self.first_seq, self.time_ms = header.first_seq + skip, header.time_ms
            self.records.append(record)
            self.nbytes += nbytes
            self.weight += weight
            taken += 1
        self.full = self.full or self.weight >= self.max_records
        return taken


@dataclass(slots=True)
class _InFlight:
    end_seq: int
    count: int
    time_ms: int
    committed: bool = False


class CommitTracker:
    """Batches handed out and not yet committed, in read order.

    Commits may arrive in any order; committed batches leave from the head only, so the
    head is always the oldest uncommitted batch and the low-water mark is its first record
    (or the read cursor when nothing is outstanding). Memory is bounded by the consumer's
    in-flight batches, not by the backlog.
    """

    def __init__(self) -> None:
        self._batches: OrderedDict[int, _InFlight] = OrderedDict()
        self.records = 0  # read and not yet committed

    def add(self, first_seq: int, count: int, time_ms: int) -> None:
        """Track a batch just handed out."""
        self._batches[first_seq] = _InFlight(first_seq + count, count, time_ms)
        self.records += count

    def commit(self, first_seq: int, end_seq: int) -> None:
        """Mark ``[first_seq, end_seq)`` delivered; a no-op if already committed."""
        entry = self._batches.get(first_seq)
        if entry is None or entry.committed:
            return
        if entry.end_seq != end_seq:
            raise SpoolError(f"batch [{first_seq}, {end_seq}) does not match a read batch")
        entry.committed = True
        self.records -= entry.count
        while self._batches and next(iter(self._batches.values())).committed:
            self._batches.popitem(last=False)

    def head(self) -> int | None:
        """First sequence number of the oldest uncommitted batch."""
        return next(iter(self._batches)) if self._batches else None

    def oldest_time_ms(self) -> int | None:
        """Append time of the oldest uncommitted record handed out."""
        return next(iter(self._batches.values())).time_ms if self._batches else None
