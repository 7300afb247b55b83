"""The fast path is an optimisation, never a second meaning: for any file content and any way
of reading it, the reader with and without it makes byte-identical entries and the same
checkpoints. Inputs mix everything that makes the fast path stop: split lines of both runtimes,
malformed lines, lines at the length cap, zone offsets, short fractions, second changes."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logferry.forwarder.entries import kubernetes_raw
from logferry.forwarder.formats import Format
from logferry.forwarder.reader import Checkpoint, SourceReader

MAX_LINE = 160  # docker lines here are 70-100 bytes plus the text
KUBE = kubernetes_raw({"namespace_name": "ns", "pod_name": "p"})

stamps = st.sampled_from(
    [
        "2026-11-25T19:50:31.123456789Z",
        "2026-11-25T19:50:31.5Z",
        "2026-11-25T19:50:31.12Z",
        "2026-11-25T19:50:31Z",
        "2026-11-25T19:50:32.000000001Z",
        "2026-11-25T21:50:31.123+02:00",
        "2026-11-25T21:50:31.5Z",  # the same wall-clock second as above, in UTC
        "2026-11-25T19:50:31.1234567890Z",  # ten digits: malformed
        "2026-11-25T19:50:31.12a4Z",  # malformed
        "1969-12-31T23:59:59.000000001Z",  # before EventTime: malformed
    ]
)
texts = st.one_of(
    st.text("abc é✓", max_size=8),
    st.text("x", min_size=MAX_LINE - 100, max_size=MAX_LINE + 8),  # around the cap
)


@st.composite
def docker_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["full", "full", "full", "part", "garbage", "badstream"]))
    text = draw(texts)
    if kind == "garbage":
        return text.encode() + b"\n"
    stream = "stdin" if kind == "badstream" else draw(st.sampled_from(["stdout", "stderr"]))
    log = text if kind == "part" else text + "\n"
    return json.dumps({"log": log, "stream": stream, "time": draw(stamps)}).encode() + b"\n"


@st.composite
def cri_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["F", "F", "F", "P", "garbage", "bare"]))
    text = draw(texts).encode()
    if kind == "garbage":
        return text + b"\n"
    stream = draw(st.sampled_from(["stdout", "stderr"]))
    if kind == "bare":
        return f"{draw(stamps)} {stream} F".encode() + b"\n"
    return f"{draw(stamps)} {stream} {kind} ".encode() + text + b"\n"


def read_all(fmt: Format, data: bytes, chunks: list[int], *, fast: bool) -> tuple[bytes, list]:
    reader = SourceReader(
        Checkpoint(0, 0), MAX_LINE, fmt=fmt, source="src", kubernetes=KUBE, fast=fast
    )
    entries, checkpoints = [], []
    position = 0
    sizes = iter(chunks)
    while position < len(data):
        size = max(1, next(sizes, 100_000))  # after the drawn sizes: the rest at once
        result = reader.feed(data[position : position + size])
        position += size
        entries += result.records
        checkpoints.append(result.checkpoint)
    final = reader.finish()
    entries += final.records
    checkpoints.append(final.checkpoint)
    return msgspec.msgpack.encode(entries), checkpoints


@settings(max_examples=300, deadline=None)
@given(
    fmt=st.sampled_from(["docker", "cri"]),
    data=st.data(),
    chunks=st.lists(st.integers(1, 1500), max_size=6),
)
def test_fast_and_general_paths_agree(fmt: Format, data: st.DataObject, chunks: list[int]) -> None:
    lines = data.draw(st.lists(docker_lines() if fmt == "docker" else cri_lines(), max_size=25))
    content = b"".join(lines)
    fast = read_all(fmt, content, chunks, fast=True)
    general = read_all(fmt, content, chunks, fast=False)
    assert fast == general


def test_fast_path_takes_plain_lines_and_hands_over_at_a_split_line() -> None:
    plain = [
        json.dumps({"log": f"m{n}\n", "stream": "stdout", "time": "2026-11-25T19:50:31.1Z"})
        for n in range(3)
    ]
    split = json.dumps({"log": "half", "stream": "stdout", "time": "2026-11-25T19:50:31.2Z"})
    rest = json.dumps({"log": "-done\n", "stream": "stdout", "time": "2026-11-25T19:50:31.3Z"})
    content = ("\n".join([*plain, split, rest]) + "\n").encode()
    reader = SourceReader(Checkpoint(0, 0), MAX_LINE, source="src", kubernetes=KUBE)
    result = reader.feed(content)
    assert [(e.seq, e.record.log) for e in result.records] == [
        (0, "m0"),
        (1, "m1"),
        (2, "m2"),
        (3, "half-done"),
    ]
    assert result.records[3].offset == sum(len(p) + 1 for p in plain)
    assert result.checkpoint == Checkpoint(len(content), 4)


STAMP_SEQUENCES = [
    # A zone offset must not seed the same-second shortcut for a UTC stamp of the same digits.
    ["2026-11-25T21:50:31.123+02:00", "2026-11-25T21:50:31.5Z"],
    ["2026-11-25T21:50:31.5Z", "2026-11-25T21:50:31.123+02:00", "2026-11-25T21:50:31.7Z"],
    ["2026-11-25T19:50:31Z", "2026-11-25T19:50:31.000000001Z", "2026-11-25T19:50:31.9Z"],
    ["2026-11-25T19:50:31.999999999Z", "2026-11-25T19:50:32.000000001Z"],
    ["2026-11-25T19:50:31.1Z", "2026-11-25T19:50:31.1234567890Z", "2026-11-25T19:50:31.2Z"],
    ["2026-11-25T19:50:31.1Z", "2026-11-25t19:50:31.3z", "2026-11-25T19:50:31.2Z"],
    ["2106-02-07T06:28:15.999999999Z", "2106-02-07T06:28:16Z"],
]


@pytest.mark.parametrize("stamps", STAMP_SEQUENCES)
@pytest.mark.parametrize("fmt", ["docker", "cri"])
def test_fast_and_general_paths_agree_on_tricky_timestamps(fmt: Format, stamps: list[str]) -> None:
    if fmt == "docker":
        lines = [json.dumps({"log": "a\n", "stream": "stdout", "time": t}) for t in stamps]
    else:
        lines = [f"{t} stdout F a" for t in stamps]
    content = ("\n".join(lines) + "\n").encode()
    assert read_all(fmt, content, [], fast=True) == read_all(fmt, content, [], fast=False)
