"""What an output does with documents it cannot deliver: a letter each, written durably.

An output commits a batch only once the batch's letters are in the dead-letter queue
(fsynced). While the queue fails, :class:`DeadLetterWriter` retries with backoff and the batch
waits, uncommitted: nothing is lost, and nothing is committed on the queue's account.
"""

from __future__ import annotations

import asyncio

from logferry.aggregator.dlq import DeadLetter, DeadLetterQueue
from logferry.aggregator.documents import fragment_ndjson
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.common.backoff import backoff_delay
from logferry.common.errors import OutputError
from logferry.common.logs import get_logger

log = get_logger(__name__)


def malformed_fragment(
    tenant: str, fragment: bytes, metrics: AggregatorMetrics, why: str = "odd line count"
) -> DeadLetter:
    """The letter (counted) for a fragment that is not action/source line pairs (or whose
    compressed data is damaged): never rendered by us, so it is kept for an operator rather
    than sent again and again; as NDJSON when it still inflates, else as stored."""
    metrics.dlq_records.labels(tenant=tenant, reason="malformed_fragment").inc()
    try:
        source = fragment_ndjson(fragment)
    except ValueError:
        source = fragment
    return DeadLetter(tenant, "", "", 0, f"malformed_fragment: {why}", source)


class DeadLetterWriter:
    """An output's way into the dead-letter queue: :meth:`write` returns once the letters
    are durable, retrying with backoff (the output's retry delays) while the queue fails."""

    def __init__(self, dlq: DeadLetterQueue, *, retry_initial_s: float, retry_max_s: float) -> None:
        self._dlq = dlq
        self._initial_s, self._max_s = retry_initial_s, retry_max_s

    async def write(self, tenant: str, letters: list[DeadLetter]) -> None:
        """Write ``letters`` durably; returns at once when there are none."""
        attempt = 0
        while letters:
            try:
                await self._dlq.append(letters)
                return
            except OutputError as exc:
                log.error("dlq.append_failed", tenant=tenant, attempt=attempt, error=str(exc))
                await asyncio.sleep(backoff_delay(attempt, self._initial_s, self._max_s))
                attempt += 1
