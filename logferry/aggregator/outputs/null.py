"""The null output: commits every batch at once. For benchmarks of the input side."""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field

from logferry.aggregator.documents import count_documents
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs.pump import pump
from logferry.common.config import ConfigModel
from logferry.common.spool import Spool, SpoolBatch
from logferry.common.units import ByteSize

MiB = 1024 * 1024


class NullOutputSettings(ConfigModel):
    """Discard documents after counting them (never in production: nothing is kept)."""

    type: Literal["null"]
    """Selects this output."""
    batch_max_records: int = Field(default=50_000, ge=1)
    """Most spool records (fragments) committed at once."""
    batch_max_bytes: ByteSize = Field(default=64 * MiB, ge=1024)
    """Most fragment bytes committed at once."""


class NullOutput:
    """Counts documents as delivered and commits; implements :class:`~.base.Output`."""

    def __init__(self, settings: NullOutputSettings, metrics: AggregatorMetrics) -> None:
        self.settings = settings
        self._metrics = metrics

    async def start(self) -> None:
        """Nothing to open."""

    async def drain(
        self, tenant: str, spool: Spool, stop: asyncio.Event, deadline_s: float
    ) -> None:
        """Commit ``tenant``'s batches as they come until ``stop``."""
        records_out = self._metrics.records_out.labels(tenant=tenant)
        bytes_out = self._metrics.bytes_out.labels(tenant=tenant)

        async def handle(batch: SpoolBatch) -> None:
            records_out.inc(sum(count_documents(fragment) for fragment in batch.records))
            bytes_out.inc(sum(len(fragment) for fragment in batch.records))
            spool.commit(batch)

        await pump(
            tenant,
            spool,
            stop,
            deadline_s,
            max_records=self.settings.batch_max_records,
            max_bytes=self.settings.batch_max_bytes,
            concurrency=1,
            handle=handle,
        )

    async def close(self) -> None:
        """Nothing to close."""
