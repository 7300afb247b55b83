"""The bulk output: settles spool batches into Elasticsearch/OpenSearch through ``_bulk``.

Per batch: deliver it (:class:`~.bulk_delivery.BulkDelivery` retries and splits), write the
documents the store refused for good to the dead-letter queue (fsynced), and only then
commit. Each tenant has its own delivery and backoff, kept here from its first batch on, so
one tenant's failures never slow another's; the aggregator drives the batches
(:func:`~.pump.drain`).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import aiohttp

from logferry.aggregator.dlq import DeadLetter, DeadLetterQueue
from logferry.aggregator.documents import Document, count_documents, split_fragment
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs.bulk_client import BulkClient, BulkOutputSettings, Rejection
from logferry.aggregator.outputs.bulk_delivery import BulkDelivery, RetryState, Settlement
from logferry.aggregator.outputs.dead_letters import DeadLetterWriter, malformed_fragment
from logferry.common.backoff import backoff_delay
from logferry.common.logs import get_logger
from logferry.common.spool import Spool, SpoolBatch
from logferry.store.client import StoreClient, StoreError
from logferry.store.lifecycle import templates_for
from logferry.store.settings import IndexSettings
from logferry.store.templates import ensure_templates

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Tenant:
    """One tenant's delivery and the backoff state its batches share."""

    retry: RetryState
    delivery: BulkDelivery


class BulkOutput:
    """The ``_bulk`` output: implements :class:`~.base.Output` (see its contract)."""

    def __init__(
        self,
        settings: BulkOutputSettings,
        metrics: AggregatorMetrics,
        dlq: DeadLetterQueue,
        *,
        prefix: str = "logs",
        indices: IndexSettings | None = None,
    ) -> None:
        self.settings = settings
        self._template = (prefix, indices or IndexSettings()) if settings.manage_templates else None
        # Nothing goes out before the template is in place: the first document of a day
        # creates that day's index, and its mapping comes from whatever template matches then.
        self._template_ready = asyncio.Event()
        if self._template is None:
            self._template_ready.set()
        self._template_task: asyncio.Task[None] | None = None
        self.batch_max_records = settings.batch_max_records
        self.batch_max_bytes = settings.batch_max_bytes
        # Batches held in memory by all tenants together: memory is bounded by this times
        # batch_max_bytes, however many tenants have a backlog.
        self.slots = asyncio.Semaphore(settings.max_in_flight + 2)
        self._metrics = metrics
        self._letters = DeadLetterWriter(
            dlq, retry_initial_s=settings.retry_initial_s, retry_max_s=settings.retry_max_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._client: BulkClient | None = None
        # Held only while a request is on the wire: shared by every tenant.
        self._request_slots = asyncio.Semaphore(settings.max_in_flight)
        self._tenants: dict[str, _Tenant] = {}

    async def start(self) -> None:
        """Open the HTTP session (credentials files are read here); install the index
        template in the background, retried until the store takes it."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.settings.max_in_flight * 2)
            self._session = aiohttp.ClientSession(connector=connector)
            self._client = BulkClient(self.settings, self._session)
            if self._template is not None:
                self._template_task = asyncio.create_task(
                    self._install_template(*self._template), name="index-template"
                )

    def use_access(
        self, settings: BulkOutputSettings, headers: dict[str, str], tls: ssl.SSLContext | bool
    ) -> None:
        """Reloaded store access (nodes, credentials, TLS trust, read by the caller) for the
        requests from now on."""
        self.settings = settings
        if self._client is not None:
            self._client.use_access(settings, headers, tls)

    async def _install_template(self, prefix: str, indices: IndexSettings) -> None:
        assert self._session is not None
        store = StoreClient(
            self.settings.urls,
            self._session,
            self.settings.ssl_option(),
            self.settings.headers(),
        )
        templates = templates_for(prefix, indices)
        attempt = 0
        while True:
            try:
                outcomes = await ensure_templates(store, templates)
            except StoreError as exc:
                attempt += 1
                self._metrics.template_installs.labels(outcome="failed").inc()
                if attempt == 1 or attempt % 10 == 0:  # a line per ~5 min at the longest delay
                    log.warning(
                        "store.template_failed",
                        error=str(exc),
                        attempt=attempt,
                        holding="every tenant's documents until the template is in place",
                    )
                await asyncio.sleep(
                    backoff_delay(attempt, self.settings.retry_initial_s, self.settings.retry_max_s)
                )
                continue
            for outcome in outcomes.values():
                self._metrics.template_installs.labels(outcome=outcome).inc()
            self._template_ready.set()
            return

    def concurrency(self, tenant: str) -> int:
        """``max_in_flight`` batches; one while the tenant's requests are failing."""
        state = self._tenants.get(tenant)
        # A failing tenant keeps one batch in hand, not max_in_flight: its memory stays
        # small while it waits, and the store sees one probe instead of a burst.
        return 1 if state is not None and state.retry.failures else self.settings.max_in_flight

    async def settle(self, tenant: str, spool: Spool, batch: SpoolBatch) -> None:
        """Deliver ``batch``, dead-letter what the store refused for good, then commit."""
        await self._template_ready.wait()
        delivery = self._tenant(tenant).delivery
        documents: list[Document] = []
        letters: list[DeadLetter] = []
        refused: list[tuple[Document, Rejection]] = []
        # Fast path: fragments already are _bulk NDJSON (compressed or not), so a group of
        # them is a request body as it stands. Only what does not settle at once is split
        # into documents, and of a partial failure only the failed items go on (refused ones
        # to the DLQ, the rest to the per-document path that retries them with backoff).
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
            refused.extend((group_docs[r.position], r) for r in result.rejected)
        for fragment in slow:
            try:
                documents.extend(split_fragment(fragment))
            except ValueError as exc:
                letters.append(malformed_fragment(tenant, fragment, self._metrics, str(exc)))
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
        await self._letters.write(tenant, letters)
        spool.commit(batch)

    async def close(self) -> None:
        """Close the HTTP session. Safe to call twice."""
        if self._template_task is not None:
            self._template_task.cancel()
            await asyncio.gather(self._template_task, return_exceptions=True)
            self._template_task = None
        session, self._session = self._session, None
        self._client = None
        self._tenants.clear()  # their deliveries use the closed session's client
        if session is not None:
            await session.close()

    def _tenant(self, tenant: str) -> _Tenant:
        """``tenant``'s delivery and backoff, made at its first batch."""
        state = self._tenants.get(tenant)
        if state is None:
            if self._client is None:
                raise RuntimeError("BulkOutput.start() was not called")
            retry = RetryState()
            delivery = BulkDelivery(
                self._client, self._request_slots, metrics=self._metrics, tenant=tenant, retry=retry
            )
            state = self._tenants[tenant] = _Tenant(retry, delivery)
        return state


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
