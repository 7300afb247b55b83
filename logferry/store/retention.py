"""Retention: which of logferry's indices are past their tenant's retention, and deleting them.

Only indices whose names logferry builds (``<prefix>-<tenant>[.<suffix>]-<date>``, read back
by :meth:`~logferry.common.naming.IndexNamer.parse`) are ever considered; an index is past
retention when the period it covers ended more than the tenant's ``retention_days`` ago. A
tenant kept for ever (0 days) is never touched. Several aggregators run the janitor; a lease
in the store (:mod:`.lease`) lets one of them delete at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from prometheus_client import Counter

from logferry.common.backoff import backoff_delay
from logferry.common.events import first_set
from logferry.common.logs import get_logger
from logferry.common.naming import IndexName, IndexNamer
from logferry.store.client import StoreClient, StoreError
from logferry.store.lease import Lease
from logferry.store.settings import IndexSettings

log = get_logger(__name__)

__all__ = ["Expired", "Janitor", "delete_expired", "expired_indices", "list_indices"]

_DAY_S = 86400


@dataclass(frozen=True, slots=True)
class Expired:
    """An index past retention."""

    index: str
    name: IndexName
    retention_days: int
    expired_s: float
    """How long ago it passed retention."""


def expired_indices(
    indices: Iterable[str], namer: IndexNamer, settings: IndexSettings, now_s: float
) -> list[Expired]:
    """The indices among ``indices`` that are logferry's and past retention, oldest first."""
    found: list[Expired] = []
    for index in indices:
        name = namer.parse(index)
        if name is None:
            continue
        days = settings.retention_of(name.tenant)
        if days == 0:
            continue
        past = now_s - (name.end_s + days * _DAY_S)
        if past > 0:
            found.append(Expired(index, name, days, past))
    return sorted(found, key=lambda e: (e.name.end_s, e.index))


async def list_indices(client: StoreClient, prefix: str) -> list[str]:
    """Names of the indices matching ``<prefix>-*`` (closed ones included)."""
    path = f"/_cat/indices/{quote(prefix)}-*?format=json&h=index&expand_wildcards=all"
    rows = await client.request("GET", path, accept=(404,))
    return [str(row["index"]) for row in rows or [] if isinstance(row, dict) and "index" in row]


async def delete_expired(
    client: StoreClient,
    expired: Iterable[Expired],
    on_deleted: Callable[[Expired], None] = lambda _: None,
) -> list[str]:
    """Delete each index (one request each: an exact name, never a wildcard); the names
    deleted. One that is already gone counts as deleted."""
    deleted: list[str] = []
    for item in expired:
        status, _ = await client.call("DELETE", f"/{quote(item.index)}", accept=(404,))
        log.warning(
            "store.index_deleted",
            index=item.index,
            tenant=item.name.tenant,
            retention_days=item.retention_days,
            already_gone=status == 404,
        )
        on_deleted(item)
        deleted.append(item.index)
    return deleted


class Janitor:
    """Runs retention every ``settings.janitor.interval_s`` while holding the store lease."""

    def __init__(
        self,
        client: StoreClient,
        namer: IndexNamer,
        settings: IndexSettings,
        holder: str,
        deleted: Counter,
        runs: Counter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._namer = namer
        self._settings = settings
        self._lease = Lease(client, f"janitor-{namer.prefix}", holder, settings.janitor.lease_s)
        self._deleted = deleted
        self._runs = runs
        self._clock = clock

    async def run_once(self) -> str:
        """One round; its outcome: ``deleted``, ``nothing``, ``not_holder`` (another
        aggregator holds the lease). Raises StoreError."""
        if not await self._lease.acquire():
            return "not_holder"
        try:
            names = await list_indices(self._client, self._namer.prefix)
            expired = expired_indices(names, self._namer, self._settings, self._clock())
            deleted = await delete_expired(self._client, expired, self._count)
        finally:
            await self._lease.release()
        return "deleted" if deleted else "nothing"

    def _count(self, item: Expired) -> None:
        self._deleted.labels(tenant=item.name.tenant).inc()

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until ``stop``; a failing round is logged, counted and tried again sooner."""
        failures = 0
        interval = self._settings.janitor.interval_s
        while not stop.is_set():
            try:
                outcome = await self.run_once()
                failures = 0
            except StoreError as exc:
                outcome = "error"
                failures += 1
                log.warning("store.janitor_failed", error=str(exc), failures=failures)
            self._runs.labels(outcome=outcome).inc()
            wait = interval if not failures else min(interval, backoff_delay(failures, 5.0, 300.0))
            await first_set((stop,), wait)


def describe(expired: Iterable[Expired]) -> list[dict[str, Any]]:
    """Rows for ``logferry store retention`` output."""
    return [
        {
            "index": e.index,
            "tenant": e.name.tenant,
            "retention_days": e.retention_days,
            "past_retention_days": round(e.expired_s / _DAY_S, 1),
        }
        for e in expired
    ]
