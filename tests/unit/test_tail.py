"""Tailing real files: records with identity, rotation drained through the open descriptor,
truncation noticed, deleted files released after draining."""

from __future__ import annotations

import os
from pathlib import Path

from logferry.common.protocol import decode_entries
from logferry.forwarder.entries import block_stream
from logferry.forwarder.metadata import parse_file_name
from logferry.forwarder.positions import PositionStore, fingerprint, resolve
from logferry.forwarder.tail import FileTail, TailStatus

CID = "b" * 64
TS = "2026-11-25T19:50:31.000000001Z"


def line(n: int, tag: str = "F") -> bytes:
    return f"{TS} stdout {tag} message {n}\n".encode()


def open_tail(tmp_path: Path, path: Path) -> FileTail:
    store = PositionStore(str(tmp_path / "positions"))
    meta = parse_file_name(f"/var/log/containers/app-1_ns_main-{CID}.log", "node-1")
    assert meta is not None
    state, _resolution = resolve(store, "node-1", str(path), os.stat(path), fingerprint(str(path)))
    return FileTail.open(str(path), state, meta, max_line_bytes=1 << 20)


def records(entries: list[bytes]) -> list[dict[str, object]]:
    return [record for block in entries for _time, record in decode_entries(block_stream(block))]


def test_lines_become_records_with_ids_and_contiguous_seqs(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(b"".join(line(n) for n in range(100)))
    tail = open_tail(tmp_path, path)
    batch = tail.read(budget_bytes=1 << 20)
    assert batch.status is TailStatus.DATA
    got = records(batch.entries)
    assert [r["log"] for r in got] == [f"message {n}" for n in range(100)]
    assert [r["_lf"]["seq"] for r in got] == list(range(100))  # type: ignore[index]
    width = len(line(0))
    assert got[3]["_lf"]["id"] == f"{tail.state.source_id}-{3 * width:x}"  # type: ignore[index]
    assert got[0]["kubernetes"]["namespace_name"] == "ns"  # type: ignore[index]
    assert batch.checkpoint.offset == path.stat().st_size
    assert batch.checkpoint.next_seq == 100
    assert tail.read(budget_bytes=1 << 20).status is TailStatus.IDLE
    tail.close()
    tail.close()


def test_a_renamed_file_is_drained_through_its_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(line(0))
    tail = open_tail(tmp_path, path)
    assert len(tail.read(1 << 20).entries) == 1
    with path.open("ab") as f:
        f.write(line(1) + line(2, "P"))
    os.rename(path, tmp_path / "0.log.20261125-195031")
    path.write_bytes(line(99))  # the new 0.log is another source
    with (tmp_path / "0.log.20261125-195031").open("ab") as f:
        f.write(line(3))  # the writer still held the old file
    assert tail.lag_bytes() > 0
    got = records(tail.read(1 << 20).entries)
    assert [r["log"] for r in got] == ["message 1", "message 2message 3"]
    assert tail.lag_bytes() == 0
    tail.close()


def test_a_split_line_left_at_the_end_of_a_deleted_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(line(0) + line(1, "P"))
    tail = open_tail(tmp_path, path)
    first = tail.read(1 << 20)
    assert [r["log"] for r in records(first.entries)] == ["message 0"]
    assert first.checkpoint.offset == len(line(0))  # the open split line is re-read on restart
    path.unlink()
    last = tail.finish()
    (record,) = records(last.entries)
    assert record["log"] == "message 1"
    assert record["_lf"]["partial_at_eof"] is True  # type: ignore[index]
    assert last.checkpoint.offset == len(line(0) + line(1, "P"))
    tail.close()


def test_truncation_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(b"".join(line(n) for n in range(10)))
    tail = open_tail(tmp_path, path)
    tail.read(1 << 20)
    os.truncate(path, 0)
    path.write_bytes(line(0))
    assert tail.read(1 << 20).status is TailStatus.TRUNCATED
    tail.close()


def test_reading_is_bounded_by_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(b"".join(line(n) for n in range(20_000)))
    tail = open_tail(tmp_path, path)
    tail.read_bytes = 64 * 1024
    batch = tail.read(budget_bytes=100 * 1024)
    assert batch.bytes_read == 128 * 1024  # whole chunks until the budget is spent
    total = len(records(batch.entries))
    while (more := tail.read(budget_bytes=1 << 20)).status is TailStatus.DATA:
        total += len(records(more.entries))
    assert total == 20_000
    tail.close()
