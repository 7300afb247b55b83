"""The null output: commits every batch at once. For benchmarks of the input side."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from logferry.aggregator.documents import count_documents, fragment_size
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.common.config import ConfigModel
from logferry.common.spool import Spool, SpoolBatch
from logferry.common.units import ByteSize, MiB


class NullOutputSettings(ConfigModel):
    """Discard documents after counting them (never in production: nothing is kept)."""

    type: Literal["null"]
    """Selects this output."""
    batch_max_records: int = Field(default=50_000, ge=1)
    """Most spool records (fragments) committed at once."""
    batch_max_bytes: ByteSize = Field(default=64 * MiB, ge=1024)
    """Most fragment bytes (uncompressed) committed at once."""


class NullOutput:
    """Counts documents as delivered and commits; implements :class:`~.base.Output`."""

    def __init__(self, settings: NullOutputSettings, metrics: AggregatorMetrics) -> None:
        self.settings = settings
        self.batch_max_records = settings.batch_max_records
        self.batch_max_bytes = settings.batch_max_bytes
        self.slots = None
        self._metrics = metrics

    async def start(self) -> None:
        """Nothing to open."""

    def concurrency(self, tenant: str) -> int:
        """One batch at a time: committing takes no time."""
        return 1

    async def settle(self, tenant: str, spool: Spool, batch: SpoolBatch) -> None:
        """Count ``batch``'s documents as delivered and commit it."""
        records = sum(count_documents(fragment) for fragment in batch.records)
        self._metrics.records_out.labels(tenant=tenant).inc(records)
        self._metrics.bytes_out.labels(tenant=tenant).inc(sum(map(fragment_size, batch.records)))
        spool.commit(batch)

    async def close(self) -> None:
        """Nothing to close."""
