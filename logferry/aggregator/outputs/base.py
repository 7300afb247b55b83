"""The contract every output keeps with the aggregator."""

from __future__ import annotations

import asyncio
from typing import Protocol

from logferry.common.spool import Spool


class Output(Protocol):
    """Drains tenant spools into a destination.

    The aggregator calls :meth:`drain` once per tenant spool, as a task it owns. ``drain`` reads
    batches of fragments (see ``aggregator/documents.py``), delivers them, and commits a batch
    only when every document in it is settled: confirmed by the destination, or durably in the
    dead-letter queue. Failures are retried with backoff inside ``drain`` (per tenant, so one
    tenant's failing destination never stalls another's). When ``stop`` is set it stops
    reading, finishes what is in flight within ``deadline_s``, and returns; whatever is not
    committed stays in the spool for the next start.
    """

    async def start(self) -> None:
        """Open clients and files."""

    async def drain(
        self, tenant: str, spool: Spool, stop: asyncio.Event, deadline_s: float
    ) -> None:
        """Deliver ``tenant``'s spool until ``stop`` is set (see class docstring)."""

    async def close(self) -> None:
        """Release clients and files. Safe to call twice."""
