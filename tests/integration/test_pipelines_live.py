"""Tenant LogPipelines in a running aggregator: hot changes under load, last-known-good,
isolation between tenants. Real aggregator process, real sockets, real OpenSearch."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.aggregator import MakeAggregator, input_port, unique_ns
from tests.support.bulk_fault_proxy import BulkFaultProxy
from tests.support.forward_client import ForwardClient
from tests.support.log_pipelines import log_pipeline
from tests.support.net import wait_until
from tests.support.opensearch_client import ANY_DOCUMENT, StoreReader, wait_count
from tests.support.records import compressed_chunk, container_entries

pytestmark = pytest.mark.integration


def pipeline(ns: str, name: str, filters: list[dict[str, Any]], **destination: Any) -> str:
    """The YAML of tenant ``ns``'s pipeline ``name``, as its ConfigMap mount holds it."""
    document = log_pipeline(name, filters, namespace=ns, order=10, destination=destination)
    return yaml.safe_dump(document)


def write(directory: Path, name: str, text: str) -> None:
    # As kubelet updates a ConfigMap mount: never a half-written file.
    tmp = directory / f".{name}.tmp"
    tmp.write_text(text)
    tmp.replace(directory / name)


def statuses(path: Path) -> dict[str, dict[str, Any]]:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {p["pipeline"]: p for p in body["pipelines"]}


async def _applied_other_than(status_file: Path, key: str, old_hash: str) -> bool:
    state = statuses(status_file).get(key, {})
    return state.get("state") == "Accepted" and state.get("applied_hash") not in (None, old_hash)


def with_pipelines(tmp_path: Path) -> dict[str, Any]:
    directory = tmp_path / "pipelines"
    directory.mkdir()
    return {
        "pipelines": {
            "directory": str(directory),
            "debounce_s": 0.1,
            "rescan_interval_s": 1,
            "status_file": str(tmp_path / "pipelines-status.json"),
        }
    }


async def test_hot_change_under_load_each_record_processed_by_exactly_one_version(
    opensearch: Any, make_aggregator: MakeAggregator, tmp_path: Path
) -> None:
    ns = unique_ns("hot")
    settings = with_pipelines(tmp_path)
    directory = Path(settings["pipelines"]["directory"])
    status_file = Path(settings["pipelines"]["status_file"])
    write(directory, "p.yaml", pipeline(ns, "mark", [{"type": "add", "fields": {"v1": True}}]))
    agg = make_aggregator(opensearch.url, **settings)
    await agg.start()
    entries = container_entries(ns, 6000)
    chunks = 60
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        for n in range(chunks):
            await client.send(compressed_chunk(entries[n * 100 : (n + 1) * 100], f"c-{n}"))
            if n == chunks // 2:
                first_hash = statuses(status_file)[f"{ns}/mark"]["applied_hash"]
                marked = pipeline(ns, "mark", [{"type": "add", "fields": {"v2": True}}])
                write(directory, "p.yaml", marked)
                await wait_until(
                    functools.partial(_applied_other_than, status_file, f"{ns}/mark", first_hash),
                    timeout_s=30,
                    what="v2 to be applied",
                )
        for n in range(chunks):
            await client.wait_ack(f"c-{n}")
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{ns}-*", 6000, timeout_s=120)
    hits = await store.search(f"logs-{ns}-*", size=10_000)
    assert len(hits) == 6000
    versions = [(h["_source"].get("v1", False), h["_source"].get("v2", False)) for h in hits]
    assert all(v1 != v2 for v1, v2 in versions)  # one version each, never both or neither
    assert sum(1 for v1, _v2 in versions if v1) >= 3000  # the first half went through v1
    assert sum(1 for _v1, v2 in versions if v2) >= 100  # after the change: v2
    assert await agg.stop() == 0


async def test_an_invalid_change_keeps_the_last_good_pipeline_and_other_tenants_move_on(
    opensearch: Any, make_aggregator: MakeAggregator, tmp_path: Path
) -> None:
    ns_a, ns_b = unique_ns("lkg-a"), unique_ns("lkg-b")
    settings = with_pipelines(tmp_path)
    directory = Path(settings["pipelines"]["directory"])
    status_file = Path(settings["pipelines"]["status_file"])
    write(directory, "a.yaml", pipeline(ns_a, "a", [{"type": "add", "fields": {"good": 1}}]))
    write(directory, "b.yaml", pipeline(ns_b, "b", [{"type": "add", "fields": {"b": 1}}]))
    agg = make_aggregator(opensearch.url, **settings)
    await agg.start()
    good_hash = statuses(status_file)[f"{ns_a}/a"]["applied_hash"]
    # Tenant A breaks its pipeline (a catastrophic regex); tenant B changes its own.
    bad = [{"type": "grep", "field": "log", "regex": "(a+)+$"}]
    write(directory, "a.yaml", pipeline(ns_a, "a", bad))
    write(directory, "b.yaml", pipeline(ns_b, "b", [{"type": "add", "fields": {"b": 2}}]))

    async def settled() -> bool:
        states = statuses(status_file)
        a, b = states.get(f"{ns_a}/a", {}), states.get(f"{ns_b}/b", {})
        return (
            a.get("state") == "Rejected"
            and b.get("observed_hash") == b.get("applied_hash") != statuses_b_first
        )

    statuses_b_first = statuses(status_file)[f"{ns_b}/b"]["applied_hash"]
    await wait_until(settled, timeout_s=30, what="A rejected and B applied")
    state_a = statuses(status_file)[f"{ns_a}/a"]
    assert state_a["applied_hash"] == good_hash  # the last good version stays in force
    assert any("regex" in issue for issue in state_a["issues"]), state_a["issues"]
    assert await agg.metric("logferry_pipeline_rejections_total", tenant=ns_a) >= 1
    entries_a, entries_b = container_entries(ns_a, 50), container_entries(ns_b, 50)
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        await client.send(compressed_chunk(entries_a + entries_b, "mixed"))
        await client.wait_ack("mixed")
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{ns_a}-*", 50)
    await wait_count(store, f"logs-{ns_b}-*", 50)
    assert {h["_source"].get("good") for h in await store.search(f"logs-{ns_a}-*")} == {1}
    assert {h["_source"].get("b") for h in await store.search(f"logs-{ns_b}-*")} == {2}
    assert await agg.stop() == 0


async def test_a_destination_suffix_stays_inside_the_tenant_and_a_failing_one_stalls_no_other(
    opensearch: Any, make_aggregator: MakeAggregator, tmp_path: Path
) -> None:
    ns_a, ns_b = unique_ns("iso-a"), unique_ns("iso-b")
    settings = with_pipelines(tmp_path)
    directory = Path(settings["pipelines"]["directory"])
    # Tenant A names B in its suffix: the index is still A's own (logs-<A>.<suffix>-date).
    write(directory, "a.yaml", pipeline(ns_a, "a", [], indexSuffix=f"to-{ns_b}"))
    proxy = BulkFaultProxy(opensearch.url)
    proxy.fail_429_index = lambda index: index.startswith(f"logs-{ns_a}.")  # A's store refuses
    await proxy.start()
    try:
        agg = make_aggregator(proxy.url, **settings)
        await agg.start()
        total = 40
        async with ForwardClient("127.0.0.1", input_port(agg)) as client:
            for n in range(total):
                a = container_entries(ns_a, 100, start_seq=n * 100)
                b = container_entries(ns_b, 100, start_seq=n * 100)
                await client.send(compressed_chunk(a + b, f"m-{n}"))
            for n in range(total):
                await client.wait_ack(f"m-{n}")
        store = StoreReader(opensearch.url)
        # B flows while every one of A's items keeps being refused; A's backlog is visible.
        await wait_count(store, f"logs-{ns_b}-*", total * 100, timeout_s=120)
        assert await store.count(f"logs-{ns_a}*") == 0
        assert await agg.metric("logferry_spool_fragments", tenant=ns_a) > 0
        proxy.fail_429_index = None  # A's destination recovers: nothing of A was lost
        await wait_count(store, f"logs-{ns_a}.to-{ns_b}-*", total * 100, timeout_s=120)
        assert await store.count(f"logs-{ns_b}-*") == total * 100  # nothing of A went to B
        assert await agg.stop() == 0
    finally:
        await proxy.stop()


async def test_filtered_lines_stay_provable_and_a_resend_cut_elsewhere_adds_nothing(
    opensearch: Any, make_aggregator: MakeAggregator, tmp_path: Path
) -> None:
    from logferry.common.store_access import StoreAccess
    from logferry.tools.verify import VerifyOptions, verify

    ns = unique_ns("proof")
    settings = with_pipelines(tmp_path)
    directory = Path(settings["pipelines"]["directory"])
    filters = [
        # Joined at the forwarder (these records come joined, or not, from the client): the
        # aggregator passes them on as they are.
        {"type": "multiline", "field": "log", "start": "^START"},
        {"type": "grep", "field": "log", "regex": "keep", "mode": "include"},
    ]
    write(directory, "p.yaml", pipeline(ns, "p", filters))
    agg = make_aggregator(opensearch.url, **settings)
    await agg.start()
    entries = container_entries(ns, 400)
    texts = ["START keep {}", "\tat frame {}", "START drop {}", "\tat frame {}"]
    for seq, (_time, record) in enumerate(entries):
        record["log"] = texts[seq % 4].format(seq)
    # First as 4 chunks of 100, then again cut elsewhere (as after a forwarder restart): the
    # accounting records of the second cut list some of the same seqs again, harmlessly.
    cuts = [(n * 100, n * 100 + 100) for n in range(4)] + [(1, 151), (151, 301), (301, 400)]
    async with ForwardClient("127.0.0.1", input_port(agg)) as client:
        for number, (start, end) in enumerate(cuts):
            await client.send(compressed_chunk(entries[start:end], f"k-{number}"))
        for number in range(len(cuts)):
            await client.wait_ack(f"k-{number}")
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{ns}-*", 100)

    async def verified() -> bool:
        report = await verify(
            VerifyOptions(store=StoreAccess(urls=[opensearch.url]), index=f"logs-{ns}-*")
        )
        return report.ok and report.totals.expected == 400

    await wait_until(verified, timeout_s=60, what="verify to account for all 400 lines")
    report = await verify(
        VerifyOptions(store=StoreAccess(urls=[opensearch.url]), index=f"logs-{ns}-*")
    )
    totals = report.totals
    assert (totals.found, totals.accounted, totals.missing, totals.duplicates) == (100, 300, 0, 0)
    hits = {
        h["_source"]["_lf"]["seq"]: h["_source"]
        for h in await store.search(f"logs-{ns}-*", size=1000)
    }
    assert sorted(hits) == list(range(0, 400, 4))
    assert all(hits[seq]["log"] == f"START keep {seq}" for seq in hits)
    accounting = await store.search(f"logs-{ns}.lf-accounting-*", 1000, ANY_DOCUMENT)
    assert {h["_source"]["_lf"]["kind"] for h in accounting} == {"accounting"}
    listed = {
        seq
        for h in accounting
        for r in h["_source"]["_lf"]["discarded"]
        for seq in range(r["first"], r["last"] + 1)
    }
    assert listed == {s for s in range(400) if s % 4}
    # One record per source and message, not one per line.
    assert len(accounting) <= len(cuts)
    assert await agg.stop() == 0


async def test_a_stuck_tenant_past_its_share_is_parked_in_the_dlq_and_others_keep_flowing(
    opensearch: Any, make_aggregator: MakeAggregator, tmp_path: Path
) -> None:
    from logferry.aggregator.dlq_cli import dlq_main
    from logferry.common.store_access import StoreAccess
    from logferry.tools.verify import VerifyOptions, verify

    ns_a, ns_b = unique_ns("stuck-a"), unique_ns("stuck-b")
    proxy = BulkFaultProxy(opensearch.url)
    proxy.fail_429_index = lambda index: index.startswith(f"logs-{ns_a}-")  # A: always refused
    await proxy.start()
    try:
        agg = make_aggregator(
            proxy.url,
            spool={
                "max_bytes": "64MiB",
                "tenant_max_bytes": "2MiB",
                "segment_max_bytes": "1MiB",
                "divert_stuck_after_s": 2,
                "compression": "none",  # stored as rendered: A's records overflow its share
            },
        )
        await agg.start()
        # 8,000 of A's records: well over its 2 MiB share; B's 1,600 fit in its own share,
        # so B is never the one judged stuck, however slow this machine is.
        chunks = 80
        async with ForwardClient("127.0.0.1", input_port(agg)) as client:
            for n in range(chunks):
                a = container_entries(ns_a, 100, start_seq=n * 100)
                b = container_entries(ns_b, 20, start_seq=n * 20)
                await client.send(compressed_chunk(a + b, f"s-{n}"))
            for n in range(chunks):  # every chunk acked: A's overflow did not hold B up
                await client.wait_ack(f"s-{n}", timeout_s=120)
        store = StoreReader(opensearch.url)
        await wait_count(store, f"logs-{ns_b}-*", chunks * 20, timeout_s=120)
        assert await agg.metric("logferry_records_diverted_total", tenant=ns_b) == 0
        parked = await agg.metric("logferry_records_diverted_total", tenant=ns_a)
        assert 0 < parked < chunks * 100  # A's share took the first part, the DLQ the rest
        # A's store recovers: its spool drains by itself, the parked part comes back by replay.
        proxy.fail_429_index = None
        dlq_dir = Path(agg.config["dlq"]["directory"])
        report = await verify(
            VerifyOptions(
                store=StoreAccess(urls=[opensearch.url]),
                index=f"logs-{ns_a}-*",
                dlq_dirs=(dlq_dir,),
            )
        )
        assert report.totals.duplicates == 0
        await wait_count(store, f"logs-{ns_a}-*", chunks * 100 - int(parked), timeout_s=120)
        replay = ["replay", "--dlq-dir", str(dlq_dir), "--url", opensearch.url, "--tenant", ns_a]
        assert await asyncio.to_thread(dlq_main, replay) == 0
        await wait_count(store, f"logs-{ns_a}-*", chunks * 100, timeout_s=120)
        for ns, count in ((ns_a, chunks * 100), (ns_b, chunks * 20)):
            final = await verify(
                VerifyOptions(store=StoreAccess(urls=[opensearch.url]), index=f"logs-{ns}-*")
            )
            totals = final.totals
            assert (totals.found, totals.missing, totals.duplicates) == (count, 0, 0)
        assert await agg.stop() == 0
    finally:
        await proxy.stop()
