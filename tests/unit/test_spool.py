"""The durable spool: append/read/commit, low-water mark, segments, backpressure, failures."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from logferry.common.errors import SpoolClosedError, SpoolError, SpoolFullError
from logferry.common.spool import Spool, SpoolBatch
from logferry.common.spool.segment import HEADER_SIZE, RECORD_OVERHEAD
from tests.support.net import wait_until

DEADLINE_S = 10.0


def segment_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".seg"))


async def read_all(spool: Spool, *, commit: bool = True, max_records: int = 1000) -> list[bytes]:
    out: list[bytes] = []
    while batch := await spool.read(max_records=max_records, max_bytes=1 << 20, timeout_s=0):
        out.extend(batch.records)
        if commit:
            spool.commit(batch)
    return out


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    s = await Spool.open(tmp_path, max_bytes=1 << 20, segment_max_bytes=64 << 10)
    yield s
    await s.close()


async def test_append_returns_contiguous_sequence_numbers_and_reads_in_order(spool: Spool) -> None:
    assert await spool.append([b"a", b"b"]) == 0
    assert await spool.append([b"c"]) == 2
    assert await spool.append([b"d", b"e", b"f"]) == 3
    batch = await spool.read(max_records=100, max_bytes=1000)
    assert batch is not None
    assert batch.first_seq == 0
    assert batch.records == [b"a", b"b", b"c", b"d", b"e", b"f"]
    assert batch.end_seq == 6


async def test_read_limits_split_batches_even_inside_a_frame(spool: Spool) -> None:
    await spool.append([bytes([i]) * 10 for i in range(10)])
    first = await spool.read(max_records=3, max_bytes=1000)
    second = await spool.read(max_records=100, max_bytes=25)
    third = await spool.read(max_records=100, max_bytes=1000)
    assert first is not None
    assert second is not None
    assert third is not None
    assert (first.first_seq, len(first.records)) == (0, 3)
    assert (second.first_seq, len(second.records)) == (3, 2)
    assert (third.first_seq, len(third.records)) == (5, 5)
    assert first.records + second.records + third.records == [bytes([i]) * 10 for i in range(10)]


async def test_read_limits_can_weigh_and_size_records(spool: Spool) -> None:
    # Records that stand for several items: the first byte is the item count, the second the
    # uncompressed size in tens (as the forwarder's blocks carry both in their header).
    records = [bytes([3, 1]), bytes([4, 9]), bytes([2, 1]), bytes([5, 1]), bytes([1, 20])]
    await spool.append(records)

    def weigh(record: bytes) -> int:
        return record[0]

    def size(record: bytes) -> int:
        return record[1] * 10

    batches = []
    while batch := await spool.read(
        max_records=7, max_bytes=100, timeout_s=0, weigh=weigh, size=size
    ):
        batches.append(batch.records)
    # [3+4 items, 100 bytes] [2+5 items, 20 bytes] [1 item, 200 bytes: over, but alone]
    assert batches == [records[0:2], records[2:4], records[4:5]]


async def test_a_record_larger_than_max_bytes_is_returned_alone(spool: Spool) -> None:
    await spool.append([b"x" * 500, b"y"])
    batch = await spool.read(max_records=10, max_bytes=100)
    assert batch is not None
    assert batch.records == [b"x" * 500]


async def test_read_times_out_with_none_and_wakes_on_append(spool: Spool) -> None:
    assert await spool.read(max_records=10, max_bytes=100, timeout_s=0.01) is None
    reader = asyncio.create_task(spool.read(max_records=10, max_bytes=100, timeout_s=DEADLINE_S))
    await spool.append([b"late"])
    batch = await reader
    assert batch is not None
    assert batch.records == [b"late"]


async def test_out_of_order_commits_move_the_low_water_mark_only_when_contiguous(
    spool: Spool,
) -> None:
    for i in range(3):
        await spool.append([b"r%d" % i])
    batches = [await spool.read(max_records=1, max_bytes=100) for _ in range(3)]
    a, b, c = (x for x in batches if x is not None)
    spool.commit(c)
    spool.commit(b)
    assert spool.low_water_mark == 0
    assert spool.records_pending == 1
    spool.commit(a)
    assert spool.low_water_mark == 3
    assert spool.records_pending == 0
    spool.commit(a)  # a second commit is a no-op


async def test_restart_resumes_at_persisted_mark_and_rereads_out_of_order_commits(
    tmp_path: Path,
) -> None:
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    await s.append([b"a"])
    await s.append([b"b"])
    await s.append([b"c"])
    batches = [await s.read(max_records=1, max_bytes=100) for _ in range(3)]
    a, _b, c = (x for x in batches if x is not None)
    s.commit(a)
    s.commit(c)  # b is not delivered: c above it is read again after restart, by design
    await s.close()
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    assert s.low_water_mark == 1
    assert await read_all(s) == [b"b", b"c"]
    await s.close()


async def test_restart_continues_sequence_numbers(tmp_path: Path) -> None:
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    await s.append([b"a", b"b", b"c"])
    assert await read_all(s) == [b"a", b"b", b"c"]
    await s.close()
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    assert s.next_seq == 3
    assert await s.append([b"d"]) == 3
    assert await read_all(s) == [b"d"]
    await s.close()
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    assert await s.append([b"e"]) == 4
    await s.close()


async def test_segments_roll_over_and_committed_ones_are_deleted(tmp_path: Path) -> None:
    s = await Spool.open(tmp_path, max_bytes=1 << 20, segment_max_bytes=4096)
    for i in range(40):
        await s.append([b"%04d" % i + b"." * 300])
    assert len(segment_files(tmp_path)) >= 3
    used_before = s.bytes_used
    records = await read_all(s, max_records=7)
    assert [r[:4] for r in records] == [b"%04d" % i for i in range(40)]
    # The files go first (in a thread), the accounting follows: wait for both.
    await wait_until(
        lambda: len(segment_files(tmp_path)) == 1 and s.bytes_used < used_before,
        timeout_s=DEADLINE_S,
        what="the committed segments to be deleted and uncounted",
    )
    assert s.bytes_used == (tmp_path / segment_files(tmp_path)[0]).stat().st_size
    await s.close()
    s = await Spool.open(tmp_path, max_bytes=1 << 20, segment_max_bytes=4096)
    assert await read_all(s) == []
    assert s.next_seq == 40
    await s.close()


async def test_blocked_append_resumes_when_a_commit_frees_space(tmp_path: Path) -> None:
    s = await Spool.open(tmp_path, max_bytes=8192, segment_max_bytes=2048)
    record = b"r" * 900
    while True:
        try:
            await s.append([record], block=False)
        except SpoolFullError:
            break
    blocked = asyncio.create_task(s.append([record]))
    await asyncio.sleep(0)  # let it reach the wait (not a synchronisation: checked below)
    assert not blocked.done()
    batch = await s.read(max_records=3, max_bytes=1 << 20)
    assert batch is not None
    s.commit(batch)
    seq = await asyncio.wait_for(blocked, DEADLINE_S)
    assert seq == s.next_seq - 1
    await s.close()


async def test_blocked_append_resumes_when_the_active_segment_holds_everything(
    tmp_path: Path,
) -> None:
    # The cap equals one segment: only sealing the committed active segment frees space.
    s = await Spool.open(tmp_path, max_bytes=4096, segment_max_bytes=4096)
    await s.append([b"a" * 3000])
    blocked = asyncio.create_task(s.append([b"b" * 3000]))
    batch = await s.read(max_records=1, max_bytes=1 << 20)
    assert batch is not None
    s.commit(batch)
    assert await asyncio.wait_for(blocked, DEADLINE_S) == 1
    assert await read_all(s) == [b"b" * 3000]
    await s.close()


async def test_non_blocking_append_on_a_full_spool_raises_spool_full(tmp_path: Path) -> None:
    s = await Spool.open(tmp_path, max_bytes=4096, segment_max_bytes=1024)
    for _ in range(7):  # 7 frames of 508 bytes fit in 4096, an eighth does not
        await s.append([b"x" * 500], block=False)
    with pytest.raises(SpoolFullError) as info:
        await s.append([b"x" * 500], block=False)
    assert info.value.retriable
    assert s.bytes_used <= s.max_bytes
    await s.close()


async def test_a_batch_larger_than_the_cap_is_refused_not_waited_for(tmp_path: Path) -> None:
    s = await Spool.open(tmp_path, max_bytes=4096, segment_max_bytes=1024)
    with pytest.raises(SpoolError, match="can never fit"):
        await asyncio.wait_for(s.append([b"x" * 5000]), DEADLINE_S)
    await s.close()


async def test_a_frame_larger_than_a_segment_gets_its_own_segment(tmp_path: Path) -> None:
    s = await Spool.open(tmp_path, max_bytes=1 << 20, segment_max_bytes=4096)
    await s.append([b"small"])
    await s.append([b"L" * 10_000])
    await s.append([b"after"])
    assert await read_all(s) == [b"small", b"L" * 10_000, b"after"]
    assert len(segment_files(tmp_path)) == 3
    await s.close()


async def test_concurrent_appends_share_fsyncs(spool: Spool) -> None:
    before = spool.fsyncs
    seqs = await asyncio.gather(*(spool.append([b"%d" % i] * 3) for i in range(64)))
    assert sorted(seqs) == list(range(0, 192, 3))
    used = spool.fsyncs - before
    assert used <= 8, f"{used} fsyncs for 64 appends"
    records = await read_all(spool)
    assert len(records) == 192


async def test_close_twice_is_safe_and_use_after_close_raises(tmp_path: Path) -> None:
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    await s.append([b"a"])
    batch = await s.read(max_records=1, max_bytes=10)
    assert batch is not None
    await s.close()
    await s.close()
    with pytest.raises(SpoolClosedError):
        await s.append([b"b"])
    with pytest.raises(SpoolClosedError):
        await s.read(max_records=1, max_bytes=10)
    with pytest.raises(SpoolClosedError):
        s.commit(batch)


async def test_close_waits_for_queued_appends(tmp_path: Path) -> None:
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    appends = [asyncio.create_task(s.append([b"%d" % i])) for i in range(20)]
    await asyncio.sleep(0)  # the appends are queued; close must let them finish
    await s.close()
    assert sorted([t.result() for t in appends]) == list(range(20))
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    assert len(await read_all(s)) == 20
    await s.close()


async def test_a_waiting_reader_gets_spool_closed(tmp_path: Path) -> None:
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    reader = asyncio.create_task(s.read(max_records=1, max_bytes=10))
    await asyncio.sleep(0)
    await s.close()
    with pytest.raises(SpoolClosedError):
        await asyncio.wait_for(reader, DEADLINE_S)


async def test_a_second_opener_is_refused(spool: Spool, tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="already open"):
        await Spool.open(tmp_path, max_bytes=1 << 20)


async def test_a_batch_from_another_spool_is_refused(spool: Spool, tmp_path: Path) -> None:
    other = await Spool.open(tmp_path / "other", max_bytes=1 << 20)
    await other.append([b"x"])
    batch = await other.read(max_records=1, max_bytes=10)
    assert isinstance(batch, SpoolBatch)
    with pytest.raises(SpoolError):
        spool.commit(batch)
    await other.close()


@pytest.mark.parametrize("failing", ["fdatasync", "pwrite"])
async def test_a_failed_write_acks_nothing_and_the_spool_stays_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    assert await s.append([b"before"]) == 0
    real = getattr(os, failing)

    def broken(fd: int, *args: object) -> object:
        if failing == "pwrite":  # a partial write first, as a failing disk may do
            real(fd, b"\xff" * 7, args[1])
        # An I/O error fails the append; a full disk does not (test_spool_disk_full.py).
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(SpoolError, match="write failed"):
        await s.append([b"lost-1", b"lost-2"])
    monkeypatch.setattr(os, failing, real)
    assert await s.append([b"after"]) == 1  # the failed numbers are reused: contiguous
    assert await read_all(s, commit=False) == [b"before", b"after"]
    await s.close()
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    assert s.quarantined_frames == 0  # the partial write was truncated away
    assert await read_all(s) == [b"before", b"after"]
    await s.close()


async def test_size_backlog_age_and_fsync_attributes_follow_appends_and_commits(
    tmp_path: Path,
) -> None:
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    assert (s.bytes_used, s.records_pending, s.oldest_pending_age_s) == (0, 0, 0.0)
    await s.append([b"a" * 100, b"b" * 100])
    assert s.bytes_used > 200
    assert s.records_pending == 2
    await wait_until(
        lambda: s.oldest_pending_age_s > 0, timeout_s=DEADLINE_S, what="the oldest record to age"
    )
    batch = await s.read(max_records=1, max_bytes=1000)
    assert batch is not None
    assert s.records_pending == 2
    s.commit(batch)
    assert s.records_pending == 1
    assert s.max_bytes == 1 << 20
    assert s.fsyncs >= 1
    await s.close()


async def test_commits_are_persisted_in_batches_not_one_write_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from logferry.common.spool import facade as spool_module

    writes: list[bytes] = []
    real = spool_module.write_file_atomic

    def counting(path: str, data: bytes) -> None:
        writes.append(data)
        real(path, data)

    monkeypatch.setattr(spool_module, "write_file_atomic", counting)
    s = await Spool.open(tmp_path, max_bytes=1 << 20, commit_flush_interval_s=0.05)
    for i in range(200):
        await s.append([b"%d" % i])
    opened_writes = len(writes)
    for _ in range(200):
        batch = await s.read(max_records=1, max_bytes=100)
        assert batch is not None
        s.commit(batch)
    await wait_until(
        lambda: len(writes) > opened_writes,
        timeout_s=DEADLINE_S,
        what="the commit mark to be written",
    )
    await s.close()
    assert len(writes) - opened_writes < 20, "one commit-file write per commit"
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    assert s.low_water_mark == 200
    await s.close()


async def test_oldest_pending_age_comes_from_the_frame_append_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from logferry.common.spool import facade as spool_module

    now_ms = [1_000_000]
    monkeypatch.setattr(spool_module, "_now_ms", lambda: now_ms[0])
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    await s.append([b"old"])
    now_ms[0] += 1000
    await s.append([b"new"])
    now_ms[0] += 4000
    assert s.oldest_pending_age_s == 5.0
    batch = await s.read(max_records=1, max_bytes=100)
    assert batch is not None
    assert s.oldest_pending_age_s == 5.0  # read but not committed is still pending
    s.commit(batch)
    assert s.oldest_pending_age_s == 4.0
    await s.close()
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    assert s.oldest_pending_age_s == 4.0  # from the frame header on disk
    await read_all(s)
    assert s.oldest_pending_age_s == 0.0
    await s.close()


async def test_a_cancelled_read_loses_nothing(spool: Spool) -> None:
    waiting = asyncio.create_task(spool.read(max_records=10, max_bytes=100))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await spool.append([b"a", b"b"])
    assert await read_all(spool) == [b"a", b"b"]


@pytest.mark.parametrize("cut", [0, 1, 16, 31, 32, 33])
@pytest.mark.parametrize("weighed", [False, True])
async def test_a_read_buffer_ending_inside_a_frame_header_is_not_damage(
    tmp_path: Path, cut: int, weighed: bool
) -> None:
    # The reader reads 256 KiB at a time; the first frame ends ``cut`` bytes before that, so
    # the buffer holds only the start of the next frame's 32-byte header. That is a frame
    # to read next, not a damaged one (a forwarder once crash-looped on exactly this).
    s = await Spool.open(tmp_path, max_bytes=4 << 20, segment_max_bytes=1 << 20)
    first = b"a" * ((256 << 10) - cut - HEADER_SIZE - RECORD_OVERHEAD)
    await s.append([first])
    await s.append([b"b" * 100, b"c" * 100])
    weigh = (lambda _record: 1) if weighed else None
    out: list[bytes] = []
    while batch := await s.read(max_records=1000, max_bytes=4 << 20, timeout_s=0, weigh=weigh):
        out.extend(batch.records)
        s.commit(batch)
    await s.close()
    assert out == [first, b"b" * 100, b"c" * 100]
