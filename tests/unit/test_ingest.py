"""Ingest rendering: ids, indices, timestamps, tenant filters, odd records kept, byte budget."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from logferry.aggregator.documents import fragment_ndjson, split_fragment
from logferry.aggregator.ingest import Ingest, Rendered
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.render import ORIGINAL_TIME_FIELD, Receipt
from logferry.aggregator.routing import TenantResolver
from logferry.common.budget import ByteBudget
from logferry.common.naming import IndexNamer
from logferry.common.protocol import EventMessage, EventTime, Mode
from logferry.common.protocol.entries import UnreadableRecord

T0 = 1764115199  # 2025-11-25T23:59:59Z


class Out(dict[str, tuple[bytes, int]]):
    """A rendered message as tenant -> (the tenant's fragment bytes, documents)."""

    def __init__(self, rendered: Rendered) -> None:
        super().__init__(
            {
                tenant: (b"".join(map(fragment_ndjson, parts)), n)
                for tenant, (parts, n) in rendered.fragments.items()
            }
        )
        self.letters = rendered.letters


def make_ingest(resolver: TenantResolver | None = None, now: float = T0 + 60) -> Ingest:
    return Ingest(
        None,  # type: ignore[arg-type]  # rendering never touches the spools
        AggregatorMetrics(),
        namer=IndexNamer("logs"),
        default_tenant="_default",
        instance="agg-0/1/x",
        resolver=resolver,
        clock=lambda: now,
    )


def render(ingest: Ingest, msg: EventMessage, receipt: Receipt | None = None) -> Out:
    return Out(ingest.render(msg, receipt or Receipt("i", 1, 1)))


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
    out = render(
        ingest,
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
    first = docs(render(ingest, message(entries), Receipt("i", 1, 1))["a"][0])
    again = docs(render(ingest, message(entries), Receipt("i", 2, 9))["a"][0])
    ids = [action["create"]["_id"] for action, _ in first]
    assert ids == [action["create"]["_id"] for action, _ in again]
    assert len(set(ids)) == 2  # identical lines are still two documents
    unchunked = [message(entries, chunk=None)]
    one = docs(render(ingest, unchunked[0], Receipt("i", 1, 1))["a"][0])
    two = docs(render(ingest, unchunked[0], Receipt("i", 1, 2))["a"][0])
    assert {a["create"]["_id"] for a, _ in one}.isdisjoint({a["create"]["_id"] for a, _ in two})


def test_odd_records_are_written_not_dropped() -> None:
    ingest = make_ingest()
    out = render(
        ingest,
        message(
            [
                (T0, rec("a", log=b"raw \xff bytes")),
                (T0, {**rec("a"), 5: "int key", b"k": "bytes key"}),
            ]
        ),
    )
    (_, first), (_, second) = docs(out["a"][0])
    assert first["log"] == "raw \ufffd bytes"
    assert second["5"] == "int key"
    assert "bytes key" in second.values()  # a bytes key is kept (base64), never a lost record


def test_times_outside_the_window_are_stored_at_receipt_with_the_original_kept() -> None:
    received = T0 + 60
    ingest = make_ingest(now=received)
    out = render(
        ingest,
        message(
            [
                (0, rec("a", "1970")),
                (EventTime(received + 5 * 86400, 7), rec("a", "future")),
                (EventTime(T0, 1), rec("a", "now")),
            ]
        ),
    )
    (old_action, old), (future_action, future), (now_action, now) = docs(out["a"][0])
    assert old[ORIGINAL_TIME_FIELD] == "1970-01-01T00:00:00.000000000Z"
    assert old["@timestamp"] == "2025-11-26T00:00:59.000000000Z"
    assert old_action["create"]["_index"] == "logs-a-2025.11.26"  # not an index for 1970
    assert future[ORIGINAL_TIME_FIELD].startswith("2025-12-01T00:00:59.000000007")
    assert future_action["create"]["_index"] == "logs-a-2025.11.26"
    assert ORIGINAL_TIME_FIELD not in now
    assert now_action["create"]["_index"] == "logs-a-2025.11.25"


def test_namespaces_past_the_cap_or_off_the_list_go_to_default_marked() -> None:
    resolver = TenantResolver("_default", max_tenants=1, allowed=frozenset({"a", "b"}))
    ingest = make_ingest(resolver)
    out = render(ingest, message([(T0, rec("a")), (T0, rec("b")), (T0, rec("c")), (T0, rec(None))]))
    assert set(out) == {"a", "_default"}
    marks = [source.get("rerouted") for _a, source in docs(out["_default"][0])]
    assert marks == [
        {"from": "b", "reason": "tenant_cap"},
        {"from": "c", "reason": "not_allowed"},
        None,  # no namespace at all: default without a mark
    ]


def test_unreadable_and_unwritable_records_become_letters_the_rest_goes_on() -> None:
    ingest = make_ingest()
    deep = UnreadableRecord("record nested deeper than 64 levels", b"\x92\x01\x80", {})
    deep["kubernetes"] = {"namespace_name": "a"}

    class Unwritable:
        pass

    out = render(
        ingest,
        message(
            [
                (T0, rec("a", "fine")),
                (T0, deep),
                (T0, rec("a", "bad", thing=Unwritable())),
                (T0, rec("b", "other tenant")),
            ]
        ),
    )
    assert [s["log"] for _a, s in docs(out["a"][0])] == ["fine"]
    assert [s["log"] for _a, s in docs(out["b"][0])] == ["other tenant"]
    reasons = sorted(letter.reason.split(":", 2)[1].strip() for letter in out.letters)
    assert reasons == ["cannot be written as JSON", "record nested deeper than 64 levels"]
    assert {letter.tenant for letter in out.letters} == {"a"}
    kept = [json.loads(letter.source) for letter in out.letters]
    assert any(k["unrenderable"].get("msgpack_base64") == "kgGA" for k in kept)
    assert all(k["kubernetes"] == {"namespace_name": "a"} for k in kept)


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
