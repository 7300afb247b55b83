"""Recovery of a damaged spool on open: quarantine, counters, and nothing undamaged lost."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from logferry.common.errors import SpoolCorruptError
from logferry.common.spool import Spool
from logferry.common.spool.segment import FrameHeader, parse_segment_name, scan_frames

SEGMENT_MAX = 2048


@dataclass(frozen=True)
class Frame:
    """Where one appended frame lives on disk, and what it holds."""

    segment: str
    offset: int
    size: int
    first_seq: int
    records: tuple[bytes, ...]


def record(frame: int, index: int) -> bytes:
    return b"frame-%04d-rec-%02d:" % (frame, index) + b"x" * (frame % 37)


async def build_spool(directory: Path, frames: int = 60, seed: int = 0) -> list[Frame]:
    """A closed spool of several segments; returns the layout of every frame."""
    rng = random.Random(seed)
    spool = await Spool.open(directory, max_bytes=1 << 20, segment_max_bytes=SEGMENT_MAX)
    appended: dict[int, tuple[bytes, ...]] = {}
    for i in range(frames):
        records = tuple(record(i, j) for j in range(rng.randint(1, 5)))
        appended[await spool.append(list(records))] = records
    await spool.close()
    layout: list[Frame] = []
    for name in segments(directory):
        data = (directory / name).read_bytes()
        for item in scan_frames(data, 0):
            assert isinstance(item, FrameHeader)
            layout.append(
                Frame(name, item.offset, item.size, item.first_seq, appended[item.first_seq])
            )
    assert sum(len(f.records) for f in layout) == sum(len(r) for r in appended.values())
    return layout


def segments(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if parse_segment_name(n) is not None)


async def deliver_all(directory: Path) -> tuple[Spool, dict[int, bytes]]:
    """Open, read everything (checking order and uniqueness), close; seq -> record."""
    spool = await Spool.open(directory, max_bytes=1 << 20, segment_max_bytes=SEGMENT_MAX)
    delivered: dict[int, bytes] = {}
    last = -1
    while (batch := await spool.read(max_records=7, max_bytes=4096, timeout_s=0)) is not None:
        for seq, rec in zip(range(batch.first_seq, batch.end_seq), batch.records, strict=True):
            assert seq not in delivered, f"seq {seq} delivered twice"
            assert seq > last, "out of order"
            delivered[seq] = rec
            last = seq
    await spool.close()
    return spool, delivered


def expected_records(frames: list[Frame]) -> dict[int, bytes]:
    return {f.first_seq + i: r for f in frames for i, r in enumerate(f.records)}


def check_delivery(delivered: dict[int, bytes], layout: list[Frame], lost: set[Frame]) -> None:
    """Every undamaged frame exactly once with its own content; nothing invented."""
    everything = expected_records(layout)
    for seq, rec in delivered.items():
        assert everything.get(seq) == rec, f"seq {seq} delivered with wrong content"
    kept = expected_records([f for f in layout if f not in lost])
    missing = sorted(set(kept) - set(delivered))
    assert not missing, f"undamaged records lost: {missing[:10]}"


@pytest.mark.parametrize("seed", range(16))
async def test_bit_flips_lose_only_the_damaged_frames(tmp_path: Path, seed: int) -> None:
    layout = await build_spool(tmp_path, seed=seed)
    rng = random.Random(seed)
    damaged: set[Frame] = set()
    for _ in range(rng.randint(1, 4)):
        frame = rng.choice(layout)
        offset = frame.offset + rng.randrange(frame.size)
        path = tmp_path / frame.segment
        data = bytearray(path.read_bytes())
        data[offset] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        damaged.add(frame)

    spool, delivered = await deliver_all(tmp_path)

    check_delivery(delivered, layout, damaged)
    assert set(delivered) == set(expected_records([f for f in layout if f not in damaged]))
    assert 1 <= spool.quarantined_frames <= len(damaged)
    assert spool.quarantined_bytes == sum(f.size for f in damaged)
    quarantined = os.listdir(tmp_path / "quarantine")
    assert len(quarantined) == spool.quarantined_frames
    reported: set[int] = set()
    for event in spool.quarantine_events:
        if event.missing_seqs is not None:
            reported.update(range(*event.missing_seqs))
    newest = max(layout, key=lambda f: f.first_seq)
    for frame in damaged - {newest}:  # the newest frame has no right neighbour
        assert set(range(frame.first_seq, frame.first_seq + len(frame.records))) <= reported
    # The segments were rewritten: a second open finds no damage and the same records.
    again, delivered_again = await deliver_all(tmp_path)
    assert again.quarantined_frames == 0
    assert delivered_again == delivered


@pytest.mark.parametrize("seed", range(12))
async def test_truncation_loses_only_the_torn_tail(tmp_path: Path, seed: int) -> None:
    layout = await build_spool(tmp_path, seed=seed)
    rng = random.Random(seed)
    name = rng.choice(segments(tmp_path))
    path = tmp_path / name
    length = rng.randrange(path.stat().st_size)
    os.truncate(path, length)
    lost = {f for f in layout if f.segment == name and f.offset + f.size > length}
    torn = any(f.offset < length for f in lost)

    spool, delivered = await deliver_all(tmp_path)

    check_delivery(delivered, layout, lost)
    assert spool.quarantined_frames == int(torn)
    if name != segments_of(layout)[-1] and lost:
        # Records missing before the next segment: reported with their range.
        first = min(f.first_seq for f in lost)
        assert any(e.missing_seqs and e.missing_seqs[0] == first for e in spool.quarantine_events)


def segments_of(layout: list[Frame]) -> list[str]:
    return sorted({f.segment for f in layout})


async def test_appends_after_a_torn_tail_continue_the_sequence(tmp_path: Path) -> None:
    layout = await build_spool(tmp_path, frames=10)
    last = layout[-1]
    os.truncate(tmp_path / last.segment, last.offset + 5)
    spool = await Spool.open(tmp_path, max_bytes=1 << 20)
    assert spool.quarantined_frames == 1
    assert await spool.append([b"new"]) == last.first_seq  # never acked: number reused
    await spool.close()


async def test_a_damaged_commit_file_falls_back_to_the_oldest_segment(tmp_path: Path) -> None:
    layout = await build_spool(tmp_path, frames=20)
    spool = await Spool.open(tmp_path, max_bytes=1 << 20, segment_max_bytes=SEGMENT_MAX)
    batch = await spool.read(max_records=30, max_bytes=1 << 20)
    assert batch is not None
    spool.commit(batch)
    await spool.close()
    (tmp_path / "committed").write_bytes(b"\x00garbage\xff" * 3)

    spool, delivered = await deliver_all(tmp_path)

    assert spool.commit_file_resets == 1
    oldest = int(segments(tmp_path)[0].split(".")[0])
    assert min(delivered) == oldest  # resend rather than lose
    check_delivery(delivered, layout, {f for f in layout if f.first_seq < oldest})
    again, _ = await deliver_all(tmp_path)
    assert again.commit_file_resets == 0


async def test_a_missing_commit_file_shows_in_commit_file_resets_and_everything_is_resent(
    tmp_path: Path,
) -> None:
    layout = await build_spool(tmp_path, frames=10)
    os.unlink(tmp_path / "committed")
    spool, delivered = await deliver_all(tmp_path)
    assert spool.commit_file_resets == 1
    assert delivered == expected_records(layout)


async def test_empty_segment_files_open(tmp_path: Path) -> None:
    layout = await build_spool(tmp_path, frames=10)
    end = max(f.first_seq + len(f.records) for f in layout)
    (tmp_path / f"{end:020d}.seg").write_bytes(b"")
    (tmp_path / f"{end + 5:020d}.seg").write_bytes(b"")
    spool, delivered = await deliver_all(tmp_path)
    assert delivered == expected_records(layout)
    assert spool.next_seq >= end + 5  # never reuse a number a file name claimed
    assert not (tmp_path / f"{end + 5:020d}.seg").exists()  # nothing to keep in it


async def test_an_empty_directory_with_only_a_zero_length_segment_opens(tmp_path: Path) -> None:
    (tmp_path / f"{0:020d}.seg").write_bytes(b"")
    spool = await Spool.open(tmp_path, max_bytes=1 << 20)
    assert await spool.append([b"a"]) == 0
    await spool.close()


async def test_a_segment_of_garbage_is_quarantined_whole(tmp_path: Path) -> None:
    layout = await build_spool(tmp_path, frames=30)
    name = segments(tmp_path)[1]
    size = (tmp_path / name).stat().st_size
    (tmp_path / name).write_bytes(random.Random(1).randbytes(size))
    spool, delivered = await deliver_all(tmp_path)
    assert spool.quarantined_frames == 1
    assert spool.quarantined_bytes == size
    check_delivery(delivered, layout, {f for f in layout if f.segment == name})
    lost = [f for f in layout if f.segment == name]
    event = spool.quarantine_events[0]
    assert event.missing_seqs == (lost[0].first_seq, lost[-1].first_seq + len(lost[-1].records))


async def test_leftover_tmp_files_are_ignored(tmp_path: Path) -> None:
    layout = await build_spool(tmp_path, frames=5)
    (tmp_path / "committed.tmp").write_bytes(b"half")
    (tmp_path / f"{layout[0].first_seq:020d}.seg.tmp").write_bytes(b"half a rewrite")
    _, delivered = await deliver_all(tmp_path)
    assert delivered == expected_records(layout)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


async def test_damage_after_open_raises_corrupt_and_reopen_quarantines(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path, max_bytes=1 << 20)
    await spool.append([b"good"])
    await spool.append([b"will-rot"])
    await spool.append([b"after"])
    path = tmp_path / segments(tmp_path)[0]
    data = bytearray(path.read_bytes())
    data[data.index(b"will-rot")] ^= 0x01
    path.write_bytes(bytes(data))
    batch = await spool.read(max_records=1, max_bytes=100)
    assert batch is not None
    assert batch.records == [b"good"]
    spool.commit(batch)
    with pytest.raises(SpoolCorruptError):
        await spool.read(max_records=10, max_bytes=100)
    assert spool.corrupt_reads == 1
    await spool.close()
    spool, delivered = await deliver_all(tmp_path)
    assert list(delivered.values()) == [b"after"]
    assert spool.quarantine_events[0].missing_seqs == (1, 2)
