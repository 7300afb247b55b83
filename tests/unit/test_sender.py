"""Sender endpoint selection, backoff and DNS refresh, with a fake clock and a fake resolver."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from logferry.common.spool import Spool
from logferry.forwarder.config import SenderSettings, parse_host_port
from logferry.forwarder.endpoints import (
    Backoff,
    EndpointSet,
    refresh_dns_forever,
    refresh_dns_once,
)
from logferry.forwarder.metrics import ForwarderMetrics
from logferry.forwarder.sender import Sender, SenderStats, chunk_id


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_set(
    servers: list[tuple[str, int]], *, window: int = 2, clock: FakeClock | None = None
) -> EndpointSet:
    backoff = Backoff(1.0, 8.0, random.Random(7))
    return EndpointSet(servers, window=window, backoff=backoff, clock=clock or FakeClock())


A, B, C = ("10.0.0.1", 24224), ("10.0.0.2", 24224), ("10.0.0.3", 24224)


def test_backoff_doubles_with_jitter_and_stays_under_the_cap() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(1))
    for failures, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (500, 4.0)]:
        for _ in range(20):
            assert ceiling / 2 <= backoff.delay(failures) <= ceiling


def test_idle_endpoints_are_used_round_robin() -> None:
    endpoints = make_set([A, B, C])
    names = []
    for _ in range(3):
        chosen = endpoints.pick()
        assert chosen is not None
        names.append(chosen.name)
    assert names == ["10.0.0.1:24224", "10.0.0.2:24224", "10.0.0.3:24224"]


async def test_least_in_flight_endpoint_is_chosen_and_windows_are_respected() -> None:
    endpoints = make_set([A, B], window=2)
    first = await endpoints.acquire()
    second = await endpoints.acquire()
    assert first is not second  # the busy one is avoided
    third = await endpoints.acquire()
    fourth = await endpoints.acquire()
    assert {first.in_flight, second.in_flight} == {2}
    assert third in (first, second)
    assert fourth in (first, second)
    assert endpoints.pick() is None  # both windows full
    endpoints.release(first)
    assert endpoints.pick() is first


async def test_acquire_waits_for_a_release() -> None:
    endpoints = make_set([A], window=1)
    held = await endpoints.acquire()
    waiter = asyncio.create_task(endpoints.acquire())
    await asyncio.sleep(0)  # let the waiter block (scheduling, not synchronisation)
    assert not waiter.done()
    endpoints.release(held)
    assert await asyncio.wait_for(waiter, 5) is held


def test_down_endpoint_is_skipped_until_its_backoff_expires_then_probed_one_at_a_time() -> None:
    clock = FakeClock()
    endpoints = make_set([A, B], window=4, clock=clock)
    a = endpoints.endpoints[0]
    delay = endpoints.mark_down(a)
    assert 0.5 <= delay <= 1.0
    assert endpoints.up_count == 1
    for _ in range(3):
        chosen = endpoints.pick()
        assert chosen is not None
        assert chosen.name == "10.0.0.2:24224"
    clock.now += delay
    b = endpoints.endpoints[1]
    b.in_flight = 4  # b's window is full: only the probe slot of a is left
    assert endpoints.pick() is a
    a.in_flight = 1
    assert endpoints.pick() is None  # probing: one chunk at a time
    assert endpoints.mark_up(a) is True
    assert endpoints.pick() is a  # up again: its full window
    assert endpoints.up_count == 2


def test_consecutive_failures_grow_the_backoff() -> None:
    clock = FakeClock()
    endpoints = make_set([A], clock=clock)
    a = endpoints.endpoints[0]
    delays = [endpoints.mark_down(a) for _ in range(4)]
    assert delays[3] > delays[0]
    assert a.failures == 4
    assert a.retry_at == pytest.approx(clock.now + delays[-1])


def test_failed_endpoint_is_avoided_for_the_retry_when_another_is_available() -> None:
    endpoints = make_set([A, B])
    a = endpoints.endpoints[0]
    for _ in range(4):
        assert endpoints.pick(avoid=a) is not a
    only = make_set([A])
    assert only.pick(avoid=only.endpoints[0]) is only.endpoints[0]


async def test_dns_refresh_adds_and_removes_addresses_and_keeps_state() -> None:
    endpoints = make_set([A])
    answers = [[B, C], [C, ("10.0.0.4", 24224)]]

    async def resolver(name: str, port: int) -> list[tuple[str, int]]:
        assert (name, port) == ("aggregators.logging.svc", 24224)
        return answers.pop(0)

    removed = []
    endpoints.on_removed = lambda endpoint: removed.append(endpoint.name)
    assert await refresh_dns_once(endpoints, resolver, "aggregators.logging.svc", 24224)
    assert [e.name for e in endpoints.endpoints] == [
        "10.0.0.1:24224",
        "10.0.0.2:24224",
        "10.0.0.3:24224",
    ]
    c = endpoints.endpoints[2]
    endpoints.mark_down(c)
    assert await refresh_dns_once(endpoints, resolver, "aggregators.logging.svc", 24224)
    names = [e.name for e in endpoints.endpoints]
    assert names == ["10.0.0.1:24224", "10.0.0.3:24224", "10.0.0.4:24224"]
    assert endpoints.endpoints[1] is c
    assert c.failures == 1
    assert removed == ["10.0.0.2:24224"]


async def test_dns_failure_or_empty_answer_keeps_the_last_addresses() -> None:
    endpoints = make_set([])

    async def good(name: str, port: int) -> list[tuple[str, int]]:
        return [A, B]

    async def failing(name: str, port: int) -> list[tuple[str, int]]:
        raise OSError("name resolution failed")

    async def empty(name: str, port: int) -> list[tuple[str, int]]:
        return []

    assert await refresh_dns_once(endpoints, good, "svc", 24224)
    assert not await refresh_dns_once(endpoints, failing, "svc", 24224)
    assert not await refresh_dns_once(endpoints, empty, "svc", 24224)
    assert len(endpoints.endpoints) == 2


async def test_dns_is_resolved_periodically_until_stopped() -> None:
    endpoints = make_set([])
    calls = 0
    stop = asyncio.Event()
    third_call = asyncio.Event()

    async def resolver(name: str, port: int) -> list[tuple[str, int]]:
        nonlocal calls
        calls += 1
        if calls == 3:
            third_call.set()
        return [A] if calls < 3 else [B]

    target = ("svc", 24224, 0.01)
    task = asyncio.create_task(
        refresh_dns_forever(endpoints, resolver, lambda: target, stop, asyncio.Event())
    )
    await asyncio.wait_for(third_call.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [e.name for e in endpoints.endpoints] == ["10.0.0.2:24224"]


def test_dns_address_equal_to_a_static_server_is_not_duplicated() -> None:
    endpoints = make_set([A])
    endpoints.set_dns_addresses([A, B])
    assert [e.name for e in endpoints.endpoints] == ["10.0.0.1:24224", "10.0.0.2:24224"]


def test_ipv6_endpoint_names_are_bracketed() -> None:
    assert parse_host_port("[::1]:24224") == ("::1", 24224)
    endpoints = make_set([("::1", 24224)])
    assert endpoints.endpoints[0].name == "[::1]:24224"


@pytest.mark.parametrize("server", ["nohost", "host:", ":24224", "host:0", "host:99999"])
def test_malformed_servers_are_refused_at_load(server: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        SenderSettings(servers=[server])


def test_chunk_id_is_deterministic_per_batch() -> None:
    assert chunk_id("node-a", 100, 50) == chunk_id("node-a", 100, 50)
    assert len({chunk_id("node-a", 100, 50), chunk_id("node-a", 150, 50)}) == 2
    assert chunk_id("node-a", 100, 50) != chunk_id("node-b", 100, 50)
    assert chunk_id("node-a", 100, 50) != chunk_id("node-a", 100, 49)


async def test_sender_without_any_endpoint_is_refused(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "spool", max_bytes=1 << 20)
    try:
        with pytest.raises(ValueError, match="servers"):
            Sender(SenderSettings(), spool, node_name="n1")
    finally:
        await spool.close()


def test_stats_mirror_to_a_prometheus_registry() -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    stats = SenderStats(ForwarderMetrics(registry))
    stats.chunk_sent("a:1")
    stats.chunk_acked("a:1", 10, 0.02)
    stats.chunk_retried("b:1")
    stats.set_endpoints_up(1)
    assert registry.get_sample_value("logferry_sender_chunks_acked_total", {"endpoint": "a:1"}) == 1
    assert registry.get_sample_value("logferry_sender_records_acked_total") == 10
    assert registry.get_sample_value("logferry_sender_endpoints_up") == 1
    assert stats.sent["a:1"] == 1
    assert stats.retried["b:1"] == 1


async def test_a_suspect_chunk_goes_alone_on_a_proven_endpoint_whose_window_drains_first() -> None:
    endpoints = make_set([A, B], window=2)
    first, second = await endpoints.acquire(), await endpoints.acquire()
    assert {first.name, second.name} == {"10.0.0.1:24224", "10.0.0.2:24224"}
    endpoints.mark_up(first)  # it acked: proven; the other has not acked anything yet
    alone = asyncio.create_task(endpoints.acquire_alone())
    await asyncio.sleep(0)  # let it reserve: nothing else may join the proven endpoint now
    assert first.reserved
    assert endpoints.pick() is second  # the window of the reserved one stays closed
    assert not alone.done()
    endpoints.release(first)  # its last chunk settles: the suspect gets it to itself
    chosen, proven = await asyncio.wait_for(alone, 1)
    assert (chosen, proven) == (first, True)
    assert chosen.in_flight == 1
    assert endpoints.pick() is second
    endpoints.release(chosen, alone=True)
    assert not chosen.reserved


async def test_with_none_proven_a_suspect_takes_an_idle_endpoint_without_reserving_ahead() -> None:
    clock = FakeClock()
    endpoints = make_set([A], window=4, clock=clock)
    busy = await endpoints.acquire()
    endpoints.mark_down(busy)  # failed: not proven, probing after its backoff
    alone = asyncio.create_task(endpoints.acquire_alone())
    await asyncio.sleep(0)
    assert not busy.reserved  # others may still probe it and prove it
    endpoints.release(busy)
    clock.now += 60
    endpoints.set_dns_addresses([])  # any change wakes the waiters up
    chosen, proven = await asyncio.wait_for(alone, 1)
    assert (chosen, proven) == (busy, False)
    assert endpoints.pick() is None  # alone while in flight
    endpoints.release(chosen, alone=True)
