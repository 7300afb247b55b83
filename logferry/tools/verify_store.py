"""The OpenSearch side of ``logferry verify``: its few REST calls (refresh, field caps,
search; over :class:`~logferry.store.client.StoreClient`); the passes that read indices mapped
by logferry's template and older ones mapped dynamically; the window query; the ``composite``
aggregation paged over (source, seq block) buckets and folded into per-source block tables;
the exact recount of blocks whose cardinality came out low; and the lookup of dead-lettered
seqs in the store. Credentials and TLS come from
:class:`~logferry.common.store_access.StoreAccess`, as for the aggregator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

from logferry.common.errors import OutputError
from logferry.pipelines.accounting import ACCOUNTING_SUFFIX
from logferry.store.client import StoreClient, StoreError, open_store
from logferry.tools.verify_options import VerifyError, VerifyOptions, epoch_ms
from logferry.tools.verify_ranges import SourceRanges

SRC_FIELD = "_lf.src"
"""A keyword in every index logferry's template made."""
SEQ_FIELD = "_lf.seq"
SEQ_END_FIELD = "_lf.seq_end"
KIND_FIELD = "_lf.kind"
ACCOUNTING = "accounting"
"""``_lf.kind`` of an accounting record: the seqs of one source a tenant's filters discarded."""
DISCARDED_FIELD = "_lf.discarded"
FOLDED_FIELD = "_lf.folded_into"
NAMESPACE_FIELD = "kubernetes.namespace_name"
TIME_FIELD = "@timestamp"
LEGACY_SUFFIX = ".keyword"
"""Indices made before the template (dynamic mapping) hold these fields as text, with a
keyword sub-field of this name."""

ACCOUNTING_INDICES: dict[str, Any] = {"wildcard": {"_index": {"value": f"*.{ACCOUNTING_SUFFIX}-*"}}}
"""Accounting and checkpoint records are read from the accounting indices only: only the
aggregator writes there (what it made, and checkpoints it checked). A document in a tenant's
own index that claims ``_lf.kind`` (a peer's record with a dotted ``"_lf.kind"`` key, say)
is a log record, never proof."""

BLOCK = 1000
"""Seqs per histogram block: well below the cardinality's precision threshold."""
PRECISION_THRESHOLD = 4000
PAGE_BUCKETS = 1000
ACCOUNTING_PAGE = 1000
INTERVALS_PER_QUERY = 500
"""Ranges per lookup query: well under the store's default limit of 1024 clauses."""
"""Composite buckets per request (up to a million documents a page)."""
RECOUNT_BATCH = 50
"""Blocks recounted exactly per request."""
PRESENCE_BATCH = 5000
"""DLQ seqs of one source looked up in the store per request."""

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Pass:
    """One run of the aggregations over the index pattern: the fields it reads, and the
    indices whose shards are expected to fail it (they hold those fields as text)."""

    src_field: str = SRC_FIELD
    namespace_field: str = NAMESPACE_FIELD
    tolerated: frozenset[str] = frozenset()


MODERN = Pass()
LEGACY = Pass(SRC_FIELD + LEGACY_SUFFIX, NAMESPACE_FIELD + LEGACY_SUFFIX)


def passes_for(field_caps: Mapping[str, Any]) -> list[Pass]:
    """The passes that read every index once, from a ``_field_caps`` answer for
    :data:`SRC_FIELD`: the keyword field where the template mapped it, the ``.keyword``
    sub-field in indices made by dynamic mapping before it (in those, the keyword pass fails
    on purpose and the legacy pass reads them; in the others the legacy field is unmapped and
    counts nothing)."""
    types = (field_caps.get("fields") or {}).get(SRC_FIELD) or {}
    if "text" not in types:
        return [MODERN]
    if "keyword" not in types:
        return [LEGACY]
    legacy = frozenset(str(i) for i in types["text"].get("indices") or ())
    return [Pass(tolerated=legacy), LEGACY]


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
    interval_cover: int = 0
    """Seqs the blocks' ``distinct`` counts because joined records' interiors or accounting
    records cover them (see :mod:`.verify_ranges`)."""
    accounted: int = 0
    """Of those, the seqs only accounting records cover: discarded by a filter, not stored."""
    range_duplicates: int = 0
    """Seqs stored more than once because joined records overlap or are stored twice."""
    intervals: list[tuple[int, int]] = field(default_factory=list)
    """What joined records and accounting records cover, as sorted disjoint intervals."""

    @property
    def duplicates(self) -> int:
        """Seqs stored more than once: extra documents of a first seq, and overlaps."""
        singles = self.distinct - self.interval_cover
        return self.documents - singles + self.range_duplicates

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


def shared_blocks(passes: Sequence[Mapping[str, StoredSource]]) -> list[tuple[str, int]]:
    """(source, block start) of the blocks more than one pass found: a seq held in a legacy
    index and again in a templated one (a resend after the period changed) is counted by
    both, so their distinct counts cannot simply be added (see :func:`merge_stored`)."""
    seen: dict[tuple[str, int], int] = {}
    for found in passes:
        for src, source in found.items():
            for start in source.blocks:
                seen[(src, start)] = seen.get((src, start), 0) + 1
    return sorted(key for key, count in seen.items() if count > 1)


def merge_stored(
    into: dict[str, StoredSource],
    other: Mapping[str, StoredSource],
    union: Mapping[tuple[str, int], int] | None = None,
) -> None:
    """Add what another pass found; ``union`` holds the exact distinct count of the
    blocks both hold (:func:`shared_blocks`), which replaces the sum of the two."""
    for src, source in other.items():
        known = into.get(src)
        if known is None:
            into[src] = source
            continue
        known.namespace = known.namespace or source.namespace
        for start, block in source.blocks.items():
            mine = known.blocks.get(start)
            if mine is None:
                known.blocks[start] = block
                continue
            distinct = (union or {}).get((src, start))
            known.blocks[start] = BlockStats(
                documents=mine.documents + block.documents,
                distinct=mine.distinct + block.distinct if distinct is None else distinct,
                lo=min(mine.lo, block.lo),
                hi=max(mine.hi, block.hi),
                exact=distinct is not None or (mine.exact and block.exact),
            )


class VerifyStore:
    """The queries verify makes, one :class:`Pass` at a time, over a :class:`StoreClient`."""

    def __init__(self, options: VerifyOptions, rest: StoreClient) -> None:
        self.options = options
        self._rest = rest
        self._index = quote(with_accounting(options.index), safe="*,")
        self._passes: list[Pass] | None = None

    @property
    def url(self) -> str:
        """The node requests go to."""
        return self._rest.url

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer; VerifyError on any failure, with the store's reason."""
        try:
            return await self._rest.request(method, path, body)
        except StoreError as exc:
            raise VerifyError(str(exc)) from exc

    async def passes(self) -> list[Pass]:
        """How to read the pattern's indices (see :func:`passes_for`)."""
        caps = await self.request(
            "GET", f"/{self._index}/_field_caps?fields={SRC_FIELD}&{_LENIENT}"
        )
        return passes_for(caps if isinstance(caps, dict) else {})

    async def cached_passes(self) -> list[Pass]:
        """:meth:`passes`, asked once per session (the auditor proves many windows)."""
        if self._passes is None:
            self._passes = await self.passes()
        return self._passes

    async def seqs_inside_many(
        self, query: Mapping[str, Any], intervals: Mapping[str, Sequence[tuple[int, int]]]
    ) -> dict[str, set[int]]:
        """:meth:`seqs_inside` for many sources at once (templated indices only): the seqs of
        each source's records inside its intervals, a few hundred intervals a query."""
        pairs = [(src, a, b) for src, spans in sorted(intervals.items()) for a, b in spans]
        found: dict[str, set[int]] = {src: set() for src in intervals}
        for batch in _batches(pairs, INTERVALS_PER_QUERY // 2):  # two clauses each
            inside = {
                "bool": {
                    "should": [
                        _bool_filter(
                            [
                                {"term": {SRC_FIELD: src}},
                                {"range": {SEQ_FIELD: {"gte": a, "lte": b}}},
                            ]
                        )
                        for src, a, b in batch
                    ],
                    "minimum_should_match": 1,
                }
            }
            sources = [
                {"src": {"terms": {"field": SRC_FIELD}}},
                {"seq": {"terms": {"field": SEQ_FIELD}}},
            ]
            async for buckets in self._pages(_narrow(query, inside), sources, MODERN):
                for bucket in buckets:
                    key = bucket["key"]
                    found.setdefault(str(key["src"]), set()).add(int(key["seq"]))
        return found

    async def refresh(self) -> None:
        await self.request("POST", f"/{self._index}/_refresh?{_LENIENT}")

    async def search(self, body: Mapping[str, Any], run: Pass = MODERN) -> Mapping[str, Any]:
        """The aggregations of a search; VerifyError if any shard failed that ``run`` does
        not expect to fail: a partial answer would show stored records as missing."""
        payload = await self.request("POST", f"/{self._index}/_search?{_LENIENT}", body)
        failures = (payload.get("_shards") or {}).get("failures") or []
        unexpected = [f for f in failures if str(f.get("index", "")) not in run.tolerated]
        if unexpected:
            reason = (unexpected[0].get("reason") or {}).get("reason", "")
            raise VerifyError(
                f"the store answered for only part of the indices ({len(unexpected)} shard "
                f"failures, e.g. {unexpected[0].get('index', '?')}: {reason})"
            )
        aggregations: Mapping[str, Any] = payload.get("aggregations") or {}
        return aggregations

    async def stored_sources(
        self, query: Mapping[str, Any], run: Pass = MODERN, *, namespaces: bool = True
    ) -> dict[str, StoredSource]:
        """Every source's blocks, a composite page at a time (``namespaces``: read each
        source's namespace too; the auditor knows it from the checkpoints)."""
        stored: dict[str, StoredSource] = {}
        sources: list[dict[str, Any]] = [
            {"src": {"terms": {"field": run.src_field}}},
            {"block": {"histogram": {"field": SEQ_FIELD, "interval": BLOCK}}},
        ]
        aggs = _block_aggs(run)
        if not namespaces:
            del aggs["ns"]
        async for buckets in self._pages(query, sources, run, aggs):
            fold_buckets(buckets, stored)
        return stored

    async def _pages(
        self,
        query: Mapping[str, Any],
        sources: list[dict[str, Any]],
        run: Pass,
        sub_aggs: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The buckets of a ``composite`` aggregation over ``sources``, a page at a time."""
        after: Any = None
        while True:
            composite: dict[str, Any] = {"size": PAGE_BUCKETS, "sources": sources}
            if after is not None:
                composite["after"] = after
            agg: dict[str, Any] = {"composite": composite}
            if sub_aggs:
                agg["aggs"] = sub_aggs
            aggs = await self.search(
                {"size": 0, "track_total_hits": False, "query": query, "aggs": {"page": agg}},
                run,
            )
            page = aggs.get("page") or {}
            buckets = page.get("buckets") or []
            if buckets:
                yield buckets
            after = page.get("after_key")
            if not buckets or after is None:
                return

    async def recount(
        self, query: Mapping[str, Any], stored: Mapping[str, StoredSource], run: Pass = MODERN
    ) -> None:
        """Exact distinct counts for the blocks whose cardinality was below their count."""
        pending = blocks_to_recount(stored)
        for batch in _batches(pending, RECOUNT_BATCH):
            filters = {
                str(i): _bool_filter(
                    [
                        {"term": {run.src_field: src}},
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
                },
                run,
            )
            answers = aggs["b"]["buckets"]
            for i, (src, start) in enumerate(batch):
                apply_recount(stored[src].blocks[start], answers[str(i)]["doubled"]["buckets"])

    async def present_seqs(
        self, query: Mapping[str, Any], src: str, seqs: Sequence[int], run: Pass = MODERN
    ) -> set[int]:
        """Which of ``seqs`` of ``src`` the store holds (within ``query``)."""
        present: set[int] = set()
        for batch in _batches(sorted(seqs), PRESENCE_BATCH):
            filtered = _narrow(query, {"term": {run.src_field: src}}, {"terms": {SEQ_FIELD: batch}})
            aggs = await self.search(
                {
                    "size": 0,
                    "track_total_hits": False,
                    "query": filtered,
                    "aggs": {"seqs": {"terms": {"field": SEQ_FIELD, "size": len(batch)}}},
                },
                run,
            )
            # No aggregation comes back when the pattern matches no index yet.
            present.update(int(b["key"]) for b in (aggs.get("seqs") or {}).get("buckets", []))
        return present

    async def block_seqs(
        self, query: Mapping[str, Any], src: str, start: int, run: Pass = MODERN
    ) -> set[int]:
        """The seqs of one block of ``src`` the store holds (within ``query``)."""
        filtered = _narrow(
            query,
            {"term": {run.src_field: src}},
            {"range": {SEQ_FIELD: {"gte": start, "lt": start + BLOCK}}},
        )
        aggs = await self.search(
            {
                "size": 0,
                "track_total_hits": False,
                "query": filtered,
                "aggs": {"seqs": {"terms": {"field": SEQ_FIELD, "size": BLOCK}}},
            },
            run,
        )
        return {int(b["key"]) for b in (aggs.get("seqs") or {}).get("buckets", [])}

    async def joined_ranges(
        self, query: Mapping[str, Any], into: dict[str, SourceRanges], run: Pass = MODERN
    ) -> None:
        """Every distinct joined record (one with ``_lf.seq_end``), with its documents."""
        narrowed = _narrow(query, {"exists": {"field": SEQ_END_FIELD}})
        sources = [
            {"src": {"terms": {"field": run.src_field}}},
            {"first": {"terms": {"field": SEQ_FIELD}}},
            {"last": {"terms": {"field": SEQ_END_FIELD}}},
        ]
        async for buckets in self._pages(narrowed, sources, run):
            for bucket in buckets:
                key = bucket["key"]
                ranges = into.setdefault(str(key["src"]), SourceRanges())
                ranges.joined.append((int(key["first"]), int(key["last"]), bucket["doc_count"]))

    async def accounted_ranges(
        self,
        options: VerifyOptions,
        into: dict[str, SourceRanges],
        sources: Sequence[str] | None = None,
    ) -> None:
        """The seqs accounting records list as discarded, per source (only indices made with
        logferry's template hold them); ``sources``: only theirs."""
        query = window_query(options)
        query["bool"]["must_not"] = []
        narrowed = _narrow(query, {"term": {KIND_FIELD: ACCOUNTING}}, ACCOUNTING_INDICES)
        if sources is not None:
            narrowed = _narrow(narrowed, {"terms": {SRC_FIELD: list(sources)}})
        after: Any = None
        while True:
            body: dict[str, Any] = {
                "size": ACCOUNTING_PAGE,
                "track_total_hits": False,
                "query": narrowed,
                "_source": [SRC_FIELD, DISCARDED_FIELD, NAMESPACE_FIELD],
                "sort": [{"_id": "asc"}],
            }
            if after is not None:
                body["search_after"] = after
            payload = await self.request("POST", f"/{self._index}/_search?{_LENIENT}", body)
            hits = (payload.get("hits") or {}).get("hits") or []
            for hit in hits:
                source = hit.get("_source") or {}
                lf = source.get("_lf") or {}
                ranges = into.setdefault(str(lf.get("src", "")), SourceRanges())
                k8s = source.get("kubernetes") or {}
                ranges.namespace = ranges.namespace or str(k8s.get("namespace_name") or "")
                for item in lf.get("discarded") or []:
                    ranges.accounted.append((int(item["first"]), int(item["last"])))
            if len(hits) < ACCOUNTING_PAGE:
                return
            after = hits[-1]["sort"]

    async def seqs_inside(
        self,
        query: Mapping[str, Any],
        src: str,
        intervals: Sequence[tuple[int, int]],
        run: Pass = MODERN,
    ) -> set[int]:
        """The seqs of ``src``'s records counted in the blocks that fall inside
        ``intervals`` (normally none: only duplicates and re-filtered lines are there)."""
        found: set[int] = set()
        for batch in _batches(list(intervals), INTERVALS_PER_QUERY):
            inside = {
                "bool": {
                    "should": [{"range": {SEQ_FIELD: {"gte": a, "lte": b}}} for a, b in batch],
                    "minimum_should_match": 1,
                }
            }
            narrowed = _narrow(query, {"term": {run.src_field: src}}, inside)
            seq_source = [{"seq": {"terms": {"field": SEQ_FIELD}}}]
            async for buckets in self._pages(narrowed, seq_source, run):
                found.update(int(b["key"]["seq"]) for b in buckets)
        return found


_LENIENT = "ignore_unavailable=true&allow_no_indices=true"


def _block_aggs(run: Pass) -> dict[str, Any]:
    return {
        "seqs": {"cardinality": {"field": SEQ_FIELD, "precision_threshold": PRECISION_THRESHOLD}},
        "lo": {"min": {"field": SEQ_FIELD}},
        "hi": {"max": {"field": SEQ_FIELD}},
        # A source is one file, of one namespace: the first term is the only one.
        "ns": {"terms": {"field": run.namespace_field, "size": 1}},
    }


def window_query(options: VerifyOptions, run: Pass = MODERN) -> dict[str, Any]:
    """The filter every aggregation runs under: time window and namespace."""
    filters: list[dict[str, Any]] = []
    if options.since is not None or options.until is not None:
        bounds: dict[str, Any] = {"format": "epoch_millis"}
        if options.since is not None:
            bounds["gte"] = epoch_ms(options.since)
        if options.until is not None:
            bounds["lt"] = epoch_ms(options.until)
        filters.append({"range": {TIME_FIELD: bounds}})
    if options.namespace is not None:
        filters.append({"term": {run.namespace_field: options.namespace}})
    # Accounting records are read on their own (they have no seq); the copies an older
    # aggregator stored of lines it joined are covered by the joined record's range.
    must_not = [{"exists": {"field": FOLDED_FIELD}}, {"term": {KIND_FIELD: ACCOUNTING}}]
    return {"bool": {"filter": filters, "must_not": must_not}}


@asynccontextmanager
async def open_verify_store(options: VerifyOptions) -> AsyncIterator[VerifyStore]:
    """A :class:`VerifyStore` over a new session (auth, timeout), closed on leaving."""
    try:  # the secret files and the CA bundle are read here
        async with open_store(options.store, options.request_timeout_s) as rest:
            yield VerifyStore(options, rest)
    except OutputError as exc:
        raise VerifyError(str(exc)) from exc


def _bool_filter(filters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"bool": {"filter": filters}}


def with_accounting(pattern: str) -> str:
    """``pattern`` and, for each part ``<stem>-*``, its accounting indices
    ``<stem>.lf-accounting-*``: a tenant's pattern (``logs-team-*``) leaves them out on
    purpose, verify needs them."""
    parts = [part for part in pattern.split(",") if part]
    extra = [f"{part[:-2]}.{ACCOUNTING_SUFFIX}-*" for part in parts if part.endswith("-*")]
    return ",".join(dict.fromkeys([*parts, *extra]))


def _narrow(query: Mapping[str, Any], *extra: dict[str, Any]) -> dict[str, Any]:
    """``query`` (a bool query) with ``extra`` filters added."""
    inner = dict(query.get("bool", {}))
    inner["filter"] = [*inner.get("filter", []), *extra]
    return {"bool": inner}


def _batches(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
