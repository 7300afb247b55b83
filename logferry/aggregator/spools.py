"""One durable spool per tenant, under a shared disk budget.

A tenant whose destination is stuck fills only its own spool (its share, ``tenant_max_bytes``);
its backlog never holds back another tenant's records, because every tenant's output drains
and frees its own files. The total (``max_bytes``) bounds the volume as a whole: when either
is reached, ingest waits (the forward server stops reading: backpressure), nothing is dropped.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from logferry.aggregator.documents import Compression
from logferry.common.disk_full import DiskStalls
from logferry.common.errors import SpoolClosedError
from logferry.common.logs import get_logger
from logferry.common.sections import SpoolSettings
from logferry.common.spool import Spool
from logferry.common.units import ByteSize, MiB

log = get_logger(__name__)
_TENANT_DIR = re.compile(r"^_?[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_SPACE_POLL_S = 0.02


class AggregatorSpoolSettings(SpoolSettings):
    """The persistent-volume buffer: one spool per tenant; a chunk is acked once fsynced here."""

    tenant_max_bytes: ByteSize = 256 * MiB
    """One tenant's share: a tenant whose store is failing stops at this much backlog (its
    senders are slowed) while the other tenants keep flowing."""
    segment_max_bytes: ByteSize = Field(default=16 * MiB)
    """Segment file size within each tenant's spool; disk is freed a segment at a time."""
    divert_stuck_after_s: float = Field(default=600.0, ge=0, le=7 * 86400)
    """A tenant whose share is full and that has delivered nothing for this long is stuck
    (its store refuses everything; a slow store still delivers): its new records are parked
    in the dead-letter queue (replay with ``logferry aggregator dlq replay``) instead of
    holding up the chunks they share with other tenants. 0: never; the tenant then slows
    every sender once its share is full."""
    compression: Compression = "deflate"
    """How records are stored: ``deflate`` compresses each chunk's documents once, as they
    arrive (a fraction of the disk, and the bulk output sends them as gzip bodies without
    compressing again); ``none`` stores the ``_bulk`` lines as they are. Either reads both, so
    it can be changed at any time."""

    @model_validator(mode="after")
    def _shares_fit(self) -> Self:
        if self.tenant_max_bytes > self.max_bytes:
            raise ValueError("tenant_max_bytes cannot exceed max_bytes")
        if self.tenant_max_bytes < 2 * self.segment_max_bytes:
            raise ValueError("tenant_max_bytes must hold at least two segments")
        return self


OnNewTenant = Callable[[str, Spool], Awaitable[None]]


class TenantSpools:
    """Opens tenant spools on demand (and every existing one at start, to drain backlog)."""

    def __init__(
        self, settings: AggregatorSpoolSettings, *, stalls: DiskStalls | None = None
    ) -> None:
        self.settings = settings
        self._stalls = stalls
        self._root = Path(settings.directory) / "tenants"
        self._spools: dict[str, Spool] = {}
        self._opening: dict[str, asyncio.Future[Spool]] = {}
        self._on_new: list[OnNewTenant] = []
        self._closed = False

    def on_new_tenant(self, callback: OnNewTenant) -> None:
        """Call ``callback(tenant, spool)`` for every spool opened from now on."""
        self._on_new.append(callback)

    async def start(self) -> None:
        """Open the spool of every tenant that has one on disk."""
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for entry in sorted(os.listdir(self._root)):
            if _TENANT_DIR.match(entry) and (self._root / entry).is_dir():
                await self.get(entry)

    @property
    def spools(self) -> dict[str, Spool]:
        """Open spools by tenant (read-only view for metrics)."""
        return self._spools

    @property
    def bytes_used(self) -> int:
        """Bytes on disk across every tenant's spool."""
        return sum(spool.bytes_used for spool in self._spools.values())

    async def get(self, tenant: str) -> Spool:
        """The tenant's spool, opened (and announced to the outputs) on first use."""
        spool = self._spools.get(tenant)
        if spool is not None:
            return spool
        if self._closed:
            raise SpoolClosedError("tenant spools are closed")
        pending = self._opening.get(tenant)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Spool] = asyncio.get_running_loop().create_future()
        self._opening[tenant] = future
        try:
            spool = await Spool.open(
                self._root / tenant,
                max_bytes=self.settings.tenant_max_bytes,
                segment_max_bytes=self.settings.segment_max_bytes,
                stalls=self._stalls,
            )
            for callback in self._on_new:
                await callback(tenant, spool)
            self._spools[tenant] = spool
            future.set_result(spool)
            log.info("spool.opened", tenant=tenant, backlog_records=spool.records_pending)
            return spool
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            del self._opening[tenant]

    async def wait_for_space(self) -> None:
        """Return once the volume-wide budget has room (backpressure on ingest)."""
        if self.bytes_used < self.settings.max_bytes:
            return
        log.warning(
            "spool.volume_full", bytes_used=self.bytes_used, max_bytes=self.settings.max_bytes
        )
        # Space frees when an output's commit lets a spool delete a segment in the background;
        # a short poll keeps this independent of every tenant's internals.
        while self.bytes_used >= self.settings.max_bytes:
            if self._closed:
                raise SpoolClosedError("tenant spools are closed")
            await asyncio.sleep(_SPACE_POLL_S)

    async def close(self) -> None:
        """Close every spool (pending appends finish first). Safe to call twice."""
        self._closed = True
        spools, self._spools = list(self._spools.values()), {}
        await asyncio.gather(*(spool.close() for spool in spools))
