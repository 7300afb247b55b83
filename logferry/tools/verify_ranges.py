"""Records that cover ranges of seqs, for ``logferry verify``: joined records (``_lf.seq`` to
``_lf.seq_end``) and accounting records (the seqs a tenant's filters discarded).

The block aggregations (:mod:`.verify_store`) count every stored record by its first seq.
What a joined record covers beyond its first seq (its *interior*) and what accounting records
list are intervals, read separately (one aggregation bucket per distinct joined record, one
small document per accounted message) and folded into the blocks here, exactly:

- a seq covered twice by stored records is a duplicate: two joined records overlapping, a
  joined record stored twice, or a single-line record inside a joined record's interior;
- a seq covered by an accounting record and by a stored record is found once, never a
  duplicate (a resend cut differently may account for the same seqs twice, harmlessly);
- the single-line records inside any interval are looked up by seq (:func:`intervals_to_probe`),
  so the union never counts one seq twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Folded",
    "Interval",
    "SourceRanges",
    "covered",
    "fold_ranges",
    "intervals_to_probe",
    "union",
]

Interval = tuple[int, int]
"""``(first, last)``, both included."""


@dataclass(slots=True)
class SourceRanges:
    """The intervals of one source."""

    joined: list[tuple[int, int, int]] = field(default_factory=list)
    """(first seq, last seq, documents) of each distinct joined record."""
    accounted: list[Interval] = field(default_factory=list)
    """Seqs discarded by filters, as accounting records list them."""
    namespace: str = ""

    def interiors(self) -> list[tuple[int, int, int]]:
        """The joined records' seqs after their first (their first is in the blocks)."""
        return [(a + 1, b, n) for a, b, n in self.joined if b > a]


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """The union, as sorted disjoint intervals (adjacent ones merged)."""
    merged: list[Interval] = []
    for a, b in sorted(intervals):
        if b < a:
            continue
        if merged and a <= merged[-1][1] + 1:
            if b > merged[-1][1]:
                merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def covered(intervals: Sequence[Interval]) -> int:
    """Seqs in disjoint ``intervals``."""
    return sum(b - a + 1 for a, b in intervals)


def _inside(seq: int, disjoint: Sequence[Interval]) -> bool:
    lo, hi = 0, len(disjoint)
    while lo < hi:
        mid = (lo + hi) // 2
        if disjoint[mid][1] < seq:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(disjoint) and disjoint[lo][0] <= seq


def intervals_to_probe(ranges: SourceRanges) -> list[Interval]:
    """Where single-line records must be looked up: every interval that is not a first seq."""
    return union([(a, b) for a, b, _n in ranges.interiors()] + ranges.accounted)


@dataclass(frozen=True, slots=True)
class Folded:
    """What a source's intervals add to its block counts."""

    stored_extra: int
    """Distinct seqs the joined interiors add to what the blocks count."""
    accounted: int
    """Seqs only accounting records cover (not stored)."""
    duplicates: int
    """Seqs stored more than once because of the intervals."""
    by_block: dict[int, tuple[int, int, int]]
    """Per block start: (seqs the intervals add there, stored or accounted; lowest and
    highest seq they cover there)."""
    lo: int | None
    hi: int | None


def fold_ranges(ranges: SourceRanges, singles_inside: Iterable[int], block: int) -> Folded:
    """Fold one source's intervals into its counts; ``singles_inside``: the distinct seqs of
    records counted in the blocks that fall inside :func:`intervals_to_probe`."""
    interiors = ranges.interiors()
    stored = union((a, b) for a, b, _n in interiors)
    multiplicity = sum((b - a + 1) * n for a, b, n in interiors)
    duplicates = multiplicity - covered(stored)
    accounted_only = _minus(union(ranges.accounted), stored)
    inside = sorted(set(singles_inside))
    in_stored = [s for s in inside if _inside(s, stored)]
    in_accounted = [s for s in inside if not _inside(s, stored) and _inside(s, accounted_only)]
    duplicates += len(in_stored)
    everything = union(stored + accounted_only)
    by_block: dict[int, tuple[int, int, int]] = {}
    for a, b in everything:
        start = a - a % block
        while start <= b:
            lo, hi = max(a, start), min(b, start + block - 1)
            known = by_block.get(start)
            if known is None:
                by_block[start] = (hi - lo + 1, lo, hi)
            else:
                by_block[start] = (known[0] + hi - lo + 1, min(known[1], lo), max(known[2], hi))
            start += block
    for seq in inside:
        if _inside(seq, everything):
            added, lo, hi = by_block[seq - seq % block]
            by_block[seq - seq % block] = (added - 1, lo, hi)
    return Folded(
        stored_extra=covered(stored) - len(in_stored),
        accounted=covered(accounted_only) - len(in_accounted),
        duplicates=duplicates,
        by_block=by_block,
        lo=everything[0][0] if everything else None,
        hi=everything[-1][1] if everything else None,
    )


def _minus(intervals: Sequence[Interval], holes: Sequence[Interval]) -> list[Interval]:
    """Disjoint ``intervals`` without disjoint ``holes``."""
    out: list[Interval] = []
    for a, b in intervals:
        start = a
        for h0, h1 in holes:
            if h1 < start or h0 > b:
                continue
            if h0 > start:
                out.append((start, h0 - 1))
            start = max(start, h1 + 1)
            if start > b:
                break
        if start <= b:
            out.append((start, b))
    return out
