"""The aggregator as several worker processes: one port, one /metrics, crashes survived.

Real supervisor and worker processes on 127.0.0.1, the real OpenSearch node behind a proxy
that a test switches off to keep backlog in the workers' spools, and SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from devtools.opensearch_node import OpenSearchNode
from tests.support.aggregator import MakeAggregator, input_port, unique_ns
from tests.support.daemon import DaemonProcess, process_tree
from tests.support.forward_client import ForwardClient
from tests.support.net import wait_until
from tests.support.opensearch_client import StoreReader, wait_count
from tests.support.records import compressed_chunk, container_entries
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

CHUNK = 500


def worker_pids(agg: DaemonProcess) -> list[int]:
    """The supervisor's child processes (its workers)."""
    assert agg.proc is not None
    return process_tree(agg.proc.pid)[1:]


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def send_from(port: int, namespace: str, pod: str, chunks: int) -> None:
    """One connection sending ``chunks`` chunks of one source, each acked."""
    entries = container_entries(namespace, chunks * CHUNK, pod=pod)
    async with ForwardClient("127.0.0.1", port) as client:
        for n in range(chunks):
            await client.send(compressed_chunk(entries[n * CHUNK : (n + 1) * CHUNK], f"{pod}-{n}"))
            await client.wait_ack(f"{pod}-{n}")


async def per_worker(agg: DaemonProcess, name: str) -> dict[str, float]:
    """``name`` summed per ``worker`` label."""
    out: dict[str, float] = {}
    for (sample, labels), value in (await agg.metrics()).items():
        worker = dict(labels).get("worker")
        if sample == name and worker is not None:
            out[worker] = out.get(worker, 0.0) + value
    return out


async def test_two_workers_share_one_port_and_one_metrics_endpoint(
    make_aggregator: MakeAggregator, opensearch: OpenSearchNode
) -> None:
    agg = make_aggregator(opensearch.url, workers=2)
    await agg.start()
    assert len(worker_pids(agg)) == 2
    namespace = unique_ns("workers")
    senders = 12
    await asyncio.gather(
        *(send_from(input_port(agg), namespace, f"pod-{i}", 3) for i in range(senders))
    )
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{namespace}-*", senders * 3 * CHUNK)

    async def drained() -> bool:
        return await agg.metric("logferry_spool_fragments") == 0

    await wait_until(drained, timeout_s=60, what="every worker's spools to drain")
    assert await store.count(f"logs-{namespace}-*") == senders * 3 * CHUNK
    assert await agg.metric("logferry_acks_total") == senders * 3
    assert await agg.metric("logferry_aggregator_workers_running") == 2
    # Each worker's samples are there, told apart by their label.
    assert set(await per_worker(agg, "logferry_spool_fragments")) >= {"0"}
    assert set(await per_worker(agg, "logferry_connections")) == {"0", "1"}
    assert await agg.stop() == 0
    assert not any(alive(pid) for pid in worker_pids_gone(agg))


def worker_pids_gone(agg: DaemonProcess) -> list[int]:
    """Worker pids the supervisor logged at start (all must have exited with it)."""
    return [pid for event in agg.events("aggregator.supervising") for pid in event["pids"]]


async def test_a_killed_worker_is_restarted_and_delivers_what_it_acked(
    make_aggregator: MakeAggregator, opensearch: OpenSearchNode
) -> None:
    proxy = TcpProxy.in_front_of(opensearch.url)
    await proxy.start()
    proxy.set_down()  # the store unreachable: what is acked stays in the workers' spools
    agg = make_aggregator(proxy.url, workers=2)
    await agg.start()
    namespace = unique_ns("wkill")
    sent = 0

    async def both_hold_backlog() -> bool:
        nonlocal sent
        # New connections until both workers have accepted some (either may take any one).
        await send_from(input_port(agg), namespace, f"pod-{sent}", 1)
        sent += 1
        held = await per_worker(agg, "logferry_spool_fragments")
        return held.get("0", 0) > 0 and held.get("1", 0) > 0

    await wait_until(both_hold_backlog, timeout_s=60, what="backlog in both workers' spools")
    victim = worker_pids(agg)[1]
    os.kill(victim, signal.SIGKILL)

    async def restarted() -> bool:
        return (
            await agg.metric("logferry_aggregator_worker_restarts_total") == 1 and await agg.ready()
        )

    await wait_until(restarted, timeout_s=60, what="the killed worker to be restarted")
    assert victim not in worker_pids(agg)
    proxy.set_up()
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{namespace}-*", sent * CHUNK, timeout_s=120)

    async def drained() -> bool:
        return await agg.metric("logferry_spool_fragments") == 0

    await wait_until(drained, timeout_s=60, what="every worker's spools to drain")
    assert await store.count(f"logs-{namespace}-*") == sent * CHUNK
    assert await agg.stop() == 0
    await proxy.stop()


async def test_a_killed_supervisor_takes_its_workers_and_fewer_workers_drain_the_rest(
    make_aggregator: MakeAggregator, opensearch: OpenSearchNode
) -> None:
    proxy = TcpProxy.in_front_of(opensearch.url)
    await proxy.start()
    proxy.set_down()
    agg = make_aggregator(proxy.url, workers=2)
    await agg.start()
    namespace = unique_ns("wshrink")
    sent = 0

    async def worker_1_holds_backlog() -> bool:
        nonlocal sent
        await send_from(input_port(agg), namespace, f"pod-{sent}", 1)
        sent += 1
        return (await per_worker(agg, "logferry_spool_fragments")).get("1", 0) > 0

    await wait_until(worker_1_holds_backlog, timeout_s=60, what="backlog in worker 1's spools")
    workers = worker_pids(agg)
    agg.kill()  # the supervisor only: the kernel must take its workers with it

    async def workers_gone() -> bool:
        return not any(alive(pid) for pid in workers)

    await wait_until(workers_gone, timeout_s=30, what="the workers to die with the supervisor")
    # Back as one process: worker 1's folder has no worker any more; worker 0 drains it.
    agg.config["workers"] = 1
    await agg.start()
    assert agg.events("aggregator.adopted_worker_spools")
    proxy.set_up()
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{namespace}-*", sent * CHUNK, timeout_s=120)

    async def drained() -> bool:
        return await agg.metric("logferry_spool_fragments") == 0

    await wait_until(drained, timeout_s=60, what="the adopted spools to drain")
    assert await store.count(f"logs-{namespace}-*") == sent * CHUNK
    assert await agg.stop() == 0
    await proxy.stop()
