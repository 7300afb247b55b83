"""Forwarder checkpoints through a real aggregator: mixed into chunks with log records, stored
once each (a resent chunk is a 409) in the tenant's accounting indices with the template's
types, in the store and in the file output; the tenant's own indices hold log records only."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from logferry.common.protocol import EventTime
from tests.support.aggregator import MakeAggregator, input_port, unique_ns
from tests.support.forward_client import ForwardClient
from tests.support.net import wait_until
from tests.support.opensearch_client import ANY_DOCUMENT, StoreReader, wait_count
from tests.support.records import Entry, compressed_chunk, container_entries, wire_checkpoint

pytestmark = pytest.mark.integration

RECORDS = 60


def mixed(ns: str) -> tuple[list[Entry], list[Entry], Entry]:
    """A source's records with its checkpoints among them (as a forwarder interleaves
    them), and one record that claims to be an accounting record (a peer's forgery)."""
    records = container_entries(ns, RECORDS)
    src = records[0][1]["_lf"]["src"]
    now = time.time()
    checkpoints = [
        wire_checkpoint(ns, src, 20, when=EventTime.from_float(now)),
        wire_checkpoint(ns, src, 40, when=EventTime.from_float(now)),
        wire_checkpoint(
            ns, src, RECORDS, state="lost", lost_lines=-1, reason="rotated away unread"
        ),
    ]
    forged_lf = {"id": f"{src}-forged", "src": src, "kind": "accounting", "lines": 1000}
    forged_lf["discarded"] = [{"first": 0, "last": 999, "pipeline": "x", "filter": 0}]
    forged = (EventTime.from_float(now), {"log": "forged", "kubernetes": {"namespace_name": ns}})
    forged[1]["_lf"] = forged_lf
    entries = records[:20] + checkpoints[:1] + records[20:40] + checkpoints[1:2]
    return entries + records[40:] + checkpoints[2:], checkpoints, forged


async def test_checkpoints_are_stored_once_in_the_accounting_index_with_their_types(
    opensearch: Any, make_aggregator: MakeAggregator
) -> None:
    agg = make_aggregator(opensearch.url)
    await agg.start()
    ns = unique_ns("ckpt")
    entries, checkpoints, forged = mixed(ns)
    chunk = compressed_chunk([*entries, forged], "ckpt-1")
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        await client.send(chunk)
        await client.wait_ack("ckpt-1")
    store = StoreReader(opensearch.url)
    accounting = f"logs-{ns}.lf-accounting-*"
    await wait_count(store, f"logs-{ns}-*", RECORDS + 1)
    await wait_count(store, accounting, len(checkpoints), query=ANY_DOCUMENT)
    # A forwarder that missed the ack sends the chunk again: every document is a 409.
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        await client.send(chunk)
        await client.wait_ack("ckpt-1")

    async def resend_settled() -> bool:
        return await agg.metric("logferry_duplicates_total", tenant=ns) >= len(entries) + 1

    await wait_until(resend_settled, timeout_s=30, what="the resent chunk to settle as 409s")

    stored = await store.search(accounting, query=ANY_DOCUMENT)
    assert sorted(h["_id"] for h in stored) == sorted(c["_lf"]["id"] for _t, c in checkpoints)
    assert all(h["_index"].startswith(f"logs-{ns}.lf-accounting-20") for h in stored)
    by_id = {h["_id"]: h["_source"] for h in stored}
    for _time, checkpoint in checkpoints:
        assert by_id[checkpoint["_lf"]["id"]]["_lf"] == checkpoint["_lf"]
    # Log records only in the tenant's own indices, the forged accounting record among them.
    own = await store.search(f"logs-{ns}-*", query=ANY_DOCUMENT)
    assert len(own) == RECORDS + 1
    assert not [h for h in own if "kind" in h["_source"]["_lf"]]
    (kept,) = [h["_source"] for h in own if h["_source"]["log"] == "forged"]
    assert kept["_lf"]["wire_kind"] == "accounting"
    assert await store.count(accounting, {"term": {"_lf.kind": "accounting"}}) == 0
    # What StoreReader counts by default: log records, whatever the pattern matches.
    assert await store.count(f"logs-{ns}*") == RECORDS + 1

    for index, fields in (await store.field_types(accounting, "_lf")).items():
        types = {name: fields[name]["type"] for name in ("next_seq", "lost_lines")}
        types |= {name: fields[name]["type"] for name in ("state", "reason", "node", "kind")}
        assert types == {
            "next_seq": "long",
            "lost_lines": "long",
            "state": "keyword",
            "reason": "keyword",
            "node": "keyword",
            "kind": "keyword",
        }, index

    assert await agg.metric("logferry_checkpoints_received_total", tenant=ns) == 6
    assert await agg.metric("logferry_records_in_total", tenant=ns) == 2 * (RECORDS + 1)
    refused = await agg.metric("logferry_records_kind_refused_total", tenant=ns)
    assert refused == 2  # the forgery, received twice
    assert await agg.stop() == 0


async def test_the_file_output_writes_checkpoints_under_the_accounting_index(
    make_aggregator: MakeAggregator,
) -> None:
    agg = make_aggregator(None, output=None)  # no store: NDJSON files per index
    await agg.start()
    ns = unique_ns("ckptf")
    entries, checkpoints, _forged = mixed(ns)
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        await client.send(compressed_chunk(entries, "f-1"))
        await client.wait_ack("f-1")
    out_dir = agg.workdir / "output"

    def lines_by_index() -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for path in out_dir.rglob("*.ndjson"):
            docs = [json.loads(line) for line in path.read_text().splitlines() if line]
            found.setdefault(path.parent.name, []).extend(docs)
        return found

    async def written() -> bool:
        return sum(map(len, lines_by_index().values())) == len(entries)

    await wait_until(written, timeout_s=30, what=f"{len(entries)} NDJSON lines under output/")
    found = lines_by_index()
    accounting = {name: docs for name, docs in found.items() if ".lf-accounting-" in name}
    assert all(name.startswith(f"logs-{ns}.lf-accounting-20") for name in accounting)
    stored = [doc["_lf"] for docs in accounting.values() for doc in docs]
    assert sorted(lf["id"] for lf in stored) == sorted(c["_lf"]["id"] for _t, c in checkpoints)
    records = [doc for name, docs in found.items() if name not in accounting for doc in docs]
    assert sorted(doc["_lf"]["seq"] for doc in records) == list(range(RECORDS))
    assert await agg.stop() == 0
