"""A poison chunk cannot block a node: the sender parks a chunk the aggregators keep closing
the connection on, commits it, and goes on; an outage, a blackhole or a chunk that was only
in the wrong place at the wrong time is never parked. Then ``parked list|requeue``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from logferry.common import protocol
from logferry.common.spool import Spool
from logferry.forwarder.config import SenderSettings
from logferry.forwarder.entries import block_count, block_stream, make_block
from logferry.forwarder.metrics import ForwarderMetrics
from logferry.forwarder.parked_cli import parked_main
from logferry.forwarder.parking import Parking, list_parked, read_parked
from logferry.forwarder.sender import Sender
from tests.support.net import wait_until
from tests.support.records import container_entries
from tests.support.refusing_peer import RefusingPeer
from tests.support.sender import running
from tests.support.sender import settings as sender_settings

DEADLINE_S = 60.0


def settings(servers: list[str], **overrides: Any) -> SenderSettings:
    """Smaller chunks, quicker retries and parking after three refusals: a refused chunk is
    parked within a fraction of a second."""
    parking: dict[str, Any] = {
        "batch_max_records": 50,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "shutdown_deadline_s": 2.0,
        "park_after_refusals": 3,
    }
    return sender_settings(servers, **{**parking, **overrides})


def block(namespace: str, count: int, start: int, *, poison: bool = False) -> bytes:
    entries = container_entries(namespace, count, start_seq=start)
    if poison:
        entries[0][1]["log"] = "POISON " + entries[0][1]["log"]
    return make_block(protocol.pack_entries(entries), count)


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    opened = await Spool.open(
        tmp_path / "spool",
        max_bytes=64 << 20,
        segment_max_bytes=1 << 20,
        commit_flush_interval_s=0.02,
    )
    yield opened
    with contextlib.suppress(Exception):
        await opened.close()


@contextlib.asynccontextmanager
async def steady_traffic(spool: Spool, namespace: str = "ok") -> AsyncIterator[list[int]]:
    """Innocent blocks appended every few ms, as a live node keeps producing: returns the
    number appended so far (one-element list)."""
    appended = [0]

    async def produce() -> None:
        while True:
            await spool.append([block(namespace, 5, appended[0] * 5)])
            appended[0] += 1
            await asyncio.sleep(0.005)  # the node's pace, not synchronisation

    task = asyncio.create_task(produce())
    try:
        yield appended
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
async def test_a_poison_chunk_is_parked_committed_and_the_rest_flows(
    tmp_path: Path, spool: Spool, caplog: pytest.LogCaptureFixture, reset: bool
) -> None:
    peer = RefusingPeer("poison", reset=reset)
    await peer.start()
    registry = CollectorRegistry()
    metrics = ForwarderMetrics(registry)
    parking = Parking(tmp_path / "parked", metrics=metrics)
    sender = Sender(
        settings([peer.address]), spool, node_name="n1", metrics=metrics, parking=parking
    )
    # One chunk (at most 50 records) carries both: the poison drags the innocent along.
    await spool.append([block("ok", 20, 0)])
    await spool.append([block("bad", 7, 0, poison=True)])
    async with running(sender), steady_traffic(spool) as appended:
        await wait_until(
            lambda: len(list_parked(tmp_path / "parked")) == 1,
            timeout_s=DEADLINE_S,
            what="the poison chunk to be parked",
        )
        await wait_until(
            lambda: spool.records_pending == 0 and appended[0] > 20,
            timeout_s=DEADLINE_S,
            what="the spool to move past it",
        )
    await peer.stop()
    (path,) = list_parked(tmp_path / "parked")
    parked = read_parked(path)
    header = parked.header
    assert header["reason"] == "peer_closed"
    assert header["records"] == 27
    assert header["refusals"] == 3
    assert header["chunk_id"] in peer.refused
    sources = {row["namespace"]: row for row in header["sources"].values()}
    assert sorted(sources) == ["bad", "ok"]
    assert (sources["bad"]["first_seq"], sources["bad"]["last_seq"]) == (0, 6)
    assert sources["ok"]["records"] == 20
    assert header["spool_end_seq"] - header["spool_first_seq"] == 2  # two blocks
    assert peer.refused[header["chunk_id"]] >= 3  # refused alone 3 times (maybe more before)
    assert all(peer.marker not in entries for entries in peer.acked_entries)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    sample = registry.get_sample_value("logferry_chunks_parked_total", {"reason": "peer_closed"})
    assert sample == 1
    warnings = [r for r in caplog.records if r.getMessage() == "sender.chunk_parked"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING


async def test_an_outage_of_every_aggregator_parks_nothing(tmp_path: Path, spool: Spool) -> None:
    # Every chunk refused: no endpoint has proven it works, so no refusal is the chunk's.
    peer = RefusingPeer("refuse_all")
    await peer.start()
    parking = Parking(tmp_path / "parked")
    sender = Sender(settings([peer.address]), spool, node_name="n1", parking=parking)
    for n in range(5):
        await spool.append([block("ok", 20, n * 20)])
    async with running(sender):
        await wait_until(
            lambda: sum(peer.refused.values()) >= 40 and min(peer.refused.values()) >= 3,
            timeout_s=DEADLINE_S,
            what="every chunk to be refused many times",
        )
        assert list_parked(tmp_path / "parked") == []
        peer.mode = "ack_all"  # the aggregators are fixed
        await wait_until(lambda: spool.records_pending == 0, timeout_s=DEADLINE_S, what="delivery")
    await peer.stop()
    assert list_parked(tmp_path / "parked") == []


async def test_ack_timeouts_never_park(tmp_path: Path, spool: Spool) -> None:
    # A proven endpoint that never answers one chunk: it times out again and again, which
    # says nothing about the chunk (a slow or stuck aggregator does the same).
    peer = RefusingPeer("silent_poison")
    await peer.start()
    parking = Parking(tmp_path / "parked")
    sender = Sender(
        settings([peer.address], ack_timeout_s=0.2), spool, node_name="n1", parking=parking
    )
    await spool.append([block("bad", 7, 0, poison=True)])
    async with running(sender), steady_traffic(spool):
        await wait_until(
            lambda: max(peer.received.values(), default=0) >= 5 and len(peer.acked) > 20,
            timeout_s=DEADLINE_S,
            what="the marked chunk to time out five times",
        )
        assert list_parked(tmp_path / "parked") == []
        assert spool.records_pending > 0  # still held, still retried
    await peer.stop()


async def test_parked_list_and_requeue(
    tmp_path: Path, spool: Spool, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "forwarder.yaml"
    config.write_text(
        f"""
node_name: n1
spool: {{directory: {tmp_path / "spool"}, max_bytes: 64MiB, segment_max_bytes: 1MiB}}
sender: {{servers: ["127.0.0.1:1"]}}
"""
    )
    poison = block("bad", 7, 0, poison=True)
    payload = protocol.encode_compressed_packed_forward(
        "kube", b"", 7, chunk="c" * 32, gzipped=bytes(poison[8:])
    )
    parking = Parking(tmp_path / "parked")
    path = await parking.park(
        {"chunk_id": "c" * 32, "records": 7, "refusals": 5}, payload, reason="peer_closed"
    )
    out = io.StringIO()
    assert parked_main(["list", "--config", str(config)], out=out) == 0
    listing = out.getvalue()
    assert path.name in listing
    assert "bad" in listing
    assert "1 parked chunk(s)" in listing
    out = io.StringIO()
    assert parked_main(["list", "--config", str(config), "--json"], out=out) == 0
    assert '"records":7' in out.getvalue()

    # The forwarder (here: this test's open spool) holds the spool: requeue refuses.
    code = await asyncio.to_thread(
        parked_main, ["requeue", "--config", str(config), "--all"], out=io.StringIO()
    )
    assert code == 2
    assert "stop it, requeue, then start it" in capsys.readouterr().err
    assert path.exists()

    assert spool.records_pending == 0
    await spool.close()
    out = io.StringIO()
    code = await asyncio.to_thread(
        parked_main, ["requeue", "--config", str(config), path.name], out=out
    )
    assert code == 0, out.getvalue()
    assert "requeued 7 records" in out.getvalue()
    assert not path.exists()
    reopened = await Spool.open(tmp_path / "spool", max_bytes=64 << 20, segment_max_bytes=1 << 20)
    batch = await reopened.read(max_records=100, max_bytes=1 << 24, timeout_s=1)
    assert batch is not None
    (requeued,) = batch.records
    assert block_count(requeued) == 7
    assert block_stream(requeued) == block_stream(poison)  # the very same entries
    await reopened.close()
