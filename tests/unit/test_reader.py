"""Numbering is a property of the file, not of how it was read: same records, same offsets,
same seqs, whatever the chunking, and a resume from any checkpoint reproduces them."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from logferry.forwarder.entries import Entry
from logferry.forwarder.reader import Checkpoint, SourceReader

TS = "2026-11-25T19:50:31.123456789Z"


def cri(stream: str, tag: str, msg: str) -> bytes:
    return f"{TS} {stream} {tag} {msg}\n".encode()


def docker(stream: str, msg: str, partial: bool) -> bytes:
    return (
        json.dumps({"log": msg + ("" if partial else "\n"), "stream": stream, "time": TS}).encode()
        + b"\n"
    )


# A log: a list of logical lines, each (stream, parts), written with the streams' parts
# interleaved the way a runtime does.
logical = st.tuples(
    st.sampled_from(["stdout", "stderr"]),
    st.lists(st.text("abcxyz ", min_size=0, max_size=12), min_size=1, max_size=4),
)


def render(fmt: str, lines: list[tuple[str, list[str]]], order: list[int]) -> bytes:
    """Write the parts, picking which stream advances next from ``order``."""
    queues: dict[str, list[list[bytes]]] = {"stdout": [], "stderr": []}
    for stream, parts in lines:
        physical = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if fmt == "cri":
                physical.append(cri(stream, "F" if last else "P", part))
            else:
                physical.append(docker(stream, part, partial=not last))
        queues[stream].append(physical)
    out = []
    pick = iter(order)
    while queues["stdout"] or queues["stderr"]:
        ready = [s for s in ("stdout", "stderr") if queues[s]]
        stream = ready[next(pick, 0) % len(ready)]
        out.append(queues[stream][0].pop(0))
        if not queues[stream][0]:
            queues[stream].pop(0)
    return b"".join(out)


def read_all(
    data: bytes, start: Checkpoint, chunks: list[int]
) -> tuple[list[Entry], list[Checkpoint]]:
    reader = SourceReader(start, max_line_bytes=1 << 20)
    records, checkpoints = [], []
    position = start.offset
    sizes = iter(chunks)
    while position < len(data):
        size = max(1, next(sizes, 64))
        result = reader.feed(data[position : position + size])
        position += size
        records += result.records
        checkpoints.append(result.checkpoint)
    final = reader.finish()
    return records + final.records, [*checkpoints, final.checkpoint]


def key(records: list[Entry]) -> list[tuple[int, int, str]]:
    return [(r.seq, r.offset, r.record.log) for r in records]


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["cri", "docker"]),
    st.lists(logical, min_size=1, max_size=25),
    st.lists(st.integers(0, 7), max_size=200),
    st.lists(st.integers(1, 300), max_size=200),
    st.lists(st.integers(1, 300), max_size=200),
)
def test_seqs_are_offset_ranks_whatever_the_chunking(
    fmt: str,
    lines: list[tuple[str, list[str]]],
    order: list[int],
    chunks_a: list[int],
    chunks_b: list[int],
) -> None:
    data = render(fmt, lines, order)
    first, _ = read_all(data, Checkpoint(0, 0), chunks_a)
    second, _ = read_all(data, Checkpoint(0, 0), chunks_b)
    assert key(first) == key(second)
    assert [r.seq for r in first] == list(range(len(lines)))
    assert [r.offset for r in first] == sorted(r.offset for r in first)
    assert sorted(r.record.log for r in first) == sorted("".join(parts) for _s, parts in lines)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["cri", "docker"]),
    st.lists(logical, min_size=1, max_size=25),
    st.lists(st.integers(0, 7), max_size=200),
    st.lists(st.integers(1, 300), max_size=200),
    st.integers(0, 10_000),
)
def test_resuming_from_any_checkpoint_reproduces_the_rest_exactly(
    fmt: str, lines: list[tuple[str, list[str]]], order: list[int], chunks: list[int], pick: int
) -> None:
    data = render(fmt, lines, order)
    full, checkpoints = read_all(data, Checkpoint(0, 0), chunks)
    crash_at = checkpoints[pick % len(checkpoints)]
    resumed, _ = read_all(data, crash_at, chunks)
    # What the restarted reader emits is exactly the records from the checkpoint's seq on.
    assert key(resumed) == key([r for r in full if r.seq >= crash_at.next_seq])
    if crash_at.offset < len(data):
        assert all(r.offset >= crash_at.offset for r in resumed)


def test_an_open_split_line_holds_back_later_records_and_the_checkpoint() -> None:
    reader = SourceReader(Checkpoint(0, 0), max_line_bytes=1 << 20)
    head = cri("stdout", "P", "split-")
    other = cri("stderr", "F", "whole")
    result = reader.feed(head + other)
    assert result.records == []  # stderr waits: stdout's split line starts before it
    assert result.checkpoint == Checkpoint(0, 0)
    tail = cri("stdout", "F", "done")
    result = reader.feed(tail)
    assert [(r.seq, r.record.log) for r in result.records] == [(0, "split-done"), (1, "whole")]
    assert result.checkpoint == Checkpoint(len(head + other + tail), 2)


def test_a_line_without_newline_beyond_the_cap_becomes_a_malformed_record() -> None:
    reader = SourceReader(Checkpoint(0, 0), max_line_bytes=16, max_carry_bytes=100, fmt="cri")
    result = reader.feed(b"x" * 250)
    # two 100-byte pieces, each cut to the 16-byte line cap and flagged, none dropped
    assert [(r.offset, len(r.record.log)) for r in result.records] == [(0, 16), (100, 16)]
    assert all(r.record.lf.malformed and r.record.lf.truncated for r in result.records)
    final = reader.finish()
    assert [(r.offset, len(r.record.log)) for r in final.records] == [(200, 16)]
    assert final.checkpoint == Checkpoint(250, 3)
