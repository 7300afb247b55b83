"""The sender against real aggregator subprocesses, a real spool and real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from logferry.common import protocol
from logferry.common.spool import Spool
from logferry.forwarder.entries import make_block
from logferry.forwarder.sender import Sender
from tests.support.aggregator import MakeAggregator, input_address
from tests.support.blackhole import BlackHole
from tests.support.net import free_port, wait_until
from tests.support.records import container_entries
from tests.support.sender import drained, open_spool, running, settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    opened = await open_spool(tmp_path / "forwarder-spool")
    yield opened
    await opened.close()


async def fill(spool: Spool, namespace: str, count: int) -> int:
    """``count`` records in spool blocks of 10, 20, 30 and 40 entries in turn (any 100 in a
    row fill one chunk of ``batch_max_records=100`` exactly), as the forwarder writes them;
    returns the number of blocks."""
    entries = container_entries(namespace, count)
    blocks = []
    start = 0
    while start < count:
        group = entries[start : start + 10 * (1 + len(blocks) % 4)]
        blocks.append(make_block(protocol.pack_entries(group), len(group)))
        start += len(group)
    for i in range(0, len(blocks), 100):
        await spool.append(blocks[i : i + 100])
    return len(blocks)


async def test_everything_in_the_spool_arrives_and_is_committed(
    make_aggregator: MakeAggregator, spool: Spool
) -> None:
    agg = make_aggregator(None)
    await agg.start()
    await fill(spool, "tenant-a", 5000)
    sender = Sender(settings([input_address(agg)]), spool, node_name="node-1")
    async with running(sender):
        await drained(spool, timeout_s=60)
    assert await agg.metric("logferry_records_in_total") == 5000
    assert await agg.metric("logferry_acks_total") == 50
    assert sender.stats.records_acked == 5000
    assert sender.stats.acked[input_address(agg)] == 50
    assert sender.stats.retried.total() == 0
    assert sender.chunks_in_hand == 0


async def test_killed_aggregator_mid_stream_everything_is_acked_through_the_other(
    make_aggregator: MakeAggregator, spool: Spool
) -> None:
    first, second = make_aggregator(None, "agg-1"), make_aggregator(None, "agg-2")
    await asyncio.gather(first.start(), second.start())
    total = 30_000
    await fill(spool, "tenant-k", total)
    sender = Sender(
        settings([input_address(first), input_address(second)], batch_max_records=50),
        spool,
        node_name="node-1",
    )
    async with running(sender):

        async def first_is_busy() -> bool:
            return sender.stats.acked[input_address(first)] >= 5

        await wait_until(first_is_busy, timeout_s=60, what="acks from the first aggregator")
        first.kill()
        await drained(spool, timeout_s=120)
    assert spool.records_pending == 0
    assert sender.stats.records_acked == total
    via_first = sender.stats.records_acked_by[input_address(first)]
    assert via_first < total
    # Each chunk is acked once; the survivor holds everything the dead one did not ack.
    assert await second.metric("logferry_records_in_total") >= total - via_first


async def test_blackhole_endpoint_does_not_stall_delivery(
    make_aggregator: MakeAggregator, spool: Spool
) -> None:
    agg = make_aggregator(None)
    await agg.start()
    await fill(spool, "tenant-b", 5000)
    async with BlackHole() as hole:
        blackhole = hole.address
        sender = Sender(
            settings([blackhole, input_address(agg)], ack_timeout_s=0.5, backoff_initial_s=0.2),
            spool,
            node_name="node-1",
        )
        async with running(sender):
            await drained(spool, timeout_s=60)
    assert hole.bytes_read > 0  # chunks did go there and time out
    assert sender.stats.acked[blackhole] == 0
    assert sender.stats.retried[blackhole] >= 1
    assert sender.stats.records_acked == 5000
    assert await agg.metric("logferry_records_in_total") >= 5000


async def test_shared_key_handshake_delivers_and_a_wrong_key_delivers_nothing(
    make_aggregator: MakeAggregator, tmp_path: Path
) -> None:
    agg = make_aggregator(None, input={"shared_key": "s3cret"})
    await agg.start()
    spool = await open_spool(tmp_path / "spool-h")
    try:
        blocks = await fill(spool, "tenant-h", 1000)
        wrong = Sender(
            settings([input_address(agg)], shared_key="wrong"), spool, node_name="node-1"
        )
        async with running(wrong):

            async def refused() -> bool:
                return wrong.stats.retried[input_address(agg)] >= 2

            await wait_until(refused, timeout_s=30, what="the wrong key to be refused twice")
        assert wrong.stats.acked.total() == 0
        assert spool.records_pending == blocks
    finally:
        await spool.close()

    # A restart: the batches the refused sender held were never committed, so they are read again.
    spool = await open_spool(tmp_path / "spool-h")
    try:
        assert spool.records_pending == blocks
        right = Sender(
            settings([input_address(agg)], shared_key="s3cret"), spool, node_name="node-1"
        )
        async with running(right):
            await drained(spool, timeout_s=60)
        assert await agg.metric("logferry_records_in_total") >= 1000
        assert right.stats.records_acked == 1000
    finally:
        await spool.close()


async def test_stop_with_every_endpoint_down_returns_by_the_deadline_and_keeps_the_spool(
    spool: Spool,
) -> None:
    blocks = await fill(spool, "tenant-d", 500)
    sender = Sender(
        settings([f"127.0.0.1:{free_port()}"], shutdown_deadline_s=0.5), spool, node_name="node-1"
    )
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))

    async def failing() -> bool:
        return sender.stats.retried.total() >= 3

    await wait_until(failing, timeout_s=30, what="connection failures")
    assert sender.chunks_in_hand <= sender.settings.max_chunks_in_hand
    stop.set()
    await asyncio.wait_for(task, 10)
    assert spool.records_pending == blocks
    assert sender.stats.acked.total() == 0
