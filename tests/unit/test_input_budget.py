"""The input's in-flight budget: bytes between decoding a message and its fragments being
durable stay under one limit for every connection together, however many send at once, and
nothing is dropped to keep them there (reads wait: backpressure)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from logferry.aggregator.config import ForwardInputSettings
from logferry.aggregator.ingest import Ingest, Receipt, Rendered
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.server import ForwardServer
from logferry.aggregator.spools import AggregatorSpoolSettings, TenantSpools
from logferry.common.budget import ByteBudget
from logferry.common.naming import IndexNamer
from logferry.common.protocol import EventMessage
from logferry.common.units import MiB
from tests.support.forward_client import ForwardClient
from tests.support.records import compressed_chunk, container_entries

DEADLINE_S = 60.0


async def test_one_release_admits_one_piece_of_work_at_a_time() -> None:
    # An admitted waiter's size is known only once it has run: waking every waiter the room
    # fits at the moment of a release let each of them go past the limit.
    budget = ByteBudget(100)
    budget.take(150)  # over the limit: the next admits wait
    order: list[str] = []

    async def work(name: str, size: int) -> None:
        await budget.admit()
        order.append(name)
        budget.take(size)

    tasks = [asyncio.create_task(work(f"w{n}", 60)) for n in range(2)]
    heartbeat = asyncio.create_task(budget.admit())  # admitted, then takes nothing
    tasks += [heartbeat, *(asyncio.create_task(work(f"w{n}", 60)) for n in range(2, 4))]
    await asyncio.sleep(0)  # every waiter queued, in that order (one loop pass, not timing)
    budget.release(150)
    await asyncio.wait_for(asyncio.wait(tasks[:2]), DEADLINE_S)
    # w0 went in with the room; w1 was judged after w0 took its 60 (60 <= 100: room left);
    # w1's 60 made 120: nobody else until a release.
    assert order == ["w0", "w1"]
    assert budget.held == 120
    assert not heartbeat.done()
    budget.release(60)  # 60: room again, for one at a time
    await asyncio.wait_for(asyncio.wait(tasks[2:4]), DEADLINE_S)
    assert heartbeat.done()  # it took nothing, so the next one was admitted right after it
    assert order == ["w0", "w1", "w2"]
    assert budget.held == 120
    budget.release(60)
    await asyncio.wait_for(tasks[4], DEADLINE_S)
    assert order == ["w0", "w1", "w2", "w3"]
    assert budget.held == 120


@pytest.fixture
async def spools(tmp_path: Path) -> AsyncIterator[TenantSpools]:
    settings = AggregatorSpoolSettings(
        directory=tmp_path / "spool",
        max_bytes=512 * MiB,
        tenant_max_bytes=256 * MiB,
        segment_max_bytes=16 * MiB,
        compression="none",  # the largest fragments: the most bytes in flight per message
        divert_stuck_after_s=0,
    )
    spools = TenantSpools(settings)
    await spools.start()
    yield spools
    await spools.close()


async def test_many_connections_sending_at_once_stay_within_the_budget_and_all_are_acked(
    spools: TenantSpools,
) -> None:
    limit = 2 * MiB
    metrics = AggregatorMetrics()
    ingest = Ingest(
        spools,
        metrics,
        namer=IndexNamer("logs"),
        default_tenant="_default",
        instance="agg-test",
        inflight_max_bytes=limit,
    )
    held: list[int] = []
    render = ingest.render

    def counted(message: EventMessage, receipt: Receipt) -> Rendered:
        done = render(message, receipt)
        held.append(done.size)
        return done

    ingest.render = counted  # type: ignore[method-assign]
    settings = ForwardInputSettings(
        listen_host="127.0.0.1", listen_port=0, allow_unauthenticated=True
    )
    server = ForwardServer(settings, ingest, metrics)
    await server.start()
    senders, chunks_each, records = 32, 4, 400
    plans = [
        [
            (
                compressed_chunk(
                    container_entries(f"ns-{s % 4}", records, pod=f"p{s}", start_seq=c * records),
                    f"s{s}-c{c}",
                ),
                f"s{s}-c{c}",
            )
            for c in range(chunks_each)
        ]
        for s in range(senders)
    ]

    async def send(plan: list[tuple[bytes, str]]) -> None:
        async with ForwardClient("127.0.0.1", server.port) as client:
            for payload, _chunk in plan:  # the whole window at once: reads of many messages
                await client.send(payload)
            for _payload, chunk in plan:
                await client.wait_ack(chunk, timeout_s=DEADLINE_S)

    try:
        await asyncio.wait_for(asyncio.gather(*(send(plan) for plan in plans)), DEADLINE_S)
    finally:
        await server.stop_accepting()
        await server.drain(5.0)
    assert len(held) == senders * chunks_each  # every message rendered, stored and acked
    assert sum(held) > 8 * limit, "the senders must ask for far more than the budget"
    # At most one message past the limit, whatever the number of connections.
    assert ingest.inflight_peak_bytes <= limit + max(held)
    assert ingest.inflight_bytes == 0
    stored = sum(spool.records_pending for spool in spools.spools.values())
    assert stored == sum(chunks_each for _ in range(senders))  # one fragment per message
