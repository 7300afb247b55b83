"""Group commit for the spool: one writer task, one write and one fdatasync per group.

Appends queue a frame (payload and its CRC ready) and wait on a future. The writer takes
every queued frame that fits in the active segment, numbers them, writes them with one
``pwrite`` and runs ``fdatasync`` in a worker thread while new appends queue for the next
group; the futures resolve only after the fsync returned (ack means durable). A failed
write or fsync is truncated away and fails exactly the appends of its group; their
sequence numbers are reused, so the numbers of durable records stay contiguous.

A full volume (ENOSPC, EDQUOT) fails nothing: the partial group is truncated away as after
any failure, but its appends go back to the head of the queue and the writer *stalls*:
it retries with backoff (sooner when the spool frees a segment) until the write fits, so an
append simply returns later and the stage before the spool waits. An append whose caller
gives up while it waits in the queue is withdrawn, never written behind the caller's back.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

from logferry.common.disk_full import is_disk_full, stall_delay
from logferry.common.errors import SpoolClosedError, SpoolError
from logferry.common.events import first_set
from logferry.common.files import FILE_MODE, fsync_dir, write_all
from logferry.common.logs import get_logger
from logferry.common.spool.segment import HEADER_SIZE, Segment, encode_header, segment_name

log = get_logger(__name__)


@dataclass(slots=True, eq=False)
class PendingAppend:
    """An append waiting for the writer: payload ready, header completed at write time."""

    payload: bytes
    payload_crc: int
    count: int
    time_ms: int
    future: asyncio.Future[int]

    @property
    def size(self) -> int:
        """Frame size on disk."""
        return HEADER_SIZE + len(self.payload)


# Called with (records, append time of the first frame, bytes) once a group is durable.
OnDurable = Callable[[int, int, int], None]
# Called with the bytes of a failed or withdrawn group, and with a segment dropped from the list.
OnFailed = Callable[[int], None]
OnDropped = Callable[[Segment], None]
# Called with the error when a write finds the volume full, and with None when one succeeds.
OnSpace = Callable[[OSError | None], None]


class GroupWriter:
    """Owns the active segment file and the queue of appends; run :meth:`run` as a task."""

    def __init__(
        self,
        directory: str,
        segments: list[Segment],
        next_seq: int,
        segment_max_bytes: int,
        *,
        on_durable: OnDurable,
        on_failed: OnFailed,
        on_dropped: OnDropped,
        on_space: OnSpace | None = None,
    ) -> None:
        self._dir = directory
        self._segments = segments  # shared with the spool; the writer appends new segments
        self.next_seq = next_seq
        self._segment_max_bytes = segment_max_bytes
        self._on_durable = on_durable
        self._on_failed = on_failed
        self._on_dropped = on_dropped
        self._on_space = on_space
        self.pending: list[PendingAppend] = []
        self.active: Segment | None = None  # started lazily on the first write after open
        self._fd: int | None = None
        self.writing = False
        self.fsyncs = 0
        self.stall_attempts = 0
        """Failed attempts of the current stall (0: not stalled)."""
        self._wake = asyncio.Event()
        self._space_freed = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._stopping = False

    @property
    def stalled(self) -> bool:
        """The last write found the volume full; the writer is waiting to retry."""
        return self.stall_attempts > 0

    def submit(self, item: PendingAppend) -> None:
        """Queue a frame for the next group."""
        self.pending.append(item)
        self._wake.set()

    def withdraw(self, item: PendingAppend) -> bool:
        """Take a queued frame back (its caller gave up); False if it is being written now
        (it may then become durable: the caller must treat it as maybe written)."""
        try:
            self.pending.remove(item)
        except ValueError:
            return False
        return True

    def space_freed(self) -> None:
        """The spool deleted segments: a stalled write is worth retrying now."""
        self._space_freed.set()

    def stop(self) -> None:
        """Ask :meth:`run` to return once the queue is drained (or at once when stalled:
        what waits for space is failed with SpoolClosedError, nothing of it kept)."""
        self._stopping = True
        self._wake.set()
        self._stop_event.set()

    async def run(self) -> None:
        """The writer task: write groups until stopped and drained."""
        while True:
            while self.pending:
                if await self._write_group():
                    continue
                if not await self._wait_to_retry():
                    self.fail_pending(SpoolClosedError("spool closed while waiting for disk space"))
                    return
            if self._stopping:
                return
            self._wake.clear()
            await self._wake.wait()

    def fail_pending(self, exc: SpoolError) -> None:
        """Fail every queued append (the writer died, or the spool closed during a stall)."""
        for item in self.pending:
            set_exception(item.future, exc)
        self.pending.clear()

    async def _wait_to_retry(self) -> bool:
        """Back off after a write found the volume full; False if the spool is stopping."""
        if self._stopping:
            return False
        delay = stall_delay(self.stall_attempts)
        woken = await first_set((self._stop_event, self._space_freed), delay)
        return woken is not self._stop_event

    async def _write_group(self) -> bool:
        """Write as many queued frames as fit in the active segment, then fsync once.

        False when the volume was full: the group is back in the queue for a retry.
        """
        self.writing = True
        self._space_freed.clear()  # a segment freed from now on is worth a retry
        try:
            if self._needs_new_segment(self.pending[0].size):
                self.seal()
            group = self._take_group()
            try:
                if self.active is None:
                    await self._create_segment()
                await self._write_and_sync(group)
            except OSError as exc:
                if is_disk_full(exc):
                    self._requeue(group, exc)
                    return False
                self._group_failed(group, exc)
            else:
                if self.stall_attempts:
                    self.stall_attempts = 0
                    if self._on_space is not None:
                        self._on_space(None)
            return True
        finally:
            self.writing = False

    def _needs_new_segment(self, first_size: int) -> bool:
        active = self.active
        if active is None:
            return True
        return active.size > 0 and active.size + first_size > self._segment_max_bytes

    def _take_group(self) -> list[PendingAppend]:
        """The queued frames that fit in the active segment (at least one: a frame larger
        than a segment gets a segment of its own)."""
        used = self.active.size if self.active is not None else 0
        count, total = 0, 0
        for item in self.pending:
            if count and used + total + item.size > self._segment_max_bytes:
                break
            count, total = count + 1, total + item.size
        group = self.pending[:count]
        del self.pending[:count]
        return group

    async def _create_segment(self) -> None:
        path = os.path.join(self._dir, segment_name(self.next_seq))
        self._fd = await asyncio.to_thread(_create_file, path, self._dir)
        self.fsyncs += 1
        self.active = Segment(self.next_seq, 0, self.next_seq, path)
        self._segments.append(self.active)

    async def _write_and_sync(self, group: list[PendingAppend]) -> None:
        active, fd = self.active, self._fd
        assert active is not None
        assert fd is not None
        seq, parts, firsts = self.next_seq, list[bytes](), list[int]()
        for item in group:
            parts += (
                encode_header(len(item.payload), item.count, seq, item.time_ms, item.payload_crc),
                item.payload,
            )
            firsts.append(seq)
            seq += item.count
        data = b"".join(parts)
        await asyncio.to_thread(_write_sync_or_truncate, fd, data, active.size)
        self.fsyncs += 1
        active.size += len(data)
        active.end_seq = seq
        self._on_durable(seq - self.next_seq, group[0].time_ms, len(data))
        self.next_seq = seq
        for item, first in zip(group, firsts, strict=True):
            if not item.future.done():  # a cancelled caller: the data is durable anyway
                item.future.set_result(first)
        if active.size >= self._segment_max_bytes:
            self.seal()

    def _requeue(self, group: list[PendingAppend], exc: OSError) -> None:
        """The volume is full: nothing of the group was kept; it goes back to the head of the
        queue (callers that gave up meanwhile are dropped) and the writer stalls."""
        if isinstance(exc, _TruncateFailedError):
            self.seal()  # the file's tail is unknown: retry in a new segment
        keep = [item for item in group if not item.future.done()]
        dropped = sum(item.size for item in group if item.future.done())
        if dropped:
            self._on_failed(dropped)
        self.pending[:0] = keep
        self.stall_attempts += 1
        if self._on_space is not None:
            self._on_space(exc)
        log.debug(
            "spool.write_stalled",
            directory=self._dir,
            attempt=self.stall_attempts,
            appends=len(keep),
            retry_in_s=stall_delay(self.stall_attempts),
        )

    def _group_failed(self, group: list[PendingAppend], exc: OSError) -> None:
        """Nothing of the group is acked; its sequence numbers are reused by the next write."""
        log.error("spool.write_failed", directory=self._dir, error=repr(exc), appends=len(group))
        for item in group:
            set_exception(item.future, SpoolError(f"spool write failed: {exc}"), cause=exc)
        if isinstance(exc, _TruncateFailedError):
            # The file tail is unknown: stop writing there; recovery quarantines the tail.
            self.seal()
        self._on_failed(sum(item.size for item in group))

    def seal(self) -> None:
        """Stop appending to the active segment; the next write starts a new one."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        active, self.active = self.active, None
        if active is not None and active.size == 0:
            # An empty file (its first write failed) is recreated, truncated, when its name
            # is reused: it must leave the list, or deleting it later would delete the new one.
            self._segments.remove(active)
            self._on_dropped(active)


class _TruncateFailedError(OSError):
    """A write failed and truncating its partial bytes away failed too."""


def _write_sync_or_truncate(fd: int, data: bytes, offset: int) -> None:
    """pwrite + fdatasync; on failure cut the file back to ``offset`` (never keep a torn tail).

    After a failed fdatasync the page cache may already have dropped the dirty pages (and
    forgotten the error): cutting them away and writing the whole group again is the only
    way to know what is on disk.
    """
    try:
        write_all(fd, data, offset)
        os.fdatasync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, offset)
        except OSError as trunc_exc:
            raise _TruncateFailedError(exc.errno, f"{exc}; truncate: {trunc_exc}") from exc
        raise


def _create_file(path: str, directory: str) -> int:
    """Create (or reset) a segment file and make its directory entry durable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        fsync_dir(directory)
    except OSError:
        os.close(fd)
        raise
    return fd


def set_exception(
    future: asyncio.Future[int] | asyncio.Future[None],
    exc: SpoolError,
    cause: BaseException | None = None,
) -> None:
    """Fail ``future`` with ``exc`` unless it is already done (cancelled callers)."""
    if cause is not None:
        exc.__cause__ = cause
    if not future.done():
        future.set_exception(exc)
