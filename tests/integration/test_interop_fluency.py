"""Fluency, a real third-party Java Forward client, sends to a real aggregator and OpenSearch.

Fluency 2.7 speaks PackedForward only (it has no compression setting): the entries go as one
msgpack str blob, `option.size` holds the blob's byte length (not an entry count), and in ack
mode `option.chunk` is a UUID string that Fluency expects echoed back as a str.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.aggregator import MakeAggregator, input_port, unique_ns
from tests.support.daemon import DaemonProcess
from tests.support.fluency_peer import run_fluency, tail
from tests.support.net import wait_until
from tests.support.opensearch_client import StoreReader, wait_count

pytestmark = pytest.mark.integration
RECORDS = 2000


async def send_with_fluency(agg: DaemonProcess, namespace: str, *, ack: bool) -> None:
    """Run Fluency against `agg` and require a clean exit, showing both sides if not."""
    result = await asyncio.to_thread(
        run_fluency, "127.0.0.1", input_port(agg), RECORDS, namespace=namespace, ack=ack
    )
    assert result.returncode == 0, (
        f"Fluency exited {result.returncode}\n--- Fluency stdout/stderr ---\n"
        f"{tail(result.stdout + result.stderr)}\n--- aggregator log ---\n{agg.tail()}"
    )


async def assert_all_stored_once(store: StoreReader, namespace: str) -> None:
    """Exactly RECORDS documents under the tenant's indices, each `seq` once, fields intact."""
    pattern = f"logs-{namespace}-*"
    await wait_count(store, pattern, RECORDS, timeout_s=60)
    hits = await store.search(pattern)
    assert len(hits) == RECORDS
    assert sorted(h["_source"]["seq"] for h in hits) == list(range(RECORDS))
    first = next(h["_source"] for h in hits if h["_source"]["seq"] == 7)
    assert first["log"] == "GET /items/7 200 xxxxxxx caf\u00e9 \u2713"
    assert first["stream"] == "stdout"
    assert first["kubernetes"] == {
        "namespace_name": namespace,
        "pod_name": "fluency-0",
        "container_name": "app",
        "host": "java-peer",
    }
    assert "@timestamp" in first  # from Fluency's EventTime (msgpack ext type 0)


async def test_fluency_ack_mode_records_are_acked_and_stored_once(
    opensearch: Any, make_aggregator: MakeAggregator
) -> None:
    agg = make_aggregator(opensearch.url)
    await agg.start()
    ns = unique_ns("fluency-ack")
    await send_with_fluency(agg, ns, ack=True)
    # Fluency exits 0 in ack mode only once every chunk was acked, and the aggregator acks
    # only after the records are in its spool: all of them were received before the exit.
    assert await agg.metric("logferry_records_in_total", tenant=ns) == RECORDS

    async def acked() -> bool:
        # FluencySend's 64 KiB buffer chunks make several messages, each acked on its own.
        return await agg.metric("logferry_acks_total") >= 2

    await wait_until(acked, timeout_s=10, what="the aggregator to count its acks")
    await assert_all_stored_once(StoreReader(opensearch.url), ns)
    assert await agg.metric("logferry_protocol_errors_total") == 0
    assert await agg.metric("logferry_handshake_failures_total") == 0
    assert await agg.stop() == 0


async def test_fluency_without_acks_is_stored_once_and_never_acked(
    opensearch: Any, make_aggregator: MakeAggregator
) -> None:
    agg = make_aggregator(opensearch.url)
    await agg.start()
    ns = unique_ns("fluency-noack")
    await send_with_fluency(agg, ns, ack=False)
    await assert_all_stored_once(StoreReader(opensearch.url), ns)
    assert await agg.metric("logferry_records_in_total", tenant=ns) == RECORDS
    assert await agg.metric("logferry_acks_total") == 0
    assert await agg.metric("logferry_protocol_errors_total") == 0
    assert await agg.stop() == 0
