"""Aggregator lifecycle and connection hygiene: TLS, idle peers, the connection cap, probes,
graceful shutdown with a backlog, and the embedded file output."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.aggregator import MakeAggregator, input_port
from tests.support.forward_client import ForwardClient
from tests.support.log_pipelines import log_pipeline
from tests.support.net import wait_until
from tests.support.opensearch_client import ANY_DOCUMENT, StoreReader, wait_count
from tests.support.records import compressed_chunk, container_entries
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def test_tls_input_with_handshake(make_aggregator: MakeAggregator, tmp_path: Path) -> None:
    cert, key = await asyncio.to_thread(self_signed, tmp_path)
    agg = make_aggregator(
        None,
        input={"tls_cert_file": str(cert), "tls_key_file": str(key), "shared_key": "k"},
    )
    await agg.start()
    context = ssl.create_default_context(cafile=str(cert))
    async with ForwardClient(
        "127.0.0.1", input_port(agg), shared_key="k", ssl_context=context
    ) as c:
        await c.send(compressed_chunk(container_entries("tls", 50), "t-1"))
        await c.wait_ack("t-1")
    # A plaintext peer on the TLS port gets nowhere and costs only its connection.
    async with ForwardClient("127.0.0.1", input_port(agg)) as plain:
        await plain.send(compressed_chunk(container_entries("tls", 5), "p-1"))
        assert await plain.read_eof()
    assert await agg.metric("logferry_acks_total") == 1
    assert await agg.stop() == 0


async def test_idle_peer_is_disconnected_and_cap_refuses_extra_connections(
    make_aggregator: MakeAggregator,
) -> None:
    agg = make_aggregator(None, input={"read_timeout_s": 1.0, "max_connections": 2})
    await agg.start()
    port = input_port(agg)
    first = ForwardClient("127.0.0.1", port)
    second = ForwardClient("127.0.0.1", port)
    await first.connect()
    await second.connect()

    async def two_open() -> bool:
        return await agg.metric("logferry_connections") == 2

    await wait_until(two_open, timeout_s=10, what="two open connections")
    async with ForwardClient("127.0.0.1", port) as third:
        assert await third.read_eof(timeout_s=5)
    assert await agg.metric("logferry_connection_attempts_total", status="refused") == 1
    # Idle past read_timeout_s: both are closed by the server.
    assert await first.read_eof(timeout_s=10)
    assert await second.read_eof(timeout_s=10)
    await first.close()
    await second.close()
    async with ForwardClient("127.0.0.1", port) as fresh:
        await fresh.send(compressed_chunk(container_entries("idle", 3), "i-1"))
        await fresh.wait_ack("i-1")
    await agg.stop()


async def test_probes_and_metrics_endpoint(make_aggregator: MakeAggregator) -> None:
    agg = make_aggregator(None)
    await agg.start()
    async with aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{agg.http_port}"
        for path in ("/healthz", "/readyz"):
            async with session.get(base + path) as response:
                assert response.status == 200
        async with ForwardClient("127.0.0.1", input_port(agg)) as client:
            await client.send(compressed_chunk(container_entries("probe", 7), "m-1"))
            await client.wait_ack("m-1")
        async with session.get(base + "/metrics") as response:
            text = await response.text()
    assert 'logferry_records_in_total{tenant="probe"} 7.0' in text
    assert "logferry_ack_latency_seconds_bucket" in text
    assert 'logferry_spool_bytes{tenant="probe"}' in text
    await agg.stop()


async def test_sigterm_with_store_down_exits_cleanly_and_backlog_goes_out_after_restart(
    opensearch: Any, make_aggregator: MakeAggregator
) -> None:
    proxy = TcpProxy.in_front_of(opensearch.url)
    await proxy.start()
    proxy.set_down()
    agg = make_aggregator(proxy.url, shutdown_deadline_s=3)
    await agg.start()
    ns = "term-" + str(input_port(agg))
    entries = container_entries(ns, 1500)
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        for n in range(3):
            await client.send(compressed_chunk(entries[n * 500 : (n + 1) * 500], f"s-{n}"))
        for n in range(3):
            await client.wait_ack(f"s-{n}")
    assert await agg.stop(timeout_s=30) == 0
    assert agg.events("aggregator.stopped")[-1]["left_in_spool"] > 0
    proxy.set_up()
    await agg.start()
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{ns}-*", 1500)
    assert await store.count(f"logs-{ns}-*") == 1500
    await agg.stop()
    await proxy.stop()


async def test_without_a_store_records_go_to_ndjson_files(
    make_aggregator: MakeAggregator,
) -> None:
    agg = make_aggregator(None, output=None)
    await agg.start()
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        await client.send(compressed_chunk(container_entries("files", 120), "f-1"))
        await client.wait_ack("f-1")
    out_dir = agg.workdir / "output"

    async def written() -> bool:
        lines = [
            line for f in out_dir.rglob("*.ndjson") for line in f.read_text().splitlines() if line
        ]
        return len(lines) == 120

    await wait_until(written, timeout_s=30, what="120 NDJSON lines under output/")
    docs = [
        json.loads(line) for f in out_dir.rglob("*.ndjson") for line in f.read_text().splitlines()
    ]
    assert sorted(d["_lf"]["seq"] for d in docs) == list(range(120))
    assert all(f.parent.name.startswith("logs-files-") for f in out_dir.rglob("*.ndjson"))
    await agg.stop()


async def test_a_tenants_pipeline_applies_to_its_tenant_only(
    opensearch: Any, make_aggregator: MakeAggregator, tmp_path: Path
) -> None:
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    filters: list[dict[str, Any]] = [
        {"type": "grep", "field": "log", "regex": "line [0-9]*[05] ", "mode": "exclude"},
        {"type": "parse_json", "field": "log"},
        {"type": "add", "fields": {"team": "alpha"}},
    ]
    (pipelines / "filt-a.yaml").write_text(
        yaml.safe_dump(log_pipeline("trim", filters, namespace="filt-a"))
    )
    agg = make_aggregator(opensearch.url, pipelines={"directory": str(pipelines)})
    await agg.start()
    a = container_entries("filt-a", 100)
    b = container_entries("filt-b", 100)
    a[1][1]["log"] = '{"level": "warn", "msg": "line 1 as json"}'
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        await client.send(compressed_chunk(a + b, "mixed-1"))
        await client.wait_ack("mixed-1")
    store = StoreReader(opensearch.url)
    await wait_count(store, "logs-filt-b-*", 100)
    await wait_count(store, "logs-filt-a-*", 80)
    # The 20 discarded lines: one accounting record for the source, beside the tenant's index.
    await wait_count(store, "logs-filt-a.lf-accounting-*", 1, query=ANY_DOCUMENT)
    accounting_index = "logs-filt-a.lf-accounting-*"
    (accounting,) = [h["_source"] for h in await store.search(accounting_index, query=ANY_DOCUMENT)]
    assert accounting["_lf"]["lines"] == 20
    assert accounting["kubernetes"]["namespace_name"] == "filt-a"
    kept = [h["_source"] for h in await store.search("logs-filt-a-*")]
    assert len(kept) == 80  # lines ending in 0 or 5 excluded
    assert all(h["team"] == "alpha" for h in kept)
    parsed = [h for h in kept if h["_lf"]["seq"] == 1]
    assert parsed[0]["level"] == "warn"
    assert parsed[0]["log"].startswith("{")  # the original line is kept
    assert all("team" not in h["_source"] for h in await store.search("logs-filt-b-*"))
    assert await agg.metric("logferry_records_filtered_total", tenant="filt-a") == 20
    assert await agg.metric("logferry_records_filtered_total", tenant="filt-b") == 0
    await agg.stop()
