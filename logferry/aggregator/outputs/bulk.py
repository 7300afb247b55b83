"""Elasticsearch/OpenSearch ``_bulk`` output over aiohttp.

One request writes a batch with ``create`` and each record's deterministic ``_id``. Every item
is settled as one of: delivered (2xx, or 409 — the document is already there, so a resend is
harmless), retry (429, 5xx, a read-only block, the request failed as a whole), or rejected
(any other 4xx: mapping conflict, oversize, invalid — the dead-letter queue takes it with the
server's reason). Only the items that need it are sent again.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import Field, model_validator

from logferry.common.config import ConfigModel
from logferry.common.errors import OutputError
from logferry.common.units import ByteSize

MiB = 1024 * 1024
# Blocks that clear by themselves (disk flood stage, a closing index): retry, never dead-letter.
RETRIABLE_ERROR_TYPES = frozenset({"cluster_block_exception", "es_rejected_execution_exception"})


class BulkOutputSettings(ConfigModel):
    """Bulk writes to Elasticsearch 7/8/9 or OpenSearch 1/2/3."""

    type: Literal["opensearch", "elasticsearch"]
    """Which store; both speak the same ``_bulk`` API."""
    urls: list[str] = Field(min_length=1)
    """Base URLs of the store's nodes (``https://es-0:9200``); requests rotate across them."""
    username: str | None = None
    """Basic auth user."""
    password_file: Path | None = None
    """File holding the basic auth password (a mounted Secret), read at start."""
    api_key_file: Path | None = None
    """File holding an API key (``id:key`` or its base64), sent as ``Authorization: ApiKey``."""
    tls_ca_file: Path | None = None
    """CA bundle to verify the store's certificate."""
    tls_verify: bool = True
    """Verify the store's certificate (turn off only for a throwaway test cluster)."""
    batch_max_records: int = Field(default=5000, ge=1, le=100_000)
    """Most documents in one request."""
    batch_max_bytes: ByteSize = Field(default=8 * MiB, ge=64 * 1024)
    """Most uncompressed body bytes in one request."""
    gzip: bool = True
    """Gzip request bodies (``Content-Encoding: gzip``)."""
    max_in_flight: int = Field(default=4, ge=1, le=64)
    """Concurrent bulk requests."""
    request_timeout_s: float = Field(default=60.0, gt=0)
    """Deadline of one request; a timed-out request is retried (409s then settle it)."""
    retry_initial_s: float = Field(default=0.2, gt=0)
    """First retry delay; doubles each time, with full jitter."""
    retry_max_s: float = Field(default=30.0, gt=0)
    """Longest retry delay."""

    @model_validator(mode="after")
    def _auth(self) -> BulkOutputSettings:
        if self.password_file and not self.username:
            raise ValueError("password_file needs username")
        if self.api_key_file and self.username:
            raise ValueError("use either username/password_file or api_key_file, not both")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"url {url!r} must start with http:// or https://")
        return self


@dataclass(frozen=True, slots=True)
class BulkItem:
    """One document to create."""

    index: str
    doc_id: str
    source: bytes
    """The document as JSON."""


@dataclass(slots=True)
class BulkResult:
    """How one request settled its items (positions refer to the request's item list)."""

    delivered: int = 0
    duplicates: int = 0
    retry: list[int] = field(default_factory=list)
    rejected: list[tuple[int, int, str]] = field(default_factory=list)
    """(position, HTTP status, reason) of items the store refused for good."""
    status: int = 0


def render_body(items: Sequence[BulkItem]) -> bytes:
    """The NDJSON ``_bulk`` body: an action line and a source line per item."""
    parts: list[bytes] = []
    dumps = orjson.dumps
    for item in items:
        parts.append(dumps({"create": {"_index": item.index, "_id": item.doc_id}}))
        parts.append(item.source)
    parts.append(b"")
    return b"\n".join(parts)


def settle(items_count: int, response: dict[str, Any]) -> BulkResult:
    """Classify every item of a ``_bulk`` response."""
    result = BulkResult(status=200)
    items = response.get("items")
    if not isinstance(items, list) or len(items) != items_count:
        raise OutputError("bulk response does not list every item", retriable=True)
    if response.get("errors") is False:
        result.delivered = items_count
        return result
    for position, entry in enumerate(items):
        outcome = next(iter(entry.values())) if isinstance(entry, dict) and entry else {}
        status = int(outcome.get("status", 0))
        if 200 <= status < 300:
            result.delivered += 1
        elif status == 409:
            result.delivered += 1
            result.duplicates += 1
        else:
            error = outcome.get("error") or {}
            kind = error.get("type", "") if isinstance(error, dict) else ""
            if status == 429 or status >= 500 or kind in RETRIABLE_ERROR_TYPES or status == 0:
                result.retry.append(position)
            else:
                reason = error.get("reason", "") if isinstance(error, dict) else str(error)
                result.rejected.append((position, status, f"{kind}: {reason}"[:2000]))
    return result


class BulkClient:
    """Sends ``_bulk`` requests; knows nothing of spools or retries (see BulkDelivery)."""

    def __init__(self, settings: BulkOutputSettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self._session = session
        self._next_url = 0
        self._headers = {"Content-Type": "application/x-ndjson"}
        if settings.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._headers.update(_auth_header(settings))
        self._ssl = _ssl_context(settings)

    def _url(self) -> str:
        urls = self.settings.urls
        self._next_url = (self._next_url + 1) % len(urls)
        return urls[self._next_url].rstrip("/") + "/_bulk"

    async def send(self, items: Sequence[BulkItem]) -> BulkResult:
        """One request. Raises OutputError (retriable or not) when it failed as a whole."""
        body = render_body(items)
        if self.settings.gzip:
            body = (
                await asyncio.to_thread(gzip.compress, body, 1)
                if len(body) > MiB
                else (gzip.compress(body, 1))
            )
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout_s)
        try:
            async with self._session.post(
                self._url(), data=body, headers=self._headers, timeout=timeout, ssl=self._ssl
            ) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise OutputError(
                f"bulk request failed: {type(exc).__name__}: {exc}", retriable=True
            ) from exc
        if status == 413 and len(items) > 1:
            raise OutputError("request too large", retriable=True)
        if status != 200:
            # Whole-request failures never dead-letter records: 401/403 is a credentials
            # problem an operator fixes, 429/5xx pass. Retry with backoff, loudly.
            raise OutputError(
                f"bulk request returned HTTP {status}: {payload[:300]!r}", retriable=True
            )
        try:
            response_json = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise OutputError("bulk response is not JSON", retriable=True) from exc
        return settle(len(items), response_json)


def backoff_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, initial * 2**attempt)]."""
    return random.uniform(0, min(max_s, initial_s * (2 ** min(attempt, 30))))


def _auth_header(settings: BulkOutputSettings) -> dict[str, str]:
    if settings.api_key_file is not None:
        key = settings.api_key_file.read_text().strip()
        if ":" in key:
            key = base64.b64encode(key.encode()).decode()
        return {"Authorization": f"ApiKey {key}"}
    if settings.username is not None:
        password = settings.password_file.read_text().strip() if settings.password_file else ""
        token = base64.b64encode(f"{settings.username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}


def _ssl_context(settings: BulkOutputSettings) -> ssl.SSLContext | bool:
    if not any(url.startswith("https://") for url in settings.urls):
        return True
    if not settings.tls_verify:
        return False
    context = ssl.create_default_context(
        cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None
    )
    return context
