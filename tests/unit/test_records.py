"""Record identity: the same line always gets the same id, different lines never share one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from logferry.common.records import derived_record_id, record_id, source_id


def test_source_id_is_stable_and_depends_on_every_part() -> None:
    base = source_id("node-a", 2049, 1234, 0)
    assert base == source_id("node-a", 2049, 1234, 0)
    variants = {
        source_id("node-b", 2049, 1234, 0),
        source_id("node-a", 2050, 1234, 0),
        source_id("node-a", 2049, 1235, 0),
        source_id("node-a", 2049, 1234, 1),
    }
    assert base not in variants
    assert len(variants) == 4


@given(st.integers(0, 2**63), st.integers(0, 2**63))
def test_record_ids_differ_exactly_when_offsets_differ(a: int, b: int) -> None:
    src = source_id("n", 1, 2, 3)
    assert (record_id(src, a) == record_id(src, b)) == (a == b)


def test_ids_fit_an_opensearch_id() -> None:
    assert len(record_id(source_id("n" * 300, 2**64, 2**64, 2**32), 2**63).encode()) <= 512


def test_derived_id_repeats_for_a_resend_and_differs_by_position_or_content() -> None:
    rec = {"log": "GET /", "n": 1}
    first = derived_record_id("app", "chunk-1:0", 10, rec)
    assert first == derived_record_id("app", "chunk-1:0", 10, {"n": 1, "log": "GET /"})
    assert first != derived_record_id("app", "chunk-1:1", 10, rec)
    assert first != derived_record_id("app", "chunk-2:0", 10, rec)
    assert first != derived_record_id("app", "chunk-1:0", 11, rec)
    assert first != derived_record_id("app", "chunk-1:0", 10, {"log": "GET /", "n": 2})
    assert first != derived_record_id("other", "chunk-1:0", 10, rec)
