"""Accounting records (what filters discarded, as seq ranges) and how verify folds ranges."""

from __future__ import annotations

import copy

import pytest

from logferry.pipelines.accounting import Discard, accounting_records
from logferry.pipelines.validate import validate_documents
from logferry.tools.verify_ranges import SourceRanges, fold_ranges, intervals_to_probe, union
from tests.support.log_pipelines import log_pipeline
from tests.unit.test_pipelines_run import compile_one, record


def discard(seq: int, src: str = "s1", pipeline: str = "p", filt: int = 0) -> Discard:
    return Discard(seq, src, seq, "team-a", pipeline, filt, "sample")


def test_consecutive_seqs_of_one_reason_make_one_range_per_source() -> None:
    items = [discard(s) for s in (5, 3, 4, 9)] + [discard(10, filt=1), discard(2, src="s2")]
    by_src = {r["_lf"]["src"]: (at, r) for at, r in accounting_records(items)}
    at, first = by_src["s1"]
    assert at == 3  # dated like its first line
    ranges = [(r["first"], r["last"], r["filter"]) for r in first["_lf"]["discarded"]]
    assert ranges == [(3, 5, 0), (9, 9, 0), (10, 10, 1)]
    assert first["_lf"]["lines"] == 5
    assert first["_lf"]["kind"] == "accounting"
    assert first["kubernetes"] == {"namespace_name": "team-a"}
    assert by_src["s2"][1]["_lf"]["discarded"][0]["first"] == 2


def test_the_id_follows_the_ranges_so_the_same_cut_dedups() -> None:
    ((_, one),) = accounting_records([discard(s) for s in range(10)])
    ((_, again),) = accounting_records([discard(s) for s in reversed(range(10))])
    ((_, other),) = accounting_records([discard(s) for s in range(9)])
    assert one["_lf"]["id"] == again["_lf"]["id"] != other["_lf"]["id"]


def test_sampling_writes_one_accounting_record_per_source_not_a_document_per_line() -> None:
    tenant = compile_one(log_pipeline("p", [{"type": "sample", "rate": 100}]))
    batch = [record(f"line {n}", seq=n) for n in range(1000)]
    processed = tenant.process(copy.deepcopy(batch), account=True)
    assert 1 <= len(processed.kept) < 40
    assert all("filtered_by" not in r["_lf"] for r, _s in processed.kept)
    ((_, acct),) = processed.accounting
    listed = {s for r in acct["_lf"]["discarded"] for s in range(r["first"], r["last"] + 1)}
    kept = {r["_lf"]["seq"] for r, _s in processed.kept}
    assert listed | kept == set(range(1000))
    assert not listed & kept
    assert {r["pipeline"] for r in acct["_lf"]["discarded"]} == {"p"}
    assert {r["type"] for r in acct["_lf"]["discarded"]} == {"sample"}
    assert not tenant.process(copy.deepcopy(batch)).accounting  # off unless asked


def test_tenant_pipelines_cannot_take_logferrys_index_suffixes() -> None:
    doc = log_pipeline("p", [], destination={"indexSuffix": "lf-accounting"})
    (verdict,) = validate_documents([("t", doc)])
    assert not verdict.ok
    assert "logferry's own" in verdict.issues[0].reason


def test_union_merges_overlapping_and_adjacent_intervals() -> None:
    assert union([(5, 9), (1, 2), (3, 4), (12, 12), (8, 11), (20, 19)]) == [(1, 12)]


@pytest.mark.parametrize(
    ("ranges", "inside", "expected"),
    [
        # one trace 10..19: its interior adds 9 seqs, nothing twice
        (SourceRanges(joined=[(10, 19, 1)]), [], (9, 0, 0)),
        # the same trace stored twice: 9 interior seqs twice (its first seq is in the blocks)
        (SourceRanges(joined=[(10, 19, 2)]), [], (9, 0, 9)),
        # two cuts overlapping on 15..19 (15 is the second's first seq, in the blocks), and
        # a single line 17 inside both: 15 and 16, 18, 19 once more, 17 twice more
        (SourceRanges(joined=[(10, 19, 1), (15, 24, 1)]), [15, 17], (14 - 2, 0, 6)),
        # accounted 0..99 of which 0 and 50 are stored as single lines: never duplicates
        (SourceRanges(accounted=[(0, 99)]), [0, 50], (0, 98, 0)),
        # accounted twice (two cuts), and over a stored trace's interior
        (SourceRanges(joined=[(0, 9, 1)], accounted=[(5, 19), (5, 19)]), [], (9, 10, 0)),
    ],
)
def test_fold_ranges_counts_each_seq_once(
    ranges: SourceRanges, inside: list[int], expected: tuple[int, int, int]
) -> None:
    folded = fold_ranges(ranges, inside, 1000)
    assert (folded.stored_extra, folded.accounted, folded.duplicates) == expected
    added = sum(n for n, _lo, _hi in folded.by_block.values())
    assert added == folded.stored_extra + folded.accounted


def test_fold_ranges_splits_by_block_and_probes_only_intervals() -> None:
    ranges = SourceRanges(joined=[(990, 1010, 1)], accounted=[(2000, 2004)])
    folded = fold_ranges(ranges, [], 1000)
    assert folded.by_block == {0: (9, 991, 999), 1000: (11, 1000, 1010), 2000: (5, 2000, 2004)}
    assert intervals_to_probe(ranges) == [(991, 1010), (2000, 2004)]
    assert (folded.lo, folded.hi) == (991, 2004)
