"""One tenant's record that the aggregators refuse (here: a line too large for their
``input.max_message_bytes``, so they close the connection on its chunk) no longer holds the
whole node: the forwarder parks that chunk after ``sender.park_after_refusals`` refusals and
everything else flows. ``parked list|requeue`` then bring it back once the aggregators take it.
Real processes; delivery counted by record id in the file output."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from logferry.forwarder.parked_cli import parked_main
from tests.support.aggregator import MakeAggregator, input_address
from tests.support.daemon import DaemonProcess
from tests.support.file_store import assert_exactly_once, documents, ids
from tests.support.kubelet import CRI_TIME, ContainerLog, container_log, glob_of
from tests.support.net import wait_until

pytestmark = pytest.mark.integration


class Lines:
    """Numbered CRI lines appended to one container log."""

    def __init__(self, log: ContainerLog) -> None:
        self.log = log
        self.count = 0

    def write(self, n: int, text: str = "ok") -> None:
        with self.log.path.open("ab") as f:
            for i in range(self.count, self.count + n):
                f.write(f"{CRI_TIME.format(i)} stdout F {text} {i}\n".encode())
        self.count += n


@contextlib.asynccontextmanager
async def steady(lines: Lines) -> AsyncIterator[None]:
    """A live node: the innocent tenant keeps logging (what proves the aggregator works)."""

    async def produce() -> None:
        while True:
            lines.write(20)
            await asyncio.sleep(0.02)  # the application's pace, not synchronisation

    task = asyncio.create_task(produce())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_poison_chunk_is_parked_the_node_flows_and_requeue_delivers_it_once(
    tmp_path: Path, daemons: list[DaemonProcess], make_aggregator: MakeAggregator
) -> None:
    out = tmp_path / "out"
    agg = make_aggregator(
        None,
        input={"max_message_bytes": "256KiB"},
        output={"type": "file", "directory": str(out)},
    )
    await agg.start()
    node = tmp_path / "node"
    shop = Lines(container_log(node, "shop", "web-1"))
    bad = Lines(container_log(node, "bad", "big-0"))
    fwd_dir = tmp_path / "fwd"
    fwd = DaemonProcess(
        "forwarder",
        fwd_dir,
        {
            "node_name": "node-poison",
            "spool": {"directory": str(fwd_dir / "spool"), "segment_max_bytes": "4MiB"},
            "source": {"path_glob": glob_of(node), "poll_interval_s": 0.05},
            "sender": {
                "servers": [input_address(agg)],
                "batch_max_bytes": "64KiB",  # ordinary chunks stay far below the limit
                "ack_timeout_s": 30,
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.5,
            },
        },
    )
    daemons.append(fwd)
    await fwd.start()
    shop.write(200)
    # 600 KB of hex: about 300 KB once compressed, over the aggregator's 256 KiB.
    bad.write(1, os.urandom(300_000).hex())
    bad.write(50)  # the same tenant's ordinary lines after it go through

    async def parked() -> bool:
        return await fwd.metric("logferry_chunks_parked_total", reason="peer_closed") == 1

    async with steady(shop):
        await wait_until(parked, timeout_s=120, what="the poison chunk to be parked")
    innocent_total = shop.count + 50

    async def innocents_delivered() -> bool:
        return len(documents(out)) >= innocent_total

    await wait_until(innocents_delivered, timeout_s=120, what="every other line")
    docs = documents(out)
    assert not any(len(d["log"]) > 100_000 for d in docs)
    assert len(fwd.events("sender.chunk_parked")) == 1
    assert fwd.events("sender.chunk_parked")[0]["level"] == "warning"
    assert len(agg.events("input.protocol_error")) >= 5  # refused that often, at least

    listing = io.StringIO()
    assert parked_main(["list", "--config", str(fwd.config_path)], out=listing) == 0
    assert "1 parked chunk(s)" in listing.getvalue()
    assert " bad " in f" {listing.getvalue().replace(',', ' ').replace('/', ' ')} "
    # Not while the forwarder runs: it holds the spool.
    code = await asyncio.to_thread(
        parked_main, ["requeue", "--config", str(fwd.config_path), "--all"], out=io.StringIO()
    )
    assert code == 2

    assert await fwd.stop() == 0
    assert await agg.stop() == 0
    agg.config["input"]["max_message_bytes"] = "8MiB"  # the aggregators are fixed
    await agg.start()
    report = io.StringIO()
    code = await asyncio.to_thread(
        parked_main, ["requeue", "--config", str(fwd.config_path), "--all"], out=report
    )
    assert code == 0, report.getvalue()
    assert "requeued 1 records" in report.getvalue()
    await fwd.start()

    async def everything_delivered() -> bool:
        return len(documents(out)) >= innocent_total + 1

    await wait_until(everything_delivered, timeout_s=120, what="the requeued line")
    # Chunks that shared the connection with the poison's first attempt were sent again;
    # after that it went alone, and cost no one else a resend.
    assert_exactly_once(out, [shop.count, bad.count], max_copies=2)
    copies = Counter(ids(out).values())
    assert copies[2] <= 3 * 2000, copies  # at most the few chunks of that first window
    assert await fwd.stop() == 0
    assert await agg.stop() == 0
