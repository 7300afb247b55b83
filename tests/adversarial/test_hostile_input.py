"""Hostile input against a real aggregator: memory stays bounded, the daemon stays up, and an
honest tenant's chunks are acked and stored during every attack.

Each case starts its own aggregator (shared key, default limits, short timeouts), lets an
honest tenant warm it up from another source address (127.0.0.2), resets the peak RSS, runs
the attack from 127.0.0.1 while the honest tenant keeps sending, and then checks:

- the peak RSS during the attack stays under ``RSS_BOUND`` above the RSS before it;
- ``/readyz`` still answers; the honest tenant saw no failure and an ack during the attack;
- every honest record is in OpenSearch, once;
- what the attack was met with (closed, refused, parked, rerouted), by its metric.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from logferry.aggregator.dlq import DeadLetterQueue
from logferry.common.units import MiB
from tests.support import attacks
from tests.support.daemon import DaemonProcess
from tests.support.opensearch_client import StoreReader, wait_count

pytestmark = pytest.mark.integration

RSS_BOUND = 300 * MiB
"""Peak RSS above the RSS before the attack, for every case with the default limits. The worst
is many tiny objects: a 16 MiB inflated message of empty maps renders to ~3x its size in JSON
(held until spooled), plus one 256 KiB slice's Python objects (~20 MB) at a time."""


@pytest.fixture
async def aggregator(opensearch: Any, tmp_path: Path) -> AsyncIterator[DaemonProcess]:
    daemon = await attacks.start_aggregator(tmp_path / "agg", opensearch.url)
    yield daemon
    daemon.ensure_dead()


async def under_attack(
    aggregator: DaemonProcess, opensearch: Any, attack: attacks.Attack
) -> tuple[str, attacks.HonestTenant, int]:
    """Run ``attack`` beside an honest tenant and assert what every case shares; returns the
    outcome, the honest tenant and the peak RSS growth."""
    measured = await attacks.measure(aggregator, attack)
    honest = measured.honest
    assert await aggregator.ready(), aggregator.tail()
    assert honest.failures == []
    assert measured.acks_during >= 1 or measured.attack_s < 1.0, (
        f"no honest ack during {measured.attack_s:.1f}s of attack"
    )
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{honest.namespace}-*", honest.sent)
    assert await store.count(f"logs-{honest.namespace}-*") == honest.sent
    growth = measured.growth
    assert growth < RSS_BOUND, f"peak RSS grew {growth / MiB:.0f} MiB under {attack.name}"
    return measured.outcome, honest, growth


def attack(name: str) -> attacks.Attack:
    return next(a for a in attacks.ATTACKS if a.name.startswith(name))


async def test_an_expansion_bomb_is_refused_while_it_inflates(
    aggregator: DaemonProcess, opensearch: Any
) -> None:
    outcome, _, _ = await under_attack(aggregator, opensearch, attack("expansion bomb"))
    assert outcome == "closed"
    assert await aggregator.metric("logferry_protocol_errors_total", reason="too_large") == 1


async def test_many_tiny_objects_are_decoded_a_slice_at_a_time(
    aggregator: DaemonProcess, opensearch: Any
) -> None:
    outcome, _, _ = await under_attack(aggregator, opensearch, attack("many tiny objects"))
    assert outcome == "acked"
    assert await aggregator.metric("logferry_records_in_total", tenant="_default") == 370


async def test_a_poison_record_is_parked_and_the_rest_of_its_chunk_stored(
    aggregator: DaemonProcess, opensearch: Any
) -> None:
    outcome, _, _ = await under_attack(aggregator, opensearch, attack("poison record"))
    assert outcome == "acked"
    store = StoreReader(opensearch.url)
    await wait_count(store, "logs-poisoned-*", 100)
    assert await store.count("logs-poisoned-*") == 100
    entries = DeadLetterQueue(aggregator.config["dlq"]["directory"]).scan().entries
    (parked,) = entries
    assert parked.tenant == "deep-tenant"
    assert "deeper than 64" in parked.reason
    labels = {"tenant": "deep-tenant", "reason": "too_deep"}
    assert await aggregator.metric("logferry_records_unrenderable_total", **labels) == 1


async def test_slow_senders_are_cut_and_hold_no_more_than_their_share(
    aggregator: DaemonProcess, opensearch: Any
) -> None:
    outcome, _, _ = await under_attack(aggregator, opensearch, attack("40 slow senders"))
    assert outcome == "40 of 40 closed"
    assert await aggregator.metric("logferry_protocol_errors_total", reason="message_timeout") > 0


async def test_one_address_cannot_take_every_connection(
    aggregator: DaemonProcess, opensearch: Any
) -> None:
    outcome, _, _ = await under_attack(aggregator, opensearch, attack("200 connections"))
    assert outcome == "136 of 200 refused"
    refused = await aggregator.metric("logferry_connection_attempts_total", status="refused_source")
    assert refused == 136


async def test_bad_handshakes_are_cut_quickly_and_learn_nothing(
    aggregator: DaemonProcess, opensearch: Any
) -> None:
    outcome, _, _ = await under_attack(aggregator, opensearch, attack("bad handshakes"))
    parts = dict(part.split(":", 1) for part in outcome.split(", "))
    assert parts["garbage"] == "closed"
    assert parts["oversized"] == "closed"
    assert parts["silent"].startswith("closed:")
    assert float(parts["silent"].split(":")[1].rstrip("s")) < 5  # handshake_timeout_s is 2
    assert parts["wrong key"] == "refused:digest=none"
    assert await aggregator.metric("logferry_handshake_failures_total") >= 4


async def test_odd_times_and_names_cannot_make_indices_or_tenants(
    aggregator: DaemonProcess, opensearch: Any
) -> None:
    outcome, _, _ = await under_attack(aggregator, opensearch, attack("out-of-window"))
    assert outcome == "acked"
    store = StoreReader(opensearch.url)
    await wait_count(store, "logs-time-tenant-*", 2)
    assert await store.count("logs-time-tenant-*") == 2
    today = time.strftime("%Y.%m.%d", time.gmtime())
    hits = await store.search("logs-time-tenant-*")
    assert {h["_index"] for h in hits} == {f"logs-time-tenant-{today}"}
    assert sorted(h["_source"]["@timestamp_original"][:4] for h in hits) == ["1970", "2100"]
    default = [h["_source"] for h in await store.search("logs-_default-*")]
    assert sorted(d["log"] for d in default if d.get("log") in ("nl", "dots", "long", "upper")) == [
        "dots",
        "long",
        "nl",
        "upper",
    ]
    spool_root = Path(aggregator.config["spool"]["directory"])
    spools = {p.name for p in await asyncio.to_thread(lambda: list(spool_root.iterdir()))}
    assert not any("\n" in name or "." in name or name != name.lower() for name in spools)


async def test_concurrent_attacks_do_not_multiply_memory(
    aggregator: DaemonProcess, opensearch: Any
) -> None:
    both = attacks.Attack(
        "bombs and tiny objects at once",
        lambda port: _gather(
            attacks.attack_gzip_bomb(port),
            attacks.attack_gzip_bomb(port),
            attacks.attack_tiny_objects(port),
        ),
    )
    outcome, _, _ = await under_attack(aggregator, opensearch, both)
    assert outcome == "closed,closed,acked"


async def _gather(*runs: Any) -> str:
    return ",".join(await asyncio.gather(*runs))
