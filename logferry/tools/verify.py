"""``logferry verify``: proof of delivery, per source, by aggregations over the store.

Every forwarded record carries ``_lf.src`` (its source: one generation of one file on one node)
and ``_lf.seq``, contiguous from 0 per source (guarantee 4). So a source is whole and
stored once exactly when its stored seqs are ``start .. expected-1``, each held by one document.

How it is counted, without reading documents:

- one ``composite`` aggregation pages over (``_lf.src``, 1000-wide ``_lf.seq`` block) buckets,
  each with its document count, min, max and ``cardinality`` of seqs;
- ``cardinality`` is a HyperLogLog++ whose small-set mode keeps ~25-bit hashes, so two seqs of
  one block collide now and then (about one full block in seventy reports 999 distinct): its
  value is a *lower* bound of the distinct count, never above it. A block whose cardinality
  equals its document count therefore has no duplicate, exactly. Every other block is counted
  again exactly by a ``terms`` aggregation on ``_lf.seq`` (``min_doc_count`` 2) restricted to
  that block: at most 1000 values, so every shard returns them all;
- the expected end of a source is the highest of: its max seq + 1, its ``next_seq`` in the
  forwarder's position file (records the forwarder spooled), and the message count of its file
  in a load generator's manifest;
- seqs that the aggregator dead-lettered (``--dlq``) and that are not in the store are counted
  apart (``in_dlq``): they are accounted for, not lost.

``missing = expected - found - in_dlq`` and ``duplicates = documents - found``; the run passes
(exit 0) when both are 0 for every source, fails with exit 1 otherwise, and exits 2 on usage,
input-file or store errors.

This module judges, renders and runs the command line; the options and time parsing are in
:mod:`.verify_options`, the store's queries in :mod:`.verify_store`, and the readers of the
position file, manifest and DLQ in :mod:`.verify_inputs`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from logferry.common.commands import Subcommands, run_handler, standalone_parser
from logferry.common.errors import ConfigError
from logferry.common.store_access import add_store_arguments, store_access_from_args
from logferry.tools.verify_checkpoints import SourceMark, source_marks
from logferry.tools.verify_inputs import (
    DlqSource,
    Expectation,
    count_files,
    load_manifest,
    load_positions,
    read_dlq,
)
from logferry.tools.verify_options import VerifyError, VerifyOptions, epoch_ms, parse_time
from logferry.tools.verify_ranges import (
    Folded,
    SourceRanges,
    fold_ranges,
    intervals_to_probe,
)
from logferry.tools.verify_ranges import (
    union as union_of,
)
from logferry.tools.verify_store import (
    BLOCK,
    NAMESPACE_FIELD,
    PAGE_BUCKETS,
    PRECISION_THRESHOLD,
    PRESENCE_BATCH,
    RECOUNT_BATCH,
    SEQ_FIELD,
    SRC_FIELD,
    TIME_FIELD,
    BlockStats,
    StoredSource,
    VerifyStore,
    apply_recount,
    blocks_to_recount,
    fold_buckets,
    merge_stored,
    open_verify_store,
    shared_blocks,
    window_query,
)

__all__ = [
    "BLOCK",
    "MAX_RANGES",
    "NAMESPACE_FIELD",
    "PAGE_BUCKETS",
    "PRECISION_THRESHOLD",
    "PRESENCE_BATCH",
    "RECOUNT_BATCH",
    "SEQ_FIELD",
    "SRC_FIELD",
    "TIME_FIELD",
    "WORST_SOURCES",
    "BlockStats",
    "DlqSource",
    "Expectation",
    "MissingRange",
    "SourceRow",
    "StoredSource",
    "Totals",
    "VerifyError",
    "VerifyOptions",
    "VerifyReport",
    "VerifyStore",
    "apply_recount",
    "blocks_to_recount",
    "build_parser",
    "fold_buckets",
    "judge",
    "load_manifest",
    "load_positions",
    "options_from_args",
    "parse_time",
    "read_dlq",
    "render_table",
    "summarize",
    "verify",
    "verify_main",
    "window_query",
]

WORST_SOURCES = 20
MAX_RANGES = 8
"""Missing ranges listed per source."""


# ----------------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class MissingRange:
    """Seqs ``first..last`` of which ``missing`` are absent (all of them when ``exact``)."""

    first: int
    last: int
    missing: int

    @property
    def exact(self) -> bool:
        return self.missing == self.last - self.first + 1

    def __str__(self) -> str:
        span = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return span if self.exact else f"{self.missing} in {span}"


@dataclass(frozen=True, slots=True)
class SourceRow:
    """The verdict on one source."""

    source: str
    namespace: str
    first_seq: int
    """Where the run is judged from: 0, or the lowest seq in the window with ``--since``."""
    expected: int
    found: int
    """Distinct seqs stored (a joined record counts every seq it covers)."""
    documents: int
    duplicates: int
    """Seqs stored more than once."""
    in_dlq: int
    missing: int
    max_seq: int | None
    """Highest seq seen in the store or the DLQ (None: nothing seen)."""
    expected_by: str
    """What set the expected end: ``store``, ``positions``, ``manifest`` or ``checkpoint``."""
    missing_ranges: tuple[MissingRange, ...] = ()
    accounted: int = 0
    """Seqs a tenant's filter discarded, as accounting records list them (not stored)."""
    lost_at_source: int = 0
    """Lines its forwarder never read, by its ``lost`` checkpoint (-1: not countable): they
    have no seqs, so they are never ``missing``; reported apart, with ``lost_reason``."""
    lost_reason: str = ""

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.duplicates == 0

    def as_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["missing_ranges"] = [
            {"first": r.first, "last": r.last, "missing": r.missing} for r in self.missing_ranges
        ]
        return row


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over a set of sources."""

    sources: int = 0
    expected: int = 0
    found: int = 0
    documents: int = 0
    missing: int = 0
    duplicates: int = 0
    in_dlq: int = 0
    accounted: int = 0
    sources_lost: int = 0
    """Sources whose forwarder reported lines it never read (``lost`` checkpoints)."""
    lost_at_source: int = 0
    """The lines those reports counted (the uncountable ones add nothing here)."""

    @classmethod
    def of(cls, rows: Iterable[SourceRow]) -> Totals:
        rows = list(rows)
        return cls(
            sources=len(rows),
            expected=sum(r.expected for r in rows),
            found=sum(r.found for r in rows),
            documents=sum(r.documents for r in rows),
            missing=sum(r.missing for r in rows),
            duplicates=sum(r.duplicates for r in rows),
            in_dlq=sum(r.in_dlq for r in rows),
            accounted=sum(r.accounted for r in rows),
            sources_lost=sum(1 for r in rows if r.lost_reason),
            lost_at_source=sum(max(r.lost_at_source, 0) for r in rows),
        )


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The whole verdict: per source, per namespace, in total, and how to read it."""

    sources: tuple[SourceRow, ...]
    totals: Totals
    namespaces: dict[str, Totals]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.totals.missing == 0 and self.totals.duplicates == 0

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "totals": asdict(self.totals),
            "namespaces": {ns: asdict(t) for ns, t in self.namespaces.items()},
            "sources": [row.as_json() for row in self.sources],
            "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------- pure logic


def judge(
    stored: Mapping[str, StoredSource],
    dlq: Mapping[str, DlqSource],
    expectations: Mapping[str, Expectation],
    *,
    from_lowest: bool,
    expect_unseen: bool,
) -> list[SourceRow]:
    """One row per source, worst first.

    ``dlq`` must hold only seqs that are not in the store. ``from_lowest`` (``--since``) judges
    each run from its lowest seq in the window instead of 0. ``expect_unseen``: sources known
    only from ``expectations`` are judged too (all their records missing).
    """
    names = set(stored) | set(dlq)
    if expect_unseen:
        names |= {src for src, exp in expectations.items() if exp.next_seq > 0}
    rows = [
        _judge_source(src, stored.get(src), dlq.get(src), expectations.get(src), from_lowest)
        for src in names
    ]
    rows.sort(key=lambda r: (-(r.missing + r.duplicates), r.namespace, r.source))
    return rows


def summarize(rows: Sequence[SourceRow], notes: Sequence[str] = ()) -> VerifyReport:
    """The report of ``rows``: totals per namespace and overall."""
    by_namespace: dict[str, list[SourceRow]] = defaultdict(list)
    for row in rows:
        by_namespace[row.namespace].append(row)
    return VerifyReport(
        sources=tuple(rows),
        totals=Totals.of(rows),
        namespaces={ns: Totals.of(by_namespace[ns]) for ns in sorted(by_namespace)},
        notes=tuple(notes),
    )


def render_table(report: VerifyReport) -> str:
    """The human report: a row per namespace and a total, the worst sources, the verdict."""
    header = ("namespace", "sources", "expected", "found", "missing", "duplicates", "in DLQ")
    table: list[tuple[str, ...]] = [header]
    for ns, t in report.namespaces.items():
        table.append((ns or "-", *_counts(t)))
    table.append(("TOTAL", *_counts(report.totals)))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()
        for row in table
    ]
    bad = [row for row in report.sources if not row.ok]
    if bad:
        lines.append("")
        lines.append(f"worst sources ({min(len(bad), WORST_SOURCES)} of {len(bad)}):")
        for row in bad[:WORST_SOURCES]:
            text = (
                f"  {row.source}  {row.namespace or '-'}  seqs {row.first_seq}.."
                f"{row.first_seq + row.expected - 1} ({row.expected_by})  missing {row.missing}"
                f"  duplicates {row.duplicates}  in DLQ {row.in_dlq}"
            )
            if row.missing_ranges:
                text += "  missing: " + ", ".join(str(r) for r in row.missing_ranges)
                if sum(r.missing for r in row.missing_ranges) < row.missing:
                    text += ", ..."
            lines.append(text)
    lost = [row for row in report.sources if row.lost_reason]
    if lost:
        lines.append("")
        lines.append(f"lost at source (never read by the forwarder, not missing): {len(lost)}")
        for row in lost[:WORST_SOURCES]:
            count = "uncounted" if row.lost_at_source < 0 else f"{row.lost_at_source} lines"
            lines.append(f"  {row.source}  {row.namespace or '-'}  {count}  ({row.lost_reason})")
    for note in report.notes:
        lines.append(f"note: {note}")
    t = report.totals
    verdict = (
        f"OK: {t.found} records of {t.sources} sources stored exactly once"
        + (f" ({t.in_dlq} in the dead-letter queue)" if t.in_dlq else "")
        if report.ok
        else f"FAILED: {t.missing} missing, {t.duplicates} duplicates"
    )
    lines.append(verdict)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- the run


async def verify(options: VerifyOptions) -> VerifyReport:
    """Verify the store (and DLQ, positions, manifest) as ``options`` say. Raises VerifyError."""
    if (options.manifest_file is not None or options.files) and not options.node:
        raise VerifyError("--manifest/--files need --node (the node name is part of source ids)")
    notes: list[str] = []
    expectations: dict[str, Expectation] = {}
    generations: dict[tuple[int, int], int] = {}
    if options.positions_file is not None:
        positions, generations = load_positions(options.positions_file)
        expectations.update(positions)
    if options.manifest_file is not None and options.node:
        for src, exp in load_manifest(options.manifest_file, options.node, generations).items():
            known = expectations.get(src)
            if known is None or exp.next_seq > known.next_seq:
                expectations[src] = exp
    if options.files and options.node:
        counted = await asyncio.to_thread(count_files, options.files, options.node, generations)
        for src, exp in counted.items():
            known = expectations.get(src)
            if known is None or exp.next_seq > known.next_seq:
                expectations[src] = exp
    if options.namespace is not None and expectations:
        expectations = {s: e for s, e in expectations.items() if e.namespace == options.namespace}
        notes.append("positions/manifest sources are matched to --namespace by their file name")
    since_ms = None if options.since is None else epoch_ms(options.since)
    until_ms = None if options.until is None else epoch_ms(options.until)
    dlq = read_dlq(
        options.dlq_dirs, since_ms=since_ms, until_ms=until_ms, namespace=options.namespace
    )

    stored: dict[str, StoredSource] = {}
    async with open_verify_store(options) as store:
        await store.refresh()
        marks = await source_marks(store, until_ms=until_ms, namespace=options.namespace)
        passes = [(run, window_query(options, run)) for run in await store.passes()]
        found_by_pass: list[dict[str, StoredSource]] = []
        for run, query in passes:
            found = await store.stored_sources(query, run)
            await store.recount(query, found, run)
            found_by_pass.append(found)
            for src, entry in dlq.items():
                entry.seqs -= await store.present_seqs(query, src, list(entry.seqs), run)
        union: dict[tuple[str, int], int] = {}
        for src, start in shared_blocks(found_by_pass):
            seqs: set[int] = set()
            for (run, query), found in zip(passes, found_by_pass, strict=True):
                if src in found and start in found[src].blocks:
                    seqs |= await store.block_seqs(query, src, start, run)
            union[(src, start)] = len(seqs)
        for found in found_by_pass:
            merge_stored(stored, found, union)
        ranges: dict[str, SourceRanges] = {}
        for run, query in passes:
            await store.joined_ranges(query, ranges, run)
        await store.accounted_ranges(options, ranges)
        for src, source_ranges in sorted(ranges.items()):
            probe = intervals_to_probe(source_ranges)
            inside: set[int] = set()
            for run, query in passes:
                inside |= await store.seqs_inside(query, src, probe, run)
            folded = fold_ranges(source_ranges, inside, BLOCK)
            apply_ranges(stored, src, source_ranges, folded)
            held = dlq.get(src)
            if held is not None and held.seqs:
                firsts = [(a, a) for a, _b, _n in source_ranges.joined]
                everything = union_of([*probe, *firsts])
                held.seqs = {s for s in held.seqs if not _within(s, everything)}
    dlq = {src: entry for src, entry in dlq.items() if entry.seqs}

    if options.until is not None and expectations:
        # The position file and the manifest count records written after the window too.
        expectations = {}
        notes.append("--until: positions/manifest counts not applied (they run past the window)")
    # The forwarders' checkpoints (before --until): each source's end, from the store alone.
    for src, mark in marks.items():
        known = expectations.get(src)
        if known is None or mark.next_seq >= known.next_seq:
            expectations[src] = Expectation(mark.next_seq, mark.namespace, "checkpoint")
    if options.since is not None:
        notes.append(
            "--since: seqs before the window are out of scope; each source is judged from "
            "its lowest seq in the window, and positions/manifest sources with nothing in "
            "the window are not listed"
        )
    rows = judge(
        stored,
        dlq,
        expectations,
        from_lowest=options.since is not None,
        expect_unseen=options.since is None,
    )
    return summarize(with_losses(rows, marks), notes)


def with_losses(rows: Sequence[SourceRow], marks: Mapping[str, SourceMark]) -> list[SourceRow]:
    """``rows`` with what ``lost`` checkpoints say their forwarder never read."""
    out = []
    for row in rows:
        mark = marks.get(row.source)
        if mark is not None and mark.lost:
            row = replace(row, lost_at_source=mark.lost_lines, lost_reason=mark.reason or "lost")
        out.append(row)
    return out


# ------------------------------------------------------------------------------------ CLI


def register(commands: Subcommands, name: str, help_text: str) -> argparse.ArgumentParser:
    """Add ``verify`` to ``commands``."""
    parser = commands.add_parser(
        name,
        help=help_text,
        description=(
            "Prove delivery: for every source, the stored _lf.seq values must run contiguously "
            "up to the expected end, each stored once. Counted by aggregations (exact), never "
            "by reading documents. Exit 0 all delivered once, 1 missing or duplicated records, "
            "2 usage or connection error."
        ),
        # No abbreviations: "--password S" must be refused, not read as --password-file S.
        allow_abbrev=False,
    )
    add_store_arguments(parser, required=True)
    parser.add_argument("--index", default="logs-*", metavar="PATTERN", help="default: logs-*")
    parser.add_argument("--namespace", metavar="NS", help="only this tenant's records")
    parser.add_argument("--since", metavar="TIME", help="ISO 8601, or 15m / 2h / 1d ago")
    parser.add_argument("--until", metavar="TIME", help="end of the window (exclusive)")
    parser.add_argument(
        "--dlq",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="aggregator dead-letter queue directory (repeatable)",
    )
    parser.add_argument("--positions", type=Path, metavar="FILE", help="forwarder position file")
    parser.add_argument("--manifest", type=Path, metavar="FILE", help="load generator manifest")
    parser.add_argument(
        "--files",
        action="append",
        default=[],
        metavar="GLOB",
        help="container log files still on disk to count records in, e.g. "
        "'/var/log/pods/*/*/*.log*' (repeatable; needs --node)",
    )
    parser.add_argument("--node", metavar="NAME", help="node name of the manifest's/files' node")
    parser.add_argument(
        "--timeout", type=float, default=300.0, metavar="SECONDS", help="per request"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.set_defaults(handler=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``logferry verify`` argument parser."""
    return standalone_parser(register, "verify")


def options_from_args(args: argparse.Namespace, now: datetime | None = None) -> VerifyOptions:
    """Options from parsed arguments; VerifyError on an inconsistent combination."""
    now = datetime.now(UTC) if now is None else now
    try:
        store = store_access_from_args(args)
    except ConfigError as exc:
        raise VerifyError(exc.reason) from exc
    if (args.manifest or args.files) and not args.node:
        raise VerifyError("--manifest and --files need --node")
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    if since is not None and until is not None and since >= until:
        raise VerifyError("--since must be before --until")
    return VerifyOptions(
        store=store,
        index=args.index,
        namespace=args.namespace,
        since=since,
        until=until,
        dlq_dirs=tuple(args.dlq),
        positions_file=args.positions,
        manifest_file=args.manifest,
        files=tuple(args.files),
        node=args.node,
        request_timeout_s=args.timeout,
    )


def verify_main(argv: Sequence[str]) -> int:
    """``logferry verify`` with ``argv``: 0 verified, 1 missing or duplicated records, 2 could
    not verify (argparse's usage errors included)."""
    return run_handler(build_parser(), argv)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``verify``; the exit status."""
    try:
        report = asyncio.run(verify(options_from_args(args)))
    except VerifyError as exc:
        print(f"logferry verify: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        print(render_table(report))
    return 0 if report.ok else 1


# ---------------------------------------------------------------------------- helpers


def judge_ranges(
    stored: Mapping[str, StoredSource], ranges: Mapping[str, tuple[int, int, str]]
) -> list[SourceRow]:
    """One row per source of ``ranges`` (source: first seq, end, namespace), judging exactly
    the seqs ``first .. end-1`` (the store was asked for those only), worst first."""
    rows = [
        _judge_source(
            src,
            stored.get(src),
            None,
            Expectation(end, namespace, "checkpoint"),
            from_lowest=False,
            first=first,
        )
        for src, (first, end, namespace) in ranges.items()
    ]
    rows.sort(key=lambda r: (-(r.missing + r.duplicates), r.namespace, r.source))
    return rows


def _judge_source(
    src: str,
    stored: StoredSource | None,
    dlq: DlqSource | None,
    expectation: Expectation | None,
    from_lowest: bool,
    first: int | None = None,
) -> SourceRow:
    blocks = stored.blocks if stored is not None else {}
    dlq_seqs = dlq.seqs if dlq is not None else set()
    seen_lo = [stored.lo] if blocks and stored else []
    seen_hi = [stored.hi] if blocks and stored else []
    if dlq_seqs:
        seen_lo.append(min(dlq_seqs))
        seen_hi.append(max(dlq_seqs))
    if first is None:
        first = min(seen_lo) if from_lowest and seen_lo else 0
    end = max(seen_hi) + 1 if seen_hi else 0
    expected_by = "store"
    if expectation is not None and expectation.next_seq > end:
        end, expected_by = expectation.next_seq, expectation.origin
    covered = stored.distinct if stored is not None else 0
    accounted = stored.accounted if stored is not None else 0
    found = covered - accounted
    documents = stored.documents if stored is not None else 0
    expected = end - first
    missing = expected - covered - len(dlq_seqs)
    namespace = (
        (stored.namespace if stored is not None else "")
        or (dlq.namespace if dlq is not None else "")
        or (expectation.namespace if expectation is not None else "")
    )
    intervals = stored.intervals if stored is not None else []
    ranges = tuple(_missing_ranges(first, end, blocks, dlq_seqs, intervals)) if missing else ()
    return SourceRow(
        source=src,
        namespace=namespace,
        first_seq=first,
        expected=expected,
        found=found,
        documents=documents,
        duplicates=stored.duplicates if stored is not None else 0,
        accounted=accounted,
        in_dlq=len(dlq_seqs),
        missing=missing,
        max_seq=max(seen_hi) if seen_hi else None,
        expected_by=expected_by,
        missing_ranges=ranges,
    )


def _missing_ranges(
    first: int,
    end: int,
    blocks: Mapping[int, BlockStats],
    dlq: set[int],
    intervals: Sequence[tuple[int, int]] = (),
) -> Iterator[MissingRange]:
    """Up to MAX_RANGES ranges of missing seqs, exact where the blocks tell: a block with
    nothing, whose seqs are contiguous (the gap is then at its edges), or that only joined
    and accounting records cover (``intervals``: the gaps are between them)."""
    pending: MissingRange | None = None
    emitted = 0
    dlq_by_block: dict[int, list[int]] = defaultdict(list)
    for seq in dlq:
        dlq_by_block[seq - seq % BLOCK].append(seq)
    for start in range(first - first % BLOCK, end, BLOCK):
        lo, hi = max(start, first), min(start + BLOCK, end) - 1
        block = blocks.get(start)
        held = [s for s in dlq_by_block.get(start, ()) if lo <= s <= hi]
        missing = (hi - lo + 1) - (block.distinct if block else 0) - len(held)
        if missing <= 0:
            continue
        if block is None:
            spans = [(lo, hi)]
        elif block.documents == 0:
            spans = _gaps(lo, hi, intervals)
        elif block.distinct == block.hi - block.lo + 1:
            spans = [(lo, block.lo - 1), (block.hi + 1, hi)]
        else:
            spans = []
        pieces = [r for a, b in spans if a <= b for r in _without(a, b, held)]
        if sum(r.missing for r in pieces) != missing:
            pieces = [MissingRange(lo, hi, missing)]  # somewhere inside the block
        for piece in pieces:
            joins = pending is not None and pending.exact and piece.exact
            if pending is not None and joins and pending.last + 1 == piece.first:
                pending = MissingRange(pending.first, piece.last, pending.missing + piece.missing)
                continue
            if pending is not None:
                yield pending
                emitted += 1
                if emitted >= MAX_RANGES:
                    return
            pending = piece
    if pending is not None:
        yield pending


def apply_ranges(
    stored: dict[str, StoredSource], src: str, ranges: SourceRanges, folded: Folded
) -> None:
    """Add what a source's intervals cover (:func:`fold_ranges`) to its blocks."""
    source = stored.get(src)
    if source is None:
        source = stored[src] = StoredSource(ranges.namespace)
    source.namespace = source.namespace or ranges.namespace
    for start, (added, lo, hi) in folded.by_block.items():
        block = source.blocks.get(start)
        if block is None:
            source.blocks[start] = BlockStats(0, added, lo, hi, exact=True)
        else:
            block.distinct += added
            block.lo, block.hi = min(block.lo, lo), max(block.hi, hi)
    firsts = [(a, a) for a, _b, _n in ranges.joined]
    source.intervals = union_of([*source.intervals, *intervals_to_probe(ranges), *firsts])
    source.interval_cover += folded.stored_extra + folded.accounted
    source.accounted += folded.accounted
    source.range_duplicates += folded.duplicates


def _gaps(lo: int, hi: int, disjoint: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``lo..hi`` without sorted disjoint intervals."""
    gaps, start = [], lo
    for a, b in disjoint:
        if b < start or a > hi:
            continue
        if a > start:
            gaps.append((start, a - 1))
        start = max(start, b + 1)
    if start <= hi:
        gaps.append((start, hi))
    return gaps


def _within(seq: int, disjoint: Sequence[tuple[int, int]]) -> bool:
    return any(a <= seq <= b for a, b in disjoint)


def _without(first: int, last: int, dlq: Iterable[int]) -> Iterator[MissingRange]:
    """``first..last`` with the dead-lettered seqs taken out, as exact ranges."""
    holes = sorted(s for s in dlq if first <= s <= last)
    start = first
    for hole in [*holes, last + 1]:
        if hole > start:
            yield MissingRange(start, hole - 1, hole - start)
        start = hole + 1


def _counts(t: Totals) -> tuple[str, ...]:
    return tuple(
        str(v) for v in (t.sources, t.expected, t.found, t.missing, t.duplicates, t.in_dlq)
    )


if __name__ == "__main__":
    sys.exit(verify_main(sys.argv[1:]))
