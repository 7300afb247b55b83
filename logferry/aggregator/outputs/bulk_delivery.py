"""Delivering documents through ``_bulk`` until each one is settled, and the bulk output.

:class:`BulkDelivery` takes a list of documents and returns when every one is delivered
(created or already there) or rejected for good, retrying the rest: a request that failed as a
whole is resent after an exponential backoff with full jitter, a partial failure resends only
the failed items, and a 413 splits the request in halves (a single document that is still too
large is rejected). The shared ``slots`` semaphore is held only while a request is on the
wire, never while sleeping, so one tenant in backoff never holds capacity others could use.

:class:`BulkOutput` runs one :func:`~.pump.pump` per tenant and, per batch: delivers it,
writes the rejected documents to the dead-letter queue (fsynced), and only then commits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from logferry.aggregator.dlq import DeadLetter, DeadLetterQueue
from logferry.aggregator.documents import Document, count_documents, split_fragment
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs.bulk import (
    BulkClient,
    BulkOutputSettings,
    BulkRequestError,
    BulkResult,
    RequestTooLargeError,
    backoff_delay,
)
from logferry.aggregator.outputs.pump import pump
from logferry.common.errors import OutputError
from logferry.common.logs import get_logger
from logferry.common.spool import Spool, SpoolBatch

log = get_logger(__name__)

TOO_LARGE_REASON = "request_too_large: the document alone is over the store's request size limit"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A document the store refused for good (``position`` in the delivered list)."""

    position: int
    status: int
    reason: str
    kind: str


@dataclass(slots=True)
class Settlement:
    """The outcome of delivering a list of documents."""

    delivered: int = 0
    duplicates: int = 0
    delivered_bytes: int = 0
    refused: list[Refusal] = field(default_factory=list)
    unsettled: list[int] = field(default_factory=list)
    """Positions still failing when ``max_rounds`` ran out (never set without a limit)."""


@dataclass(slots=True)
class RetryState:
    """Backoff shared by a tenant's batches: consecutive rounds that needed a retry."""

    failures: int = 0


class BulkDelivery:
    """Settles documents through a :class:`BulkClient`; see the module docstring."""

    def __init__(
        self,
        client: BulkClient,
        slots: asyncio.Semaphore,
        *,
        metrics: AggregatorMetrics | None = None,
        tenant: str = "",
        retry: RetryState | None = None,
        max_rounds: int | None = None,
    ) -> None:
        self._client = client
        self._slots = slots
        self._metrics = metrics
        self._tenant = tenant
        self._retry = retry or RetryState()
        self._max_rounds = max_rounds
        settings = client.settings
        self._initial_s, self._max_s = settings.retry_initial_s, settings.retry_max_s

    async def deliver(self, documents: Sequence[Document]) -> Settlement:
        """Return once every document is delivered or refused (or ``max_rounds`` ran out)."""
        settlement = Settlement()
        pending = list(range(len(documents)))
        rounds = 0
        while pending:
            again = await self._round(documents, pending, settlement)
            if not again:
                self._retry.failures = 0
                break
            rounds += 1
            if self._max_rounds is not None and rounds >= self._max_rounds:
                settlement.unsettled = again
                break
            if self._metrics is not None:
                self._metrics.retries.labels(tenant=self._tenant).inc(len(again))
            delay = backoff_delay(self._retry.failures, self._initial_s, self._max_s)
            self._retry.failures += 1
            await asyncio.sleep(delay)
            pending = again
        return settlement

    async def _round(
        self, documents: Sequence[Document], positions: list[int], settlement: Settlement
    ) -> list[int]:
        """Send ``positions`` once (split as needed); return the ones to send again."""
        again: list[int] = []
        size = self._client.settings.batch_max_records
        groups = deque(positions[i : i + size] for i in range(0, len(positions), size))
        while groups:
            group = groups.popleft()
            try:
                async with self._slots:
                    result = await self._client.send([documents[p] for p in group])
            except RequestTooLargeError as exc:
                self._count_request(exc.status)
                if len(group) == 1:
                    settlement.refused.append(
                        Refusal(group[0], 413, TOO_LARGE_REASON, "request_too_large")
                    )
                else:  # halves go first, so the rest of the round waits behind them
                    middle = len(group) // 2
                    groups.extendleft([group[middle:], group[:middle]])
                continue
            except BulkRequestError as exc:
                self._request_failed(exc, len(group))
                again.extend(group)
                continue
            self._count_request(str(result.status))
            nbytes = sum(len(documents[group[p]].source) for p in result.delivered_positions)
            settlement.delivered_bytes += nbytes
            settlement.delivered += result.delivered
            settlement.duplicates += result.duplicates
            again.extend(group[position] for position in result.retry)
            settlement.refused.extend(
                Refusal(group[r.position], r.status, r.reason, r.kind) for r in result.rejected
            )
            if self._metrics is not None:
                self._metrics.records_out.labels(tenant=self._tenant).inc(result.delivered)
                self._metrics.duplicates.labels(tenant=self._tenant).inc(result.duplicates)
                self._metrics.bytes_out.labels(tenant=self._tenant).inc(nbytes)
        again.sort()  # keep the spool's order within a batch when resending
        return again

    async def deliver_whole(self, parts: list[bytes], count: int) -> BulkResult | None:
        """Deliver ready NDJSON parts holding ``count`` documents without splitting them.

        A request that fails as a whole is retried with backoff, as it stands. Returns the
        per-item result once the store answered (delivered ones are counted here); the caller
        handles items to retry or refuse. None means the store said 413: the caller splits.
        """
        while True:
            try:
                async with self._slots:
                    result = await self._client.send_body(parts, count)
            except RequestTooLargeError as exc:
                self._count_request(exc.status)
                return None
            except BulkRequestError as exc:
                self._request_failed(exc, count)
                if self._metrics is not None:
                    self._metrics.retries.labels(tenant=self._tenant).inc(count)
                delay = backoff_delay(self._retry.failures, self._initial_s, self._max_s)
                self._retry.failures += 1
                await asyncio.sleep(delay)
                continue
            break
        self._count_request(str(result.status))
        clean = not result.retry and not result.rejected
        if self._metrics is not None:
            self._metrics.records_out.labels(tenant=self._tenant).inc(result.delivered)
            self._metrics.duplicates.labels(tenant=self._tenant).inc(result.duplicates)
            if clean:
                self._metrics.bytes_out.labels(tenant=self._tenant).inc(sum(map(len, parts)))
            if result.retry:
                self._metrics.retries.labels(tenant=self._tenant).inc(len(result.retry))
        if clean:
            self._retry.failures = 0
        return result

    @property
    def retry_failures(self) -> int:
        """Consecutive failed rounds of this tenant (0 when healthy)."""
        return self._retry.failures

    def _request_failed(self, exc: BulkRequestError, documents: int) -> None:
        """Count and log a request that failed as a whole (its documents go out again)."""
        self._count_request(exc.status)
        log.warning(
            "bulk.request_failed",
            tenant=self._tenant,
            endpoint=exc.endpoint,
            status=exc.status,
            documents=documents,
            attempt=self._retry.failures,
            error=str(exc),
        )

    def _count_request(self, status: str) -> None:
        if self._metrics is not None:
            self._metrics.bulk_requests.labels(status=status).inc()


class BulkOutput:
    """The ``_bulk`` output: implements :class:`~.base.Output` (see its contract)."""

    def __init__(
        self, settings: BulkOutputSettings, metrics: AggregatorMetrics, dlq: DeadLetterQueue
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._dlq = dlq
        self._session: aiohttp.ClientSession | None = None
        self._client: BulkClient | None = None
        # Held only while a request is on the wire: shared by every tenant.
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        # Batches held in memory by all tenants together: memory is bounded by this times
        # batch_max_bytes, however many tenants have a backlog.
        self._held = asyncio.Semaphore(settings.max_in_flight + 2)

    async def start(self) -> None:
        """Open the HTTP session (credentials files are read here)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.settings.max_in_flight * 2)
            self._session = aiohttp.ClientSession(connector=connector)
            self._client = BulkClient(self.settings, self._session)

    async def drain(
        self, tenant: str, spool: Spool, stop: asyncio.Event, deadline_s: float
    ) -> None:
        """Deliver ``tenant``'s spool until ``stop`` (see the Output contract)."""
        if self._client is None:
            raise RuntimeError("BulkOutput.start() was not called")
        retry = RetryState()
        delivery = BulkDelivery(
            self._client, self._slots, metrics=self._metrics, tenant=tenant, retry=retry
        )
        in_flight = self.settings.max_in_flight

        async def handle(batch: SpoolBatch) -> None:
            await self._settle_batch(tenant, spool, batch, delivery)

        await pump(
            tenant,
            spool,
            stop,
            deadline_s,
            max_records=self.settings.batch_max_records,
            max_bytes=self.settings.batch_max_bytes,
            # A failing tenant keeps one batch in hand, not max_in_flight: its memory stays
            # small while it waits, and the store sees one probe instead of a burst.
            concurrency=lambda: 1 if retry.failures else in_flight,
            handle=handle,
            slots=self._held,
        )

    async def _settle_batch(
        self, tenant: str, spool: Spool, batch: SpoolBatch, delivery: BulkDelivery
    ) -> None:
        documents: list[Document] = []
        letters: list[DeadLetter] = []
        refused: list[tuple[Document, Refusal]] = []
        # Fast path: fragments already are _bulk NDJSON, so a group of them is a request body
        # as it stands. Only what does not settle at once is split into documents, and of a
        # partial failure only the failed items go on (refused ones to the DLQ, the rest to
        # the per-document path that retries them with backoff).
        slow: list[bytes] = []
        for group, count in _groups(batch.records, self.settings.batch_max_records):
            fast = count <= self.settings.batch_max_records
            result = await delivery.deliver_whole(group, count) if fast else None
            if result is None:
                slow.extend(group)
                continue
            if not result.retry and not result.rejected:
                continue
            try:
                group_docs = [doc for fragment in group for doc in split_fragment(fragment)]
            except ValueError:
                slow.extend(group)  # cannot map items to documents: the slow path sorts it out
                continue
            documents.extend(group_docs[position] for position in result.retry)
            refused.extend(
                (group_docs[r.position], Refusal(r.position, r.status, r.reason, r.kind))
                for r in result.rejected
            )
        for fragment in slow:
            try:
                documents.extend(split_fragment(fragment))
            except ValueError:  # never rendered by us: keep it for an operator, do not loop
                letters.append(
                    DeadLetter(tenant, "", "", 0, "malformed_fragment: odd line count", fragment)
                )
                self._metrics.dlq_records.labels(tenant=tenant, reason="malformed_fragment").inc()
        settlement = await delivery.deliver(documents) if documents else Settlement()
        refused.extend((documents[r.position], r) for r in settlement.refused)
        for doc, refusal in refused:
            letters.append(
                DeadLetter(
                    tenant, doc.index, doc.doc_id, refusal.status, refusal.reason, doc.source
                )
            )
            self._metrics.dlq_records.labels(tenant=tenant, reason=refusal.kind).inc()
        if refused:
            first_doc, first = refused[0]
            log.warning(  # one line per batch; every document is in the DLQ with its reason
                "bulk.documents_rejected",
                tenant=tenant,
                count=len(refused),
                first_index=first_doc.index,
                first_doc_id=first_doc.doc_id,
                first_status=first.status,
                first_reason=first.reason,
            )
        await self._dead_letter(tenant, letters)
        spool.commit(batch)

    async def _dead_letter(self, tenant: str, letters: list[DeadLetter]) -> None:
        """Write ``letters`` durably, retrying with backoff: the batch waits, uncommitted."""
        attempt = 0
        while letters:
            try:
                await self._dlq.append(letters)
                return
            except OutputError as exc:
                log.error("dlq.append_failed", tenant=tenant, attempt=attempt, error=str(exc))
                await asyncio.sleep(
                    backoff_delay(attempt, self.settings.retry_initial_s, self.settings.retry_max_s)
                )
                attempt += 1

    async def close(self) -> None:
        """Close the HTTP session. Safe to call twice."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _groups(fragments: list[bytes], max_documents: int) -> list[tuple[list[bytes], int]]:
    """Consecutive fragments gathered into groups of at most ``max_documents`` documents (a
    single larger fragment forms a group of its own)."""
    groups: list[tuple[list[bytes], int]] = []
    current: list[bytes] = []
    count = 0
    for fragment in fragments:
        n = count_documents(fragment)
        if current and count + n > max_documents:
            groups.append((current, count))
            current, count = [], 0
        current.append(fragment)
        count += n
    if current:
        groups.append((current, count))
    return groups
