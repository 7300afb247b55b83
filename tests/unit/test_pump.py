"""The output pump: idle tenants never hold the shared slots the busy ones need."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from logferry.aggregator.outputs.pump import pump
from logferry.common.spool import Spool, SpoolBatch
from tests.support.net import wait_until

TENANTS = 6
SLOTS = 2


@pytest.fixture
async def spools(tmp_path: Path) -> AsyncIterator[list[Spool]]:
    opened = [
        await Spool.open(
            tmp_path / f"t{i}",
            max_bytes=4 * 1024 * 1024,
            segment_max_bytes=1024 * 1024,
            commit_flush_interval_s=0.05,
        )
        for i in range(TENANTS)
    ]
    yield opened
    for spool in opened:
        await spool.close()


async def test_idle_tenants_do_not_starve_busy_ones_of_shared_slots(spools: list[Spool]) -> None:
    delivered: dict[int, list[bytes]] = {i: [] for i in range(TENANTS)}
    slots = asyncio.Semaphore(SLOTS)
    stop = asyncio.Event()

    def handler(tenant: int, spool: Spool):  # type: ignore[no-untyped-def]
        async def handle(batch: SpoolBatch) -> None:
            delivered[tenant].extend(batch.records)
            spool.commit(batch)

        return handle

    pumps = [
        asyncio.create_task(
            pump(
                f"t{i}",
                spool,
                stop,
                5.0,
                max_records=100,
                max_bytes=1 << 20,
                concurrency=2,
                handle=handler(i, spool),
                slots=slots,
            )
        )
        for i, spool in enumerate(spools)
    ]
    try:
        # More tenants than slots deliver once and go idle ...
        for i in range(TENANTS):
            await spools[i].append([f"first {i}".encode()])

        async def first_round() -> bool:
            return all(delivered[i] for i in range(TENANTS))

        await wait_until(first_round, timeout_s=10, what="the first records of every tenant")
        # ... then each tenant in turn gets one more record, while the others stay idle (in
        # the reverse order: the old pump rotated its slots in the order of the first round).
        for i in reversed(range(TENANTS)):
            await spools[i].append([f"second {i}".encode()])

            async def arrived(i: int = i) -> bool:
                return delivered[i] == [f"first {i}".encode(), f"second {i}".encode()]

            await wait_until(arrived, timeout_s=5, what=f"tenant {i}'s second record")
        assert slots._value == SLOTS  # every idle pump gave its slot back
    finally:
        stop.set()
        await asyncio.gather(*pumps)
