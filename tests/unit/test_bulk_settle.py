"""The bulk output: item classification, request bodies, and delivery against a fake store
(retries resend only failed items, 413 splits, rejects reach the DLQ before commit)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from logferry.aggregator.dlq import DeadLetterQueue
from logferry.aggregator.documents import render_fragment, split_fragment
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs import BulkOutput, BulkOutputSettings, build_output
from logferry.aggregator.outputs.bulk_client import cluster_refusal, render_body, settle
from logferry.aggregator.outputs.pump import drain
from logferry.common.errors import OutputError
from logferry.common.spool import Spool, SpoolBatch
from tests.support.fake_bulk_store import all_created, fake_store
from tests.support.net import wait_until
from tests.support.output_drain import (
    DEADLINE_S,
    drain_until,
    fill,
    make_docs,
    open_spool,
    sample,
)


def settings(url: str, **overrides: Any) -> BulkOutputSettings:
    values: dict[str, Any] = {
        "type": "opensearch",
        "urls": [url],
        "retry_initial_s": 0.01,
        "retry_max_s": 0.05,
        "max_in_flight": 2,
        "manage_templates": False,  # the fake store answers _bulk only
    }
    values.update(overrides)
    return BulkOutputSettings(**values)


def item(status: int, kind: str = "") -> dict[str, Any]:
    outcome: dict[str, Any] = {"status": status}
    if kind:
        outcome["error"] = {"type": kind, "reason": "because", "caused_by": {"type": "c"}}
    return {"create": outcome}


def test_settle_classifies_delivered_duplicate_retry_and_rejected() -> None:
    response = {
        "errors": True,
        "items": [
            item(201),
            item(409, "version_conflict_engine_exception"),
            item(429, "es_rejected_execution_exception"),
            item(503, "unavailable_shards_exception"),
            item(403, "cluster_block_exception"),
            item(400, "mapper_parsing_exception"),
            item(404, "index_not_found_exception"),
        ],
    }
    result = settle(7, response)
    assert result.delivered == 2
    assert result.duplicates == 1
    assert result.delivered_positions == [0, 1]
    assert result.retry == [2, 3, 4, 6]
    assert [(r.position, r.status, r.kind) for r in result.rejected] == [
        (5, 400, "mapper_parsing_exception"),
    ]
    assert result.rejected[0].reason.startswith("mapper_parsing_exception: because")
    assert {label: count for label, (count, _) in result.held.items()} == {
        "rejected_execution": 1,
        "shards_unavailable": 1,
        "write_block": 1,
        "index_missing": 1,
    }


# What OpenSearch 2.19 and Elasticsearch 8 answer per item, as seen on the wire.
@pytest.mark.parametrize(
    ("status", "kind", "reason", "label"),
    [
        (
            400,
            "validation_exception",
            "Validation Failed: 1: this action would add [2] total shards, but this cluster "
            "currently has [4]/[4] maximum shards open;",
            "too_many_shards",
        ),
        (
            400,
            "validation_exception",
            "Validation Failed: 1: this action would add [1] shards, but this cluster currently "
            "has [1000]/[1000] maximum normal shards open;",
            "too_many_shards",
        ),
        (
            403,
            "cluster_block_exception",
            "index [logs-a-2026.11.29] blocked by: [FORBIDDEN/8/index write (api)];",
            "write_block",
        ),
        (
            429,
            "cluster_block_exception",
            "index [logs-a-2026.11.29] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded "
            "flood-stage watermark, index has read-only-allow-delete block];",
            "disk_watermark",
        ),
        (400, "index_closed_exception", "closed", "index_closed"),
        (404, "index_not_found_exception", "no such index [logs-a-2026.11.29]", "index_missing"),
        (503, "unavailable_shards_exception", "primary shard is not active", "shards_unavailable"),
        (500, "null_pointer_exception", "", "store_error"),
        (400, "mapper_parsing_exception", "failed to parse field [n]", None),
        (
            400,
            "illegal_argument_exception",
            "Limit of total fields [1000] has been exceeded",
            None,
        ),
        (400, "validation_exception", "Validation Failed: 1: id is too long", None),
    ],
)
def test_refusals_about_the_cluster_are_held_and_about_the_document_are_not(
    status: int, kind: str, reason: str, label: str | None
) -> None:
    assert cluster_refusal(status, kind, f"{kind}: {reason}") == label


def test_settle_without_errors_delivers_every_item() -> None:
    result = settle(3, {"errors": False, "items": [item(201)] * 3})
    assert (result.delivered, result.retry, result.rejected) == (3, [], [])


def test_settle_refuses_a_response_that_does_not_list_every_item() -> None:
    with pytest.raises(OutputError) as caught:
        settle(3, {"errors": False, "items": [item(201)]})
    assert caught.value.retriable


def test_body_is_the_fragments_lines_unchanged() -> None:
    fragment = render_fragment(make_docs("logs-a", 3))
    assert render_body(split_fragment(fragment)) == fragment


def test_settings_refuse_bad_urls_and_mixed_auth(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http"):
        settings("es:9200")
    with pytest.raises(ValueError, match="either"):
        settings("http://es", username="u", api_key_file=tmp_path / "k")


async def test_only_failed_items_are_resent_and_the_batch_commits_after_all_settle(
    tmp_path: Path,
) -> None:
    flaky = {"logs-a-3", "logs-a-7"}
    seen: set[str] = set()

    def respond(request_no: int, docs: list[Any]) -> Any:
        if request_no == 0:
            return 500  # the whole first request fails
        answer = []
        for action, _ in docs:
            doc_id = action["create"]["_id"]
            first_time = doc_id in flaky and doc_id not in seen
            seen.add(doc_id)
            answer.append((429, "es_rejected_execution_exception") if first_time else (201, ""))
        return answer

    metrics = AggregatorMetrics()
    spool = await open_spool(tmp_path / "spool")
    await fill(spool, make_docs("logs-a", 10), per_fragment=5)
    commits: list[int] = []
    real_commit = spool.commit

    def commit(batch: SpoolBatch) -> None:
        commits.append(len(store.requests))
        real_commit(batch)

    spool.commit = commit  # type: ignore[method-assign]
    async with fake_store(respond) as store:
        output = BulkOutput(settings(store.url), metrics, DeadLetterQueue(tmp_path / "dlq"))
        await output.start()
        try:
            await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
        finally:
            await output.close()
    everything = [f"logs-a-{n}" for n in range(10)]
    assert store.requests == [everything, everything, sorted(flaky)]
    assert commits == [3]  # one batch, committed only after the third request settled it
    assert sample(metrics, "logferry_records_out_total", tenant="a") == 10
    assert sample(metrics, "logferry_output_retries_total", tenant="a") == 12
    assert sample(metrics, "logferry_bulk_requests_total", status="500") == 1
    await spool.close()


async def test_413_splits_the_request_and_a_single_oversize_document_is_dead_lettered(
    tmp_path: Path,
) -> None:
    def respond(_: int, docs: list[Any]) -> Any:
        if any(source.get("huge") for _, source in docs) or len(docs) > 4:
            return 413
        return [(201, "")] * len(docs)

    docs = make_docs("logs-a", 8)
    docs[5] = make_docs("logs-a", 1, start=5, huge=True)[0]
    metrics = AggregatorMetrics()
    dlq = DeadLetterQueue(tmp_path / "dlq")
    spool = await open_spool(tmp_path / "spool")
    await fill(spool, docs, per_fragment=8)
    async with fake_store(respond) as store:
        output = BulkOutput(settings(store.url), metrics, dlq)
        await output.start()
        try:
            await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
        finally:
            await output.close()
    ids = [f"logs-a-{n}" for n in range(8)]
    # the batch as it stands (fast path), then halves until each part fits; the oversize
    # document ends alone and is refused
    assert store.requests == [ids, ids, ids[:4], ids[4:], ids[4:6], ids[4:5], ids[5:6], ids[6:]]
    entries = dlq.scan().entries
    assert [(e.doc_id, e.status) for e in entries] == [("logs-a-5", 413)]
    assert sample(metrics, "logferry_records_out_total", tenant="a") == 7
    assert sample(metrics, "logferry_output_retries_total", tenant="a") == 0
    await spool.close()


async def test_rejected_documents_are_in_the_dlq_before_the_batch_is_committed(
    tmp_path: Path,
) -> None:
    def respond(_: int, docs: list[Any]) -> Any:
        return [
            (400, "mapper_parsing_exception") if source["n"] % 3 == 0 else (201, "")
            for _, source in docs
        ]

    metrics = AggregatorMetrics()
    dlq = DeadLetterQueue(tmp_path / "dlq")
    spool = await open_spool(tmp_path / "spool")
    await fill(spool, make_docs("logs-a", 9), per_fragment=3)
    in_dlq_at_commit: list[int] = []
    real_commit = spool.commit

    def commit(batch: SpoolBatch) -> None:
        in_dlq_at_commit.append(len(dlq.scan().entries))
        real_commit(batch)

    spool.commit = commit  # type: ignore[method-assign]
    async with fake_store(respond) as store:
        output = build_output(settings(store.url), metrics, dlq)
        await output.start()
        try:
            await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
        finally:
            await output.close()
    assert in_dlq_at_commit == [3]
    assert {e.doc_id for e in dlq.scan().entries} == {"logs-a-0", "logs-a-3", "logs-a-6"}
    assert all(
        e.reason == "mapper_parsing_exception: fake mapper_parsing_exception"
        for e in dlq.scan().entries
    )
    reason_label = {"tenant": "a", "reason": "mapper_parsing_exception"}
    assert sample(metrics, "logferry_dlq_records_total", **reason_label) == 3
    await spool.close()


async def test_a_failing_tenant_does_not_starve_another_of_request_slots(tmp_path: Path) -> None:
    def respond(_: int, docs: list[Any]) -> Any:
        if docs[0][0]["create"]["_index"] == "logs-stuck":
            return 503
        return [(201, "")] * len(docs)

    metrics = AggregatorMetrics()
    stuck = await open_spool(tmp_path / "stuck")
    healthy = await open_spool(tmp_path / "healthy")
    for n in range(5):  # several batches each, so the stuck tenant keeps slots busy if it can
        await fill(stuck, make_docs("logs-stuck", 5, start=n * 5), per_fragment=5)
        await fill(healthy, make_docs("logs-ok", 5, start=n * 5), per_fragment=5)
    async with fake_store(respond) as store:
        output = BulkOutput(
            settings(store.url, max_in_flight=1, batch_max_records=5, retry_max_s=0.2),
            metrics,
            DeadLetterQueue(tmp_path / "dlq"),
        )
        await output.start()
        stop = asyncio.Event()
        stuck_task = asyncio.create_task(drain(output, "stuck", stuck, stop, 1.0))
        try:
            await drain_until(output, "ok", healthy, lambda: healthy.records_pending == 0)
            assert stuck.records_pending == 5  # no fragment of the failing tenant committed
        finally:
            stop.set()
            await stuck_task
            await output.close()
    assert sample(metrics, "logferry_records_out_total", tenant="ok") == 25
    assert sample(metrics, "logferry_bulk_requests_total", status="503") >= 1
    await stuck.close()
    await healthy.close()


async def test_a_failing_tenant_keeps_one_batch_in_hand_until_it_delivers_again(
    tmp_path: Path,
) -> None:
    healthy = asyncio.Event()

    def respond(_: int, docs: list[Any]) -> Any:
        return [(201, "")] * len(docs) if healthy.is_set() else 503

    metrics = AggregatorMetrics()
    spool = await open_spool(tmp_path / "spool")
    await fill(spool, make_docs("logs-a", 10), per_fragment=5)
    async with fake_store(respond) as store:
        output = BulkOutput(settings(store.url), metrics, DeadLetterQueue(tmp_path / "dlq"))
        await output.start()
        assert output.concurrency("a") == 2  # max_in_flight before anything failed
        stop = asyncio.Event()
        task = asyncio.create_task(drain(output, "a", spool, stop, 1.0))
        try:
            await wait_until(
                lambda: len(store.requests) >= 2, timeout_s=DEADLINE_S, what="two requests"
            )
            assert output.concurrency("a") == 1  # in backoff: one probe at a time
            assert output.concurrency("b") == 2  # another tenant is not held back
            healthy.set()
            await wait_until(
                lambda: spool.records_pending == 0,
                timeout_s=DEADLINE_S,
                what="the spool to drain once the store is healthy",
            )
            assert output.concurrency("a") == 2
        finally:
            stop.set()
            await task
            await output.close()
    await spool.close()


async def test_stop_returns_within_the_deadline_and_leaves_unsettled_batches_in_the_spool(
    tmp_path: Path,
) -> None:
    async with fake_store(lambda _n, _d: 500) as store:
        spool = await open_spool(tmp_path / "spool")
        await fill(spool, make_docs("logs-a", 20))
        output = BulkOutput(settings(store.url), AggregatorMetrics(), DeadLetterQueue(tmp_path))
        await output.start()
        stop = asyncio.Event()
        task = asyncio.create_task(drain(output, "a", spool, stop, 0.2))
        await wait_until(
            lambda: len(store.requests) >= 3, timeout_s=DEADLINE_S, what="three failed requests"
        )
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        await output.close()
        await output.close()  # twice is safe
        assert spool.records_pending == 2
        await spool.close()
    reopened = await Spool.open(tmp_path / "spool", max_bytes=64 << 20, segment_max_bytes=1 << 20)
    assert reopened.records_pending == 2  # still there after a restart
    await reopened.close()


async def test_requests_rotate_over_urls_and_skip_a_dead_one(tmp_path: Path) -> None:
    async with fake_store(all_created) as store:
        dead = "http://127.0.0.1:1"  # nothing listens on port 1
        metrics = AggregatorMetrics()
        spool = await open_spool(tmp_path / "spool")
        await fill(spool, make_docs("logs-a", 30), per_fragment=1)
        output = BulkOutput(
            settings(dead, urls=[dead, store.url], batch_max_records=10),
            metrics,
            DeadLetterQueue(tmp_path / "dlq"),
        )
        await output.start()
        try:
            await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
        finally:
            await output.close()
        await spool.close()
    assert sample(metrics, "logferry_bulk_requests_total", status="connection_error") >= 1
    assert sample(metrics, "logferry_records_out_total", tenant="a") == 30
    assert sorted(i for r in store.requests for i in r) == sorted(f"logs-a-{n}" for n in range(30))


async def test_a_partial_failure_of_the_whole_batch_resends_only_its_failed_items(
    tmp_path: Path,
) -> None:
    flaky = {"logs-a-2", "logs-a-8"}
    seen: set[str] = set()

    def respond(_: int, docs: list[Any]) -> Any:
        answer = []
        for action, _source in docs:
            doc_id = action["create"]["_id"]
            first_time = doc_id in flaky and doc_id not in seen
            seen.add(doc_id)
            answer.append((503, "unavailable_shards_exception") if first_time else (201, ""))
        return answer

    metrics = AggregatorMetrics()
    spool = await open_spool(tmp_path / "spool")
    await fill(spool, make_docs("logs-a", 10), per_fragment=5)
    async with fake_store(respond) as store:
        output = BulkOutput(settings(store.url), metrics, DeadLetterQueue(tmp_path / "dlq"))
        await output.start()
        try:
            await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
        finally:
            await output.close()
    assert store.requests == [[f"logs-a-{n}" for n in range(10)], sorted(flaky)]
    assert sample(metrics, "logferry_records_out_total", tenant="a") == 10
    assert sample(metrics, "logferry_output_retries_total", tenant="a") == 2
    assert sample(metrics, "logferry_duplicates_total", tenant="a") == 0
    await spool.close()
