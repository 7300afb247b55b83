"""Ingest rendering: ids, indices, timestamps, tenant filters, odd records kept, byte budget."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import TypeAdapter

from logferry.aggregator.documents import split_fragment
from logferry.aggregator.filters import FilterChain, FilterConfig
from logferry.aggregator.ingest import ByteBudget, Ingest, Receipt
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.routing import IndexNamer
from logferry.common.protocol import EventMessage, EventTime, Mode

T0 = 1764115199  # 2025-11-25T23:59:59Z


def make_ingest(chains: dict[str, FilterChain] | None = None) -> Ingest:
    chains = chains or {}
    return Ingest(
        None,  # type: ignore[arg-type]  # rendering never touches the spools
        AggregatorMetrics(),
        namer=IndexNamer("logs"),
        default_tenant="_default",
        chain_for=lambda tenant: chains.get(tenant, FilterChain()),
        instance="agg-0/1/x",
    )


def message(entries: list[tuple[Any, dict[str, Any]]], chunk: str | None = "c1") -> EventMessage:
    return EventMessage("tag", Mode.FORWARD, entries, {}, chunk, 0)


def docs(fragment: bytes) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(json.loads(d.action), json.loads(d.source)) for d in split_fragment(fragment)]


def rec(ns: str | None, log: Any = "hello", **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"log": log, **extra}
    if ns is not None:
        record["kubernetes"] = {"namespace_name": ns}
    return record


def test_records_are_grouped_by_tenant_with_their_ids_and_daily_indices() -> None:
    ingest = make_ingest()
    out = ingest.render(
        message(
            [
                (EventTime(T0, 5), rec("a", _lf={"id": "src-1", "src": "src", "seq": 0})),
                (EventTime(T0 + 1, 0), rec("a", _lf={"id": "src-2", "src": "src", "seq": 1})),
                (T0, rec("b")),
                (T0, rec(None)),
            ]
        ),
        Receipt("agg-0/1/x", 1, 1),
    )
    assert set(out) == {"a", "b", "_default"}
    a = docs(out["a"][0])
    assert [action["create"]["_id"] for action, _ in a] == ["src-1", "src-2"]
    assert [action["create"]["_index"] for action, _ in a] == [
        "logs-a-2025.11.25",
        "logs-a-2025.11.26",
    ]
    assert a[0][1]["@timestamp"] == "2025-11-25T23:59:59.000000005Z"
    assert docs(out["_default"][0])[0][0]["create"]["_index"] == "logs-_default-2025.11.25"


def test_derived_ids_repeat_for_a_resent_chunk_but_not_across_receipts_without_one() -> None:
    ingest = make_ingest()
    entries = [(T0, rec("a")), (T0, rec("a"))]  # two identical lines in the same second
    first = docs(ingest.render(message(entries), Receipt("i", 1, 1))["a"][0])
    again = docs(ingest.render(message(entries), Receipt("i", 2, 9))["a"][0])
    ids = [action["create"]["_id"] for action, _ in first]
    assert ids == [action["create"]["_id"] for action, _ in again]
    assert len(set(ids)) == 2  # identical lines are still two documents
    unchunked = [message(entries, chunk=None)]
    one = docs(ingest.render(unchunked[0], Receipt("i", 1, 1))["a"][0])
    two = docs(ingest.render(unchunked[0], Receipt("i", 1, 2))["a"][0])
    assert {a["create"]["_id"] for a, _ in one}.isdisjoint({a["create"]["_id"] for a, _ in two})


def test_odd_records_are_written_not_dropped() -> None:
    ingest = make_ingest()
    out = ingest.render(
        message(
            [
                (T0, rec("a", log=b"raw \xff bytes")),
                (T0, {**rec("a"), 5: "int key", b"k": "bytes key"}),
            ]
        ),
        Receipt("i", 1, 1),
    )
    (_, first), (_, second) = docs(out["a"][0])
    assert first["log"] == "raw \ufffd bytes"
    assert second["5"] == "int key"
    assert "bytes key" in second.values()  # a bytes key is kept (base64), never a lost record


def test_filters_see_only_their_tenant_and_discards_are_counted() -> None:
    grep = TypeAdapter(list[FilterConfig]).validate_python(
        [{"type": "grep", "regex": "drop me", "mode": "exclude"}]
    )
    ingest = make_ingest({"a": FilterChain.compile(grep)})
    out = ingest.render(
        message([(T0, rec("a", "keep")), (T0, rec("a", "drop me")), (T0, rec("b", "drop me"))]),
        Receipt("i", 1, 1),
    )
    assert [s["log"] for _, s in docs(out["a"][0])] == ["keep"]
    assert [s["log"] for _, s in docs(out["b"][0])] == ["drop me"]


async def test_byte_budget_grants_in_order_and_never_starves_a_big_holder() -> None:
    budget = ByteBudget(100)
    await budget.acquire(80)
    order: list[str] = []

    async def take(name: str, size: int) -> None:
        await budget.acquire(size)
        order.append(name)

    waiting = [asyncio.create_task(take("big", 500)), asyncio.create_task(take("small", 10))]
    await asyncio.sleep(0)
    assert order == []  # the big one waits for an empty budget; the small one queues behind it
    budget.release(80)
    await asyncio.wait_for(waiting[0], 5)
    assert order == ["big"]
    budget.release(500)
    await asyncio.wait_for(waiting[1], 5)
    assert order == ["big", "small"]
    assert budget.held == 10
