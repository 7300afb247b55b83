"""The aggregator writing into a real 3-node OpenSearch cluster (one replica) while the cluster
changes under it: the node holding the primary is stopped in the middle of the bulk stream
and started again, or the primary is moved to another node. The bulk output is given every
node's URL and hands over between them; ``verify`` then finds every record once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from devtools.opensearch_node import OpenSearchCluster
from logferry.common.naming import IndexNamer
from logferry.common.store_access import StoreAccess
from logferry.store.client import StoreClient, open_store
from logferry.tools.verify import VerifyOptions, verify
from tests.support.aggregator import MakeAggregator, input_port, unique_ns
from tests.support.daemon import DaemonProcess
from tests.support.forward_client import ForwardClient
from tests.support.net import wait_until
from tests.support.records import Entry, compressed_chunk, container_entries

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

CHUNKS = 40
PER_CHUNK = 250
RECORDS = CHUNKS * PER_CHUNK
BEFORE_DISRUPTION = 8  # chunks; the other 32 are sent while the cluster changes


async def count(client: StoreClient, pattern: str) -> int:
    await client.call("POST", f"/{pattern}/_refresh?ignore_unavailable=true", accept=(404,))
    # 503: an index just made whose shards are not started yet (none found so far).
    status, found = await client.call("GET", f"/{pattern}/_count", accept=(404, 503))
    return 0 if status in (404, 503) else int(found["count"])


async def placement(client: StoreClient, index: str) -> dict[str, str]:
    """{"p": node name, "r": node name} of a one-shard index's started copies."""
    rows = await client.request("GET", f"/_cat/shards/{index}?format=json&h=prirep,node,state")
    return {row["prirep"]: row["node"] for row in rows if row["state"] == "STARTED"}


async def stream(
    agg: DaemonProcess, entries: list[Entry], sent: list[int], go_on: asyncio.Event
) -> None:
    """Send ``entries`` in acked chunks, counting the acked ones; after the first
    ``BEFORE_DISRUPTION`` chunks, only once ``go_on`` is set (the disruption is starting)."""
    async with ForwardClient("127.0.0.1", input_port(agg)) as forward:
        for n in range(CHUNKS):
            if n == BEFORE_DISRUPTION:
                await go_on.wait()
            await forward.send(
                compressed_chunk(entries[n * PER_CHUNK : (n + 1) * PER_CHUNK], f"c-{n}")
            )
            await forward.wait_ack(f"c-{n}")
            sent.append(n)


async def restart_primary_node(cluster: OpenSearchCluster, client: StoreClient, index: str) -> str:
    down = cluster.index_of((await placement(client, index))["p"])
    await asyncio.to_thread(cluster.stop_node, down)
    await asyncio.to_thread(cluster.start_node, down)
    return cluster.names[down]


async def move_primary(cluster: OpenSearchCluster, client: StoreClient, index: str) -> str:
    placed = await placement(client, index)
    target = next(name for name in cluster.names if name not in placed.values())
    command = {"move": {"index": index, "shard": 0, "from_node": placed["p"], "to_node": target}}
    await client.request("POST", "/_cluster/reroute", {"commands": [command]})

    async def moved() -> bool:
        return (await placement(client, index)).get("p") == target

    await wait_until(moved, timeout_s=120, what=f"the primary of {index} to move to {target}")
    return target


Disruption = Callable[[OpenSearchCluster, StoreClient, str], Awaitable[str]]


@pytest.mark.parametrize("disrupt", [restart_primary_node, move_primary])
async def test_cluster_changes_mid_stream_lose_nothing_and_double_nothing(
    make_aggregator: MakeAggregator, opensearch_cluster: OpenSearchCluster, disrupt: Disruption
) -> None:
    cluster = opensearch_cluster
    ns = unique_ns("cl")
    agg = make_aggregator(
        cluster.urls[0],
        output={"urls": cluster.urls, "batch_max_records": 100},
        indices={"replicas": 1},
    )
    await agg.start()
    entries = container_entries(ns, RECORDS)
    index = IndexNamer("logs").index(ns, entries[0][0].seconds)
    access = StoreAccess(urls=cluster.urls)
    sent: list[int] = []
    try:
        async with open_store(access) as client:
            go_on = asyncio.Event()
            sender = asyncio.create_task(stream(agg, entries, sent, go_on))

            async def started() -> bool:
                return len(sent) == BEFORE_DISRUPTION and await count(client, index) > 0

            await wait_until(started, timeout_s=60, what="the first records in the cluster")
            await asyncio.to_thread(cluster.wait_status, "green")
            go_on.set()
            await disrupt(cluster, client, index)
            await sender
            await asyncio.to_thread(cluster.wait_status, "green")

            async def delivered() -> bool:
                return await agg.metric("logferry_spool_fragments", tenant=ns) == 0

            await wait_until(delivered, timeout_s=180, what="the tenant's spool to drain")
            assert await count(client, f"logs-{ns}-*") == RECORDS
        report = await verify(VerifyOptions(store=access, index=f"logs-{ns}-*"))
        assert (report.totals.found, report.totals.documents) == (RECORDS, RECORDS)
        assert (report.totals.missing, report.totals.duplicates) == (0, 0)
        assert report.ok
        assert await agg.metric("logferry_dlq_records_total") == 0
        assert await agg.stop() == 0
    finally:
        async with open_store(access) as client:
            await client.call("DELETE", f"/logs-{ns}-*", accept=(404,))
