"""The chaos suite: real processes, one fault each, and `logferry verify` as the judge.

Every scenario ends the same way: load stops, the system settles (verify is polled until it
passes or a deadline), and the counts are printed and asserted: missing = 0, duplicates in
the store = 0, every dead-lettered record accounted for. ``CHAOS_LONG=1`` runs more
iterations and longer outages. Random delays below are *when* a fault strikes, never a wait
for the system: every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from typing import Any

import pytest

from tests.support.ack_dropping_proxy import AckDroppingProxy
from tests.support.aggregator import input_port
from tests.support.blackhole import BlackHole
from tests.support.bulk_fault_proxy import BulkFaultProxy
from tests.support.chaos_harness import MakePipeline, assert_proven, scale
from tests.support.daemon import process_tree
from tests.support.net import wait_until
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


async def died(daemon: Any, timeout_s: float = 120) -> int:
    """Wait for a daemon to exit by itself (a crash point); its exit code."""

    async def exited() -> bool:
        return daemon.proc is not None and daemon.proc.poll() is not None

    await wait_until(exited, timeout_s=timeout_s, what=f"{daemon.kind} to hit its crash point")
    return int(daemon.proc.returncode)


async def test_1_forwarder_sigkill_at_random_moments_under_load(
    make_pipeline: MakePipeline,
) -> None:
    pipeline = make_pipeline()
    await pipeline.start()
    kills = scale(6, 25)
    pipeline.start_loadgen(lines=scale(40_000, 300_000), rate=scale(5_000, 10_000))
    rng = random.Random()
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(0.1, 1.0))  # a random moment to strike
        pipeline.forwarder.kill()
        await pipeline.forwarder.start()
    await pipeline.wait_loadgen()
    outcome = await pipeline.settle(f"1. forwarder SIGKILL x{kills}")
    assert_proven(outcome)
    await pipeline.stop()


CRASH_POINTS = ["after_receive", "before_ack", "after_ack", "during_bulk"]


async def test_2_aggregator_sigkill_at_each_step(make_pipeline: MakePipeline) -> None:
    # One process each: the crash point kills the aggregator itself, which then restarts
    # (test_11 kills workers of a supervised aggregator).
    pipeline = make_pipeline(aggregator={"workers": 1})
    victim = pipeline.aggregators[0]
    victim.env = {"LOGFERRY_CRASH_AT": f"{CRASH_POINTS[0]}:3"}
    await pipeline.start()
    pipeline.start_loadgen(lines=scale(60_000, 300_000), rate=scale(4_000, 8_000))
    for i, point in enumerate(CRASH_POINTS):
        code = await died(victim)
        assert code == -signal.SIGKILL, f"{point}: exit {code}\n{victim.tail()}"
        following = CRASH_POINTS[i + 1] if i + 1 < len(CRASH_POINTS) else None
        victim.env = {"LOGFERRY_CRASH_AT": f"{following}:3"} if following else {}
        if following:
            # Its next crash point may come before /readyz is first asked (draining the
            # backlog at start reaches during_bulk at once): the next died() waits for it.
            victim.spawn()
        else:
            await victim.start()
    await pipeline.wait_loadgen()
    outcome = await pipeline.settle("2. aggregator SIGKILL at " + ", ".join(CRASH_POINTS))
    assert_proven(outcome)
    await pipeline.stop()


async def test_3_store_down_for_a_while_spools_fill_then_drain(
    make_pipeline: MakePipeline, opensearch: Any
) -> None:
    proxy = TcpProxy.in_front_of(opensearch.url)
    await proxy.start()
    try:
        pipeline = make_pipeline(output_url=proxy.url)
        await pipeline.start()
        proxy.set_down()
        pipeline.start_loadgen(lines=scale(30_000, 200_000), rate=scale(10_000, 10_000))
        await pipeline.wait_loadgen()

        async def spooled() -> bool:
            held = [await a.metric("logferry_spool_fragments") for a in pipeline.aggregators]
            return sum(held) > 0 and await pipeline.forwarder.metric("logferry_lag_bytes") == 0

        await wait_until(spooled, timeout_s=120, what="the aggregators to hold the backlog")
        await asyncio.sleep(scale(5, 180))  # the outage goes on: nothing may be lost meanwhile
        proxy.set_up()
        outcome = await pipeline.settle("3. store down, then back")
        assert_proven(outcome)
        await pipeline.stop()
    finally:
        await proxy.stop()


async def test_6_blackhole_aggregator_among_healthy_ones(make_pipeline: MakePipeline) -> None:
    hole = BlackHole()
    await hole.start()
    try:
        pipeline = make_pipeline(
            extra_servers=[hole.address], forwarder={"sender": {"ack_timeout_s": 2}}
        )
        await pipeline.start()
        pipeline.start_loadgen(lines=scale(30_000, 200_000), rate=scale(6_000, 10_000))
        await pipeline.wait_loadgen()
        outcome = await pipeline.settle("6. blackhole aggregator")
        assert_proven(outcome)
        assert hole.connections > 0
        retried = await pipeline.forwarder.metric(
            "logferry_sender_chunks_retried_total", endpoint=hole.address
        )
        assert retried > 0
        await pipeline.stop()
    finally:
        await hole.stop()


async def test_9_acks_lost_on_the_way_back_resends_are_deduplicated(
    make_pipeline: MakePipeline,
) -> None:
    pipeline = make_pipeline(forwarder={"sender": {"ack_timeout_s": 2}})
    first = pipeline.aggregators[0]
    proxy = AckDroppingProxy("127.0.0.1", input_port(first))
    await proxy.start()
    try:
        servers = pipeline.forwarder.config["sender"]["servers"]
        servers[0] = f"127.0.0.1:{proxy.port}"
        proxy.drop_every = 3
        await pipeline.start()
        pipeline.start_loadgen(lines=scale(30_000, 200_000), rate=scale(6_000, 10_000))
        await pipeline.wait_loadgen()

        async def some_dropped() -> bool:
            return proxy.acks_dropped >= 3

        await wait_until(some_dropped, timeout_s=60, what="acks to be swallowed")
        proxy.drop_every = 0
        outcome = await pipeline.settle("9. acks dropped")
        assert_proven(outcome)
        assert await pipeline.forwarder.metric("logferry_sender_chunks_retried_total") > 0
        await pipeline.stop()
    finally:
        await proxy.stop()


async def test_10_item_429s_and_mapping_errors_from_the_store(
    make_pipeline: MakePipeline, opensearch: Any
) -> None:
    proxy = BulkFaultProxy(opensearch.url)
    proxy.fail_429_every = 7
    proxy.fail_400 = lambda doc_id, _source: sum(doc_id.encode()) % 97 == 0
    await proxy.start()
    try:
        pipeline = make_pipeline(output_url=proxy.url)
        await pipeline.start()
        pipeline.start_loadgen(lines=scale(30_000, 200_000), rate=scale(6_000, 10_000))
        await pipeline.wait_loadgen()
        outcome = await pipeline.settle("10. per-item 429 and 400")
        assert_proven(outcome)
        assert proxy.items_429 > 0
        assert len(proxy.failed_ids_400) > 0
        # Every 400 is in a DLQ, and nothing else is.
        assert outcome.dlq == len(proxy.failed_ids_400)
        dead = sum([await a.metric("logferry_dlq_records_total") for a in pipeline.aggregators])
        assert dead == len(proxy.failed_ids_400)
        await pipeline.stop()
    finally:
        await proxy.stop()


def worker_pids(daemon: Any) -> list[int]:
    """The worker processes of a supervised aggregator."""
    return process_tree(daemon.proc.pid)[1:]


async def test_11_aggregator_workers_sigkilled_at_random_moments_under_load(
    make_pipeline: MakePipeline,
) -> None:
    pipeline = make_pipeline()
    await pipeline.start()
    kills = scale(6, 25)
    pipeline.start_loadgen(lines=scale(40_000, 300_000), rate=scale(5_000, 10_000))
    rng = random.Random()
    killed = 0
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(0.2, 1.0))  # a random moment to strike
        victim = rng.choice(pipeline.aggregators)
        workers = worker_pids(victim)
        if workers:  # none for a moment while the supervisor restarts one
            os.kill(rng.choice(workers), signal.SIGKILL)
            killed += 1
    await pipeline.wait_loadgen()
    outcome = await pipeline.settle(f"11. aggregator worker SIGKILL x{killed}")
    assert_proven(outcome)
    restarts = [
        await a.metric("logferry_aggregator_worker_restarts_total") for a in pipeline.aggregators
    ]
    assert sum(restarts) == killed, restarts
    await pipeline.stop()
