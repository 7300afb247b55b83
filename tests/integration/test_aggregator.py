"""The aggregator daemon as a real subprocess, fed by real clients, writing to real OpenSearch."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fluent import sender

from logferry.common import protocol
from logferry.common.errors import HandshakeError
from tests.support.aggregator import MakeAggregator, input_port, unique_ns
from tests.support.forward_client import ForwardClient
from tests.support.net import wait_until
from tests.support.opensearch_client import StoreReader, wait_count
from tests.support.records import compressed_chunk, container_entries
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


async def run_cli(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``logferry ARGS`` in a subprocess, without blocking the event loop."""
    kwargs.setdefault("check", False)
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "logferry", *args],
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


async def test_fluent_logger_records_land_with_index_id_and_fields(
    opensearch: Any, make_aggregator: MakeAggregator
) -> None:
    agg = make_aggregator(opensearch.url)
    await agg.start()
    ns = unique_ns("fl")
    logger = sender.FluentSender(
        "app", host="127.0.0.1", port=input_port(agg), nanosecond_precision=True
    )
    # Today's midnight UTC, 25 s either side: within the accepted time window, two indices.
    midnight = int(time.time()) // 86400 * 86400
    day_before = time.strftime("%Y.%m.%d", time.gmtime(midnight - 1))
    day = time.strftime("%Y.%m.%d", time.gmtime(midnight))
    try:
        for i in range(50):
            ok = await asyncio.to_thread(
                logger.emit_with_time,
                "web",
                midnight - 25 + 0.123456789 + i,
                {"log": f"hello {i}", "kubernetes": {"namespace_name": ns, "pod_name": "p"}},
            )
            assert ok, logger.last_error
    finally:
        logger.close()
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{ns}-*", 50)
    hits = await store.search(f"logs-{ns}-*")
    assert len(hits) == 50
    assert {h["_index"] for h in hits} == {f"logs-{ns}-{day_before}", f"logs-{ns}-{day}"}
    assert sorted(h["_source"]["log"] for h in hits) == sorted(f"hello {i}" for i in range(50))
    first = next(h for h in hits if h["_source"]["log"] == "hello 0")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(midnight - 25))
    assert first["_source"]["@timestamp"].startswith(f"{stamp}.1234")
    assert sum(h["_index"].endswith(day_before) for h in hits) == 25
    assert first["_source"]["kubernetes"] == {"namespace_name": ns, "pod_name": "p"}
    assert first["_id"].startswith("h")  # derived: fluent-logger sends no _lf.id
    assert await agg.stop() == 0


async def test_own_client_chunks_are_acked_and_stored_under_their_ids(
    opensearch: Any, make_aggregator: MakeAggregator
) -> None:
    agg = make_aggregator(opensearch.url)
    await agg.start()
    ns = unique_ns("own")
    entries = container_entries(ns, 300)
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        for n in range(3):
            await client.send(compressed_chunk(entries[n * 100 : (n + 1) * 100], f"c-{n}"))
        for n in range(3):
            await client.wait_ack(f"c-{n}")
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{ns}-*", 300)
    hits = await store.search(f"logs-{ns}-*")
    assert sorted(h["_id"] for h in hits) == sorted(r["_lf"]["id"] for _t, r in entries)
    assert sorted(h["_source"]["_lf"]["seq"] for h in hits) == list(range(300))
    assert await agg.stop() == 0


async def test_acked_records_survive_sigkill_and_resent_chunks_are_stored_once(
    opensearch: Any, make_aggregator: MakeAggregator
) -> None:
    proxy = TcpProxy.in_front_of(opensearch.url)
    await proxy.start()
    proxy.set_down()  # nothing can leave: acked records exist only in the spool
    agg = make_aggregator(proxy.url)
    await agg.start()
    ns = unique_ns("kill")
    entries = container_entries(ns, 2000)
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        for n in range(20):
            await client.send(compressed_chunk(entries[n * 100 : (n + 1) * 100], f"k-{n}"))
        for n in range(20):
            await client.wait_ack(f"k-{n}")
    agg.kill()
    proxy.set_up()
    await agg.start()
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{ns}-*", 2000)
    # A sender that never saw the acks resends: the ids make it harmless.
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        await client.send(compressed_chunk(entries[:100], "k-0"))
        await client.wait_ack("k-0")

    async def duplicates_seen() -> bool:
        return await agg.metric("logferry_duplicates_total") >= 100

    await wait_until(duplicates_seen, timeout_s=30, what="the resent chunk to settle as duplicates")
    assert await store.count(f"logs-{ns}-*") == 2000
    await agg.stop()
    await proxy.stop()


async def test_store_down_then_up_loses_and_duplicates_nothing(
    opensearch: Any, make_aggregator: MakeAggregator
) -> None:
    proxy = TcpProxy.in_front_of(opensearch.url)
    await proxy.start()
    agg = make_aggregator(proxy.url)
    await agg.start()
    ns = unique_ns("down")
    store = StoreReader(opensearch.url)
    entries = container_entries(ns, 3000)
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        await client.send(compressed_chunk(entries[:1000], "d-0"))
        await client.wait_ack("d-0")
        await wait_count(store, f"logs-{ns}-*", 1000)
        proxy.set_down()
        for n in range(1, 3):
            await client.send(compressed_chunk(entries[n * 1000 : (n + 1) * 1000], f"d-{n}"))
            await client.wait_ack(f"d-{n}")

        async def backlog() -> bool:
            return await agg.metric("logferry_spool_fragments", tenant=ns) >= 1

        await wait_until(backlog, timeout_s=10, what="a backlog while the store is down")
        assert await store.count(f"logs-{ns}-*") == 1000
        proxy.set_up()
    await wait_count(store, f"logs-{ns}-*", 3000, timeout_s=90)

    async def drained() -> bool:
        return await agg.metric("logferry_spool_fragments", tenant=ns) == 0

    await wait_until(drained, timeout_s=30, what="the spool to drain")
    assert await store.count(f"logs-{ns}-*") == 3000
    assert await agg.metric("logferry_bulk_requests_total") > await agg.metric(
        "logferry_bulk_requests_total", status="200"
    )
    await agg.stop()
    await proxy.stop()


async def test_mapping_conflict_goes_to_dlq_then_replays(
    opensearch: Any, make_aggregator: MakeAggregator, tmp_path: Path
) -> None:
    agg = make_aggregator(opensearch.url)
    await agg.start()
    ns = unique_ns("map")
    store = StoreReader(opensearch.url)
    entries = container_entries(ns, 40)
    day = 0
    for i, (when, record) in enumerate(entries):
        day = protocol.EventTime.from_time(when).seconds
        # Half the records carry "user" as an object, the other half as a string.
        record["user"] = {"name": f"u{i}"} if i % 2 == 0 else f"u{i}"
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        await client.send(compressed_chunk(entries[:1], "m-first"))
        await client.wait_ack("m-first")
        await wait_count(store, f"logs-{ns}-*", 1)
        await client.send(compressed_chunk(entries[1:], "m-rest"))
        await client.wait_ack("m-rest")

    async def dead_lettered() -> bool:
        return await agg.metric("logferry_dlq_records_total", tenant=ns) >= 20

    await wait_until(dead_lettered, timeout_s=30, what="20 records in the DLQ")
    await wait_count(store, f"logs-{ns}-*", 20)
    assert await store.count(f"logs-{ns}-*") == 20
    listing = await run_cli(
        [
            "aggregator",
            "dlq",
            "list",
            "--json",
            "--dlq-dir",
            str(agg.workdir / "dlq"),
            "--tenant",
            ns,
        ],
        check=True,
    )
    rows = [json.loads(line) for line in listing.stdout.splitlines() if line.strip()]
    assert len(rows) == 20
    assert all(row["status"] == 400 and "mapper_parsing_exception" in row["reason"] for row in rows)
    wanted = {r["_lf"]["id"] for i, (_t, r) in enumerate(entries) if i % 2 == 1}
    assert {row["id"] for row in rows} == wanted
    # Fix the mapping the way an operator would: reindex is out of scope, so drop the index
    # and replay everything into a fresh one with a mapping that takes both shapes.
    index = f"logs-{ns}-" + time.strftime("%Y.%m.%d", time.gmtime(day))
    await store.delete(f"/{index}")
    await store.put(
        f"/{index}", {"mappings": {"properties": {"user": {"type": "object", "enabled": False}}}}
    )
    replay = await run_cli(
        [
            "aggregator",
            "dlq",
            "replay",
            "--dlq-dir",
            str(agg.workdir / "dlq"),
            "--url",
            opensearch.url,
            "--tenant",
            ns,
        ],
        check=False,
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    await wait_count(store, f"logs-{ns}-*", 20)
    after = await run_cli(
        [
            "aggregator",
            "dlq",
            "list",
            "--json",
            "--dlq-dir",
            str(agg.workdir / "dlq"),
            "--tenant",
            ns,
        ],
        check=True,
    )
    assert after.stdout.strip() == ""
    await agg.stop()


async def test_bad_peers_lose_only_their_own_connection(
    make_aggregator: MakeAggregator, tmp_path: Path
) -> None:
    key_file = tmp_path / "shared_key"
    key_file.write_text("s3cret\n")
    agg = make_aggregator(
        None,
        input={"shared_key_file": str(key_file), "max_message_bytes": "64KiB"},
    )
    await agg.start()
    port = input_port(agg)
    good = ForwardClient("127.0.0.1", port, shared_key="s3cret")
    await good.connect()
    # wrong key: PONG says no, connection closed, counted
    with pytest.raises(HandshakeError, match="refused"):
        async with ForwardClient("127.0.0.1", port, shared_key="wrong"):
            pass
    # garbage after a correct handshake
    async with ForwardClient("127.0.0.1", port, shared_key="s3cret") as bad:
        await bad.send(b"\xc1\xc1\xc1 this is not msgpack")
        assert await bad.read_eof()
    # a message over the size limit
    async with ForwardClient("127.0.0.1", port, shared_key="s3cret") as big:
        huge = container_entries("big", 1)
        huge[0][1]["log"] = "y" * 200_000
        await big.send(protocol.encode_forward("t", huge, chunk="big-1"))
        assert await big.read_eof()
    # the good connection still works
    await good.send(compressed_chunk(container_entries("ok", 10), "g-1"))
    await good.wait_ack("g-1")
    await good.close()
    assert await agg.metric("logferry_handshake_failures_total") == 1
    assert await agg.metric("logferry_protocol_errors_total", reason="malformed") == 1
    assert await agg.metric("logferry_protocol_errors_total", reason="too_large") == 1
    assert await agg.stop() == 0


async def test_full_spool_slows_senders_instead_of_dropping(
    opensearch: Any, make_aggregator: MakeAggregator
) -> None:
    proxy = TcpProxy.in_front_of(opensearch.url)
    await proxy.start()
    proxy.set_down()
    agg = make_aggregator(
        proxy.url,
        spool={
            "max_bytes": "8MiB",
            "tenant_max_bytes": "2MiB",
            "segment_max_bytes": "1MiB",
            "compression": "none",  # stored as rendered: these records overflow the share
        },
    )
    await agg.start()
    ns = unique_ns("bp")
    store = StoreReader(opensearch.url)
    entries = container_entries(ns, 12_000)  # ~5 MB rendered: more than the tenant's share
    chunks = [entries[n : n + 500] for n in range(0, len(entries), 500)]
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:

        async def send_all() -> None:
            for n, chunk in enumerate(chunks):
                await client.send(compressed_chunk(chunk, f"b-{n}"))
            for n in range(len(chunks)):
                await client.wait_ack(f"b-{n}", timeout_s=120)

        sending = asyncio.create_task(send_all())

        async def stalled() -> bool:
            return await agg.metric("logferry_spool_bytes", tenant=ns) >= 1024 * 1024

        await wait_until(stalled, timeout_s=30, what="the tenant spool to fill")
        acks_while_full = await agg.metric("logferry_acks_total")
        assert acks_while_full < len(chunks)
        assert not sending.done()
        proxy.set_up()
        await asyncio.wait_for(sending, 120)
    await wait_count(store, f"logs-{ns}-*", len(entries), timeout_s=120)
    assert await store.count(f"logs-{ns}-*") == len(entries)
    await agg.stop()
    await proxy.stop()
