"""Multiline at the source: traces joined per file and stream before the spool, the same way
whenever and however the file is read, and never a checkpoint inside an open group."""

from __future__ import annotations

import dataclasses
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from logferry.common.protocol import decode_entries
from logferry.forwarder.entries import block_stream
from logferry.forwarder.metadata import parse_file_name
from logferry.forwarder.multiline import MultilineRule
from logferry.forwarder.positions import PositionStore, fingerprint, resolve
from logferry.forwarder.tail import FileTail, TailStatus

CID = "c" * 64
BASE_S = 1_780_000_000  # a fixed start: line times are the test's, not the clock's


def cri(text: str, at_ms: int, stream: str = "stdout") -> bytes:
    stamp = datetime.fromtimestamp(BASE_S + at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return f"{stamp}000Z {stream} F {text}\n".encode()


JAVA_TRACE = [
    "ERROR request failed",
    "java.lang.IllegalStateException: boom",
    "\tat com.example.Service.handle(Service.java:42)",
    "\tat com.example.Main.main(Main.java:7)",
    "Caused by: java.io.IOException: disk",
    "\t... 2 more",
]


def open_tail(tmp_path: Path, path: Path, rule: str | None = "java", **kw: Any) -> FileTail:
    store = PositionStore(str(tmp_path / "positions"))
    meta = parse_file_name(f"/var/log/containers/app-1_ns_main-{CID}.log", "node-1")
    assert meta is not None
    state, _ = resolve(store, "node-1", str(path), os.stat(path), fingerprint(str(path)))
    tail = FileTail.open(str(path), state, meta, max_line_bytes=1 << 20)
    if rule is not None:
        tail = FileTail(
            state,
            meta,
            tail.fd,
            1 << 20,
            multiline=MultilineRule.preset(rule),
            **kw,
        )
    return tail


def records(blocks: list[bytes]) -> list[dict[str, Any]]:
    return [r for block in blocks for _t, r in decode_entries(block_stream(block))]


def read_all(tail: FileTail, budget: int = 1 << 20) -> tuple[list[dict[str, Any]], Any]:
    out: list[dict[str, Any]] = []
    checkpoint = None
    while True:
        batch = tail.read(budget)
        out += records(batch.entries)
        checkpoint = batch.checkpoint
        if batch.status is TailStatus.IDLE and not batch.entries:
            return out, checkpoint


def test_a_java_trace_becomes_one_record_covering_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    lines = ["before", *JAVA_TRACE, "after"]
    path.write_bytes(b"".join(cri(t, n) for n, t in enumerate(lines)))
    tail = open_tail(tmp_path, path)
    batch = tail.read(1 << 20)
    got = records(batch.entries)
    # "after" could still be followed by its own frames: held, and the checkpoint with it.
    assert [r["log"] for r in got] == ["before", "\n".join(JAVA_TRACE)]
    trace = got[1]["_lf"]
    assert (trace["seq"], trace["seq_end"]) == (1, 6)
    assert "seq_end" not in got[0]["_lf"]
    # Never past the held line's start: here the last one given out before it (the start).
    assert batch.checkpoint == tail.reader.start
    assert tail.joiner is not None
    assert tail.joiner.pending_lines == 1
    assert tail.joiner.joined_lines == 5
    # Its time is long past (these lines are dated in the past): the idle read lets it go.
    rest = tail.read(1 << 20)
    assert [r["log"] for r in records(rest.entries)] == ["after"]
    assert rest.checkpoint.offset == path.stat().st_size


@pytest.mark.parametrize("budget", [64, 200, 1 << 20])
def test_any_read_size_and_a_restart_at_any_checkpoint_give_the_same_records(
    tmp_path: Path, budget: int
) -> None:
    path = tmp_path / "0.log"
    lines = []
    for n in range(30):
        lines += [f"INFO step {n}", *(JAVA_TRACE if n % 3 == 0 else [])]
    path.write_bytes(b"".join(cri(t, n) for n, t in enumerate(lines)))
    whole = open_tail(tmp_path, path)
    expected = read_all(whole)[0] + records(whole.finish().entries)

    tail = open_tail(tmp_path, path, read_bytes=budget)
    got: list[dict[str, Any]] = []
    checkpoints = []
    while True:
        batch = tail.read(budget)
        got += records(batch.entries)
        checkpoints.append(batch.checkpoint)
        if batch.status is TailStatus.IDLE:
            break
    got += records(tail.finish().entries)
    assert got == expected
    # From every checkpoint given out, a new reader makes exactly the records past it.
    for checkpoint in checkpoints[:: max(1, len(checkpoints) // 8)]:
        state = dataclasses.replace(
            tail.state, offset=checkpoint.offset, next_seq=checkpoint.next_seq
        )
        again = FileTail(
            state, tail.meta, os.open(path, os.O_RDONLY), 1 << 20, multiline=tail.multiline
        )
        tail_records = read_all(again)[0] + records(again.finish().entries)
        assert tail_records == [r for r in expected if r["_lf"]["seq"] >= checkpoint.next_seq]
        again.close()
    tail.close()


def test_another_stream_a_time_gap_and_the_caps_end_a_group(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    chunks = [
        cri("ERROR one", 0),
        cri("\tat a", 1),
        cri("\tat b", 2, stream="stderr"),  # another stream: not joined
        cri("ERROR two", 3),
        cri("\tat c", 3000),  # 3 s later: past the 1 s timeout
        cri("ERROR three", 3001),
        *[cri(f"\tat f{n}", 3002 + n) for n in range(7)],  # 8 lines, cap 5: split
    ]
    path.write_bytes(b"".join(chunks))
    tail = open_tail(tmp_path, path, multiline_max_lines=5)
    got, _ = read_all(tail)
    got += records(tail.finish().entries)
    spans = [(r["_lf"]["seq"], r["_lf"].get("seq_end")) for r in got]
    assert spans == [(0, 1), (2, None), (3, None), (4, None), (5, 9), (10, 12)]
    assert sum(1 + (e - s if e else 0) for s, e in spans) == len(chunks)  # nothing dropped
    assert tail.joiner is not None
    assert tail.joiner.split_groups == 1


def test_an_idle_file_flushes_its_last_group_once_the_timeout_passed(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    now_ms = int((time.time() - BASE_S) * 1000)
    path.write_bytes(cri("ERROR x", now_ms) + cri("\tat y", now_ms))
    tail = open_tail(tmp_path, path, multiline_timeout_s=0.2)
    batch = tail.read(1 << 20)
    assert records(batch.entries) == []  # held: more frames may come
    assert batch.checkpoint.next_seq == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        batch = tail.read(1 << 20)
        if batch.entries:
            break
    (joined,) = records(batch.entries)
    assert joined["log"] == "ERROR x\n\tat y"
    assert batch.checkpoint.offset == path.stat().st_size
    assert batch.checkpoint.next_seq == 2


def test_presets_know_their_languages() -> None:
    python = MultilineRule.preset("python")
    assert python.continues("Traceback (most recent call last):")
    assert python.continues('  File "app.py", line 3, in <module>')
    assert python.continues("ValueError: bad")
    assert not python.continues("INFO started")
    go = MultilineRule.preset("go")
    assert go.continues("goroutine 1 [running]:")
    assert go.continues("main.main()")
    assert go.continues("\t/app/main.go:12 +0x1d")
    assert go.continues("")
    assert not go.continues("panic: boom")
    java = MultilineRule.preset("java")
    assert java.continues("\tat x.y(Z.java:1)")
    assert java.continues("Caused by: java.io.IOException")
    assert not java.continues("2026-11-29 ERROR failed")
    assert java.continues("java.lang.IllegalStateException: boom")
    assert not java.continues("Exception handling is on")
    custom = MultilineRule.of("c", r"^\d{4}-", None)
    assert custom.continues("  more")
    assert not custom.continues("2026-11-29 x")
