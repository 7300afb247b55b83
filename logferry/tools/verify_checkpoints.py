"""Checkpoint records in the store: how far each source got, as the forwarder announced it.

A forwarder emits, per source and interval (and when the source rotates, is truncated or is
found lost, and at shutdown), a small record ``_lf.kind: checkpoint`` saying that every seq
below ``_lf.next_seq`` is durable in its spool, ahead of the checkpoint itself. Stored in the
tenant's accounting indices, they give ``logferry verify`` and the auditor each source's
expected end without the node's position file:

- the end at a time ``t`` is the highest ``next_seq`` of the source's checkpoints stamped
  before ``t`` (records are spooled before their checkpoint, so they are older than it);
- a checkpoint ``state: lost`` says the source's file went away before it was read to the
  end, with how many lines were never read (``lost_lines``, -1 when unknown) and why: those
  lines have no seq, so they are *lost at source*, never *missing*.

One ``composite`` aggregation over ``_lf.src`` pages through them, a source a bucket.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from logferry.tools.verify_store import (
    ACCOUNTING_INDICES,
    KIND_FIELD,
    NAMESPACE_FIELD,
    PAGE_BUCKETS,
    SRC_FIELD,
    TIME_FIELD,
    VerifyStore,
)

__all__ = [
    "CHECKPOINT",
    "NEXT_SEQ_FIELD",
    "SourceMark",
    "checkpoint_query",
    "source_marks",
]

CHECKPOINT = "checkpoint"
NEXT_SEQ_FIELD = "_lf.next_seq"
STATE_FIELD = "_lf.state"
LOST_LINES_FIELD = "_lf.lost_lines"
REASON_FIELD = "_lf.reason"
SOURCES_PER_QUERY = 500
"""Sources named in one terms filter (far below the store's limits)."""


@dataclass(slots=True)
class SourceMark:
    """What a source's checkpoints say, up to some time."""

    next_seq: int
    namespace: str
    finished: bool = False
    lost: bool = False
    lost_lines: int = 0
    """Lines never read, when ``lost`` (-1: the forwarder could not count them)."""
    reason: str = ""


def checkpoint_query(
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    namespace: str | None = None,
    sources: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Checkpoints stamped in ``[since_ms, until_ms)``, of ``namespace`` and ``sources``."""
    filters: list[dict[str, Any]] = [{"term": {KIND_FIELD: CHECKPOINT}}, ACCOUNTING_INDICES]
    if since_ms is not None or until_ms is not None:
        bounds: dict[str, Any] = {"format": "epoch_millis"}
        if since_ms is not None:
            bounds["gte"] = since_ms
        if until_ms is not None:
            bounds["lt"] = until_ms
        filters.append({"range": {TIME_FIELD: bounds}})
    if namespace is not None:
        filters.append({"term": {NAMESPACE_FIELD: namespace}})
    if sources is not None:
        filters.append({"terms": {SRC_FIELD: list(sources)}})
    return {"bool": {"filter": filters}}


_AGGS: dict[str, Any] = {
    "end": {"max": {"field": NEXT_SEQ_FIELD}},
    "ns": {"terms": {"field": NAMESPACE_FIELD, "size": 1}},
    "done": {
        "filter": {"terms": {STATE_FIELD: ["finished", "lost"]}},
        "aggs": {"reason": {"terms": {"field": REASON_FIELD, "size": 1}}},
    },
    "lost": {
        "filter": {"term": {STATE_FIELD: "lost"}},
        "aggs": {"lines": {"max": {"field": LOST_LINES_FIELD}}},
    },
}


async def source_marks(
    store: VerifyStore,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    namespace: str | None = None,
    sources: Sequence[str] | None = None,
) -> dict[str, SourceMark]:
    """Per source, what its checkpoints stamped in ``[since_ms, until_ms)`` say (``sources``:
    only those, asked for in batches)."""
    if sources is not None:
        out: dict[str, SourceMark] = {}
        names = sorted(set(sources))
        for i in range(0, len(names), SOURCES_PER_QUERY):
            query = checkpoint_query(
                since_ms=since_ms,
                until_ms=until_ms,
                namespace=namespace,
                sources=names[i : i + SOURCES_PER_QUERY],
            )
            out.update(await _marks(store, query))
        return out
    query = checkpoint_query(since_ms=since_ms, until_ms=until_ms, namespace=namespace)
    return await _marks(store, query)


async def _marks(store: VerifyStore, query: Mapping[str, Any]) -> dict[str, SourceMark]:
    marks: dict[str, SourceMark] = {}
    # Checkpoints are only in indices made with logferry's template; older indices mapped
    # dynamically (``_lf.src`` as text) fail this aggregation, as they are expected to.
    run = (await store.cached_passes())[0]
    if run.src_field != SRC_FIELD:
        return marks
    after: Any = None
    while True:
        composite: dict[str, Any] = {
            "size": PAGE_BUCKETS,
            "sources": [{"src": {"terms": {"field": SRC_FIELD}}}],
        }
        if after is not None:
            composite["after"] = after
        aggs = await store.search(
            {
                "size": 0,
                "track_total_hits": False,
                "query": query,
                "aggs": {"page": {"composite": composite, "aggs": _AGGS}},
            },
            run,
        )
        page = aggs.get("page") or {}
        buckets = page.get("buckets") or []
        for bucket in buckets:
            marks[str(bucket["key"]["src"])] = _mark(bucket)
        after = page.get("after_key")
        if not buckets or after is None:
            return marks


def _mark(bucket: Mapping[str, Any]) -> SourceMark:
    namespaces = bucket.get("ns", {}).get("buckets", [])
    done = bucket.get("done", {})
    reasons = done.get("reason", {}).get("buckets", [])
    lost = bucket.get("lost", {})
    lines = lost.get("lines", {}).get("value")
    return SourceMark(
        next_seq=int(bucket["end"]["value"] or 0),
        namespace=str(namespaces[0]["key"]) if namespaces else "",
        finished=int(done.get("doc_count", 0)) > 0,
        lost=int(lost.get("doc_count", 0)) > 0,
        lost_lines=int(lines) if lines is not None else 0,
        reason=str(reasons[0]["key"]) if reasons else "",
    )
