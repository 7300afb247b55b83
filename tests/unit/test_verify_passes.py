"""``logferry verify`` over indices mapped by logferry's template and older ones mapped
dynamically: the passes chosen from a ``_field_caps`` answer, the blocks more than one pass
found, and merging the passes' block tables without counting a seq twice."""

from __future__ import annotations

from typing import Any

import pytest

from logferry.tools.verify_store import (
    LEGACY,
    MODERN,
    BlockStats,
    Pass,
    StoredSource,
    merge_stored,
    passes_for,
    shared_blocks,
)


def caps(**types: list[str]) -> dict[str, Any]:
    """A ``_field_caps`` answer for ``_lf.src``: field type -> indices holding it so."""
    return {
        "indices": sorted({i for indices in types.values() for i in indices}),
        "fields": {
            "_lf.src": {
                kind: {"type": kind, "searchable": True, "aggregatable": kind != "text"}
                | ({"indices": indices} if len(types) > 1 else {})
                for kind, indices in types.items()
            }
        },
    }


def block(documents: int, distinct: int, lo: int, hi: int, exact: bool = True) -> BlockStats:
    return BlockStats(documents=documents, distinct=distinct, lo=lo, hi=hi, exact=exact)


def source(namespace: str, **blocks: BlockStats) -> StoredSource:
    """A source's block table; blocks by ``b<start>``."""
    return StoredSource(namespace, {int(k[1:]): v for k, v in blocks.items()})


# passes_for


def test_legacy_pass_reads_the_keyword_subfields() -> None:
    assert LEGACY.src_field == "_lf.src.keyword"
    assert LEGACY.namespace_field == "kubernetes.namespace_name.keyword"
    assert MODERN.src_field == "_lf.src"
    assert MODERN.namespace_field == "kubernetes.namespace_name"
    assert MODERN.tolerated == LEGACY.tolerated == frozenset()


def test_only_keyword_is_modern() -> None:
    assert passes_for(caps(keyword=["logs-a-2026.01.01"])) == [MODERN]


def test_only_text_is_legacy() -> None:
    assert passes_for(caps(text=["logs-a-2025.01.01"])) == [LEGACY]


def test_both_modern_tolerating_the_text_indices_then_legacy() -> None:
    answer = caps(
        keyword=["logs-a-2026.01.01", "logs-b-2026.01.01"],
        text=["logs-a-2025.01.01", "logs-b-2025.01.01"],
    )
    modern, legacy = passes_for(answer)
    assert modern.src_field == "_lf.src"
    assert modern.namespace_field == "kubernetes.namespace_name"
    assert modern.tolerated == frozenset({"logs-a-2025.01.01", "logs-b-2025.01.01"})
    assert legacy == LEGACY


@pytest.mark.parametrize(
    "answer",
    [{}, {"fields": {}}, {"fields": None}, {"fields": {"_lf.src": {}}}, {"fields": {"x": {}}}],
)
def test_field_missing_is_modern(answer: dict[str, Any]) -> None:
    assert passes_for(answer) == [MODERN]


def test_both_without_index_list_tolerates_nothing() -> None:
    answer = {"fields": {"_lf.src": {"keyword": {"type": "keyword"}, "text": {"type": "text"}}}}
    assert passes_for(answer) == [Pass(tolerated=frozenset()), LEGACY]


# shared_blocks


def test_shared_blocks_none_with_one_pass() -> None:
    only = {"s": source("ns", b0=block(5, 5, 0, 4), b1000=block(1, 1, 1000, 1000))}
    assert shared_blocks([only]) == []
    assert shared_blocks([]) == []


def test_shared_blocks_of_two_passes() -> None:
    first = {
        "s": source("ns", b0=block(5, 5, 0, 4), b1000=block(1, 1, 1000, 1000)),
        "t": source("ns", b0=block(1, 1, 7, 7)),
    }
    second = {
        "s": source("ns", b1000=block(2, 2, 1001, 1002), b2000=block(1, 1, 2000, 2000)),
        "u": source("ns", b0=block(1, 1, 0, 0)),
        "t": source("ns", b0=block(1, 1, 8, 8)),
    }
    assert shared_blocks([first, second]) == [("s", 1000), ("t", 0)]


def test_shared_blocks_same_block_of_different_sources_is_not_shared() -> None:
    first = {"s": source("ns", b0=block(1, 1, 0, 0))}
    second = {"t": source("ns", b0=block(1, 1, 0, 0))}
    assert shared_blocks([first, second]) == []


def test_shared_blocks_listed_once_across_three_passes() -> None:
    one = {"s": source("ns", b0=block(1, 1, 0, 0))}
    assert shared_blocks([one, one, one]) == [("s", 0)]


# merge_stored


def test_merge_into_nothing_takes_the_other() -> None:
    into: dict[str, StoredSource] = {}
    other = {"s": source("ns", b0=block(3, 3, 0, 2))}
    merge_stored(into, other)
    assert into == {"s": source("ns", b0=block(3, 3, 0, 2))}


def test_merge_disjoint_blocks_and_sources() -> None:
    into = {"s": source("ns", b0=block(3, 3, 0, 2))}
    merge_stored(
        into,
        {
            "s": source("ns", b1000=block(2, 2, 1000, 1001)),
            "t": source("other", b0=block(1, 1, 5, 5)),
        },
    )
    assert into == {
        "s": source("ns", b0=block(3, 3, 0, 2), b1000=block(2, 2, 1000, 1001)),
        "t": source("other", b0=block(1, 1, 5, 5)),
    }
    assert (into["s"].documents, into["s"].distinct, into["s"].lo, into["s"].hi) == (5, 5, 0, 1001)


def test_merge_shared_block_without_union_adds_counts() -> None:
    into = {"s": source("ns", b0=block(4, 4, 0, 3))}
    merge_stored(into, {"s": source("ns", b0=block(3, 3, 10, 12))})
    assert into["s"].blocks[0] == block(7, 7, 0, 12)


def test_merge_shared_block_without_union_stays_inexact_if_either_was() -> None:
    into = {"s": source("ns", b0=block(4, 3, 0, 3, exact=False))}
    merge_stored(into, {"s": source("ns", b0=block(3, 3, 10, 12))})
    assert into["s"].blocks[0] == block(7, 6, 0, 12, exact=False)


def test_merge_shared_block_with_union_counts_a_seq_once() -> None:
    """Seqs 0..4 in a legacy index, 3..7 again in a templated one: 8 distinct, not 10."""
    into = {"s": source("ns", b0=block(5, 5, 0, 4))}
    other = {"s": source("ns", b0=block(5, 5, 3, 7))}
    merge_stored(into, other, {("s", 0): 8})
    assert into["s"].blocks[0] == block(10, 8, 0, 7)
    assert into["s"].distinct == 8
    assert into["s"].documents == 10


def test_merge_with_union_makes_the_block_exact() -> None:
    into = {"s": source("ns", b0=block(5, 4, 0, 4, exact=False))}
    merge_stored(into, {"s": source("ns", b0=block(5, 5, 3, 7))}, {("s", 0): 8})
    assert into["s"].blocks[0] == block(10, 8, 0, 7, exact=True)


def test_merge_union_applies_only_to_its_block() -> None:
    into = {
        "s": source("ns", b0=block(5, 5, 0, 4), b1000=block(2, 2, 1000, 1001)),
        "t": source("ns", b0=block(1, 1, 0, 0)),
    }
    other = {
        "s": source("ns", b0=block(5, 5, 3, 7), b1000=block(2, 2, 1002, 1003)),
        "t": source("ns", b0=block(1, 1, 1, 1)),
    }
    merge_stored(into, other, {("s", 0): 8})
    assert into["s"].blocks[0].distinct == 8
    assert into["s"].blocks[1000].distinct == 4
    assert into["t"].blocks[0].distinct == 2


def test_merge_union_for_an_unshared_block_is_ignored() -> None:
    into = {"s": source("ns", b0=block(5, 5, 0, 4))}
    merge_stored(into, {"s": source("ns", b1000=block(2, 2, 1000, 1001))}, {("s", 1000): 1})
    assert into["s"].blocks[1000].distinct == 2


def test_merge_passes_as_verify_does() -> None:
    """Each pass merged in turn into an empty table, with the union of the shared blocks."""
    legacy = {"s": source("", b0=block(5, 5, 0, 4)), "old": source("ns", b0=block(1, 1, 0, 0))}
    modern = {"s": source("ns", b0=block(5, 5, 3, 7), b1000=block(1, 1, 1000, 1000))}
    union = {key: 8 for key in shared_blocks([modern, legacy])}
    assert union == {("s", 0): 8}
    stored: dict[str, StoredSource] = {}
    for found in (modern, legacy):
        merge_stored(stored, found, union)
    assert stored["s"].documents == 11
    assert stored["s"].distinct == 9
    assert stored["s"].namespace == "ns"
    assert stored["old"].distinct == 1


def test_merge_fills_a_missing_namespace_but_keeps_a_known_one() -> None:
    into = {"s": source("", b0=block(1, 1, 0, 0)), "t": source("a", b0=block(1, 1, 0, 0))}
    merge_stored(into, {"s": source("ns"), "t": source("b")})
    assert into["s"].namespace == "ns"
    assert into["t"].namespace == "a"
