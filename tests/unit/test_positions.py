"""Positions: restart continuity, rotation, truncation, inode reuse and a crash-safe file."""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from logferry.common.records import source_id
from logferry.common.spool import Spool
from logferry.forwarder.positions import (
    FINGERPRINT_BYTES,
    PositionStore,
    Resolution,
    SourceState,
    decode_positions,
    encode_positions,
    fingerprint,
    fingerprint_length,
    resolve,
)
from tests.support.forwarder_app import forwarder_in, forwarder_running
from tests.support.kubelet import container_log, cri_lines
from tests.support.net import wait_until

NODE = "node-a"


@dataclass
class FakeStat:
    st_dev: int
    st_ino: int
    st_size: int


def write(path: Path, data: bytes, mode: str = "ab") -> None:
    with open(path, mode) as f:
        f.write(data)


def found(store: PositionStore, path: Path) -> tuple[SourceState, Resolution]:
    """What a tailer does when it finds ``path``: open, fstat, fingerprint, resolve."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return resolve(store, NODE, str(path), os.fstat(fd), fingerprint(fd), fd=fd)
    finally:
        os.close(fd)


def line(i: int) -> bytes:
    return f"2024-01-01T00:00:00.{i:09d}Z stdout F line {i}\n".encode()


def test_fingerprint_records_how_many_bytes_it_covers(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    write(log, b"x" * 10)
    assert fingerprint_length(fingerprint(log)) == 10
    write(log, b"y" * 5000)
    assert fingerprint_length(fingerprint(log)) == FINGERPRINT_BYTES
    assert fingerprint(log, length=10) == fingerprint(tmp_path / "a.log", 10)
    fd = os.open(log, os.O_RDONLY)
    try:
        os.lseek(fd, 100, os.SEEK_SET)
        assert fingerprint(fd) == fingerprint(log)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 100  # pread leaves the offset alone
    finally:
        os.close(fd)


def test_source_id_comes_from_node_device_inode_generation() -> None:
    state = SourceState(NODE, 1, 2, 3, "0:00", "/x")
    assert state.source_id == source_id(NODE, 1, 2, 3)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "positions")
    a = SourceState(NODE, 1, 10, 0, "5:ab", "/var/log/a.log", 500, 7)
    b = SourceState(NODE, 1, 11, 2, "1024:cd", "/var/log/b.log.1", 9, 1)
    store.update(a)
    store.update(b)
    assert store.save()
    assert not store.save()  # nothing changed: no write

    again = PositionStore(tmp_path / "positions")
    assert sorted(again.all(), key=lambda s: s.inode) == [a, b]
    assert again.corrupt_loads == 0


def test_restart_resumes_the_same_source_at_its_offset_and_seq(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, line(0) + line(1))
    store = PositionStore(tmp_path / "positions")
    state, how = found(store, log)
    assert how is Resolution.NEW
    assert (state.generation, state.offset, state.next_seq) == (0, 0, 0)
    # The spool made the first two records durable: the caller moves the position.
    store.update(state.advanced(log.stat().st_size, 2))
    store.save()
    write(log, line(2))

    restarted = PositionStore(tmp_path / "positions")
    again, how = found(restarted, log)
    assert how is Resolution.RESUMED
    assert again.source_id == state.source_id
    assert (again.offset, again.next_seq) == (len(line(0) + line(1)), 2)


def test_position_only_moves_when_the_caller_says_so(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, line(0))
    store = PositionStore(tmp_path / "positions")
    found(store, log)
    write(log, line(1) * 100)
    state, _ = found(store, log)
    assert (state.offset, state.next_seq) == (0, 0)


def test_truncation_starts_a_new_generation_with_a_new_source_id(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, line(0) + line(1))
    store = PositionStore(tmp_path / "positions")
    old, _ = found(store, log)
    store.update(old.advanced(log.stat().st_size, 2))
    os.truncate(log, 0)
    write(log, line(5))  # shorter than the saved offset

    new, how = found(store, log)
    assert how is Resolution.TRUNCATED
    assert (new.generation, new.offset, new.next_seq) == (1, 0, 0)
    assert new.source_id != old.source_id
    assert store.get(new.device, new.inode) == new


def test_copytruncate_refilled_past_the_offset_is_a_new_generation(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, line(0) + line(1))
    store = PositionStore(tmp_path / "positions")
    old, _ = found(store, log)
    store.update(old.advanced(len(line(0)), 1))
    # copytruncate: the content is copied away, the file truncated in place, then written to
    # again before the forwarder looks, so it is longer than the saved offset.
    (tmp_path / "0.log.1").write_bytes(log.read_bytes())
    with open(log, "r+b") as f:
        f.truncate(0)
    write(log, line(7) + line(8) + line(9))
    assert log.stat().st_size >= old.offset

    new, how = found(store, log)
    assert how is Resolution.REPLACED
    assert (new.generation, new.offset, new.next_seq) == (1, 0, 0)
    assert new.source_id != old.source_id


def test_rename_rotation_keeps_the_source_and_its_position(tmp_path: Path) -> None:
    live = tmp_path / "0.log"
    write(live, line(0) + line(1))
    store = PositionStore(tmp_path / "positions")
    state, _ = found(store, live)
    store.update(state.advanced(len(line(0)), 1))
    store.save()

    rotated = tmp_path / "0.log.20240101-000000"
    os.rename(live, rotated)
    write(live, line(100))  # kubelet opens a new 0.log

    restarted = PositionStore(tmp_path / "positions")
    moved, how = found(restarted, rotated)
    assert how is Resolution.MOVED
    assert moved.source_id == state.source_id
    assert (moved.offset, moved.next_seq, moved.path) == (len(line(0)), 1, str(rotated))
    fresh, how = found(restarted, live)
    assert how is Resolution.NEW
    assert fresh.source_id != moved.source_id


def test_a_short_file_that_grows_is_the_same_source(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    write(log, line(0))
    store = PositionStore(tmp_path / "positions")
    first, _ = found(store, log)
    assert first.fingerprint_bytes == len(line(0))
    store.update(first.advanced(len(line(0)), 1))
    store.save()
    for i in range(1, 40):
        write(log, line(i))

    grown, how = found(PositionStore(tmp_path / "positions"), log)
    assert how is Resolution.RESUMED
    assert grown.source_id == first.source_id
    assert grown.fingerprint_bytes == FINGERPRINT_BYTES  # widened once the file is long enough
    assert (grown.offset, grown.next_seq) == (len(line(0)), 1)


def test_an_empty_file_that_gets_lines_is_the_same_source(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    log.touch()
    store = PositionStore(tmp_path / "positions")
    first, _ = found(store, log)
    write(log, line(0))
    again, how = found(store, log)
    assert how is Resolution.RESUMED
    assert again.source_id == first.source_id


def test_inode_reuse_by_a_different_file_is_a_new_generation(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "positions")
    old_fp = "1024:" + "a" * 32
    old, _ = resolve(store, NODE, "/logs/a.log", FakeStat(1, 42, 4096), old_fp)
    store.update(old.advanced(2000, 10))
    new_fp = "1024:" + "b" * 32

    new, how = resolve(store, NODE, "/logs/b.log", FakeStat(1, 42, 8192), new_fp)
    assert how is Resolution.REPLACED
    assert (new.generation, new.offset, new.next_seq, new.path) == (1, 0, 0, "/logs/b.log")
    assert new.source_id != old.source_id


def test_inode_reused_after_its_source_was_released_never_repeats_a_source_id(
    tmp_path: Path,
) -> None:
    store = PositionStore(tmp_path / "positions")
    old, _ = resolve(store, NODE, "/logs/a.log", FakeStat(1, 42, 100), "100:" + "a" * 32)
    store.remove(1, 42)  # deleted and drained
    store.save()

    restarted = PositionStore(tmp_path / "positions")
    new, how = resolve(restarted, NODE, "/logs/b.log", FakeStat(1, 42, 50), "50:" + "b" * 32)
    assert how is Resolution.NEW
    assert new.generation == old.generation + 1
    assert new.source_id != old.source_id


def test_a_late_update_of_an_old_generation_is_ignored(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "positions")
    old, _ = resolve(store, NODE, "/l", FakeStat(1, 5, 100), "100:" + "a" * 32)
    new, _ = resolve(store, NODE, "/l", FakeStat(1, 5, 10), "10:" + "b" * 32)
    assert not store.update(old.advanced(100, 3))
    assert store.get(1, 5) == new


def test_moving_a_position_backwards_is_refused(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "positions")
    state, _ = resolve(store, NODE, "/l", FakeStat(1, 5, 100), "100:" + "a" * 32)
    store.update(state.advanced(50, 2))
    with pytest.raises(ValueError, match="backwards"):
        store.update(state.advanced(40, 2))


def _saved_store(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "positions"
    store = PositionStore(path)
    store.update(SourceState(NODE, 1, 10, 0, "5:ab", "/var/log/a.log", 500, 7))
    store.save()
    return path, path.read_bytes()


def _flip_a_bit(data: bytes) -> bytes:
    return data[:20] + bytes([data[20] ^ 0x10]) + data[21:]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(_flip_a_bit, id="bit-flip"),
        pytest.param(lambda d: d[: len(d) // 2], id="torn"),
        pytest.param(lambda d: d[:5], id="torn-header"),
        pytest.param(lambda d: b"\x00garbage\xff" * 10, id="garbage"),
        pytest.param(lambda d: b"", id="empty"),
        pytest.param(lambda d: d + b"x", id="trailing-bytes"),
    ],
)
async def test_a_damaged_position_file_is_quarantined_and_counted(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    path, good = _saved_store(tmp_path)
    bad = damage(good)
    path.write_bytes(bad)

    forwarder = forwarder_in(tmp_path)  # it loads tmp_path/positions, as at every start
    store = forwarder.positions
    assert store.corrupt_loads == 1
    assert store.all() == []
    assert not path.exists()
    quarantined = await asyncio.to_thread(lambda: list(tmp_path.glob("positions.corrupt-*")))
    assert len(quarantined) == 1
    assert quarantined[0].read_bytes() == bad

    # Counted where an operator sees it: the forwarder's metric, once it runs.
    def counted() -> float:
        sample = forwarder.registry.get_sample_value("logferry_positions_quarantined_total")
        return sample or 0.0

    async with forwarder_running(forwarder):
        await wait_until(lambda: counted() > 0, timeout_s=10, what="the quarantine counted")
    assert counted() == 1

    # Not a crash loop: the next save and load work.
    store.update(SourceState(NODE, 1, 10, 0, "5:ab", "/var/log/a.log", 0, 0))
    store.save()
    assert PositionStore(path).corrupt_loads == 0


def test_a_well_framed_body_with_a_wrong_shape_is_damage() -> None:
    good = encode_positions([SourceState(NODE, 1, 10, 0, "5:ab", "/a", 5, 1)], [])
    decode_positions(good)
    body = good[12:].replace(b'"offset":5', b'"offset":-5')
    bad = struct.pack("<4sII", b"LFP1", len(body), zlib.crc32(body)) + body
    with pytest.raises(ValueError, match="bad body"):
        decode_positions(bad)


def test_a_crash_before_the_rename_leaves_the_old_file_valid(tmp_path: Path) -> None:
    path, good = _saved_store(tmp_path)
    tmp = tmp_path / "positions.tmp"
    tmp.write_bytes(good[:-7])  # a newer save torn before its rename

    store = PositionStore(path)
    assert store.corrupt_loads == 0
    assert [s.offset for s in store.all()] == [500]
    assert not tmp.exists()
    store.update(store.all()[0].advanced(600, 8))
    store.save()
    assert [s.offset for s in PositionStore(path).all()] == [600]


def test_a_missing_position_file_is_an_empty_store(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "positions")
    assert store.all() == []
    assert store.corrupt_loads == 0
    assert not list(tmp_path.glob("positions.corrupt-*"))


def test_position_files_of_older_versions_still_load() -> None:
    # They carried a "draining" flag per source that nothing ever set: it is ignored now.
    state = SourceState(NODE, 1, 10, 0, "1024:ab", "/var/log/a.log", 4096, 12)
    body = orjson.loads(encode_positions([state], [])[12:])
    body["sources"][0]["draining"] = False
    data = orjson.dumps(body)
    framed = struct.pack("<4sII", b"LFP1", len(data), zlib.crc32(data)) + data
    assert decode_positions(framed) == ([state], [])


async def test_no_line_of_a_new_source_is_spooled_before_the_position_file_knows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Killed after its first lines were spooled and before the next periodic save, then
    # rotated before the restart, a source the file does not know is found by nobody: the
    # rest of its lines would never be read (a chaos run lost 4,322 lines to this).
    log = container_log(tmp_path, "ns-a", "pod-a", body=cri_lines(0, 50, "a"))
    stat = log.path.stat()
    positions = tmp_path / "positions"
    known_at_append: list[bool] = []
    append = Spool.append

    async def spy(self: Spool, records: Sequence[bytes], *, block: bool = True) -> int:
        states = decode_positions(positions.read_bytes())[0] if positions.exists() else []
        known_at_append.append((stat.st_dev, stat.st_ino) in {s.key for s in states})
        return await append(self, records, block=block)

    monkeypatch.setattr(Spool, "append", spy)
    forwarder = forwarder_in(tmp_path)
    async with forwarder_running(forwarder):
        await wait_until(lambda: known_at_append, timeout_s=10, what="the first lines spooled")
    assert known_at_append
    assert all(known_at_append)
