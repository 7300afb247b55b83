"""The proof of one closed window, from the store alone: what ``logferry audit`` runs.

A window ``[since, until)`` is judged by the forwarders' checkpoints stamped in it. For each
source with one, the seqs it must account for are ``start .. end-1``: ``end`` is the highest
``next_seq`` of its checkpoints before ``until``, ``start`` the highest before ``since`` (0
without one). Every record below a checkpoint's ``next_seq`` was spooled before it, and a
joined record is never cut by one, so consecutive windows split each source's seqs
exactly, with nothing counted twice and nothing left between them; and the proof of a window
does not change once everything in it is delivered, whoever runs it and whenever.

The store is asked for exactly those seqs (a ``range`` per source, a few hundred sources a
query) and counted as ``logferry verify`` counts: blocks with their cardinality, exact
recounts where it is low, joined records' interiors and accounting records' discards folded
in (clipped to the window's seqs). A ``lost`` checkpoint in the window reports the lines
its forwarder never read, which have no seq and so are never missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from logferry.tools.verify import (
    SourceRow,
    Totals,
    apply_ranges,
    judge_ranges,
    with_losses,
)
from logferry.tools.verify_checkpoints import SourceMark, source_marks
from logferry.tools.verify_ranges import SourceRanges, fold_ranges, intervals_to_probe
from logferry.tools.verify_store import (
    ACCOUNTING,
    BLOCK,
    FOLDED_FIELD,
    KIND_FIELD,
    SEQ_FIELD,
    SRC_FIELD,
    StoredSource,
    VerifyStore,
    merge_stored,
)

__all__ = ["WindowProof", "prove_window", "ranges_query"]

SOURCES_PER_QUERY = 300
"""Sources (one ``range`` clause each) per query: well under the store's 1024 clauses."""


@dataclass(frozen=True, slots=True)
class WindowProof:
    """The verdict on one window: a row per source, and totals per tenant."""

    since_ms: int
    until_ms: int
    rows: tuple[SourceRow, ...]

    @property
    def tenants(self) -> dict[str, Totals]:
        by_tenant: dict[str, list[SourceRow]] = {}
        for row in self.rows:
            by_tenant.setdefault(row.namespace, []).append(row)
        return {tenant: Totals.of(rows) for tenant, rows in sorted(by_tenant.items())}

    @property
    def records(self) -> int:
        return sum(row.expected for row in self.rows)


def ranges_query(ranges: Mapping[str, tuple[int, int, str]]) -> dict[str, Any]:
    """Records of the given sources whose seq is in their range (first, end exclusive)."""
    should = [
        {
            "bool": {
                "filter": [
                    {"term": {SRC_FIELD: src}},
                    {"range": {SEQ_FIELD: {"gte": first, "lt": end}}},
                ]
            }
        }
        for src, (first, end, _ns) in ranges.items()
    ]
    # As verify: an older aggregator's copies of lines it joined are covered by the joined
    # record; accounting records are read apart (they have no seq).
    must_not = [{"exists": {"field": FOLDED_FIELD}}, {"term": {KIND_FIELD: ACCOUNTING}}]
    return {"bool": {"should": should, "minimum_should_match": 1, "must_not": must_not}}


async def window_ranges(
    store: VerifyStore, since_ms: int, until_ms: int, namespace: str | None = None
) -> tuple[dict[str, tuple[int, int, str]], dict[str, SourceMark]]:
    """Each source's seqs to prove in the window, and what its checkpoints in it said."""
    ends = await source_marks(store, since_ms=since_ms, until_ms=until_ms, namespace=namespace)
    if not ends:
        return {}, {}
    starts = await source_marks(store, until_ms=since_ms, namespace=namespace, sources=list(ends))
    ranges: dict[str, tuple[int, int, str]] = {}
    for src, mark in ends.items():
        before = starts.get(src)
        first = before.next_seq if before is not None else 0
        if mark.next_seq > first or mark.lost:
            ranges[src] = (first, max(first, mark.next_seq), mark.namespace)
    return ranges, ends


async def prove_window(
    store: VerifyStore, since_ms: int, until_ms: int, namespace: str | None = None
) -> WindowProof:
    """Prove ``[since_ms, until_ms)`` (see the module's docstring)."""
    ranges, marks = await window_ranges(store, since_ms, until_ms, namespace)
    stored: dict[str, StoredSource] = {}
    names = sorted(src for src, (first, end, _ns) in ranges.items() if end > first)
    for i in range(0, len(names), SOURCES_PER_QUERY):
        batch = {src: ranges[src] for src in names[i : i + SOURCES_PER_QUERY]}
        await _prove_batch(store, batch, stored)
    rows = with_losses(judge_ranges(stored, ranges), marks)
    return WindowProof(since_ms, until_ms, tuple(rows))


async def _prove_batch(
    store: VerifyStore,
    batch: Mapping[str, tuple[int, int, str]],
    stored: dict[str, StoredSource],
) -> None:
    query = ranges_query(batch)
    found = await store.stored_sources(query, namespaces=False)
    for src, source in found.items():
        source.namespace = batch[src][2]
    await store.recount(query, found)
    merge_stored(stored, found)
    intervals: dict[str, SourceRanges] = {}
    await store.joined_ranges(query, intervals)
    # Accounting records are found by source, whatever their time: the window is in seqs.
    unbounded = replace(store.options, since=None, until=None)
    await store.accounted_ranges(unbounded, intervals, sources=list(batch))
    probes: dict[str, list[tuple[int, int]]] = {}
    for src, source_ranges in sorted(intervals.items()):
        if src not in batch:
            continue
        first, end, namespace = batch[src]
        source_ranges.namespace = source_ranges.namespace or namespace
        source_ranges.accounted = _clipped(source_ranges.accounted, first, end - 1)
        probes[src] = intervals_to_probe(source_ranges)
    # The single-line records inside joined and accounted intervals, every source at once.
    # The intervals lie within the window's ranges: only the exclusions of ranges_query apply.
    plain = {"bool": {"must_not": query["bool"]["must_not"]}}
    inside = await store.seqs_inside_many(plain, {s: p for s, p in probes.items() if p})
    for src in probes:
        folded = fold_ranges(intervals[src], inside.get(src, set()), BLOCK)
        apply_ranges(stored, src, intervals[src], folded)


def _clipped(intervals: Sequence[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    return [(max(a, lo), min(b, hi)) for a, b in intervals if b >= lo and a <= hi]
