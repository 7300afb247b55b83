"""The spool on a full volume: appends wait (never fail, never lose), torn frames are cut back,
the commit mark still moves, delivered segments free the space, and the stall is reported
once. Faults by monkeypatched syscalls, and one real full tmpfs."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from logferry.common import disk_full as spool_space
from logferry.common.disk_full import DiskStalls
from logferry.common.errors import SpoolClosedError
from logferry.common.spool import Spool
from logferry.common.spool import facade as spool_module
from logferry.common.spool.recovery import COMMIT_FILE, read_low_water
from tests.support.net import wait_until
from tests.support.tmpfs import fill, free_bytes, mounted_tmpfs

DEADLINE_S = 10.0
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


async def read_all(spool: Spool, *, commit: bool = True) -> list[bytes]:
    out: list[bytes] = []
    while batch := await spool.read(max_records=1000, max_bytes=1 << 24, timeout_s=0):
        out.extend(batch.records)
        if commit:
            spool.commit(batch)
    return out


def gauge(registry: CollectorRegistry, name: str, kind: str = "spool") -> float:
    return registry.get_sample_value(name, {"kind": kind}) or 0.0


def disk_full_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "disk.full"]


class Full:
    """Makes ``os.<name>`` fail with ENOSPC while ``full`` is set (a partial write first,
    as a real full disk does for pwrite)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.full = True
        self.calls = 0
        self._real = getattr(os, name)
        self._name = name
        monkeypatch.setattr(os, name, self)

    def __call__(self, *args: object, **kwargs: object) -> object:
        if not self.full:
            return self._real(*args, **kwargs)
        self.calls += 1
        if self._name == "pwrite":
            fd, data, offset = args
            assert isinstance(data, memoryview | bytes)
            self._real(fd, bytes(data[: len(data) // 2]), offset)
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["pwrite", "fdatasync"])
async def test_append_waits_through_a_full_disk_and_the_segment_stays_valid(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failing: str,
) -> None:
    registry = CollectorRegistry()
    s = await Spool.open(tmp_path, max_bytes=1 << 20, stalls=DiskStalls(registry))
    assert await s.append([b"before"]) == 0
    fault = Full(monkeypatch, failing)
    caplog.set_level(logging.INFO)
    waiting = asyncio.create_task(s.append([b"during-1", b"during-2"]))
    # retried, with backoff, and still waiting
    await wait_until(lambda: fault.calls >= 3, timeout_s=DEADLINE_S, what="three failed writes")
    assert not waiting.done()
    assert s.disk_full
    assert s.appends_blocked
    assert gauge(registry, "logferry_disk_full") == 1
    fault.full = False
    assert await asyncio.wait_for(waiting, DEADLINE_S) == 1  # nothing lost, seqs contiguous
    assert not s.disk_full
    assert gauge(registry, "logferry_disk_full") == 0
    assert gauge(registry, "logferry_disk_full_stalls_total") == 1
    assert len(disk_full_warnings(caplog)) == 1  # one warning per stall, not per retry
    assert await s.append([b"after"]) == 3
    await s.close()
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    assert s.quarantined_frames == 0  # the torn attempts were cut back: the segment is valid
    assert await read_all(s) == [b"before", b"during-1", b"during-2", b"after"]
    await s.close()


async def test_a_full_disk_when_a_new_segment_is_created_waits_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    full = True

    def open_(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if full and str(path).endswith(".seg") and flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    monkeypatch.setattr(os, "open", open_)
    waiting = asyncio.create_task(s.append([b"first"]))
    await wait_until(
        lambda: s.disk_full, timeout_s=DEADLINE_S, what="the spool to report a full disk"
    )
    full = False
    assert await asyncio.wait_for(waiting, DEADLINE_S) == 0
    assert await read_all(s) == [b"first"]
    await s.close()


async def test_an_append_given_up_while_the_disk_is_full_is_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The aggregator re-judges a waiting append every few seconds (wait_for): one it gave up
    # on must not be written later behind its back, or the retry would store it twice.
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    fault = Full(monkeypatch, "pwrite")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(s.append([b"abandoned"]), 0.3)
    assert fault.calls >= 1
    fault.full = False
    assert await s.append([b"kept"]) == 0  # its sequence number was never used
    assert await read_all(s) == [b"kept"]
    assert s.bytes_used < 100  # and its reservation was given back
    await s.close()


async def test_close_during_a_full_disk_fails_the_waiting_append_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    assert await s.append([b"durable"]) == 0
    fault = Full(monkeypatch, "pwrite")
    waiting = asyncio.create_task(s.append([b"never-durable"]))
    await wait_until(lambda: fault.calls >= 1, timeout_s=DEADLINE_S, what="a failed write")
    await asyncio.wait_for(s.close(), DEADLINE_S)  # does not wait for space
    with pytest.raises(SpoolClosedError):
        await waiting
    fault.full = False
    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    assert await read_all(s) == [b"durable"]
    await s.close()


async def test_the_mark_is_written_in_place_when_no_tmp_file_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a new mark no segment can be deleted, and without deleting one there is no
    # room for the mark's tmp file: the 16 bytes are overwritten in place instead.
    s = await Spool.open(tmp_path, max_bytes=1 << 20, commit_flush_interval_s=0.01)
    await s.append([b"a", b"b"])

    def no_room(path: str, data: bytes, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "write_file_atomic", no_room)
    assert await read_all(s) == [b"a", b"b"]
    await wait_until(
        lambda: read_low_water(str(tmp_path))[0] == 2,
        timeout_s=DEADLINE_S,
        what="the mark at 2, written in place",
    )
    assert not s.disk_full  # in place worked: nothing waits
    await s.close()


async def test_the_mark_waits_when_even_in_place_fails_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s = await Spool.open(
        tmp_path, max_bytes=1 << 20, commit_flush_interval_s=0.01, stalls=DiskStalls()
    )
    await s.append([b"a"])
    calls = 0

    def no_room(path: str, data: bytes, **_kwargs: object) -> None:
        nonlocal calls
        calls += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "write_file_atomic", no_room)
    monkeypatch.setattr(spool_module, "overwrite_in_place", no_room)
    assert await read_all(s) == [b"a"]
    # retried (both ways, three times)
    await wait_until(lambda: calls >= 6, timeout_s=DEADLINE_S, what="six failed mark writes")
    assert s.disk_full
    assert read_low_water(str(tmp_path))[0] == 0  # the old mark: a restart resends
    assert len(disk_full_warnings(caplog)) == 1
    monkeypatch.undo()
    await wait_until(
        lambda: read_low_water(str(tmp_path))[0] == 1, timeout_s=DEADLINE_S, what="the mark at 1"
    )
    await wait_until(
        lambda: not s.disk_full, timeout_s=DEADLINE_S, what="the spool to report space again"
    )
    await s.close()


def test_a_small_volume_is_warned_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = os.statvfs

    class Small:
        def __init__(self, path: str) -> None:
            st = real(path)
            self.f_frsize = 4096
            self.f_blocks = 3 * (16 << 20) // 4096  # 48 MiB: 3 segments of 16 MiB
            self.f_bavail = st.f_bavail

    monkeypatch.setattr(os, "statvfs", Small)
    monkeypatch.setattr(spool_space, "_warned_devices", set())
    for _ in range(3):  # an aggregator opens one spool per tenant on the same volume
        size = spool_space.check_volume(
            str(tmp_path), segment_max_bytes=16 << 20, max_bytes=1 << 30
        )
        assert size == 48 << 20
    warnings = [r for r in caplog.records if r.getMessage() == "spool.volume_small"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    fields = warnings[0].__dict__["logferry_fields"]
    assert "smaller than 4 segments" in fields["problem"]
    assert "smaller than spool.max_bytes" in fields["problem"]


async def test_a_spool_filling_a_real_tmpfs_frees_delivered_segments_and_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No mock: a spool on a 4 MiB tmpfs, with a cap far above it. Appends fill the volume
    and wait, a filler takes the last block; the consumer delivers everything, the mark is
    written in place, sealed segments and the fully committed active one are deleted, and
    the waiting appends go on."""
    with mounted_tmpfs(tmp_path / "vol", size="4m") as volume:
        registry = CollectorRegistry()
        s = await Spool.open(
            volume / "spool",
            max_bytes=64 << 20,
            segment_max_bytes=1 << 20,
            commit_flush_interval_s=0.01,
            stalls=DiskStalls(registry),
        )
        record = os.urandom(60_000)  # incompressible: the volume fills for real
        appended: list[int] = []

        async def producer(count: int) -> None:
            for _ in range(count):
                appended.append(await s.append([record]))

        task = asyncio.create_task(producer(150))  # ~9 MB: twice the volume
        await wait_until(
            lambda: s.disk_full, timeout_s=DEADLINE_S, what="the spool to report a full disk"
        )
        assert free_bytes(volume) < 64 * 1024
        fill(volume)  # not one block left, not even for the mark's tmp file
        assert free_bytes(volume) == 0
        assert not task.done()
        got = 0
        while not task.done() or got < len(appended):  # the consumer delivers and commits
            batch = await s.read(max_records=10, max_bytes=1 << 24, timeout_s=0.05)
            if batch is not None:
                assert all(r == record for r in batch.records)
                got += len(batch.records)
                s.commit(batch)
        await asyncio.wait_for(task, DEADLINE_S)
        assert appended == list(range(150))  # every one, once, in order
        assert got == 150
        assert gauge(registry, "logferry_disk_full_stalls_total") >= 1
        await wait_until(
            lambda: not s.disk_full, timeout_s=DEADLINE_S, what="the spool to report space again"
        )
        await s.close()
        assert read_low_water(str(volume / "spool"))[0] == 150
        assert (volume / "spool" / COMMIT_FILE).stat().st_size == 16


async def test_appends_resume_when_an_operator_frees_space_on_a_real_tmpfs(
    tmp_path: Path,
) -> None:
    with mounted_tmpfs(tmp_path / "vol", size="4m") as volume:
        s = await Spool.open(volume / "spool", max_bytes=64 << 20, segment_max_bytes=1 << 20)
        filler = fill(volume)
        waiting = asyncio.create_task(s.append([os.urandom(300_000)]))
        await wait_until(
            lambda: s.disk_full, timeout_s=DEADLINE_S, what="the spool to report a full disk"
        )
        filler.unlink()
        assert await asyncio.wait_for(waiting, DEADLINE_S) == 0
        assert len(await read_all(s)) == 1
        await s.close()


def test_writers_sharing_a_full_volume_make_one_stall_even_when_they_take_turns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An aggregator's tenant spools share a volume: as one truncates a failed attempt, another
    # squeezes a small frame into the freed pages. That is one stall, warned about once.
    registry = CollectorRegistry()
    stalls = DiskStalls(registry)
    for round_ in range(5):
        for tenant in ("a", "b", "c"):
            stalls.failed("spool", f"/spool/{tenant}", "segments", ENOSPC, volume="8:1")
        stalls.succeeded("spool", "/spool/a", "segments", volume="8:1")
        if round_ == 2:  # all of them through at once for a moment: still the same stall
            stalls.succeeded("spool", "/spool/b", "segments", volume="8:1")
            stalls.succeeded("spool", "/spool/c", "segments", volume="8:1")
            assert gauge(registry, "logferry_disk_full") == 0
    assert gauge(registry, "logferry_disk_full") == 1
    assert gauge(registry, "logferry_disk_full_stalls_total") == 1
    assert len(disk_full_warnings(caplog)) == 1
    stalls.failed("spool", "/other/spool", "segments", ENOSPC, volume="8:2")  # another volume
    assert gauge(registry, "logferry_disk_full") == 2
    assert len(disk_full_warnings(caplog)) == 2
    for tenant in ("b", "c"):
        stalls.clear("spool", f"/spool/{tenant}", volume="8:1")
    stalls.succeeded("spool", "/other/spool", "segments", volume="8:2")
    assert gauge(registry, "logferry_disk_full") == 0


async def test_opening_waits_for_room_to_create_the_spool_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A new tenant's spool on a full volume: its folder needs a block (ext4). The aggregator
    # waits (backpressure) instead of failing the connection with a traceback.
    real = spool_module.make_private_dirs
    failures = 2

    def mkdirs(path: str) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path)

    monkeypatch.setattr(spool_module, "make_private_dirs", mkdirs)
    registry = CollectorRegistry()
    s = await asyncio.wait_for(
        Spool.open(tmp_path / "tenant", max_bytes=1 << 20, stalls=DiskStalls(registry)),
        DEADLINE_S,
    )
    assert failures == 0
    assert gauge(registry, "logferry_disk_full_stalls_total") == 1
    assert gauge(registry, "logferry_disk_full") == 0
    assert len(disk_full_warnings(caplog)) == 1
    await s.close()


def damage_first_frame(directory: Path) -> None:
    (segment,) = directory.glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[60] ^= 0xFF
    segment.write_bytes(bytes(data))


async def test_recovery_on_a_full_volume_waits_and_then_quarantines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from logferry.common.spool import recovery as spool_recovery

    s = await Spool.open(tmp_path, max_bytes=1 << 20)
    await s.append([b"a" * 100])
    await s.append([b"b" * 100])
    await s.close()
    damage_first_frame(tmp_path)  # recovery rewrites the segment without it
    real = spool_recovery.write_file_atomic
    failures = 2

    def rewrite(path: str, data: bytes, **kwargs: int) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, **kwargs)

    monkeypatch.setattr(spool_recovery, "write_file_atomic", rewrite)
    s = await asyncio.wait_for(Spool.open(tmp_path, max_bytes=1 << 20), DEADLINE_S)
    assert failures == 0
    assert s.quarantined_frames == 1
    assert await read_all(s) == [b"b" * 100]
    await s.close()
