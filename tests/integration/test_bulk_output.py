"""The bulk output against a real OpenSearch node: documents land once with the right index,
``_id`` and fields; resends are 409s; a mapping conflict dead-letters exactly the conflicting
documents and ``dlq replay`` delivers them once the mapping is fixed; an unreachable store
commits nothing.

Each test uses its own index names (the node is shared by the session).
"""

from __future__ import annotations

import asyncio
import io
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from devtools.opensearch_node import OpenSearchNode
from logferry.aggregator.dlq import DeadLetterQueue
from logferry.aggregator.dlq_cli import dlq_main
from logferry.aggregator.documents import action_line
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs import BulkOutput, BulkOutputSettings
from logferry.aggregator.outputs.pump import drain
from logferry.common.spool import Spool
from tests.support.net import wait_until
from tests.support.output_drain import drain_until, fill, make_docs, open_spool, sample

pytestmark = pytest.mark.integration


class Store:
    """Just enough of the REST API to check what arrived."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self._session = session

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self._session.request(method, self.url + path, json=body) as response:
            return response.status, await response.json(content_type=None)

    async def count(self, index: str) -> int:
        await self.call("POST", f"/{index}/_refresh")
        status, payload = await self.call("GET", f"/{index}/_count")
        assert status == 200, payload
        return int(payload["count"])

    async def mget(self, index: str, ids: list[str]) -> list[dict[str, Any]]:
        status, payload = await self.call("POST", f"/{index}/_mget", {"ids": ids})
        assert status == 200, payload
        return list(payload["docs"])


@pytest.fixture
async def store(opensearch: OpenSearchNode) -> AsyncIterator[Store]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield Store(opensearch.url, session)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound but not listening: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def bulk_settings(*urls: str, **overrides: Any) -> BulkOutputSettings:
    values: dict[str, Any] = {
        "type": "opensearch",
        "urls": list(urls),
        "batch_max_records": 100,
        "batch_max_bytes": "64KiB",
        "retry_initial_s": 0.05,
        "retry_max_s": 0.5,
    }
    values.update(overrides)
    return BulkOutputSettings(**values)


async def drain_all(
    settings: BulkOutputSettings, spool: Spool, dlq: DeadLetterQueue, metrics: AggregatorMetrics
) -> None:
    output = BulkOutput(settings, metrics, dlq)
    await output.start()
    try:
        await drain_until(output, "team-a", spool, lambda: spool.records_pending == 0)
    finally:
        await output.close()


async def test_documents_arrive_once_with_index_id_and_fields_and_resends_are_duplicates(
    store: Store, opensearch: OpenSearchNode, tmp_path: Path
) -> None:
    index = f"logs-team-a-{uuid.uuid4().hex[:8]}"
    docs = make_docs(index, 500, stream="stdout", kubernetes={"namespace_name": "team-a"})
    metrics = AggregatorMetrics()
    dlq = DeadLetterQueue(tmp_path / "dlq")
    spool = await open_spool(tmp_path / "spool")
    await fill(spool, docs, per_fragment=25)
    await drain_all(bulk_settings(opensearch.url), spool, dlq, metrics)

    assert await store.count(index) == 500
    fetched = await store.mget(index, [f"{index}-0", f"{index}-499"])
    assert [(d["_index"], d["_id"], d["found"]) for d in fetched] == [
        (index, f"{index}-0", True),
        (index, f"{index}-499", True),
    ]
    assert fetched[1]["_source"] == {
        "log": "line 499",
        "n": 499,
        "stream": "stdout",
        "kubernetes": {"namespace_name": "team-a"},
    }
    assert sample(metrics, "logferry_records_out_total", tenant="team-a") == 500
    assert sample(metrics, "logferry_duplicates_total", tenant="team-a") == 0

    await fill(spool, docs, per_fragment=50)  # the same documents again: a resend
    await drain_all(bulk_settings(opensearch.url), spool, dlq, metrics)
    assert await store.count(index) == 500
    assert sample(metrics, "logferry_duplicates_total", tenant="team-a") == 500
    assert dlq.scan().entries == []
    await spool.close()


async def test_a_mapping_conflict_dead_letters_exactly_those_documents_and_replay_delivers_them(
    store: Store, opensearch: OpenSearchNode, tmp_path: Path
) -> None:
    """The fix chosen here: the index is recreated with ``user`` mapped as a keyword (what an
    operator does once the shape of ``user`` is settled); replay then delivers the entries."""
    index = f"logs-team-a-{uuid.uuid4().hex[:8]}"
    status, _ = await store.call("PUT", f"/{index}/_doc/seed?refresh=true", {"user": {"id": 1}})
    assert status == 201
    docs = [
        (action_line(index, f"doc-{n}"), orjson.dumps({"n": n, "user": "bob"}))
        if n % 2 == 0
        else (action_line(index, f"doc-{n}"), orjson.dumps({"n": n}))
        for n in range(10)
    ]
    metrics = AggregatorMetrics()
    dlq_dir = tmp_path / "dlq"
    dlq = DeadLetterQueue(dlq_dir)
    spool = await open_spool(tmp_path / "spool")
    await fill(spool, docs, per_fragment=5)
    await drain_all(bulk_settings(opensearch.url), spool, dlq, metrics)

    entries = dlq.scan().entries
    assert sorted(e.doc_id for e in entries) == [f"doc-{n}" for n in (0, 2, 4, 6, 8)]
    assert {(e.tenant, e.index, e.status) for e in entries} == {("team-a", index, 400)}
    assert all(e.reason.startswith("mapper_parsing_exception") for e in entries)
    assert all("user" in e.reason for e in entries)
    assert orjson.loads(entries[0].source) == {"n": 0, "user": "bob"}
    assert await store.count(index) == 6  # the seed and the five documents without `user`
    label = {"tenant": "team-a", "reason": "mapper_parsing_exception"}
    assert sample(metrics, "logferry_dlq_records_total", **label) == 5
    assert spool.records_pending == 0

    # Before the fix a replay is refused again: every entry stays, with the new reason.
    out = io.StringIO()
    argv = ["replay", "--dlq-dir", str(dlq_dir), "--url", opensearch.url]
    assert await asyncio.to_thread(dlq_main, argv, out) == 1
    assert "5 refused again" in out.getvalue()
    assert len(dlq.scan().entries) == 5

    assert (await store.call("DELETE", f"/{index}"))[0] == 200
    mapping = {"mappings": {"properties": {"user": {"type": "keyword"}}}}
    assert (await store.call("PUT", f"/{index}", mapping))[0] == 200
    out = io.StringIO()
    assert await asyncio.to_thread(dlq_main, argv, out) == 0
    assert "5 delivered" in out.getvalue()
    assert "5 removed from the DLQ" in out.getvalue()
    assert dlq.scan().entries == []
    assert await store.count(index) == 5
    fetched = await store.mget(index, ["doc-4"])
    assert fetched[0]["_source"] == {"n": 4, "user": "bob"}
    await spool.close()


async def test_an_unreachable_store_commits_nothing_then_the_real_node_gets_everything_once(
    store: Store, opensearch: OpenSearchNode, tmp_path: Path, refused_port: int
) -> None:
    index = f"logs-team-a-{uuid.uuid4().hex[:8]}"
    metrics = AggregatorMetrics()
    dlq = DeadLetterQueue(tmp_path / "dlq")
    spool = await open_spool(tmp_path / "spool")
    fragments = await fill(spool, make_docs(index, 300), per_fragment=20)

    # No template to install first: the bulk requests themselves must fail and commit nothing.
    down_settings = bulk_settings(f"http://127.0.0.1:{refused_port}", manage_templates=False)
    down = BulkOutput(down_settings, metrics, dlq)
    await down.start()
    stop = asyncio.Event()
    task = asyncio.create_task(drain(down, "team-a", spool, stop, 0.5))
    failures = {"status": "connection_error"}
    await wait_until(
        lambda: sample(metrics, "logferry_bulk_requests_total", **failures) >= 5,
        timeout_s=30,
        what="five failed bulk requests",
    )
    stop.set()
    await task
    await down.close()
    assert spool.records_pending == fragments
    assert dlq.scan().entries == []
    status, _ = await store.call("GET", f"/{index}/_count")
    assert status == 404  # not a single document reached the store

    await spool.close()  # a restart: the uncommitted batches are read again
    spool = await open_spool(tmp_path / "spool")
    assert spool.records_pending == fragments
    await drain_all(bulk_settings(opensearch.url), spool, dlq, metrics)
    assert await store.count(index) == 300
    assert sample(metrics, "logferry_duplicates_total", tenant="team-a") == 0
    assert sample(metrics, "logferry_records_out_total", tenant="team-a") == 300
    await spool.close()
