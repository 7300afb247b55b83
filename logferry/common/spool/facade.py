"""The durable spool: an on-disk FIFO of opaque records that both daemons buffer through.

Producers ``append`` batches and get control back only once the batch is durable (written
and fdatasync'ed; group commit shares one fsync between concurrent appends). A consumer
``read``s batches in order through a cursor and ``commit``s them when delivered, in any
order; a low-water mark (every record below it committed) is persisted atomically in the
background, and segments wholly below the persisted mark are deleted. After a restart,
reading resumes at the persisted mark: records committed out of order above it are read
again (resends are harmless: the store deduplicates by record id).

Invariants:

- ack means durable: an append's future resolves only after its fdatasync (and, for a new
  segment, the directory fsync) returned; a failed write is truncated away and never acked;
- sequence numbers are contiguous over durable records: they are assigned by the single
  writer task when a group is written, and reused if that write fails;
- the reader never returns a byte past the last fsync, and reads from disk, so memory does
  not grow with backlog (guarantee 6); a full spool pauses producers instead of dropping;
- a segment is deleted only when the *persisted* mark covers it, so a crash can only resend;
- a full volume (ENOSPC, EDQUOT) crashes and loses nothing: appends wait (the writer retries,
  :mod:`.spool_writer`), the mark is written in place when no tmp file fits, and a fully
  committed active segment is sealed so that deleting it makes room (:mod:`.spool_space`).

On-disk format: :mod:`logferry.common.spool.segment`; recovery: :mod:`.spool_recovery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field

from logferry.common.deflate import crc32
from logferry.common.disk_full import (
    DEFAULT_STALLS,
    DiskStalls,
    check_volume,
    is_disk_full,
    stall_delay,
    until_room,
    volume_of,
)
from logferry.common.errors import SpoolClosedError, SpoolError, SpoolFullError
from logferry.common.events import first_set
from logferry.common.files import (
    FILE_MODE,
    make_private_dirs,
    overwrite_in_place,
    write_file_atomic,
)
from logferry.common.logs import get_logger
from logferry.common.spool.reader import CommitTracker, SegmentReader
from logferry.common.spool.recovery import COMMIT_FILE, QuarantineEvent, RecoveryResult, recover
from logferry.common.spool.segment import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    Segment,
    encode_commit,
    encode_payload,
    segment_name,
)
from logferry.common.spool.writer import GroupWriter, PendingAppend, set_exception
from logferry.common.units import MiB

__all__ = ["QuarantineEvent", "Spool", "SpoolBatch"]

log = get_logger(__name__)

LOCK_FILE = "lock"
_DEFAULT_SEGMENT_MAX_BYTES = 64 * MiB


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """Records read from the spool, in order, to be committed once delivered.

    ``first_seq`` is the sequence number of ``records[0]``; the batch covers
    ``[first_seq, end_seq)``. ``append_time_ms`` is the append time of its oldest record.
    """

    first_seq: int
    records: list[bytes]
    append_time_ms: int
    owner: object = field(repr=False, compare=False)

    @property
    def end_seq(self) -> int:
        """Sequence number just past the last record of the batch."""
        return self.first_seq + len(self.records)


class Spool:
    """A directory-based durable FIFO of ``bytes`` records. Open with :meth:`Spool.open`."""

    def __init__(
        self,
        directory: str,
        lock_fd: int,
        recovered: RecoveryResult,
        *,
        max_bytes: int,
        segment_max_bytes: int,
        commit_flush_interval_s: float,
        stalls: DiskStalls | None = None,
    ) -> None:
        self._dir = directory
        self._stalls = stalls if stalls is not None else DEFAULT_STALLS
        self._volume = volume_of(directory)
        self._mark_stall_attempts = 0
        self.volume_bytes: int | None = None
        """Size of the filesystem holding the spool (None if unknown)."""
        self._lock_fd = lock_fd
        self._max_bytes = max_bytes
        self._segment_max_bytes = segment_max_bytes
        self._flush_interval_s = commit_flush_interval_s
        self._segments = [
            Segment(
                s.first_seq, s.size, s.end_seq, os.path.join(directory, segment_name(s.first_seq))
            )
            for s in recovered.segments
        ]
        self._bytes_used = sum(s.size for s in self._segments)
        self._reserved = 0  # bytes of queued appends, counted against the cap
        self._space_waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._reader = SegmentReader(
            self._segments,
            recovered.read_offset,
            recovered.low_water,
            recovered.unread_records,
            recovered.unread_oldest_ms,
        )
        self._writer = GroupWriter(
            directory,
            self._segments,
            recovered.next_seq,
            segment_max_bytes,
            on_durable=self._on_durable,
            on_failed=self._on_write_failed,
            on_dropped=self._reader.forget,
            on_space=self._on_space,
        )
        self._read_lock = asyncio.Lock()
        self._data_ready = asyncio.Event()
        self._inflight = CommitTracker()
        self._low_water = recovered.low_water
        self._persisted_low_water = -1  # forces the first persist on open
        self._lwm_dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._closing = False
        self._closed = False
        self._last_commit = time.monotonic()
        self._closed_event = asyncio.Event()
        self._failure: BaseException | None = None
        self._events = list(recovered.events)
        self._quarantined_frames = recovered.quarantined_frames
        self._quarantined_bytes = recovered.quarantined_bytes
        self._commit_file_resets = int(recovered.commit_file_damaged)
        self._tasks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    async def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        segment_max_bytes: int | None = None,
        commit_flush_interval_s: float = 0.1,
        stalls: DiskStalls | None = None,
    ) -> Spool:
        """Open (creating if needed) the spool in ``directory`` and recover it.

        ``max_bytes`` caps the segment bytes on disk; ``segment_max_bytes`` (default
        ``min(64 MiB, max_bytes // 8)``) is the size at which a new segment file starts,
        and the granularity at which space is freed. The committed low-water mark is
        persisted at most every ``commit_flush_interval_s``. ``stalls`` reports writes
        paused by a full volume (pass the daemon's, built on its metrics registry). Raises
        :class:`SpoolError` if another process (or spool) holds the directory.
        """
        default_seg = min(_DEFAULT_SEGMENT_MAX_BYTES, max(4096, max_bytes // 8), max_bytes)
        seg_max = segment_max_bytes or default_seg
        if max_bytes <= 0 or seg_max <= 0 or seg_max > max_bytes:
            raise ValueError(f"need 0 < segment_max_bytes ({seg_max}) <= max_bytes ({max_bytes})")
        if commit_flush_interval_s <= 0:
            raise ValueError("commit_flush_interval_s must be > 0")
        path = os.fspath(directory)
        # On a full volume a new spool's folder, or recovery's rewrite of a damaged segment,
        # may find no room: opening waits for it like any other write.
        waits = stalls if stalls is not None else DEFAULT_STALLS
        lock_fd = await until_room(waits, path, "create", _lock_directory)
        try:
            recovered = await until_room(waits, path, "recovery", recover)
            spool = cls(
                path,
                lock_fd,
                recovered,
                max_bytes=max_bytes,
                segment_max_bytes=seg_max,
                commit_flush_interval_s=commit_flush_interval_s,
                stalls=stalls,
            )
            spool._log_recovery(recovered)
            spool.volume_bytes = await asyncio.to_thread(
                check_volume, path, segment_max_bytes=seg_max, max_bytes=max_bytes
            )
            if not await spool._persist_and_cleanup():
                spool._lwm_dirty.set()  # the volume is full: the flusher retries
        except BaseException as exc:
            os.close(lock_fd)
            if isinstance(exc, OSError):
                raise SpoolError(f"spool {path}: cannot open: {exc}") from exc
            raise
        spool._start_task(spool._writer.run())
        spool._start_task(spool._flusher_loop())
        return spool

    async def close(self) -> None:
        """Finish queued appends, persist the low-water mark, close files. Safe to call twice.

        Appends still waiting for space and readers waiting for data get SpoolClosedError.
        """
        if self._closing:
            await self._closed_event.wait()
            return
        self._closing = True
        self._fail_space_waiters(SpoolClosedError("spool closed while waiting for space"))
        self._data_ready.set()  # waiting readers wake up and see the spool closing
        self._writer.stop()
        self._stop.set()
        self._lwm_dirty.set()
        if self._tasks:
            await asyncio.wait(self._tasks)
        async with self._read_lock:
            self._reader.close()
        try:
            self._update_low_water()
            if not await self._persist_and_cleanup():
                log.info("spool.mark_kept", directory=self._dir, reason="volume full")
        except OSError as exc:  # the old mark stays: a restart resends, never loses
            raise SpoolError(f"spool {self._dir}: cannot persist the mark: {exc}") from exc
        finally:
            self._stalls.clear("spool", self._dir, volume=self._volume)
            self._writer.seal()
            self._closed = True
            os.close(self._lock_fd)  # releases the flock
            self._closed_event.set()

    def _start_task(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A background task that dies takes the spool down loudly, never silently."""
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        self._failure = task.exception()
        log.error("spool.task_failed", directory=self._dir, error=repr(self._failure))
        self._fail_space_waiters(SpoolError("spool background task failed"))
        self._writer.fail_pending(SpoolError("spool background task failed"))
        self._data_ready.set()

    def _check_open(self) -> None:
        if self._closing:
            raise SpoolClosedError(f"spool {self._dir} is closed")
        if self._failure is not None:
            raise SpoolError(f"spool {self._dir} failed: {self._failure!r}") from self._failure

    # ------------------------------------------------------------------ appending

    async def append(self, records: Sequence[bytes], *, block: bool = True) -> int:
        """Append ``records`` as one frame; return the first one's sequence number once durable.

        When the spool is full, waits for commits to free space (``block=True``) or raises
        :class:`SpoolFullError`. A batch that could never fit raises :class:`SpoolError`.
        If the write or fsync fails, raises :class:`SpoolError`; nothing of it was kept.
        """
        self._check_open()
        if not records:
            raise ValueError("append needs at least one record")
        payload = encode_payload(records)
        size = HEADER_SIZE + len(payload)
        if len(payload) > MAX_PAYLOAD or size > self._max_bytes:
            raise SpoolError(
                f"batch of {size} bytes can never fit in spool of max_bytes={self._max_bytes}"
            )
        await self._reserve(size, block)
        if self._closing:  # closed while this append waited for space
            self._reserved -= size
            raise SpoolClosedError(f"spool {self._dir} is closed")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        item = PendingAppend(payload, crc32(payload), len(records), _now_ms(), future)
        self._writer.submit(item)
        try:
            return await future
        except asyncio.CancelledError:
            # Still queued (waiting for its group, or for disk space): taken back, never
            # written. Already being written: it may become durable (a resend, harmless).
            if self._writer.withdraw(item):
                self._reserved -= size
                self._wake_space_waiters()
            raise

    async def _reserve(self, size: int, block: bool) -> None:
        """Count ``size`` against the cap, waiting in FIFO order for space if allowed."""
        if not self._space_waiters and self._fits(size):
            self._reserved += size
            return
        if not block:
            raise SpoolFullError(
                f"spool full: {self._bytes_used + self._reserved} of {self._max_bytes} bytes used"
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._space_waiters.append(entry)
        self._lwm_dirty.set()  # lets the flusher seal a fully committed active segment
        try:
            await waiter
        except BaseException:
            if entry in self._space_waiters:
                self._space_waiters.remove(entry)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._reserved -= size  # space was granted but we will not use it
            self._wake_space_waiters()
            raise

    def _fits(self, size: int) -> bool:
        return self._bytes_used + self._reserved + size <= self._max_bytes

    def _wake_space_waiters(self) -> None:
        while self._space_waiters and self._fits(self._space_waiters[0][0]):
            size, waiter = self._space_waiters.popleft()
            if not waiter.done():
                self._reserved += size
                waiter.set_result(None)

    def _fail_space_waiters(self, exc: SpoolError) -> None:
        while self._space_waiters:
            set_exception(self._space_waiters.popleft()[1], exc)

    def _on_durable(self, records: int, first_time_ms: int, nbytes: int) -> None:
        self._bytes_used += nbytes
        self._reserved -= nbytes
        self._reader.appended(records, first_time_ms)
        self._data_ready.set()

    def _on_write_failed(self, nbytes: int) -> None:
        self._reserved -= nbytes
        self._wake_space_waiters()

    def _on_space(self, exc: OSError | None) -> None:
        if exc is None:
            self._stalls.succeeded("spool", self._dir, "segments", volume=self._volume)
            return
        self._stalls.failed("spool", self._dir, "segments", exc, volume=self._volume)
        self._lwm_dirty.set()  # lets the flusher seal a fully committed active segment

    # ------------------------------------------------------------------- consuming

    async def read(
        self,
        *,
        max_records: int,
        max_bytes: int,
        timeout_s: float | None = None,
        weigh: Callable[[bytes], int] | None = None,
        size: Callable[[bytes], int] | None = None,
    ) -> SpoolBatch | None:
        """The next unread durable records in order (at least one, at most ``max_records``,
        at most ``max_bytes`` of record bytes unless a single record is larger).

        With ``weigh``, ``max_records`` limits the sum of ``weigh(record)`` instead of the
        number of records (a record that holds several items counts as that many); with
        ``size``, ``max_bytes`` limits the sum of ``size(record)`` instead of ``len(record)``
        (a compressed record counts as its uncompressed size).

        Waits for data up to ``timeout_s`` (forever if None) and returns None on timeout.
        Raises :class:`SpoolCorruptError` if a frame went bad on disk since open (a restart
        quarantines it).
        """
        if max_records < 1 or max_bytes < 1:
            raise ValueError("max_records and max_bytes must be >= 1")
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        async with self._read_lock:
            while True:
                self._check_open()
                self._data_ready.clear()  # before reading, so no wake-up is lost
                try:
                    chunk = await self._reader.read(max_records, max_bytes, weigh, size)
                except OSError as exc:
                    raise SpoolError(f"spool {self._dir}: read failed: {exc}") from exc
                if chunk is not None:
                    return self._hand_out(*chunk)
                if not await self._wait_for_data(deadline):
                    return None

    @property
    def closing(self) -> bool:
        """True once close() began: nothing more is read or appended."""
        return self._closing

    async def wait_unread(self) -> None:
        """Return once a durable record waits to be read (at once if one does).

        Lets a consumer wait for work without holding anything meanwhile (a read would hold
        its batch). Raises SpoolClosedError once the spool closes.
        """
        while True:
            self._check_open()
            if self._reader.unread_records > 0:
                return
            self._data_ready.clear()
            await self._data_ready.wait()

    async def _wait_for_data(self, deadline: float | None) -> bool:
        """Wait until the writer makes data durable; False at the deadline."""
        remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
        if remaining is not None and remaining <= 0:
            return False
        try:
            async with asyncio.timeout(remaining):
                await self._data_ready.wait()
        except TimeoutError:
            return False
        return True

    def _hand_out(self, first_seq: int, records: list[bytes], time_ms: int) -> SpoolBatch:
        self._inflight.add(first_seq, len(records), time_ms)
        return SpoolBatch(first_seq, records, time_ms, owner=self)

    def commit(self, batch: SpoolBatch) -> None:
        """Mark ``batch`` delivered (any order). Committing twice is a no-op."""
        if self._closed:
            raise SpoolClosedError(f"spool {self._dir} is closed")
        if batch.owner is not self:
            raise SpoolError("batch was read from another spool instance")
        self._inflight.commit(batch.first_seq, batch.end_seq)
        self._last_commit = time.monotonic()
        self._update_low_water()

    @property
    def commit_idle_s(self) -> float:
        """Seconds since a batch was last committed (delivered), or since the spool opened."""
        return time.monotonic() - self._last_commit

    def _update_low_water(self) -> None:
        """Every record below the mark is committed (or was lost to quarantine)."""
        head = self._inflight.head()
        mark = self._reader.next_seq if head is None else head
        if mark > self._low_water:
            self._low_water = mark
            self._lwm_dirty.set()

    async def _flusher_loop(self) -> None:
        """Persist the mark at most every flush interval, then free covered segments."""
        while not self._closing:
            await self._lwm_dirty.wait()
            if self._closing:
                return
            # batch the commits of one interval into one file write
            await first_set((self._stop,), self._flush_interval_s)
            self._lwm_dirty.clear()
            try:
                persisted = await self._persist_and_cleanup()
            except OSError as exc:  # keep the old mark (resend, never lose); retry later
                log.error("spool.commit_persist_failed", directory=self._dir, error=repr(exc))
                self._lwm_dirty.set()
                continue
            if persisted:
                self._mark_stall_attempts = 0
                continue
            # The volume is full: the old mark stays (resend, never lose); retry later.
            self._mark_stall_attempts += 1
            self._lwm_dirty.set()
            await first_set((self._stop,), stall_delay(self._mark_stall_attempts))

    async def _persist_and_cleanup(self) -> bool:
        """Persist the mark, then delete what it covers; False if the volume was too full to
        persist it (the old mark stays, nothing is deleted on its account: retry later)."""
        mark = self._low_water
        if mark != self._persisted_low_water:
            try:
                await self._persist_mark(mark)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self._stalls.failed("spool", self._dir, "commit", exc, volume=self._volume)
                return False
            self._stalls.succeeded("spool", self._dir, "commit", volume=self._volume)
            self._persisted_low_water = mark
        active = self._writer.active
        waiting = bool(self._space_waiters) or self._writer.stalled
        if waiting and not self._writer.writing and active and active.end_seq <= mark:
            self._writer.seal()  # producers wait and all of it is committed: free it
        doomed = self._covered_segments()
        if doomed:
            await asyncio.to_thread(_unlink_all, [seg.path for seg in doomed])
            self._bytes_used -= sum(seg.size for seg in doomed)
            self._wake_space_waiters()
            self._writer.space_freed()
        return True

    async def _persist_mark(self, mark: int) -> None:
        path = os.path.join(self._dir, COMMIT_FILE)
        data = encode_commit(mark)
        try:
            await asyncio.to_thread(write_file_atomic, path, data)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # No room for a tmp file, and without a new mark no segment can be deleted to
            # make room: overwrite the old mark's 16 bytes in place (no new block needed).
            # CRC-checked, so a torn write only makes a restart resend from the oldest
            # segment.
            try:
                await asyncio.to_thread(overwrite_in_place, path, data)
            except OSError:
                raise exc from None

    def _covered_segments(self) -> list[Segment]:
        """Sealed segments, oldest first, whose records are all below the persisted mark."""
        doomed: list[Segment] = []
        while self._segments:
            seg = self._segments[0]
            if seg is self._writer.active or seg.end_seq > self._persisted_low_water:
                break
            doomed.append(self._segments.pop(0))
            self._reader.forget(seg)
        return doomed

    # --------------------------------------------------------------- observability

    @property
    def max_bytes(self) -> int:
        """The size cap on segment bytes."""
        return self._max_bytes

    @property
    def bytes_used(self) -> int:
        """Durable segment bytes on disk (committed segments count until deleted)."""
        return self._bytes_used

    @property
    def records_pending(self) -> int:
        """Records appended and not yet committed (unread plus read and uncommitted)."""
        return self._reader.unread_records + self._inflight.records

    @property
    def oldest_pending_age_s(self) -> float:
        """Age of the oldest uncommitted record, from its frame's append time (0 if none)."""
        oldest = self._inflight.oldest_time_ms()  # read before anything unread: older
        if oldest is None:
            oldest = self._reader.unread_oldest_ms
        return max(0.0, (_now_ms() - oldest) / 1000) if oldest is not None else 0.0

    @property
    def appends_blocked(self) -> bool:
        """Appends wait for space now: the spool is at its cap or its volume is full."""
        return bool(self._space_waiters) or self._writer.stalled

    @property
    def disk_full(self) -> bool:
        """A write of this spool is waiting for disk space (appends wait meanwhile)."""
        return self._stalls.stalled("spool", self._dir)

    @property
    def fsyncs(self) -> int:
        """fsync/fdatasync calls made for appends (data and new-segment directory syncs)."""
        return self._writer.fsyncs

    @property
    def next_seq(self) -> int:
        """Sequence number the next appended record will get."""
        return self._writer.next_seq

    @property
    def low_water_mark(self) -> int:
        """Every record below this sequence number is committed (in memory)."""
        return self._low_water

    @property
    def quarantine_events(self) -> list[QuarantineEvent]:
        """Damage found when this spool was opened."""
        return list(self._events)

    @property
    def quarantined_frames(self) -> int:
        """Damaged ranges (a torn or corrupt frame each) cut out on open."""
        return self._quarantined_frames

    @property
    def quarantined_bytes(self) -> int:
        """Bytes moved to ``quarantine/`` on open."""
        return self._quarantined_bytes

    @property
    def commit_file_resets(self) -> int:
        """1 if the committed-position file was damaged on open (reading restarted at the
        oldest segment)."""
        return self._commit_file_resets

    @property
    def corrupt_reads(self) -> int:
        """Frames found damaged while reading (since open)."""
        return self._reader.corrupt_reads

    def _log_recovery(self, recovered: RecoveryResult) -> None:
        for event in recovered.events:
            log.warning(
                "spool.quarantined",
                directory=self._dir,
                segment=event.segment,
                offset=event.offset,
                bytes=event.length,
                missing_seqs=event.missing_seqs,
                kept_in=event.quarantine_file,
            )
        if recovered.commit_file_damaged:
            log.warning(
                "spool.commit_file_damaged", directory=self._dir, resume_seq=self._low_water
            )


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _lock_directory(path: str) -> int:
    """Create the directory if needed (0700) and take its exclusive lock (one owner process)."""
    try:
        make_private_dirs(path)
        lock_path = os.path.join(path, LOCK_FILE)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise SpoolError(f"spool {path}: cannot create or lock: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise SpoolError(f"spool {path} is already open by another process or spool") from exc
    return fd


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
