"""Elasticsearch/OpenSearch ``_bulk`` requests: settings, one request, and how items settle.

One request writes documents with ``create`` and each record's deterministic ``_id``. Every
item settles as one of: delivered (2xx, or 409 — the document is already there, so a resend is
harmless), retry (a refusal about the cluster, not the document: 429, 5xx, a write block or
the disk watermark, a closed or missing index, too many shards, unavailable shards; see
:func:`cluster_refusal`), or rejected (any other 4xx: mapping conflict, bad value, oversize —
the dead-letter queue takes it with the server's reason). A request that fails as a whole
(connection, timeout, 401/403, 429, 5xx) is an ``OutputError`` and never rejects a document;
413 is its own error so the caller can split.
Retrying and splitting live in :mod:`.bulk_delivery`, the output that settles spool batches in
:mod:`.bulk_output`; this module knows nothing of spools. The store's nodes, credentials and
TLS are a :class:`~logferry.common.store_access.StoreAccess`.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import Field, model_validator

from logferry.aggregator.documents import (
    Document,
    fragment_size,
    gzip_body,
    is_deflated,
    ndjson_body,
    plain_bytes,
)
from logferry.common.config import ConfigModel
from logferry.common.errors import OutputError
from logferry.common.faults import crash_point
from logferry.common.store_access import StoreAccess
from logferry.common.units import ByteSize, MiB

# Refusals about the cluster, not the document: the same document succeeds once the cluster
# is fixed (a block lifted, an index opened, shards freed). They hold the records in the spool
# and are retried; only document-level refusals go to the dead-letter queue.
_CLUSTER_ERROR_TYPES = {
    "index_closed_exception": "index_closed",
    "index_not_found_exception": "index_missing",
    "unavailable_shards_exception": "shards_unavailable",
    "no_shard_available_action_exception": "shards_unavailable",
    "primary_missing_action_exception": "shards_unavailable",
    "es_rejected_execution_exception": "rejected_execution",
    "opensearch_rejected_execution_exception": "rejected_execution",
    "process_cluster_event_timeout_exception": "cluster_unavailable",
    "cluster_manager_not_discovered_exception": "cluster_unavailable",
    "master_not_discovered_exception": "cluster_unavailable",
}
CLUSTER_REFUSALS = frozenset(
    {*_CLUSTER_ERROR_TYPES.values(), "too_many_shards", "disk_watermark", "write_block"}
    | {"too_many_requests", "store_error"}
)
"""Labels of ``logferry_store_refusals_total{reason}``."""


def cluster_refusal(status: int, kind: str, reason: str) -> str | None:
    """The label of an item refusal that is about the cluster, not the document, or None.

    ``kind`` and ``reason`` are the store's error type and text. Too many shards is a
    ``validation_exception`` on index creation whose text names the shard limit; a
    ``cluster_block_exception`` is the flood-stage disk watermark (read-only-allow-delete) or
    another write block.
    """
    label = _CLUSTER_ERROR_TYPES.get(kind)
    if label is not None:
        return label
    text = reason.lower()
    if kind == "validation_exception" and "shards" in text and "maximum" in text:
        return "too_many_shards"
    if kind == "cluster_block_exception":
        return "disk_watermark" if "watermark" in text or "disk" in text else "write_block"
    if status == 429:
        return "too_many_requests"
    if status >= 500 or 0 < status < 400:
        return "store_error"
    return None


# Compressing (or inflating) a large body would hold the event loop for tens of milliseconds.
_GZIP_IN_THREAD_BYTES = MiB
_ERROR_TYPE = re.compile(r"^[a-z_]{1,80}\Z")
_REASON_MAX_CHARS = 2000


class _BulkStoreType(ConfigModel):
    type: Literal["opensearch", "elasticsearch"]
    """Which store; both speak the same ``_bulk`` API."""


# Fields are listed base by base, the last base first: ``type`` leads, then the store's access
# keys, then the bulk keys (the order of the generated configuration reference).
class BulkOutputSettings(StoreAccess, _BulkStoreType):
    """Bulk writes to Elasticsearch 7/8/9 or OpenSearch 1/2/3."""

    batch_max_records: int = Field(default=5000, ge=1, le=100_000)
    """Most documents in one request."""
    batch_max_bytes: ByteSize = Field(default=4 * MiB, ge=1024)
    """Most uncompressed fragment bytes read into one request (one fragment larger than this
    is sent alone; compressed fragments count as what they inflate to)."""
    gzip: bool = True
    """Gzip request bodies (``Content-Encoding: gzip``). Fragments the spool stores
    compressed are sent as they are, without compressing them again."""
    max_in_flight: int = Field(default=4, ge=1, le=64)
    """Concurrent bulk requests, across all tenants."""
    request_timeout_s: float = Field(default=60.0, gt=0)
    """Deadline of one request; a timed-out request is retried (409s then settle it)."""
    retry_initial_s: float = Field(default=0.2, gt=0)
    """First retry delay; doubles each time, with full jitter."""
    retry_max_s: float = Field(default=30.0, gt=0)
    """Longest retry delay."""
    manage_templates: bool = True
    """Install logferry's index template at start (and update it when it changes) before
    the first document goes out. Off for stores where daemons may not write templates: then
    run ``logferry store setup`` once per change instead."""

    @model_validator(mode="after")
    def _retry_range(self) -> BulkOutputSettings:
        if self.retry_initial_s > self.retry_max_s:
            raise ValueError("retry_initial_s cannot exceed retry_max_s")
        return self


class BulkRequestError(OutputError):
    """A ``_bulk`` request failed as a whole; ``status`` is the metric label (an HTTP status,
    ``connection_error`` or ``timeout``). Always retriable: no document is at fault."""

    def __init__(self, message: str, *, status: str, endpoint: str) -> None:
        super().__init__(message, retriable=True)
        self.status = status
        self.endpoint = endpoint


class RequestTooLargeError(BulkRequestError):
    """HTTP 413: the body is over the store's ``http.max_content_length``; split and resend."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """An item the store refused for good."""

    position: int
    status: int
    reason: str
    """``<error type>: <reason>`` as the server gave it."""
    kind: str
    """The server's error type (``mapper_parsing_exception``), a bounded metric label."""


@dataclass(slots=True)
class BulkResult:
    """How one request settled its items (positions refer to the request's document list)."""

    status: int
    delivered: int = 0
    duplicates: int = 0
    retry: list[int] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    delivered_positions: list[int] = field(default_factory=list)
    held: dict[str, tuple[int, str]] = field(default_factory=dict)
    """Items in ``retry`` by cluster refusal label: (count, the store's first reason)."""


def render_body(documents: Sequence[Document]) -> bytes:
    """The NDJSON ``_bulk`` body: the pre-rendered action and source lines of each document."""
    parts: list[bytes] = []
    for doc in documents:
        parts.append(doc.action)
        parts.append(doc.source)
    parts.append(b"")  # NDJSON: the last line needs its newline too
    return b"\n".join(parts)


def settle(items_count: int, response: dict[str, Any]) -> BulkResult:
    """Classify every item of a ``_bulk`` response to a request of ``items_count`` documents."""
    items = response.get("items")
    if not isinstance(items, list) or len(items) != items_count:
        raise OutputError("bulk response does not list every item", retriable=True)
    result = BulkResult(status=200)
    if response.get("errors") is False:
        result.delivered = items_count
        result.delivered_positions = list(range(items_count))
        return result
    for position, entry in enumerate(items):
        outcome = next(iter(entry.values())) if isinstance(entry, dict) and entry else {}
        outcome = outcome if isinstance(outcome, dict) else {}
        status = _int(outcome.get("status"))
        if 200 <= status < 300 or status == 409:
            result.delivered += 1
            result.delivered_positions.append(position)
            result.duplicates += status == 409
            continue
        error = outcome.get("error")
        kind = str(error.get("type", "")) if isinstance(error, dict) else ""
        reason = _reason(error)
        label = cluster_refusal(status, kind, reason)
        if label is None:
            result.rejected.append(Rejection(position, status, reason, _label(kind)))
            continue
        result.retry.append(position)
        count, first = result.held.get(label, (0, reason))
        result.held[label] = (count + 1, first)
    return result


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return 0


def _reason(error: object) -> str:
    if not isinstance(error, dict):
        return str(error)[:_REASON_MAX_CHARS]
    text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
    cause = error.get("caused_by")
    if isinstance(cause, dict):
        text += f" (caused by {cause.get('type', '')}: {cause.get('reason', '')})"
    return text[:_REASON_MAX_CHARS]


def _label(kind: str) -> str:
    # Error types are names of the store's exception classes: a bounded set, safe as a label.
    return kind if _ERROR_TYPE.match(kind) else "unknown"


# The store answers only what settle() reads: per item status and error. The full response
# (index, id, version, shards, seq_no per item) costs the store and us CPU for nothing.
_BULK_PATH = "/_bulk?filter_path=errors,items.*.status,items.*.error"


class BulkClient:
    """Sends ``_bulk`` requests over a session it does not own; no retries, no spools."""

    def __init__(self, settings: BulkOutputSettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self._session = session
        self._next_url = 0
        self._headers: dict[str, str] = {}
        self._ssl: ssl.SSLContext | bool = True
        self.use_access(settings, settings.headers(), settings.ssl_option())
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s)

    def use_access(
        self, settings: BulkOutputSettings, auth: dict[str, str], tls: ssl.SSLContext | bool
    ) -> None:
        """The store's nodes, ``auth`` headers and ``tls`` option (read by the caller) for the
        requests from now on."""
        self.settings = settings
        headers = {"Content-Type": "application/x-ndjson"}
        if settings.gzip:
            headers["Content-Encoding"] = "gzip"
        headers.update(auth)
        self._headers = headers
        self._ssl = tls

    def _endpoint(self) -> str:
        urls = self.settings.urls
        url = urls[self._next_url % len(urls)]
        self._next_url += 1
        return url.rstrip("/")

    async def _body(self, parts: Sequence[bytes]) -> bytes:
        """The request body of ``parts``: a gzip member, or NDJSON with gzip off."""
        if self.settings.gzip:
            build, work = gzip_body, plain_bytes(parts)
        else:
            build = ndjson_body
            work = sum(fragment_size(part) for part in parts if is_deflated(part))
        if work > _GZIP_IN_THREAD_BYTES:
            return await asyncio.to_thread(build, parts)
        return build(parts)

    async def send(self, documents: Sequence[Document]) -> BulkResult:
        """One request to the next URL in rotation.

        Raises :class:`RequestTooLargeError` on 413 and :class:`BulkRequestError` when the
        request failed as a whole.
        """
        return await self.send_body([render_body(documents)], len(documents))

    async def send_body(self, parts: Sequence[bytes], count: int) -> BulkResult:
        """Like :meth:`send`, for spool fragments as they are (compressed or not) that
        together hold ``count`` documents: no per-document work, and with gzip compressed
        fragments are the body as they stand (the uncompressed body is never built)."""
        body = await self._body(parts)
        endpoint = self._endpoint()
        try:
            async with self._session.post(
                endpoint + _BULK_PATH,
                data=body,
                headers=self._headers,
                timeout=self._timeout,
                ssl=self._ssl,
            ) as response:
                crash_point("during_bulk")  # the store has the batch, we have no answer
                payload = await response.read()
                status = response.status
        except TimeoutError as exc:
            raise BulkRequestError(
                f"bulk request timed out after {self.settings.request_timeout_s}s",
                status="timeout",
                endpoint=endpoint,
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise BulkRequestError(
                f"bulk request failed: {type(exc).__name__}: {exc}",
                status="connection_error",
                endpoint=endpoint,
            ) from exc
        if status == 413:
            raise RequestTooLargeError(
                f"HTTP 413 for {count} documents", status="413", endpoint=endpoint
            )
        if status != 200:
            # Whole-request failures never dead-letter records: 401/403 is a credentials
            # problem an operator fixes, 429/5xx pass. The caller retries with backoff, loudly.
            raise BulkRequestError(
                f"bulk request returned HTTP {status}: {payload[:300]!r}",
                status=str(status),
                endpoint=endpoint,
            )
        try:
            response_json = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise BulkRequestError(
                "bulk response is not JSON", status="bad_response", endpoint=endpoint
            ) from exc
        if not isinstance(response_json, dict):
            raise BulkRequestError(
                "bulk response is not an object", status="bad_response", endpoint=endpoint
            )
        try:
            return settle(count, response_json)
        except OutputError as exc:
            raise BulkRequestError(str(exc), status="bad_response", endpoint=endpoint) from exc
