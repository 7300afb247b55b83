"""Fluent Bit's default wire format against a real aggregator and a real OpenSearch node.

The messages are assembled byte by byte as Fluent Bit 2.1+ writes them (see
tests/support/fluentbit_wire.py): ``[[time, metadata], record]`` entries, Forward mode without
compression, CompressedPackedForward with gzip, options in a 32-bit map header with
``fluent_signal``, and metrics payloads that are not log entries.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any

import msgpack
import pytest

from logferry.aggregator.dlq import DeadLetterQueue
from logferry.aggregator.dlq_cli import dlq_main
from logferry.common.protocol.types import METADATA_FIELD
from tests.support import fluentbit_wire as wire
from tests.support.aggregator import MakeAggregator, input_port, unique_ns
from tests.support.forward_client import ForwardClient
from tests.support.net import wait_until
from tests.support.opensearch_client import StoreReader, wait_count

pytestmark = pytest.mark.integration
T0 = (int(time.time()) // 3600 - 1) * 3600  # an hour ago, on the hour: inside the time window


def tail_record(ns: str, i: int) -> dict[str, Any]:
    """What Fluent Bit's tail input + docker parser + kubernetes filter make of a line."""
    return {
        "log": f"2026-11-29T19:00:{i % 60:02d}Z INFO request {i} served\n",
        "stream": "stdout" if i % 3 else "stderr",
        "kubernetes": {
            "pod_name": "web-0",
            "namespace_name": ns,
            "container_name": "web",
            "host": "node-7",
            "labels": {"app": "web"},
        },
    }


async def test_fluent_bit_default_shapes_are_acked_and_stored_in_full(
    opensearch: Any, make_aggregator: MakeAggregator
) -> None:
    agg = make_aggregator(opensearch.url)
    await agg.start()
    ns = unique_ns("fb")
    batches: list[list[bytes]] = []
    for b in range(6):
        batch = []
        for i in range(b * 100, (b + 1) * 100):
            metadata = {"otel": {"trace_id": f"t{i}"}} if i % 10 == 0 else None
            batch.append(wire.entry(T0 + i, i, tail_record(ns, i), metadata))
        if b % 2:  # a few plain [time, record] entries mixed in
            batch[5] = wire.legacy_entry(T0 + b * 100 + 5, 5, tail_record(ns, b * 100 + 5))
        batches.append(batch)
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        chunks = []
        for b, batch in enumerate(batches):
            if b == 0:
                await client.send(wire.forward_message("kube.var.log", batch, ack=False))
                continue
            if b % 2:
                data = wire.compressed_message("kube.var.log", batch, members=b)
            else:
                data = wire.forward_message("kube.var.log", batch, ack=True)
            chunks.append(wire.chunk_id(b"".join(batch)))
            await client.send(data)
        for chunk in chunks:
            await client.wait_ack(chunk)
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{ns}-*", 600)
    hits = await store.search(f"logs-{ns}-*")
    assert len(hits) == 600
    logs = sorted(hit["_source"]["log"] for hit in hits)
    assert logs == sorted(tail_record(ns, i)["log"] for i in range(600))
    with_metadata = [h["_source"] for h in hits if METADATA_FIELD in h["_source"]]
    assert len(with_metadata) == 60
    assert all(s[METADATA_FIELD]["otel"]["trace_id"].startswith("t") for s in with_metadata)
    first = next(h["_source"] for h in hits if h["_source"]["log"] == tail_record(ns, 1)["log"])
    assert first["@timestamp"] == time.strftime("%Y-%m-%dT%H:%M:01.000000001Z", time.gmtime(T0))
    assert first["kubernetes"]["labels"] == {"app": "web"}
    assert await agg.metric("logferry_protocol_errors_total") == 0
    assert await agg.stop() == 0


async def test_a_metrics_signal_is_acked_and_parked_and_the_connection_goes_on(
    opensearch: Any, make_aggregator: MakeAggregator
) -> None:
    agg = make_aggregator(opensearch.url)
    await agg.start()
    ns = unique_ns("sig")
    cmetrics = msgpack.packb({"meta": {"cmetrics": {}}, "metrics": [{"name": "cpu"}]})
    metrics_message = wire.signal_message("fb.metrics", cmetrics, wire.SIGNAL_METRICS, gzipped=True)
    logs = [wire.entry(T0 + i, 0, tail_record(ns, i)) for i in range(10)]
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        await client.send(metrics_message)
        await client.wait_ack(wire.chunk_id(cmetrics))
        await client.send(wire.compressed_message("kube.var.log", logs))
        await client.wait_ack(wire.chunk_id(b"".join(logs)))  # same connection, still open
    await wait_count(StoreReader(opensearch.url), f"logs-{ns}-*", 10)
    assert await agg.metric("logferry_records_unsupported_total", signal="metrics") == 1
    assert await agg.metric("logferry_protocol_errors_total") == 0
    entries = DeadLetterQueue(agg.config["dlq"]["directory"]).scan().entries
    (parked,) = [e for e in entries if e.reason.startswith("unsupported_signal")]
    source = json.loads(parked.source)
    assert (source["signal"], source["fluent_signal"], source["compressed"]) == (
        "metrics",
        1,
        "gzip",
    )
    assert parked.index == ""
    # Nothing to replay it into: replay leaves it in the queue and says why.
    out = io.StringIO()
    argv = ["replay", "--dlq-dir", agg.config["dlq"]["directory"], "--url", opensearch.url]
    assert await asyncio.to_thread(dlq_main, argv, out) == 0
    assert "1 entries have no index to replay into" in out.getvalue()
    assert len(DeadLetterQueue(agg.config["dlq"]["directory"]).scan().entries) == 1
    assert agg.events("input.unsupported_signal")
    assert await agg.stop() == 0


async def test_a_refused_dialect_is_logged_with_mode_and_shape_and_counted(
    make_aggregator: MakeAggregator,
) -> None:
    agg = make_aggregator(None)
    await agg.start()
    secret = "token=s3cr3t"
    bad_entry = (
        b"\x92\x92\xd7\x00" + bytes(8) + msgpack.packb([1, 2]) + msgpack.packb({"log": secret})
    )
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        await client.send(wire.compressed_message("kube.var.log", [bad_entry]))
        assert await client.read_eof()

    async def counted() -> bool:
        return await agg.metric("logferry_protocol_errors_total", reason="bad_entry") == 1

    await wait_until(counted, timeout_s=10, what="the refusal to be counted")
    (event,) = agg.events("input.protocol_error")
    assert event["level"] == "warning"
    assert event["mode"] == "CompressedPackedForward"
    assert event["shape"] == "array[array[EventTime, array[int, int]], map]"
    assert secret not in json.dumps(event)
    assert await agg.stop() == 0
