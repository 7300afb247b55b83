"""The OpenSearch side of ``logferry verify``: the HTTP session and its few REST calls
(refresh, search), the window query, the ``composite`` aggregation paged over (source, seq
block) buckets and folded into per-source block tables, the exact recount of blocks whose
cardinality came out low, and the lookup of dead-lettered seqs in the store. Credentials and
TLS come from :class:`~logferry.common.store_access.StoreAccess`, as for the aggregator.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import orjson

from logferry.common.errors import OutputError
from logferry.tools.verify_options import VerifyError, VerifyOptions, epoch_ms

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

_T = TypeVar("_T")


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


class StoreClient:
    """The few REST calls verify makes, over one aiohttp session."""

    def __init__(
        self,
        options: VerifyOptions,
        session: aiohttp.ClientSession,
        ssl_option: ssl.SSLContext | bool,
    ) -> None:
        self.options = options
        self._urls = deque(url.rstrip("/") for url in options.store.urls)
        self._session = session
        self._ssl = ssl_option
        self._index = quote(options.index, safe="*,")

    @property
    def url(self) -> str:
        """The node requests go to: the first ``--url``, until it cannot be reached."""
        return self._urls[0]

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer; VerifyError on any failure, with the store's reason. A node that
        cannot be connected to hands over to the next one, if there are several."""
        data = None if body is None else orjson.dumps(body)
        for nodes_left in reversed(range(len(self._urls))):
            try:
                async with self._session.request(
                    method,
                    f"{self.url}{path}",
                    data=data,
                    headers={"Content-Type": "application/json"},
                    ssl=self._ssl,
                ) as response:
                    payload = await response.json(content_type=None)
                    status = response.status
                break
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                if isinstance(exc, aiohttp.ClientConnectorError) and nodes_left:
                    self._urls.rotate(-1)  # never reached: that node goes last, try the next
                    continue
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
            # No aggregation comes back when the pattern matches no index yet.
            present.update(int(b["key"]) for b in (aggs.get("seqs") or {}).get("buckets", []))
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
            bounds["gte"] = epoch_ms(options.since)
        if options.until is not None:
            bounds["lt"] = epoch_ms(options.until)
        filters.append({"range": {TIME_FIELD: bounds}})
    if options.namespace is not None:
        filters.append({"term": {NAMESPACE_FIELD: options.namespace}})
    return _bool_filter(filters)


@asynccontextmanager
async def open_store(options: VerifyOptions) -> AsyncIterator[StoreClient]:
    """A :class:`StoreClient` over a new session (auth, timeout), closed on leaving."""
    try:  # the secret files and the CA bundle are read here
        headers, ssl_option = options.store.headers(), options.store.ssl_option()
    except OutputError as exc:
        raise VerifyError(str(exc)) from exc
    timeout = aiohttp.ClientTimeout(total=options.request_timeout_s)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        yield StoreClient(options, session, ssl_option)


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
