"""The contract every output keeps with the aggregator."""

from __future__ import annotations

import asyncio
from typing import Protocol

from logferry.common.spool import Spool, SpoolBatch


class Output(Protocol):
    """Settles batches of tenant spools into a destination.

    An output does not read spools: :func:`~.pump.drain` does, one task per tenant, for every
    output alike. It reads batches of fragments (see ``aggregator/documents.py``) within
    :attr:`batch_max_records` and :attr:`batch_max_bytes`, keeps up to
    :meth:`concurrency` of one tenant's batches in hand (and, with :attr:`slots`, at most
    that many across all tenants), and hands each to :meth:`settle`. When the aggregator
    stops, the driver reads nothing new and gives the batches in hand a deadline; whatever is
    not committed by then stays in the spool for the next start.
    """

    @property
    def batch_max_records(self) -> int:
        """Most spool records (fragments) in one batch."""

    @property
    def batch_max_bytes(self) -> int:
        """Most fragment bytes in one batch."""

    @property
    def slots(self) -> asyncio.Semaphore | None:
        """Shared by every tenant: a batch holds a slot from its read until it is settled, so
        the output's memory does not grow with the number of tenants. None: no shared cap."""

    async def start(self) -> None:
        """Open clients and files."""

    def concurrency(self, tenant: str) -> int:
        """How many of ``tenant``'s batches the output wants in hand now; asked before each
        read (an output whose destination is failing for the tenant wants fewer)."""

    async def settle(self, tenant: str, spool: Spool, batch: SpoolBatch) -> None:
        """Settle ``batch`` and commit it.

        Commit only when every document in the batch is settled: confirmed by the
        destination, or durably in the dead-letter queue. Failures are retried with backoff
        inside (per tenant, so one tenant's failing destination never stalls another's). An
        exception takes the tenant's drain down, and with it the aggregator, loudly.
        """

    async def close(self) -> None:
        """Release clients and files. Safe to call twice."""
