"""A tenant whose pipelines use more CPU than its allowance is bypassed, not the others."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import attacks
from tests.support.aggregator import input_port
from tests.support.daemon import DaemonProcess
from tests.support.forward_client import ForwardClient
from tests.support.log_pipelines import log_pipeline
from tests.support.net import wait_until
from tests.support.opensearch_client import StoreReader
from tests.support.records import compressed_chunk, container_entries

pytestmark = pytest.mark.integration


@pytest.fixture
async def aggregator(opensearch: Any, tmp_path: Path) -> AsyncIterator[DaemonProcess]:
    directory = tmp_path / "pipelines"
    directory.mkdir()
    # Greedy: many regexes over long lines. Modest: one cheap field.
    greedy = [{"type": "grep", "regex": f"token{n}[a-z]+x", "mode": "exclude"} for n in range(30)]
    (directory / "greedy.yaml").write_text(
        yaml.safe_dump(log_pipeline("p", greedy, namespace="greedy"))
    )
    modest = [{"type": "add", "fields": {"checked": "yes"}}]
    (directory / "modest.yaml").write_text(
        yaml.safe_dump(log_pipeline("p", modest, namespace="modest"))
    )
    config = attacks.aggregator_config(tmp_path / "agg", opensearch.url)
    # One process: the allowance keeps a tenant from stalling the others of its worker's
    # event loop, so each worker enforces it on what reaches it.
    config["workers"] = 1
    config["pipelines"] = {
        "directory": str(directory),
        "status_file": str(tmp_path / "status.json"),
        "cpu_allowance_s_per_s": 0.02,
        "cpu_burst_s": 0.05,
        "account_discarded": False,
    }
    daemon = DaemonProcess("aggregator", tmp_path / "agg", config)
    await daemon.start()
    yield daemon
    daemon.ensure_dead()


async def send(port: int, namespace: str, count: int, start: int, chunk: str, width: int) -> None:
    entries = container_entries(namespace, count, start_seq=start, src=namespace)
    for _time, record in entries:
        record["log"] = record["log"] + " words " * width
    async with ForwardClient("127.0.0.1", port, shared_key=attacks.SHARED_KEY) as client:
        await client.send(compressed_chunk(entries, chunk))
        await client.wait_ack(chunk, timeout_s=60)


async def test_a_tenant_over_its_cpu_allowance_is_bypassed_and_the_others_are_not(
    aggregator: DaemonProcess, opensearch: Any
) -> None:
    port = input_port(aggregator)
    status_file = Path(aggregator.config["pipelines"]["status_file"])
    for n in range(6):
        await send(port, "greedy", 500, n * 500, f"greedy-{n}", width=400)
    await send(port, "modest", 100, 0, "modest-0", width=1)

    async def bypassed() -> bool:
        return await aggregator.metric("logferry_pipeline_bypassed", tenant="greedy") == 1

    await wait_until(bypassed, timeout_s=30, what="the greedy tenant to be bypassed")
    assert await aggregator.metric("logferry_pipeline_bypassed_records_total", tenant="greedy") > 0
    assert await aggregator.metric("logferry_pipeline_bypassed", tenant="modest") == 0
    status = json.loads(await asyncio.to_thread(status_file.read_text))
    assert status["bypassed_tenants"] == ["greedy"]
    store = StoreReader(opensearch.url)

    async def all_stored() -> bool:
        greedy = await store.count("logs-greedy-*")
        return greedy == 3000 and await store.count("logs-modest-*") == 100

    await wait_until(all_stored, timeout_s=60, what="every record, filtered or not")
    modest = [h["_source"] for h in await store.search("logs-modest-*")]
    assert all(doc["checked"] == "yes" for doc in modest)  # the modest tenant still filtered
    assert aggregator.events("pipeline.bypassed")

    # Back under: after a quiet moment its allowance refills and its pipelines run again.
    async def recovered() -> bool:
        await send(port, "greedy", 1, 10_000, f"greedy-late-{asyncio.get_running_loop().time()}", 1)
        return await aggregator.metric("logferry_pipeline_bypassed", tenant="greedy") == 0

    await wait_until(
        recovered, timeout_s=30, what="the greedy tenant's allowance to refill", poll_s=1
    )
