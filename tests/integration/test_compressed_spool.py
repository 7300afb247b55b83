"""The compressed aggregator spool end to end: a real aggregator holds a few thousand acked
records while its store is cut off, in spool files smaller than their ``_bulk`` lines would
be, then delivers every one of them once into the real OpenSearch node."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.aggregator import MakeAggregator, input_port, unique_ns
from tests.support.forward_client import ForwardClient
from tests.support.net import wait_until
from tests.support.opensearch_client import StoreReader, wait_count
from tests.support.records import Entry, compressed_chunk, container_entries
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

RECORDS = 4000
PER_CHUNK = 200
_PATHS = ["/api/v1/items", "/api/v1/cart", "/login", "/static/app.js", "/healthz", "/search"]
_AGENTS = ["curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64)", "kube-probe/1.30", "python/3.11"]


def varied_entries(namespace: str, count: int) -> list[Entry]:
    """Records with access-log lines that vary as real ones do (not one repeated filler)."""
    rng = random.Random(1717)
    entries = container_entries(namespace, count, pod="web-7d9f")
    for _when, record in entries:
        record["log"] = (
            f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)} - - "
            f'"GET {rng.choice(_PATHS)}/{rng.randrange(10**6)}?q={rng.getrandbits(40):x} '
            f'HTTP/1.1" {rng.choice([200, 200, 200, 304, 404, 500])} {rng.randrange(50_000)} '
            f'{rng.random():.4f} "{rng.choice(_AGENTS)}"'
        )
    return entries


def spool_bytes(workdir: Path, tenant: str) -> int:
    """Bytes of every file in the tenant's spool directories (wherever under the spool)."""
    directories = [p for p in (workdir / "spool").rglob(tenant) if p.is_dir()]
    assert directories, f"no spool directory for {tenant}"
    return sum(f.stat().st_size for d in directories for f in d.rglob("*") if f.is_file())


async def test_a_backlog_is_spooled_compressed_and_delivered_once(
    opensearch: Any, make_aggregator: MakeAggregator
) -> None:
    proxy = TcpProxy.in_front_of(opensearch.url)
    await proxy.start()
    try:
        proxy.set_down()  # the whole backlog stays in the spool, where it can be measured
        agg = make_aggregator(proxy.url)
        await agg.start()
        ns = unique_ns("zspool")
        entries = varied_entries(ns, RECORDS)
        async with ForwardClient("127.0.0.1", input_port(agg)) as client:
            for n in range(RECORDS // PER_CHUNK):
                part = entries[n * PER_CHUNK : (n + 1) * PER_CHUNK]
                await client.send(compressed_chunk(part, f"z-{n}"))
            for n in range(RECORDS // PER_CHUNK):
                await client.wait_ack(f"z-{n}")  # acked: fsynced in the spool
        # Each document's source line holds at least its record as JSON, plus its action line:
        # an uncompressed spool could not be smaller than this.
        ndjson_at_least = sum(len(orjson.dumps(record)) + 1 for _when, record in entries)
        on_disk = spool_bytes(agg.workdir, ns)
        assert on_disk < ndjson_at_least / 2, (on_disk, ndjson_at_least)

        proxy.set_up()
        store = StoreReader(opensearch.url)
        await wait_count(store, f"logs-{ns}-*", RECORDS)

        async def drained() -> bool:
            return await agg.metric("logferry_spool_fragments", tenant=ns) == 0

        await wait_until(drained, timeout_s=60, what="the spool to drain")
        hits = await store.search(f"logs-{ns}-*")
        assert len(hits) == RECORDS  # each once: nothing lost, nothing stored twice
        assert sorted(h["_id"] for h in hits) == sorted(r["_lf"]["id"] for _t, r in entries)
        by_id = {r["_lf"]["id"]: r["log"] for _t, r in entries}
        assert all(h["_source"]["log"] == by_id[h["_id"]] for h in hits)
        assert await agg.stop() == 0
    finally:
        await proxy.stop()
