"""Container log formats and partial merge: every line arrives once, whole, at its offset."""

from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logferry.forwarder.formats import Format, ParsedLine, detect_format, parse, parse_rfc3339_ns
from logferry.forwarder.partials import MergedRecord, PartialMerger

T0 = 1_795_636_231_123_456_789  # 2026-11-25T19:50:31.123456789Z
SPLIT = 16 * 1024


def ts(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def docker_line(text: str, stream: str = "stdout", time_ns: int = T0) -> bytes:
    return orjson.dumps({"log": text, "stream": stream, "time": ts(time_ns)}) + b"\n"


def cri_line(text: bytes, stream: str = "stdout", tag: str = "F", time_ns: int = T0) -> bytes:
    return f"{ts(time_ns)} {stream} {tag} ".encode() + text + b"\n"


def docker_split(text: str, stream: str = "stdout", time_ns: int = T0, size: int = SPLIT) -> bytes:
    """A line as docker writes it: parts of ``size`` characters, only the last with a newline."""
    parts = [text[i : i + size] for i in range(0, len(text), size)] or [""]
    parts[-1] += "\n"
    return b"".join(docker_line(p, stream, time_ns + i) for i, p in enumerate(parts))


def cri_split(text: bytes, stream: str = "stdout", time_ns: int = T0, size: int = SPLIT) -> bytes:
    parts = [text[i : i + size] for i in range(0, len(text), size)] or [b""]
    tags = ["P"] * (len(parts) - 1) + ["F"]
    return b"".join(
        cri_line(p, stream, t, time_ns + i)
        for i, (p, t) in enumerate(zip(parts, tags, strict=True))
    )


def read_all(fmt: Format, data: bytes, max_line_bytes: int = 1 << 20) -> list[MergedRecord]:
    result = parse(fmt, data, 0)
    assert result.consumed == len(data)
    merger = PartialMerger(max_line_bytes)
    return merger.feed(result.lines) + merger.flush()


# -- timestamps ----------------------------------------------------------------------


@given(st.integers(0, (2**32 - 1) * 1_000_000_000 + 999_999_999))
def test_timestamp_is_exact_to_the_nanosecond(ns: int) -> None:
    assert parse_rfc3339_ns(ts(ns).encode()) == ns
    assert parse("cri", cri_line(b"x", time_ns=ns), 0).lines[0].time_ns == ns
    assert parse("docker", docker_line("x\n", time_ns=ns), 0).lines[0].time_ns == ns


@given(st.integers(2**32 * 1_000_000_000, 253_402_300_799 * 1_000_000_000 + 999_999_999))
def test_times_an_event_time_cannot_carry_make_the_line_malformed_not_lost(ns: int) -> None:
    with pytest.raises(ValueError, match="EventTime"):
        parse_rfc3339_ns(ts(ns).encode())
    for fmt, raw in (
        ("cri", cri_line(b"x", time_ns=ns)),
        ("docker", docker_line("x\n", time_ns=ns)),
    ):
        (line,) = parse(fmt, raw, 0, last_time_ns=7).lines  # type: ignore[arg-type]
        assert line.malformed
        assert line.text == raw[:-1]
        assert line.time_ns == 7


@given(st.lists(st.integers(T0 - 3 * 10**9, T0 + 3 * 10**9), max_size=30).map(sorted))
def test_timestamps_in_one_buffer_are_exact_across_second_boundaries(times: list[int]) -> None:
    # Exercises the same-second cache: neighbouring lines share or change the second.
    docker = b"".join(docker_line("x\n", time_ns=t) for t in times)
    cri = b"".join(cri_line(b"x", time_ns=t) for t in times)
    assert [line.time_ns for line in parse("docker", docker, 0).lines] == times
    assert [line.time_ns for line in parse("cri", cri, 0).lines] == times
    short = b"".join(cri_line(b"x", time_ns=t).replace(b"Z ", b"+00:00 ") for t in times)
    assert [line.time_ns for line in parse("cri", short, 0).lines] == times


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T19:50:31Z", 1_795_636_231_000_000_000),
        ("2026-11-25T19:50:31.1Z", 1_795_636_231_100_000_000),
        ("2026-11-25T19:50:31.000000001Z", 1_795_636_231_000_000_001),
        ("2026-11-25T19:50:31.123456Z", 1_795_636_231_123_456_000),
        ("2026-11-25T20:50:31.5+01:00", 1_795_636_231_500_000_000),
        ("2026-11-25T14:20:31.5-05:30", 1_795_636_231_500_000_000),
        ("2024-02-29T00:00:00Z", calendar.timegm((2024, 2, 29, 0, 0, 0)) * 1_000_000_000),
    ],
)
def test_timestamp_forms(text: str, expected: int) -> None:
    assert parse_rfc3339_ns(text.encode()) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-25T19:50:31.123",  # no zone
        "2026-11-25T19:50:31.1234567890Z",  # ten digits
        "2026-11-25T19:50:31.Z",
        "2026-11-25T19:50:31.12a4Z",
        "2026-02-30T19:50:31Z",
        "2026-11-25T24:00:00Z",
        "2026-11-25 19:50:31Z",
        "garbage",
        "",
    ],
)
def test_bad_timestamps_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match=r"bad|without"):
        parse_rfc3339_ns(text.encode())


def test_fast_path_does_not_accept_a_bad_fraction_in_a_cached_second() -> None:
    good = docker_line("a\n")
    bad = good.replace(b".123456789Z", b".12345678xZ")
    lines = parse("docker", good + bad, 0).lines
    assert [line.malformed for line in lines] == [False, True]
    cri_bad = cri_line(b"a").replace(b".123456789Z", b".1234567\xd9Z")
    assert parse("cri", cri_line(b"a") + cri_bad, 0).lines[1].malformed


# -- detection -----------------------------------------------------------------------


def test_detect_format() -> None:
    assert detect_format(docker_line("hello\n") + b'{"log":"par') == "docker"
    assert detect_format(cri_line(b"hello")) == "cri"
    assert detect_format(cri_line(b"")) == "cri"
    assert detect_format(cri_line(b"x")[:-3]) is None  # no complete line yet
    assert detect_format(b"just some text\n") is None
    assert detect_format(b'{"msg": 1}\n') is None
    assert detect_format(b"") is None


# -- docker json-file ----------------------------------------------------------------


def test_docker_line_fields_and_offsets() -> None:
    first = docker_line("hello\n")
    second = docker_line("oops\n", "stderr", T0 + 5)
    result = parse("docker", first + second, 1000)
    assert result.consumed == len(first) + len(second)
    assert result.lines == [
        ParsedLine(1000, 1000 + len(first), T0, "stdout", b"hello", False, False),
        ParsedLine(
            1000 + len(first),
            1000 + len(first) + len(second),
            T0 + 5,
            "stderr",
            b"oops",
            False,
            False,
        ),
    ]
    assert result.last_time_ns == T0 + 5


def test_docker_16k_split_is_merged_at_the_first_part_offset() -> None:
    text = "é" * 20_000 + "x" * 30_000  # multi-byte text across part boundaries
    prefix = docker_line("before\n")
    data = prefix + docker_split(text, time_ns=T0 + 7) + docker_line("after\n")
    lines = parse("docker", data, 0).lines
    assert [line.partial for line in lines] == [False, True, True, True, False, False]
    merger = PartialMerger(1 << 20)
    records = merger.feed(lines)
    assert [r.log for r in records] == ["before", text, "after"]
    assert records[1].offset == len(prefix)
    assert records[1].time_ns == T0 + 7
    assert records[1].parts == 4
    assert records[2].offset == records[1].end_offset
    assert merger.partial_merges == 1


def test_docker_one_megabyte_line_is_byte_identical() -> None:
    text = "".join(chr(0x20 + (i * 7919) % 0x5E) for i in range(1 << 20)) + "ü€𝄞" * 1000
    records = read_all("docker", docker_split(text), max_line_bytes=4 << 20)
    assert len(records) == 1
    assert records[0].log.encode() == text.encode()
    assert records[0].parts > 60
    assert not records[0].truncated


# -- CRI -----------------------------------------------------------------------------


def test_cri_p_p_f_sequence_and_empty_messages() -> None:
    data = (
        cri_line(b"one ", tag="P", time_ns=T0)
        + cri_line(b"two ", tag="P", time_ns=T0 + 1)
        + cri_line(b"three", tag="F", time_ns=T0 + 2)
        + cri_line(b"")
        + f"{ts(T0)} stderr F\n".encode()  # no separator before an empty message
        + cri_line(b"with  spaces  inside ")
    )
    records = read_all("cri", data)
    assert [(r.log, r.stream) for r in records] == [
        ("one two three", "stdout"),
        ("", "stdout"),
        ("", "stderr"),
        ("with  spaces  inside ", "stdout"),
    ]
    assert records[0].offset == 0
    assert records[0].time_ns == T0
    assert records[0].parts == 3
    assert not any(r.malformed for r in records)


def test_cri_split_inside_a_utf8_character_is_rejoined() -> None:
    text = "grüße €".encode() * 5000
    records = read_all("cri", cri_split(text, size=1001))  # cuts inside characters
    assert [r.log.encode() for r in records] == [text]


def test_interleaved_stdout_and_stderr_partials_merge_per_stream() -> None:
    out_parts = [b"out-1 ", b"out-2 ", b"out-3"]
    err_parts = [b"err-1 ", b"err-2"]
    data = (
        cri_line(out_parts[0], "stdout", "P", T0)
        + cri_line(err_parts[0], "stderr", "P", T0 + 1)
        + cri_line(out_parts[1], "stdout", "P", T0 + 2)
        + cri_line(err_parts[1], "stderr", "F", T0 + 3)
        + cri_line(out_parts[2], "stdout", "F", T0 + 4)
    )
    records = read_all("cri", data)
    first = len(cri_line(out_parts[0], "stdout", "P", T0))
    # Completion order: stderr finishes first, but each record keeps its first part's offset.
    assert [(r.stream, r.log, r.offset, r.time_ns) for r in records] == [
        ("stderr", "err-1 err-2", first, T0 + 1),
        ("stdout", "out-1 out-2 out-3", 0, T0),
    ]
    docker = (
        docker_line("a1 ", "stdout")
        + docker_line("b1 ", "stderr")
        + docker_line("b2\n", "stderr")
        + docker_line("a2\n", "stdout")
    )
    assert [(r.stream, r.log) for r in read_all("docker", docker)] == [
        ("stderr", "b1 b2"),
        ("stdout", "a1 a2"),
    ]


# -- size cap ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["docker", "cri"])
def test_line_over_max_line_bytes_is_cut_never_dropped(fmt: Format) -> None:
    text = "ab€" * 30_000  # 150,000 bytes
    line = docker_split(text) if fmt == "docker" else cri_split(text.encode())
    data = line + (docker_line("next\n") if fmt == "docker" else cri_line(b"next"))
    merger = PartialMerger(100_001)
    records = merger.feed(parse(fmt, data, 0).lines)
    assert [r.truncated for r in records] == [True, False]
    kept = records[0].log.encode()
    assert text.encode().startswith(kept)
    assert 100_001 - 3 <= len(kept) <= 100_001  # cut at a character start, not inside one
    assert records[0].offset == 0
    assert records[1].log == "next"
    assert records[1].offset == len(line)
    assert merger.truncated_lines == 1
    assert merger.truncated_bytes == len(text.encode()) - len(kept)


def test_full_line_over_max_line_bytes_is_cut() -> None:
    merger = PartialMerger(10)
    records = merger.feed(
        parse("cri", cri_line(b"0123456789abc") + cri_line(b"0123456789"), 0).lines
    )
    assert [(r.log, r.truncated) for r in records] == [("0123456789", True), ("0123456789", False)]
    assert merger.truncated_lines == 1
    assert merger.truncated_bytes == 3


# -- malformed lines -----------------------------------------------------------------


def test_malformed_docker_lines_are_forwarded_flagged() -> None:
    good = docker_line("ok\n", time_ns=T0 + 9)
    bad = [
        b"not json at all",
        b'{"log": "no newline", "stream": "stdout"',
        b'{"log": 5, "stream": "stdout", "time": "2026-11-25T19:50:31Z"}',
        b'{"log": "x\\n", "stream": "stdin", "time": "2026-11-25T19:50:31Z"}',
        b'{"log": "x\\n", "stream": "stderr", "time": "yesterday"}',
        b"[1, 2]",
        b"",
    ]
    data = bad[0] + b"\n" + good + b"\n".join(bad[1:]) + b"\n"
    merger = PartialMerger(1 << 20)
    records = merger.feed(parse("docker", data, 0).lines)
    assert [r.log.encode() for r in records] == [bad[0], b"ok", *bad[1:]]
    assert [r.malformed for r in records] == [True, False] + [True] * 6
    assert {r.stream for r in records if r.malformed} == {"stdout"}
    assert [r.time_ns for r in records] == [0] + [T0 + 9] * 7  # previous line's time, or 0
    assert merger.malformed_lines == 7


def test_malformed_cri_lines_keep_raw_text_and_previous_time() -> None:
    bad = [b"no spaces", b"2026-11-25T19:50:31Z stdin F x", b"2026-11-25T19:50:31Z stdout X x"]
    data = cri_line(b"ok", time_ns=T0 + 3) + b"\n".join(bad) + b"\n"
    result = parse("cri", data, 0, last_time_ns=1)
    assert [(line.text, line.malformed, line.time_ns) for line in result.lines] == [
        (b"ok", False, T0 + 3),
        *[(raw, True, T0 + 3) for raw in bad],
    ]
    assert parse("cri", b"garbage\n", 0, last_time_ns=42).lines[0].time_ns == 42


def test_malformed_line_between_parts_does_not_break_the_split_line() -> None:
    data = docker_line("first ") + b"{torn\n" + docker_line("second\n")
    records = read_all("docker", data)
    assert [(r.log, r.malformed) for r in records] == [("{torn", True), ("first second", False)]
    assert records[1].offset == 0


# -- buffering, offsets, restart ------------------------------------------------------


def test_incomplete_trailing_line_is_not_consumed() -> None:
    whole = cri_line(b"done")
    tail = cri_line(b"half")[:-1]
    result = parse("cri", whole + tail, 500)
    assert result.consumed == len(whole)
    assert [line.text for line in result.lines] == [b"done"]
    assert parse("cri", tail, 500).consumed == 0
    assert parse("docker", docker_line("x\n")[:-1], 0).lines == []


def test_safe_offset_stays_at_the_first_part_of_an_open_line() -> None:
    head = cri_line(b"whole")
    part1 = cri_line(b"begin ", tag="P")
    err = cri_line(b"error", stream="stderr")
    data = head + part1 + err
    merger = PartialMerger(1 << 20)
    result = parse("cri", data, 0)
    assert [r.log for r in merger.feed(result.lines)] == ["whole", "error"]
    assert merger.open_lines == 1
    assert merger.safe_offset(result.consumed) == len(head)

    # Crash now: a new reader resumes at the safe offset and gets the same record identity.
    rest = cri_line(b"end")
    file = data + rest
    resumed = PartialMerger(1 << 20)
    start = merger.safe_offset(result.consumed)
    again = resumed.feed(parse("cri", file[start:], start).lines)
    assert [(r.log, r.offset) for r in again] == [
        ("error", len(head) + len(part1)),
        ("begin end", len(head)),
    ]
    assert resumed.safe_offset(len(file)) == len(file)


def test_flush_emits_open_partials_marked_at_eof() -> None:
    data = (
        cri_line(b"err ", "stderr", "P")
        + cri_line(b"out ", "stdout", "P")
        + cri_line(b"more", "stdout", "P")
    )
    merger = PartialMerger(1 << 20)
    assert merger.feed(parse("cri", data, 0).lines) == []
    records = merger.flush()
    assert [(r.stream, r.log, r.partial_at_eof, r.offset) for r in records] == [
        ("stderr", "err ", True, 0),
        ("stdout", "out more", True, len(cri_line(b"err ", "stderr", "P"))),
    ]
    assert merger.partial_at_eof_lines == 2
    assert merger.flush() == []
    assert merger.safe_offset(len(data)) == len(data)


def test_unknown_format_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        parse("syslog", b"", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        PartialMerger(0)


# -- property: any chunking gives the one-shot result --------------------------------

_event = st.tuples(
    st.sampled_from(["stdout", "stderr"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=40),
    st.integers(1, 4),  # parts
    st.booleans(),  # preceded by a malformed line
)


def _render(fmt: Format, events: list[tuple[str, str, int, bool]]) -> bytes:
    out = bytearray()
    for i, (stream, text, parts, garbage) in enumerate(events):
        if garbage:
            out += b"{garbage " + str(i).encode() + b"\n"
        size = max(1, -(-len(text) // parts))
        if fmt == "docker":
            out += docker_split(text, stream, T0 + i * 1_000_003, size)
        else:
            out += cri_split(text.encode(), stream, T0 + i * 1_000_003, size)
    return bytes(out)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["docker", "cri"]),
    st.lists(_event, max_size=12),
    st.lists(st.integers(1, 300), min_size=1, max_size=40),
    st.integers(5, 60),
)
def test_any_chunking_yields_the_same_records_and_offsets(
    fmt: Format, events: list[tuple[str, str, int, bool]], chunks: list[int], max_line: int
) -> None:
    data = _render(fmt, events)
    expected = read_all(fmt, data, max_line)

    merger = PartialMerger(max_line)
    records: list[MergedRecord] = []
    pending, base, pos, last_time, i = b"", 0, 0, 0, 0
    while pos < len(data):
        step = chunks[i % len(chunks)]
        i += 1
        pending += data[pos : pos + step]
        pos += step
        result = parse(fmt, pending, base, last_time)
        records += merger.feed(result.lines)
        base += result.consumed
        pending = pending[result.consumed :]
        last_time = result.last_time_ns
        assert merger.safe_offset(base) <= base
    assert pending == b""
    records += merger.flush()
    assert records == expected

    # And the records are the original lines, each once, at offsets that are line starts.
    good = [r for r in expected if not r.malformed]
    assert sorted(r.log for r in good) == sorted(
        _cut_text(text, max_line) for _, text, _, _ in events
    )
    assert all(not r.partial_at_eof for r in expected)
    assert len({r.offset for r in expected}) == len(expected)
    assert all(r.offset == 0 or data[r.offset - 1] == 0x0A for r in expected)


def _cut_text(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    cut = limit
    while raw[cut] & 0xC0 == 0x80:
        cut -= 1
    return raw[:cut].decode()


def test_plain_text_lines_are_records_stamped_when_read() -> None:
    before = time.time_ns()
    result = parse("raw", b"one\ntwo\r\nthree", 100, 0)
    assert [(line.offset, line.text, line.malformed) for line in result.lines] == [
        (100, b"one", False),
        (104, b"two", False),
    ]
    assert result.consumed == 9  # "three" waits for its newline
    assert all(line.time_ns >= before for line in result.lines)
    later = parse("raw", b"four\n", 109, result.last_time_ns + 10**12)
    assert later.lines[0].time_ns == result.last_time_ns + 10**12  # never backwards
