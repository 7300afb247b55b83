"""The store side against a real OpenSearch node: logferry's index template (in place before
the first document, explicit keyword and ``date_nanos`` fields, winning over a competing
template), retention (``logferry store retention`` dry run then delete, the janitor, its
lease), ``logferry store setup|status``, and cluster-level refusals (write block, closed
index, shard limit, auto-create off) held in the spool and delivered once lifted, never
dead-lettered.

Every test uses its own tenants. Cluster settings a test changes are reset in ``finally``:
the node is shared by the session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.opensearch_node import OpenSearchNode
from logferry.common.naming import IndexNamer
from logferry.common.protocol import EventTime
from logferry.common.store_access import StoreAccess
from logferry.store.client import StoreClient, open_store
from logferry.store.lease import Lease
from tests.support.aggregator import MakeAggregator, aggregator_config, input_port, unique_ns
from tests.support.commands import run_module
from tests.support.daemon import DaemonProcess
from tests.support.forward_client import ForwardClient
from tests.support.net import wait_until
from tests.support.opensearch_client import StoreReader, wait_count
from tests.support.records import Entry, compressed_chunk, container_entries

pytestmark = pytest.mark.integration

DAY_S = 86400
# Yesterday at noon UTC: inside the aggregator's accepted window, and one index whichever
# moment of the day the test runs.
EVENT_S = (int(time.time()) // DAY_S - 1) * DAY_S + 12 * 3600


@pytest.fixture
async def client(opensearch: OpenSearchNode) -> AsyncIterator[StoreClient]:
    async with open_store(StoreAccess(urls=[opensearch.url])) as store:
        yield store


def at(entries: list[Entry], epoch_s: float, nanos: int = 0) -> list[Entry]:
    """``entries`` with their times set to ``epoch_s`` (plus ``nanos``), one microsecond apart."""
    return [
        (EventTime(int(epoch_s) + (n // 1_000_000), nanos + (n % 1_000_000) * 1000), record)
        for n, (_, record) in enumerate(entries)
    ]


def day_index(tenant: str, epoch_s: float = EVENT_S) -> str:
    return IndexNamer("logs").index(tenant, epoch_s)


async def send(agg: DaemonProcess, entries: list[Entry], chunk: str) -> None:
    """Send ``entries`` in one message and wait for the aggregator's ack (it is spooled)."""
    async with ForwardClient("127.0.0.1", input_port(agg)) as forward:
        await forward.send(compressed_chunk(entries, chunk))
        await forward.wait_ack(chunk)


async def run_cli(*args: str) -> tuple[int, str, str]:
    return await run_module("logferry.store.cli", *args)


async def test_template_is_in_place_before_the_first_document_and_wins(
    make_aggregator: MakeAggregator, opensearch: OpenSearchNode, client: StoreClient
) -> None:
    ns = unique_ns("tpl")
    # A competing template for the same pattern, as a cluster's other shipper may have: its
    # mappings would make _lf.src text and @timestamp millisecond dates, with 3 shards.
    competing = {
        "index_patterns": ["logs-*"],
        "priority": 100,
        "template": {
            "settings": {"index": {"number_of_shards": 3}},
            "mappings": {
                "properties": {"@timestamp": {"type": "date"}, "_lf": {"type": "object"}},
                "dynamic_templates": [
                    {"all": {"match_mapping_type": "string", "mapping": {"type": "text"}}}
                ],
            },
        },
    }
    await client.request("PUT", "/_index_template/competing-logs", competing)
    agg = make_aggregator(opensearch.url)
    try:
        await agg.start()
        entries = at(container_entries(ns, 50), EVENT_S, nanos=123_456_789)
        await send(agg, entries, "tpl-0")
        store = StoreReader(opensearch.url)
        await wait_count(store, f"logs-{ns}-*", 50)
        assert await agg.metric("logferry_store_template_installs_total", outcome="failed") == 0

        index = day_index(ns)
        mapping = (await client.request("GET", f"/{index}/_mapping"))[index]["mappings"]
        props = mapping["properties"]
        assert props["@timestamp"] == {"type": "date_nanos"}
        assert props["_lf"]["properties"]["src"] == {"type": "keyword"}
        assert props["_lf"]["properties"]["seq"] == {"type": "long"}
        assert props["kubernetes"]["properties"]["namespace_name"] == {"type": "keyword"}
        assert props["log"] == {"type": "text"}
        settings = (await client.request("GET", f"/{index}/_settings"))[index]["settings"]
        assert settings["index"]["number_of_shards"] == "1"
        assert settings["index"]["mapping"]["total_fields"]["limit"] == "1000"

        # _lf.src is a keyword itself (no .keyword), and the nanoseconds survive: the sort
        # value of date_nanos is the exact epoch nanosecond.
        first = entries[0][1]["_lf"]["src"]
        query = {
            "size": 1,
            "query": {"term": {"_lf.src": first}},
            "sort": [{"@timestamp": "asc"}],
        }
        await client.request("POST", f"/{index}/_refresh")
        found = await client.request("POST", f"/{index}/_search", query)
        assert found["hits"]["total"]["value"] == 50
        (hit,) = found["hits"]["hits"]
        assert hit["sort"] == [EVENT_S * 1_000_000_000 + 123_456_789]
        assert hit["_source"]["@timestamp"].endswith(".123456789Z")
        assert hit["_source"]["_lf"]["src"] == first
        assert await agg.stop() == 0
    finally:
        await client.call("DELETE", "/_index_template/competing-logs", accept=(404,))
        await client.call("DELETE", f"/logs-{ns}-*", accept=(404,))


def cli_config(tmp_path: Path, url: str, indices: dict[str, Any]) -> Path:
    config = aggregator_config(tmp_path, url, indices=indices)
    path = tmp_path / "aggregator.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def create_index(client: StoreClient, index: str, settings: Any = None) -> None:
    body = {"settings": {"index": {"number_of_replicas": 0, **(settings or {})}}}
    await client.request("PUT", f"/{index}", body)


async def existing(client: StoreClient, pattern: str) -> set[str]:
    rows = await client.request(
        "GET", f"/_cat/indices/{pattern}?format=json&h=index&expand_wildcards=all", accept=(404,)
    )
    return {row["index"] for row in rows or []}


async def test_store_retention_dry_run_then_delete_only_past_retention_and_only_ours(
    opensearch: OpenSearchNode, client: StoreClient, tmp_path: Path
) -> None:
    ns, other = unique_ns("keep"), unique_ns("ever")
    now = time.time()
    old = [
        f"logs-{ns}-2020.01.01",  # a day, long past 30 days
        f"logs-{ns}.audit-2020.01.02",  # a pipeline's suffixed index of the same tenant
        IndexNamer("logs", "week").index(ns, now - 60 * DAY_S),  # a week two months ago
    ]
    kept = [
        day_index(ns, now),  # today
        day_index(ns, now - 20 * DAY_S),  # inside 30 days
        f"logs-{ns}-backup",  # not a name logferry builds
        f"logs-{ns}-2020.01.01-restored",  # nor this
        f"logs-{other}-2020.01.01",  # a tenant kept for ever (the default: 0 days)
    ]
    for index in old + kept:
        await create_index(client, index)
    await client.request("POST", f"/{old[0]}/_close")  # a closed index is still deleted
    config = cli_config(tmp_path, opensearch.url, {"tenants": {ns: {"retention_days": 30}}})
    try:
        code, out, err = await run_cli("retention", "--config", str(config), "--dry-run")
        assert code == 0, err
        assert sorted(line.split()[2] for line in out.splitlines()[:-1]) == sorted(old)
        assert all(line.startswith("would delete ") for line in out.splitlines()[:-1])
        assert await existing(client, f"logs-{ns}*") | await existing(
            client, f"logs-{other}*"
        ) == set(old + kept)

        code, out, err = await run_cli("retention", "--config", str(config))
        assert code == 0, err
        assert out.count("\ndeleted ") + out.startswith("deleted ") == len(old)
        assert await existing(client, f"logs-{ns}*") | await existing(
            client, f"logs-{other}*"
        ) == set(kept)

        code, out, err = await run_cli("retention", "--config", str(config), "--json")
        assert code == 0, err
        assert '"expired": []' in out
    finally:
        await client.call("DELETE", f"/logs-{ns}*,logs-{other}*", accept=(404,))


async def test_janitor_deletes_at_start_and_counts(
    make_aggregator: MakeAggregator, opensearch: OpenSearchNode, client: StoreClient
) -> None:
    ns = unique_ns("jan")
    past, inside = f"logs-{ns}-2021.03.04", day_index(ns, time.time())
    for index in (past, inside):
        await create_index(client, index)
    agg = make_aggregator(opensearch.url, indices={"tenants": {ns: {"retention_days": 7}}})
    try:
        await agg.start()

        async def round_done() -> bool:
            return await agg.metric("logferry_store_janitor_runs_total") >= 1

        await wait_until(round_done, timeout_s=60, what="the janitor's first round")
        assert await agg.metric("logferry_store_janitor_runs_total", outcome="deleted") == 1
        assert await agg.metric("logferry_store_indices_deleted_total", tenant=ns) == 1
        assert await existing(client, f"logs-{ns}*") == {inside}
        assert await agg.stop() == 0
        assert [e["index"] for e in agg.events("store.index_deleted")] == [past]
    finally:
        await client.call("DELETE", f"/logs-{ns}*", accept=(404,))


async def test_lease_has_one_holder_and_is_taken_over_once_expired(client: StoreClient) -> None:
    name = f"test-{unique_ns('lease')}"
    clock = [time.time()]
    first = Lease(client, name, "agg-0", 60, clock=lambda: clock[0])
    second = Lease(client, name, "agg-1", 60, clock=lambda: clock[0])
    assert await first.acquire()
    assert not await second.acquire()
    assert await first.acquire()  # the holder renews
    await first.release()
    assert await second.acquire()  # given back: the next one takes it at once
    assert not await first.acquire()
    clock[0] += 61  # agg-1 died holding it: after its lease_s it is anyone's again
    both = await asyncio.gather(first.acquire(), Lease(client, name, "agg-2", 60).acquire())
    assert both.count(True) == 1
    await first.release()


async def test_store_setup_status_and_print(
    opensearch: OpenSearchNode, client: StoreClient, tmp_path: Path
) -> None:
    prefix = f"st{unique_ns('x').split('-')[1]}"
    indices = {
        "period": "week",
        "retention_days": 28,
        "replicas": 0,
        "tenants": {"audit": {"period": "month", "retention_days": 365}},
        "shard_budget": {"max_shards": 10, "tenants": 3},
    }
    config = cli_config(tmp_path, opensearch.url, indices)
    try:
        code, out, err = await run_cli(
            "setup", "--config", str(config), "--prefix", prefix, "--lifecycle", "ism", "--print"
        )
        assert code == 0, err
        assert f"PUT /_index_template/logferry-{prefix}" in out
        assert f"PUT /_plugins/_ism/policies/logferry-{prefix}-28d\n" in out
        assert f"PUT /_plugins/_ism/policies/logferry-{prefix}-365d-audit" in out
        assert f'"{prefix}-audit-2*"' in out

        # The local node has no ISM plugin: janitor is what runs here.
        code, out, err = await run_cli("setup", "--config", str(config), "--prefix", prefix)
        assert code == 0, err
        assert f"template logferry-{prefix}: installed" in out
        code, out, err = await run_cli("setup", "--config", str(config), "--prefix", prefix)
        assert f"template logferry-{prefix}: current" in out

        namer = IndexNamer(prefix, "week", {"audit": "month"})
        status, _ = await client.call(
            "PUT", f"/{namer.index('web', time.time())}/_doc/1?refresh=true", {"log": "x"}
        )
        assert status == 201
        await create_index(client, namer.index("audit", time.time()))
        code, out, err = await run_cli(
            "status", "--config", str(config), "--prefix", prefix, "--json"
        )
        assert code == 1, err  # 5 weekly + 13 monthly + 5 weekly shards: over 10
        report = yaml.safe_load(out)
        assert report["tenants"]["web"] == {
            "indices": 1,
            "shards": 1,
            "docs": 1,
            "period": "week",
            "retention_days": 28,
            "estimate": 5,
        }
        assert report["tenants"]["audit"]["estimate"] == 13
        assert report["budget"]["estimate"] == 5 + 13 + 5
        assert report["budget"]["over"] is True
        cluster = report["cluster"]
        assert cluster["data_nodes"] == 1
        assert cluster["limit"] == cluster["max_shards_per_node"] >= 1
        assert cluster["used"] >= 2
    finally:
        await client.call("DELETE", f"/_index_template/logferry-{prefix}", accept=(404,))
        await client.call("DELETE", f"/{prefix}-*", accept=(404,))


Lift = Callable[[], Awaitable[None]]


async def cluster_settings(client: StoreClient, **values: Any) -> None:
    await client.request("PUT", "/_cluster/settings", {"persistent": values})


async def write_block(client: StoreClient, index: str) -> Lift:
    await create_index(client, index, {"blocks": {"write": True}})
    return lambda: client.request("PUT", f"/{index}/_settings", {"index.blocks.write": False})


async def closed_index(client: StoreClient, index: str) -> Lift:
    await create_index(client, index)
    await client.request("POST", f"/{index}/_close")
    return lambda: client.request("POST", f"/{index}/_open?wait_for_active_shards=1")


async def shard_limit(client: StoreClient, index: str) -> Lift:
    # The index does not exist and one more shard would pass the limit: creating it fails.
    health = await client.request("GET", "/_cluster/health")
    shards = sum(int(health[k]) for k in ("active_shards", "unassigned_shards"))
    await cluster_settings(client, **{"cluster.max_shards_per_node": max(shards, 1)})
    return lambda: cluster_settings(client, **{"cluster.max_shards_per_node": None})


async def auto_create_off(client: StoreClient, index: str) -> Lift:
    await cluster_settings(client, **{"action.auto_create_index": False})
    return lambda: cluster_settings(client, **{"action.auto_create_index": None})


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [
        (write_block, "write_block"),
        (closed_index, "index_closed"),
        (shard_limit, "too_many_shards"),
        (auto_create_off, "index_missing"),
    ],
)
async def test_cluster_refusals_hold_records_in_the_spool_until_lifted(
    make_aggregator: MakeAggregator,
    opensearch: OpenSearchNode,
    client: StoreClient,
    refusal: Callable[[StoreClient, str], Awaitable[Lift]],
    reason: str,
) -> None:
    ns = unique_ns(reason.replace("_", ""))
    index = day_index(ns)
    agg = make_aggregator(opensearch.url)
    await agg.start()  # its template is in before the refusal is set up
    lift = await refusal(client, index)
    lifted = False
    try:
        await send(agg, at(container_entries(ns, 300), EVENT_S), "held-0")

        async def refused() -> bool:
            return (
                await agg.metric("logferry_store_refusals_total", tenant=ns, reason=reason) >= 300
            )

        await wait_until(refused, timeout_s=60, what=f"{reason} refusals", detail=agg.tail)
        assert await agg.metric("logferry_spool_fragments", tenant=ns) > 0
        assert any(e.get("reason") == reason for e in agg.events("bulk.held_by_store"))
        await lift()
        lifted = True
        store = StoreReader(opensearch.url)
        await wait_count(store, f"logs-{ns}-*", 300, timeout_s=120)

        async def drained() -> bool:
            return await agg.metric("logferry_spool_fragments", tenant=ns) == 0

        await wait_until(drained, timeout_s=60, what="the tenant's spool to drain")
        assert await store.count(f"logs-{ns}-*") == 300
        assert await agg.metric("logferry_dlq_records_total") == 0
        assert agg.events("bulk.store_accepts_again")
        assert await agg.stop() == 0
    finally:
        if not lifted:
            await lift()
        await client.call("DELETE", f"/logs-{ns}-*", accept=(404,))
