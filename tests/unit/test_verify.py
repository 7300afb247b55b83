"""``logferry verify``'s pure logic: folding aggregation buckets into per-source counts, the
exact recount of blocks whose cardinality came out low, expected/missing with positions,
manifest and DLQ, time parsing, and the rendered table. Aggregation answers are hand-built."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from logferry.aggregator.dlq import DeadLetter, encode_letter
from logferry.common.records import source_id
from logferry.forwarder.positions import PositionStore, SourceState
from logferry.tools.verify import (
    DlqSource,
    Expectation,
    MissingRange,
    StoredSource,
    VerifyError,
    apply_recount,
    blocks_to_recount,
    build_parser,
    fold_buckets,
    judge,
    load_manifest,
    load_positions,
    options_from_args,
    parse_time,
    read_dlq,
    render_table,
    summarize,
    verify_main,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POD_LOG = "/var/log/containers/web-1_{ns}_app-" + "a" * 64 + ".log"


def bucket(
    src: str, block: int, docs: int, distinct: int, lo: int, hi: int, ns: str = "team-a"
) -> dict[str, Any]:
    """One composite bucket as OpenSearch answers it (histogram keys are floats)."""
    return {
        "key": {"src": src, "block": float(block)},
        "doc_count": docs,
        "seqs": {"value": distinct},
        "lo": {"value": float(lo)},
        "hi": {"value": float(hi)},
        "ns": {"buckets": [{"key": ns, "doc_count": docs}]},
    }


def complete(src: str, count: int, ns: str = "team-a") -> list[dict[str, Any]]:
    """Buckets of a source holding seqs 0..count-1 once each."""
    out = []
    for start in range(0, count, 1000):
        n = min(1000, count - start)
        out.append(bucket(src, start, n, n, start, start + n - 1, ns))
    return out


def stored_from(*buckets: dict[str, Any]) -> dict[str, StoredSource]:
    stored: dict[str, StoredSource] = {}
    fold_buckets(buckets, stored)
    return stored


# ----------------------------------------------------------------------------- folding


def test_complete_source_across_blocks_is_ok() -> None:
    stored = stored_from(*complete("s1", 2500))
    (row,) = judge(stored, {}, {}, from_lowest=False, expect_unseen=True)
    assert (row.expected, row.found, row.documents, row.missing, row.duplicates) == (
        2500,
        2500,
        2500,
        0,
        0,
    )
    assert row.ok
    assert row.namespace == "team-a"
    assert row.max_seq == 2499
    assert blocks_to_recount(stored) == []


def test_gap_inside_a_block_is_counted_and_located_when_the_run_is_contiguous() -> None:
    # seqs 0..999, then 1000..1199 and 1300..1999 (a gap of 100), then 2000..2499
    stored = stored_from(
        bucket("s1", 0, 1000, 1000, 0, 999),
        bucket("s1", 1000, 900, 900, 1000, 1999),
        bucket("s1", 2000, 500, 500, 2000, 2499),
    )
    (row,) = judge(stored, {}, {}, from_lowest=False, expect_unseen=True)
    assert row.missing == 100
    # The block is not contiguous (gap in the middle): only "100 in 1000-1999" is known.
    assert row.missing_ranges == (MissingRange(1000, 1999, 100),)
    assert str(row.missing_ranges[0]) == "100 in 1000-1999"


def test_missing_blocks_and_a_short_tail_give_exact_ranges() -> None:
    # Block 1000 absent, block 2000 holds 2000..2099 only; positions say 3000 were spooled.
    stored = stored_from(
        bucket("s1", 0, 1000, 1000, 0, 999), bucket("s1", 2000, 100, 100, 2000, 2099)
    )
    expectations = {"s1": Expectation(3000, "team-a", "positions")}
    (row,) = judge(stored, {}, expectations, from_lowest=False, expect_unseen=True)
    assert (row.expected, row.found, row.missing, row.expected_by) == (
        3000,
        1100,
        1900,
        "positions",
    )
    assert [str(r) for r in row.missing_ranges] == ["1000-1999", "2100-2999"]


def test_low_cardinality_block_is_recounted_exactly() -> None:
    # HLL collisions make a full block report 999: a recount that finds no doubled seq
    # restores 1000 (no duplicate, nothing missing).
    stored = stored_from(bucket("s1", 0, 1000, 999, 0, 999))
    assert blocks_to_recount(stored) == [("s1", 0)]
    apply_recount(stored["s1"].blocks[0], [])
    (row,) = judge(stored, {}, {}, from_lowest=False, expect_unseen=True)
    assert (row.found, row.duplicates, row.missing) == (1000, 0, 0)


def test_duplicate_seq_under_another_id_is_a_duplicate_not_a_missing() -> None:
    stored = stored_from(bucket("s1", 0, 11, 10, 0, 9))
    apply_recount(stored["s1"].blocks[0], [{"key": 4, "doc_count": 2}])
    (row,) = judge(stored, {}, {}, from_lowest=False, expect_unseen=True)
    assert (row.expected, row.found, row.documents, row.duplicates, row.missing) == (
        10,
        10,
        11,
        1,
        0,
    )
    assert not row.ok


def test_duplicate_and_gap_that_cancel_out_in_the_count_are_both_seen() -> None:
    # 10 documents over seqs 0..9 but seq 3 twice and seq 7 absent: count == max-min+1.
    stored = stored_from(bucket("s1", 0, 10, 9, 0, 9))
    apply_recount(stored["s1"].blocks[0], [{"key": 3, "doc_count": 2}])
    (row,) = judge(stored, {}, {}, from_lowest=False, expect_unseen=True)
    assert (row.duplicates, row.missing) == (1, 1)


def test_dlq_seqs_are_accounted_for_and_not_missing() -> None:
    stored = stored_from(bucket("s1", 0, 7, 7, 0, 9))  # seqs 0..9 but 3 of them in the DLQ
    dlq = {"s1": DlqSource("team-a", {2, 5, 9})}
    (row,) = judge(stored, dlq, {}, from_lowest=False, expect_unseen=True)
    assert (row.expected, row.found, row.in_dlq, row.missing) == (10, 7, 3, 0)
    assert row.ok


def test_dlq_seq_above_the_stored_ones_extends_the_expected_run() -> None:
    stored = stored_from(bucket("s1", 0, 5, 5, 0, 4))
    dlq = {"s1": DlqSource("team-a", {8})}
    (row,) = judge(stored, dlq, {}, from_lowest=False, expect_unseen=True)
    assert (row.expected, row.missing, row.max_seq) == (9, 3, 8)
    assert [str(r) for r in row.missing_ranges] == ["5-7"]


def test_source_declared_by_positions_with_nothing_stored_is_all_missing() -> None:
    expectations = {"gone": Expectation(42, "team-b", "positions")}
    (row,) = judge({}, {}, expectations, from_lowest=False, expect_unseen=True)
    assert (row.found, row.expected, row.missing, row.namespace) == (0, 42, 42, "team-b")
    assert [str(r) for r in row.missing_ranges] == ["0-41"]


def test_with_since_the_run_starts_at_the_lowest_seq_in_the_window() -> None:
    stored = stored_from(
        bucket("s1", 4000, 500, 500, 4500, 4999), bucket("s1", 5000, 200, 200, 5000, 5199)
    )
    unseen = {"other": Expectation(10, "team-a", "positions")}
    (row,) = judge(stored, {}, unseen, from_lowest=True, expect_unseen=False)
    assert (row.first_seq, row.expected, row.missing) == (4500, 700, 0)


def test_no_positions_source_with_zero_records_is_listed() -> None:
    rows = judge(
        {}, {}, {"idle": Expectation(0, "", "positions")}, from_lowest=False, expect_unseen=True
    )
    assert rows == []


# ------------------------------------------------------------------- positions, manifest


def _state(device: int, inode: int, generation: int, next_seq: int, ns: str) -> SourceState:
    return SourceState(
        node="node-1",
        device=device,
        inode=inode,
        generation=generation,
        fingerprint="4:" + "0" * 32,
        path=POD_LOG.format(ns=ns),
        offset=next_seq * 10,
        next_seq=next_seq,
        link=POD_LOG.format(ns=ns),
    )


def test_positions_give_next_seq_and_namespace_per_source(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "positions")
    store.update(_state(1, 100, 2, 500, "team-a"))
    store.update(_state(1, 200, 0, 7, "team-b"))
    store.remove(1, 200)  # released at generation 0
    store.save(force=True)
    expectations, generations = load_positions(tmp_path / "positions")
    src = source_id("node-1", 1, 100, 2)
    assert expectations == {src: Expectation(500, "team-a", "positions")}
    assert generations == {(1, 100): 2, (1, 200): 0}


def test_damaged_position_file_is_a_clear_error_and_left_in_place(tmp_path: Path) -> None:
    path = tmp_path / "positions"
    path.write_bytes(b"LFP1garbage")
    with pytest.raises(VerifyError, match="damaged position file"):
        load_positions(path)
    assert path.exists()  # read-only: never quarantined by verify


def test_manifest_sources_take_the_generation_from_positions(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    files = [
        {"path": POD_LOG.format(ns="team-a"), "device": 1, "inode": 100, "messages": 50, "x": 1},
        {"path": "/logs/plain.log", "device": 1, "inode": 300, "messages": 9},
        # inode 400 reused: the older file had the generation before the positions' one
        {"path": "/logs/old.log", "device": 1, "inode": 400, "messages": 3},
        {"path": "/logs/new.log", "device": 1, "inode": 400, "messages": 4},
    ]
    manifest.write_bytes(orjson.dumps({"files": files, "seed": 7}))
    got = load_manifest(manifest, "node-9", {(1, 100): 2, (1, 400): 1})
    assert got == {
        source_id("node-9", 1, 100, 2): Expectation(50, "team-a", "manifest"),
        source_id("node-9", 1, 300, 0): Expectation(9, "", "manifest"),
        source_id("node-9", 1, 400, 0): Expectation(3, "", "manifest"),
        source_id("node-9", 1, 400, 1): Expectation(4, "", "manifest"),
    }


def test_manifest_without_the_required_keys_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(orjson.dumps({"files": [{"path": "/x", "device": 1}]}))
    with pytest.raises(VerifyError, match="not a manifest"):
        load_manifest(manifest, "n", {})


# ------------------------------------------------------------------------------- DLQ


def _letter(src: str, seq: int, ns: str = "team-a", stamp: str = "2026-11-25T11:00:00Z") -> bytes:
    doc = {
        "@timestamp": stamp,
        "kubernetes": {"namespace_name": ns},
        "_lf": {"src": src, "seq": seq, "id": f"{src}-{seq:x}"},
        "log": "x",
    }
    return encode_letter(
        DeadLetter(ns, f"logs-{ns}-2026.11.25", f"{src}-{seq:x}", 400, "mapper", orjson.dumps(doc))
    )


def test_dlq_is_read_per_source_with_window_and_namespace(tmp_path: Path) -> None:
    (tmp_path / "dlq-00000000.jsonl").write_bytes(
        _letter("s1", 3)
        + _letter("s1", 4, stamp="2026-11-25T09:00:00Z")
        + _letter("s2", 1, ns="team-b")
        + b'{"torn'
    )
    assert {s: d.seqs for s, d in read_dlq([tmp_path]).items()} == {"s1": {3, 4}, "s2": {1}}
    since = int((NOW - timedelta(hours=2)).timestamp() * 1000)
    windowed = read_dlq([tmp_path], since_ms=since, namespace="team-a")
    assert {s: d.seqs for s, d in windowed.items()} == {"s1": {3}}


def test_missing_dlq_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(VerifyError, match="not a dead-letter queue directory"):
        read_dlq([tmp_path / "nope"])


# ------------------------------------------------------------------------------ time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", NOW - timedelta(minutes=15)),
        ("2h", NOW - timedelta(hours=2)),
        ("1d", NOW - timedelta(days=1)),
        ("30s", NOW - timedelta(seconds=30)),
        ("2026-11-25T10:00:00Z", datetime(2026, 11, 25, 10, tzinfo=UTC)),
        ("2026-11-25T10:00:00+02:00", datetime(2026, 11, 25, 8, tzinfo=UTC)),
        ("2026-11-25", datetime(2026, 11, 25, tzinfo=UTC)),  # naive means UTC
        ("2026-11-25T10:00:00.123456789Z", datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)),
    ],
)
def test_time_accepts_iso_and_relative_spans(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


def test_time_refuses_garbage() -> None:
    with pytest.raises(VerifyError, match="not a time"):
        parse_time("yesterday", NOW)


def test_options_refuse_inconsistent_flags() -> None:
    parser = build_parser()
    with pytest.raises(VerifyError, match="either"):
        options_from_args(
            parser.parse_args(["--url", "http://u", "--username", "a", "--api-key-file", "k"])
        )
    with pytest.raises(VerifyError, match="--node"):
        options_from_args(parser.parse_args(["--url", "http://u", "--manifest", "m.json"]))
    with pytest.raises(VerifyError, match="before"):
        options_from_args(
            parser.parse_args(["--url", "http://u", "--since", "1h", "--until", "2h"]), NOW
        )


def test_usage_errors_exit_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_main([]) == 2
    assert verify_main(["--url", "http://x", "--since", "soon"]) == 2
    assert "not a time" in capsys.readouterr().err


# --------------------------------------------------------------------------- rendering


def test_table_has_a_row_per_namespace_a_total_and_the_worst_sources() -> None:
    stored = stored_from(
        *complete("good", 2500, "team-a"),
        bucket("gappy", 0, 90, 90, 0, 89, "team-b"),
    )
    expectations = {"gappy": Expectation(100, "team-b", "manifest")}
    report = summarize(judge(stored, {}, expectations, from_lowest=False, expect_unseen=True))
    text = render_table(report)
    lines = text.splitlines()
    assert lines[0].split() == [
        "namespace",
        "sources",
        "expected",
        "found",
        "missing",
        "duplicates",
        "in",
        "DLQ",
    ]
    assert lines[1].split() == ["team-a", "1", "2500", "2500", "0", "0", "0"]
    assert lines[2].split() == ["team-b", "1", "100", "90", "10", "0", "0"]
    assert lines[3].split() == ["TOTAL", "2", "2600", "2590", "10", "0", "0"]
    assert any(line.strip().startswith("gappy") and "missing: 90-99" in line for line in lines)
    assert lines[-1] == "FAILED: 10 missing, 0 duplicates"
    assert not report.ok
    assert report.totals.sources == 2


def test_json_report_has_rows_and_totals() -> None:
    report = summarize(
        judge(stored_from(*complete("s1", 10)), {}, {}, from_lowest=False, expect_unseen=True)
    )
    doc = report.as_json()
    assert doc["ok"] is True
    assert doc["totals"]["expected"] == 10
    assert doc["sources"][0]["source"] == "s1"
    assert doc["sources"][0]["missing_ranges"] == []
    orjson.dumps(doc)  # serialisable as is


def test_files_on_disk_are_counted_as_the_forwarder_reads_them(tmp_path: Path) -> None:
    from logferry.common.records import source_id
    from logferry.tools.verify_inputs import count_files

    pod = tmp_path / "pods" / "team-a_web-1_0f1e" / "app"
    pod.mkdir(parents=True)
    stamp = "2026-11-25T19:50:31.000000001Z"
    # 3 CRI records, one of them split into P/P/F parts: 3, not 5.
    (pod / "0.log").write_bytes(
        f"{stamp} stdout F one\n{stamp} stdout P tw\n{stamp} stdout P o-\n"
        f"{stamp} stdout F two\n{stamp} stderr F three\n".encode()
    )
    (pod / "0.log.20261125-1").write_bytes(f"{stamp} stdout F old\n".encode())
    (pod / "0.log.20261124-1.gz").write_bytes(b"\x1f\x8b not ours")
    current, rotated = (pod / "0.log").stat(), (pod / "0.log.20261125-1").stat()
    generations = {(current.st_dev, current.st_ino): 2}  # as the position file would say

    counted = count_files([str(tmp_path / "pods" / "**" / "*.log*")], "n1", generations)

    assert {src: (e.next_seq, e.namespace) for src, e in counted.items()} == {
        source_id("n1", current.st_dev, current.st_ino, 2): (3, "team-a"),
        source_id("n1", rotated.st_dev, rotated.st_ino, 0): (1, "team-a"),
    }
