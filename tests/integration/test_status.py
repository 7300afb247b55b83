"""``logferry status --once --json`` against a real two-worker aggregator and a port where
nothing answers: the tenants it stored, a zero backlog once drained, the dead one named."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from devtools.opensearch_node import OpenSearchNode
from tests.support.aggregator import MakeAggregator, input_port, unique_ns
from tests.support.forward_client import ForwardClient
from tests.support.net import free_port, wait_until
from tests.support.opensearch_client import StoreReader, wait_count
from tests.support.records import compressed_chunk, container_entries

pytestmark = pytest.mark.integration


def status(*urls: str) -> subprocess.CompletedProcess[str]:
    args = [f"--url={url}" for url in urls]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "logferry",
            "status",
            "--once",
            "--json",
            "--interval",
            "0.5",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_status_shows_the_tenants_a_drained_backlog_and_a_daemon_that_is_down(
    make_aggregator: MakeAggregator, opensearch: OpenSearchNode
) -> None:
    agg = make_aggregator(opensearch.url, workers=2)
    await agg.start()
    tenants = [unique_ns("status"), unique_ns("status")]
    for n, tenant in enumerate(tenants):
        async with ForwardClient("127.0.0.1", input_port(agg)) as client:
            await client.send(compressed_chunk(container_entries(tenant, 200), f"c{n}"))
            await client.wait_ack(f"c{n}")
    store = StoreReader(opensearch.url)
    for tenant in tenants:
        await wait_count(store, f"logs-{tenant}-*", 200)

    async def drained() -> bool:
        return await agg.metric("logferry_spool_fragments") == 0

    await wait_until(drained, timeout_s=60, what="the spools to drain")
    url = f"http://127.0.0.1:{agg.http_port}"
    down = f"http://127.0.0.1:{free_port()}"
    done = await asyncio.to_thread(status, url, down)
    assert done.returncode == 1, done.stderr  # one daemon did not answer
    view = json.loads(done.stdout)
    aggregator, missing = view["daemons"]
    assert (aggregator["url"], aggregator["kind"], aggregator["up"]) == (url, "aggregator", True)
    assert aggregator["figures"]["workers"] == 2
    assert aggregator["figures"]["backlog_chunks"] == 0
    assert aggregator["figures"]["spool_capacity_bytes"] > 0
    assert (missing["url"], missing["up"]) == (down, False)
    shown = {row["tenant"]: row for row in view["tenants"]}
    assert set(tenants) <= set(shown)
    assert all(shown[t]["backlog_chunks"] == 0 for t in tenants)
    # Alone, the live daemon: exit 0.
    assert (await asyncio.to_thread(status, url)).returncode == 0
    assert await agg.stop() == 0
