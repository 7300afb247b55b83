"""A real OpenSearch node stopped and started under the aggregator: nothing lost or doubled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from devtools.opensearch_node import OpenSearchNode
from tests.support.aggregator import MakeAggregator, input_port
from tests.support.forward_client import ForwardClient
from tests.support.net import free_port, wait_until
from tests.support.opensearch_client import StoreReader, wait_count
from tests.support.records import compressed_chunk, container_entries

pytestmark = pytest.mark.integration


async def test_opensearch_down_then_started_receives_everything_once(
    make_aggregator: MakeAggregator,
) -> None:
    port = free_port()
    agg = make_aggregator(f"http://127.0.0.1:{port}")
    await agg.start()
    node: Any = None
    try:
        # The store is not running at all: chunks are acked from the spool.
        entries = container_entries("restart-a", 3000)
        async with ForwardClient("127.0.0.1", input_port(agg)) as client:
            for n in range(3):
                await client.send(compressed_chunk(entries[n * 1000 : (n + 1) * 1000], f"a-{n}"))
            for n in range(3):
                await client.wait_ack(f"a-{n}")

            async def backlog() -> bool:
                return await agg.metric("logferry_spool_fragments", tenant="restart-a") > 0

            await wait_until(backlog, timeout_s=10, what="a backlog while the store is absent")
            node = OpenSearchNode(port, cluster_name="logferry-restart")
            await asyncio.to_thread(node.start, 180.0)
            store = StoreReader(node.url)
            await wait_count(store, "logs-restart-a-*", 3000, timeout_s=120)
            # Stop it again while more arrives, then start a fresh node on the same port.
            await asyncio.to_thread(node.stop)
            more = container_entries("restart-b", 2000)
            for n in range(2):
                await client.send(compressed_chunk(more[n * 1000 : (n + 1) * 1000], f"b-{n}"))
            for n in range(2):
                await client.wait_ack(f"b-{n}")
        node = OpenSearchNode(port, cluster_name="logferry-restart")
        await asyncio.to_thread(node.start, 180.0)
        store = StoreReader(node.url)
        await wait_count(store, "logs-restart-b-*", 2000, timeout_s=120)

        async def drained() -> bool:
            return await agg.metric("logferry_spool_fragments") == 0

        await wait_until(drained, timeout_s=60, what="every tenant spool to drain")
        assert await store.count("logs-restart-b-*") == 2000
        assert await agg.metric("logferry_dlq_records_total") == 0
        assert await agg.stop() == 0
    finally:
        if node is not None:
            await asyncio.to_thread(node.stop)
