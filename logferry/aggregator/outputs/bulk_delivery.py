"""Delivering documents through ``_bulk`` until each one is settled.

:class:`BulkDelivery` takes a list of documents and returns when every one is delivered
(created or already there) or rejected for good, retrying the rest: a request that failed as a
whole is resent after an exponential backoff with full jitter, a partial failure resends only
the failed items, and a 413 splits the request in halves (a single document that is still too
large is rejected). The shared ``request_slots`` semaphore is held only while a request is on
the wire, never while sleeping, so one tenant in backoff never holds capacity others could use.
What to do with a spool batch (dead-letter, commit) is :mod:`.bulk_output`'s business.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from logferry.aggregator.documents import Document, fragment_size
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs.bulk_client import (
    BulkClient,
    BulkRequestError,
    BulkResult,
    Rejection,
    RequestTooLargeError,
)
from logferry.common.backoff import backoff_delay
from logferry.common.logs import get_logger

log = get_logger(__name__)

TOO_LARGE_REASON = "request_too_large: the document alone is over the store's request size limit"


@dataclass(slots=True)
class Settlement:
    """The outcome of delivering a list of documents."""

    delivered: int = 0
    duplicates: int = 0
    refused: list[Rejection] = field(default_factory=list)
    """Documents the store refused for good (``position`` in the delivered list)."""
    unsettled: list[int] = field(default_factory=list)
    """Positions still failing when ``max_rounds`` ran out (never set without a limit)."""


@dataclass(slots=True)
class RetryState:
    """Backoff shared by a tenant's batches: consecutive rounds that needed a retry."""

    failures: int = 0
    held: set[str] = field(default_factory=set)
    """Cluster refusal labels of the last answer (to log changes, not every retry)."""


class BulkDelivery:
    """Settles documents through a :class:`BulkClient`; see the module docstring."""

    def __init__(
        self,
        client: BulkClient,
        request_slots: asyncio.Semaphore,
        *,
        metrics: AggregatorMetrics | None = None,
        tenant: str = "",
        retry: RetryState | None = None,
        max_rounds: int | None = None,
    ) -> None:
        self._client = client
        self._request_slots = request_slots
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
            await self._back_off(len(again))
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
                async with self._request_slots:
                    result = await self._client.send([documents[p] for p in group])
            except RequestTooLargeError as exc:
                self._count_request(exc.status)
                if len(group) == 1:
                    settlement.refused.append(
                        Rejection(group[0], 413, TOO_LARGE_REASON, "request_too_large")
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
            settlement.delivered += result.delivered
            settlement.duplicates += result.duplicates
            self._note_held(result)
            again.extend(group[position] for position in result.retry)
            settlement.refused.extend(
                replace(rejection, position=group[rejection.position])
                for rejection in result.rejected
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
                async with self._request_slots:
                    result = await self._client.send_body(parts, count)
            except RequestTooLargeError as exc:
                self._count_request(exc.status)
                return None
            except BulkRequestError as exc:
                self._request_failed(exc, count)
                await self._back_off(count)
                continue
            break
        self._count_request(str(result.status))
        self._note_held(result)
        clean = not result.retry and not result.rejected
        if self._metrics is not None:
            self._metrics.records_out.labels(tenant=self._tenant).inc(result.delivered)
            self._metrics.duplicates.labels(tenant=self._tenant).inc(result.duplicates)
            if clean:
                nbytes = sum(map(fragment_size, parts))  # uncompressed, as the slow path counts
                self._metrics.bytes_out.labels(tenant=self._tenant).inc(nbytes)
            if result.retry:
                self._metrics.retries.labels(tenant=self._tenant).inc(len(result.retry))
        if clean:
            self._retry.failures = 0
        return result

    async def _back_off(self, documents: int) -> None:
        """Count ``documents`` as retried and wait before the tenant's next attempt."""
        if self._metrics is not None:
            self._metrics.retries.labels(tenant=self._tenant).inc(documents)
        delay = backoff_delay(self._retry.failures, self._initial_s, self._max_s)
        self._retry.failures += 1
        await asyncio.sleep(delay)

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

    def _note_held(self, result: BulkResult) -> None:
        """Count items the cluster refused (they stay in the spool and go out again); say so
        once when the cluster starts refusing for a reason, and once when it stops."""
        if self._metrics is not None:
            for label, (count, _) in result.held.items():
                self._metrics.store_refusals.labels(tenant=self._tenant, reason=label).inc(count)
        for label, (count, reason) in result.held.items():
            if label not in self._retry.held:
                log.warning(
                    "bulk.held_by_store",
                    tenant=self._tenant,
                    reason=label,
                    documents=count,
                    store_reason=reason,
                )
        if self._retry.held and not result.held and result.delivered:
            log.warning(
                "bulk.store_accepts_again", tenant=self._tenant, after=sorted(self._retry.held)
            )
        if result.held or result.delivered:
            self._retry.held = set(result.held)

    def _count_request(self, status: str) -> None:
        if self._metrics is not None:
            self._metrics.bulk_requests.labels(status=status).inc()
