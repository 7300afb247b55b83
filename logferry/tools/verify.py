"""``logferry verify``: proof of delivery, per source, by aggregations over the store.

Every forwarded record carries ``_lf.src`` (its source: one generation of one file on one node)
and ``_lf.seq``, contiguous from 0 per source (DESIGN.md guarantee 4). So a source is whole and
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
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import ssl
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import orjson

from logferry.aggregator.dlq import decode_entry
from logferry.common.errors import LogferryError
from logferry.common.records import source_id
from logferry.forwarder.metadata import parse_file_name
from logferry.forwarder.positions import decode_positions

SRC_FIELD = "_lf.src.keyword"
"""``_lf.src`` as the aggregator's documents get it from dynamic mapping (text + keyword)."""
SEQ_FIELD = "_lf.seq"
NAMESPACE_FIELD = "kubernetes.namespace_name.keyword"
TIME_FIELD = "@timestamp"

BLOCK = 1000
"""Seqs per histogram block: well below the cardinality's precision threshold."""
PRECISION_THRESHOLD = 4000
PAGE_BUCKETS = 1000
"""Composite buckets per request (up to a million documents a page)."""
RECOUNT_BATCH = 50
"""Blocks recounted exactly per request."""
PRESENCE_BATCH = 5000
"""DLQ seqs of one source looked up in the store per request."""
WORST_SOURCES = 20
MAX_RANGES = 8
"""Missing ranges listed per source."""

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_T = TypeVar("_T")


class VerifyError(LogferryError):
    """A usage, input-file or store problem: the verification could not run (exit 2)."""


# ------------------------------------------------------------------------------------ model


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    """What to verify and where; the CLI flags of ``logferry verify``."""

    store_url: str
    index: str = "logs-*"
    namespace: str | None = None
    since: datetime | None = None
    """Start of the window (inclusive); seqs before it are out of scope."""
    until: datetime | None = None
    """End of the window (exclusive)."""
    dlq_dirs: tuple[Path, ...] = ()
    positions_file: Path | None = None
    manifest_file: Path | None = None
    node: str | None = None
    """Node name of the manifest's files (part of their source ids)."""
    username: str | None = None
    password: str | None = None
    api_key: str | None = None
    """``id:key`` or its base64, sent as ``Authorization: ApiKey``."""
    ca_file: Path | None = None
    insecure: bool = False
    request_timeout_s: float = 300.0


@dataclass(slots=True)
class BlockStats:
    """One (source, 1000-seq block) bucket of the store."""

    documents: int
    distinct: int
    """Distinct seqs: the cardinality, made exact by a recount when it was below documents."""
    lo: int
    hi: int
    exact: bool
    """True once ``distinct`` is known exactly (cardinality == documents, or recounted)."""


@dataclass(slots=True)
class StoredSource:
    """What the store holds of one source, by block start."""

    namespace: str
    blocks: dict[int, BlockStats] = field(default_factory=dict)

    @property
    def documents(self) -> int:
        return sum(b.documents for b in self.blocks.values())

    @property
    def distinct(self) -> int:
        return sum(b.distinct for b in self.blocks.values())

    @property
    def lo(self) -> int:
        return min(b.lo for b in self.blocks.values())

    @property
    def hi(self) -> int:
        return max(b.hi for b in self.blocks.values())


@dataclass(frozen=True, slots=True)
class Expectation:
    """A count of records a source must have, from outside the store."""

    next_seq: int
    namespace: str
    origin: str
    """``positions`` or ``manifest``."""


@dataclass(slots=True)
class DlqSource:
    """Seqs of one source found in the dead-letter queue (within the window)."""

    namespace: str
    seqs: set[int] = field(default_factory=set)


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
    """Distinct seqs in the store."""
    documents: int
    duplicates: int
    in_dlq: int
    missing: int
    max_seq: int | None
    """Highest seq seen in the store or the DLQ (None: nothing seen)."""
    expected_by: str
    """What set the expected end: ``store``, ``positions`` or ``manifest``."""
    missing_ranges: tuple[MissingRange, ...] = ()

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


def parse_time(text: str, now: datetime) -> datetime:
    """ISO 8601 (naive means UTC) or a span back from ``now``: ``90s``, ``15m``, ``2h``, ``1d``."""
    match = _RELATIVE.match(text)
    if match:
        return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise VerifyError(f"not a time: {text!r} (ISO 8601, or 15m / 2h / 1d ago)") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def fold_buckets(buckets: Iterable[Mapping[str, Any]], into: dict[str, StoredSource]) -> None:
    """Add one page of composite buckets to the per-source block tables."""
    for bucket in buckets:
        src = str(bucket["key"]["src"])
        start = int(bucket["key"]["block"])
        documents = int(bucket["doc_count"])
        if documents == 0:
            continue
        namespaces = bucket.get("ns", {}).get("buckets", [])
        stored = into.get(src)
        if stored is None:
            stored = into[src] = StoredSource(str(namespaces[0]["key"]) if namespaces else "")
        elif not stored.namespace and namespaces:
            stored.namespace = str(namespaces[0]["key"])
        # Collisions only ever lower the cardinality: never above the distinct count.
        distinct = min(int(bucket["seqs"]["value"]), documents)
        stored.blocks[start] = BlockStats(
            documents=documents,
            distinct=distinct,
            lo=int(bucket["lo"]["value"]),
            hi=int(bucket["hi"]["value"]),
            exact=distinct == documents,
        )


def blocks_to_recount(stored: Mapping[str, StoredSource]) -> list[tuple[str, int]]:
    """(source, block start) of every block whose distinct count is not yet exact."""
    return [
        (src, start)
        for src, source in sorted(stored.items())
        for start, block in sorted(source.blocks.items())
        if not block.exact
    ]


def apply_recount(block: BlockStats, doubled: Iterable[Mapping[str, Any]]) -> None:
    """Make ``block.distinct`` exact from the seqs that more than one document holds."""
    extra = sum(int(bucket["doc_count"]) - 1 for bucket in doubled)
    block.distinct = block.documents - extra
    block.exact = True


def load_positions(path: Path) -> tuple[dict[str, Expectation], dict[tuple[int, int], int]]:
    """From a forwarder position file: each live source's ``next_seq``, and the generation of
    the last source on each (device, inode), live or released.

    Decoded without :class:`PositionStore`, which would move a damaged file aside: this tool
    only reads the forwarder's state.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VerifyError(f"cannot read position file: {exc}") from exc
    try:
        states, released = decode_positions(data)
    except ValueError as exc:
        raise VerifyError(f"{path}: damaged position file: {exc}") from exc
    generations = {(dev, ino): gen for dev, ino, gen in released}
    expectations: dict[str, Expectation] = {}
    for state in states:
        generations[state.key] = state.generation
        namespace = _namespace_of(state.link) or _namespace_of(state.path)
        expectations[state.source_id] = Expectation(state.next_seq, namespace, "positions")
    return expectations, generations


def load_manifest(
    path: Path, node: str, generations: Mapping[tuple[int, int], int]
) -> dict[str, Expectation]:
    """Messages per source of a load generator's manifest ``{"files": [{"path", "device",
    "inode", "messages"}, ..]}`` (other keys ignored).

    A file's generation is the positions file's last one for its (device, inode), else 0.
    Files of the manifest that share an inode (reuse after deletion) took one generation each,
    in manifest order, so the last of them has that generation and each earlier one one less.
    """
    try:
        doc = orjson.loads(path.read_bytes())
        files = doc["files"]
        entries = [
            (str(f["path"]), _uint(f["device"]), _uint(f["inode"]), _uint(f["messages"]))
            for f in files
        ]
    except OSError as exc:
        raise VerifyError(f"cannot read manifest: {exc}") from exc
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise VerifyError(f"{path}: not a manifest ({type(exc).__name__}: {exc})") from exc
    later: dict[tuple[int, int], int] = defaultdict(int)
    expectations: dict[str, Expectation] = {}
    for file_path, device, inode, messages in reversed(entries):
        key = (device, inode)
        generation = max(generations.get(key, 0) - later[key], 0)
        later[key] += 1
        src = source_id(node, device, inode, generation)
        expectations[src] = Expectation(messages, _namespace_of(file_path), "manifest")
    return expectations


def read_dlq(
    directories: Iterable[Path],
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    namespace: str | None = None,
) -> dict[str, DlqSource]:
    """(source -> seqs) of the dead-lettered documents in the window and namespace.

    Read straight from the queue's files (no lock file created, no entry held in memory):
    appends and rewrites are line- and rename-atomic, and a torn last line is skipped.
    """
    found: dict[str, DlqSource] = {}
    for directory in directories:
        if not directory.is_dir():
            raise VerifyError(f"not a dead-letter queue directory: {directory}")
        for file in sorted(directory.glob("dlq-*.jsonl")):
            for line in _lines(file):
                entry = decode_entry(line, file.name) if line.endswith(b"\n") else None
                if entry is None:
                    continue
                try:
                    doc = orjson.loads(entry.source)
                except orjson.JSONDecodeError:
                    continue
                lf = doc.get("_lf") if isinstance(doc, dict) else None
                src = lf.get("src") if isinstance(lf, dict) else None
                seq = lf.get("seq") if isinstance(lf, dict) else None
                if not isinstance(src, str) or not isinstance(seq, int) or isinstance(seq, bool):
                    continue
                kubernetes = doc.get("kubernetes")
                ns = kubernetes.get("namespace_name") if isinstance(kubernetes, dict) else None
                ns = ns if isinstance(ns, str) and ns else entry.tenant
                if namespace is not None and ns != namespace:
                    continue
                if not _in_window(doc.get(TIME_FIELD), since_ms, until_ms):
                    continue
                found.setdefault(src, DlqSource(ns)).seqs.add(seq)
    return found


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


# ---------------------------------------------------------------------------- the store


class StoreClient:
    """The few REST calls verify makes, over one aiohttp session."""

    def __init__(self, options: VerifyOptions, session: aiohttp.ClientSession) -> None:
        self.url = options.store_url.rstrip("/")
        self.options = options
        self._session = session
        self._ssl = _ssl_option(options)
        self._index = quote(options.index, safe="*,")

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer; VerifyError on any failure, with the store's reason."""
        url = f"{self.url}{path}"
        try:
            async with self._session.request(
                method,
                url,
                data=None if body is None else orjson.dumps(body),
                headers={"Content-Type": "application/json"},
                ssl=self._ssl,
            ) as response:
                payload = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise VerifyError(f"store {self.url}: {type(exc).__name__}: {exc}") from exc
        if status >= 300:
            raise VerifyError(
                f"store {method} {path.split('?')[0]}: {_store_reason(status, payload)}"
            )
        return payload

    async def refresh(self) -> None:
        await self.request("POST", f"/{self._index}/_refresh?{_LENIENT}")

    async def search(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        payload = await self.request("POST", f"/{self._index}/_search?{_LENIENT}", body)
        aggregations: Mapping[str, Any] = payload.get("aggregations") or {}
        return aggregations

    async def stored_sources(self, query: Mapping[str, Any]) -> dict[str, StoredSource]:
        """Every source's blocks, a composite page at a time."""
        stored: dict[str, StoredSource] = {}
        after: Any = None
        while True:
            composite: dict[str, Any] = {
                "size": PAGE_BUCKETS,
                "sources": [
                    {"src": {"terms": {"field": SRC_FIELD}}},
                    {"block": {"histogram": {"field": SEQ_FIELD, "interval": BLOCK}}},
                ],
            }
            if after is not None:
                composite["after"] = after
            aggs = await self.search(
                {
                    "size": 0,
                    "track_total_hits": False,
                    "query": query,
                    "aggs": {"blocks": {"composite": composite, "aggs": _BLOCK_AGGS}},
                }
            )
            page = aggs.get("blocks") or {}
            buckets = page.get("buckets") or []
            fold_buckets(buckets, stored)
            after = page.get("after_key")
            if not buckets or after is None:
                return stored

    async def recount(self, query: Mapping[str, Any], stored: Mapping[str, StoredSource]) -> None:
        """Exact distinct counts for the blocks whose cardinality was below their count."""
        pending = blocks_to_recount(stored)
        for batch in _batches(pending, RECOUNT_BATCH):
            filters = {
                str(i): _bool_filter(
                    [
                        {"term": {SRC_FIELD: src}},
                        {"range": {SEQ_FIELD: {"gte": start, "lt": start + BLOCK}}},
                    ]
                )
                for i, (src, start) in enumerate(batch)
            }
            doubled = {"terms": {"field": SEQ_FIELD, "min_doc_count": 2, "size": BLOCK}}
            aggs = await self.search(
                {
                    "size": 0,
                    "track_total_hits": False,
                    "query": query,
                    "aggs": {"b": {"filters": {"filters": filters}, "aggs": {"doubled": doubled}}},
                }
            )
            answers = aggs["b"]["buckets"]
            for i, (src, start) in enumerate(batch):
                apply_recount(stored[src].blocks[start], answers[str(i)]["doubled"]["buckets"])

    async def present_seqs(
        self, query: Mapping[str, Any], src: str, seqs: Sequence[int]
    ) -> set[int]:
        """Which of ``seqs`` of ``src`` the store holds (within ``query``)."""
        present: set[int] = set()
        for batch in _batches(sorted(seqs), PRESENCE_BATCH):
            filtered = _bool_filter(
                [*_filters(query), {"term": {SRC_FIELD: src}}, {"terms": {SEQ_FIELD: batch}}]
            )
            aggs = await self.search(
                {
                    "size": 0,
                    "track_total_hits": False,
                    "query": filtered,
                    "aggs": {"seqs": {"terms": {"field": SEQ_FIELD, "size": len(batch)}}},
                }
            )
            present.update(int(b["key"]) for b in aggs["seqs"]["buckets"])
        return present


_LENIENT = "ignore_unavailable=true&allow_no_indices=true"
_BLOCK_AGGS = {
    "seqs": {"cardinality": {"field": SEQ_FIELD, "precision_threshold": PRECISION_THRESHOLD}},
    "lo": {"min": {"field": SEQ_FIELD}},
    "hi": {"max": {"field": SEQ_FIELD}},
    # A source is one file, of one namespace: the first term is the only one.
    "ns": {"terms": {"field": NAMESPACE_FIELD, "size": 1}},
}


def window_query(options: VerifyOptions) -> dict[str, Any]:
    """The filter every aggregation runs under: time window and namespace."""
    filters: list[dict[str, Any]] = []
    if options.since is not None or options.until is not None:
        bounds: dict[str, Any] = {"format": "epoch_millis"}
        if options.since is not None:
            bounds["gte"] = _epoch_ms(options.since)
        if options.until is not None:
            bounds["lt"] = _epoch_ms(options.until)
        filters.append({"range": {TIME_FIELD: bounds}})
    if options.namespace is not None:
        filters.append({"term": {NAMESPACE_FIELD: options.namespace}})
    return _bool_filter(filters)


async def verify(options: VerifyOptions) -> VerifyReport:
    """Verify the store (and DLQ, positions, manifest) as ``options`` say. Raises VerifyError."""
    if options.manifest_file is not None and not options.node:
        raise VerifyError("--manifest needs --node (the node name is part of the source ids)")
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
    if options.namespace is not None and expectations:
        expectations = {s: e for s, e in expectations.items() if e.namespace == options.namespace}
        notes.append("positions/manifest sources are matched to --namespace by their file name")
    since_ms = None if options.since is None else _epoch_ms(options.since)
    until_ms = None if options.until is None else _epoch_ms(options.until)
    dlq = read_dlq(
        options.dlq_dirs, since_ms=since_ms, until_ms=until_ms, namespace=options.namespace
    )

    query = window_query(options)
    timeout = aiohttp.ClientTimeout(total=options.request_timeout_s)
    async with aiohttp.ClientSession(headers=_auth_header(options), timeout=timeout) as session:
        client = StoreClient(options, session)
        await client.refresh()
        stored = await client.stored_sources(query)
        await client.recount(query, stored)
        for src, entry in dlq.items():
            entry.seqs -= await client.present_seqs(query, src, list(entry.seqs))
    dlq = {src: entry for src, entry in dlq.items() if entry.seqs}

    if options.until is not None and expectations:
        # The position file and the manifest count records written after the window too.
        expectations = {}
        notes.append("--until: positions/manifest counts not applied (they run past the window)")
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
    return summarize(rows, notes)


# ------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    """The ``logferry verify`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="logferry verify",
        description=(
            "Prove delivery: for every source, the stored _lf.seq values must run contiguously "
            "up to the expected end, each stored once. Counted by aggregations (exact), never "
            "by reading documents. Exit 0 all delivered once, 1 missing or duplicated records, "
            "2 usage or connection error."
        ),
    )
    parser.add_argument("--store", required=True, metavar="URL", help="OpenSearch/ES base URL")
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
    parser.add_argument("--node", metavar="NAME", help="node name of the manifest's files")
    parser.add_argument("--user", metavar="U", help="basic auth user")
    parser.add_argument("--password", metavar="P", help="basic auth password")
    parser.add_argument("--api-key", metavar="K", help="API key (id:key or its base64)")
    parser.add_argument("--ca-file", type=Path, metavar="F", help="CA bundle for https")
    parser.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    parser.add_argument(
        "--timeout", type=float, default=300.0, metavar="SECONDS", help="per request"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    return parser


def options_from_args(args: argparse.Namespace, now: datetime | None = None) -> VerifyOptions:
    """Options from parsed arguments; VerifyError on an inconsistent combination."""
    now = datetime.now(UTC) if now is None else now
    if args.api_key and (args.user or args.password):
        raise VerifyError("use either --user/--password or --api-key")
    if args.password and not args.user:
        raise VerifyError("--password needs --user")
    if args.manifest and not args.node:
        raise VerifyError("--manifest needs --node")
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    if since is not None and until is not None and since >= until:
        raise VerifyError("--since must be before --until")
    return VerifyOptions(
        store_url=args.store,
        index=args.index,
        namespace=args.namespace,
        since=since,
        until=until,
        dlq_dirs=tuple(args.dlq),
        positions_file=args.positions,
        manifest_file=args.manifest,
        node=args.node,
        username=args.user,
        password=args.password,
        api_key=args.api_key,
        ca_file=args.ca_file,
        insecure=args.insecure,
        request_timeout_s=args.timeout,
    )


def verify_main(argv: Sequence[str]) -> int:
    """``logferry verify``: 0 verified, 1 missing or duplicated records, 2 could not verify."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
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


def _judge_source(
    src: str,
    stored: StoredSource | None,
    dlq: DlqSource | None,
    expectation: Expectation | None,
    from_lowest: bool,
) -> SourceRow:
    blocks = stored.blocks if stored is not None else {}
    dlq_seqs = dlq.seqs if dlq is not None else set()
    seen_lo = [stored.lo] if blocks and stored else []
    seen_hi = [stored.hi] if blocks and stored else []
    if dlq_seqs:
        seen_lo.append(min(dlq_seqs))
        seen_hi.append(max(dlq_seqs))
    first = min(seen_lo) if from_lowest and seen_lo else 0
    end = max(seen_hi) + 1 if seen_hi else 0
    expected_by = "store"
    if expectation is not None and expectation.next_seq > end:
        end, expected_by = expectation.next_seq, expectation.origin
    found = stored.distinct if stored is not None else 0
    documents = stored.documents if stored is not None else 0
    expected = end - first
    missing = expected - found - len(dlq_seqs)
    namespace = (
        (stored.namespace if stored is not None else "")
        or (dlq.namespace if dlq is not None else "")
        or (expectation.namespace if expectation is not None else "")
    )
    ranges = tuple(_missing_ranges(first, end, blocks, dlq_seqs)) if missing else ()
    return SourceRow(
        source=src,
        namespace=namespace,
        first_seq=first,
        expected=expected,
        found=found,
        documents=documents,
        duplicates=documents - found,
        in_dlq=len(dlq_seqs),
        missing=missing,
        max_seq=max(seen_hi) if seen_hi else None,
        expected_by=expected_by,
        missing_ranges=ranges,
    )


def _missing_ranges(
    first: int, end: int, blocks: Mapping[int, BlockStats], dlq: set[int]
) -> Iterator[MissingRange]:
    """Up to MAX_RANGES ranges of missing seqs, exact where the blocks tell: a block with
    nothing, or whose seqs are contiguous (the gap is then at its edges)."""
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


def _namespace_of(path: str) -> str:
    meta = parse_file_name(path, "") if path else None
    return meta.namespace_name if meta is not None else ""


def _uint(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as file:
            yield from file
    except FileNotFoundError:  # rewritten away while listing
        return
    except OSError as exc:
        raise VerifyError(f"cannot read {path}: {exc}") from exc


def _in_window(stamp: object, since_ms: int | None, until_ms: int | None) -> bool:
    if since_ms is None and until_ms is None:
        return True
    if not isinstance(stamp, str):
        return False
    try:
        when = _epoch_ms(parse_time(stamp, datetime.now(UTC)))
    except VerifyError:
        return False
    return (since_ms is None or when >= since_ms) and (until_ms is None or when < until_ms)


def _epoch_ms(when: datetime) -> int:
    # The store keeps dates in milliseconds: compare at that resolution on both sides.
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _bool_filter(filters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"bool": {"filter": filters}}


def _filters(query: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(query.get("bool", {}).get("filter", []))


def _batches(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _store_reason(status: int, payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        root = (error.get("root_cause") or [error])[0]
        return f"HTTP {status}: {root.get('type', '')}: {root.get('reason', '')}"
    return f"HTTP {status}: {str(error or payload)[:300]}"


def _auth_header(options: VerifyOptions) -> dict[str, str]:
    if options.api_key:
        key = options.api_key.strip()
        if ":" in key:
            key = base64.b64encode(key.encode()).decode()
        return {"Authorization": f"ApiKey {key}"}
    if options.username:
        token = base64.b64encode(f"{options.username}:{options.password or ''}".encode())
        return {"Authorization": f"Basic {token.decode()}"}
    return {}


def _ssl_option(options: VerifyOptions) -> ssl.SSLContext | bool:
    if options.insecure:
        return False
    if options.ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(options.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise VerifyError(f"cannot load --ca-file: {exc}") from exc


if __name__ == "__main__":
    sys.exit(verify_main(sys.argv[1:]))
