"""Chaos on the node's disk: rotation outrunning the reader, files changed while the forwarder
is down, a full aggregator volume, and bytes damaged in spools and position files.

Same judge as test_chaos.py: ``logferry verify`` against the loadgen manifest, positions and
DLQs, polled until it passes or a deadline; the counts are printed and asserted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.chaos_harness import MakePipeline, Pipeline, assert_proven, scale
from tests.support.kubelet import container_log, cri_lines
from tests.support.net import wait_until
from tests.support.spool_damage import flip_byte, forwarder_records, frames, segments
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


async def read_everything(pipeline: Pipeline) -> None:
    """Wait until the forwarder has read every byte written (its lag is 0)."""

    async def caught_up() -> bool:
        return (
            await pipeline.forwarder.metric("logferry_lag_bytes") == 0
            and await pipeline.forwarder.metric("logferry_records_spooled_total") > 0
        )

    await wait_until(caught_up, timeout_s=120, what="the forwarder to read everything")


async def test_4_rotation_faster_than_the_forwarder_reads(make_pipeline: MakePipeline) -> None:
    # The aggregators start late: the forwarder's 2 MiB spool fills within seconds, tailing
    # pauses, and every container's file keeps rotating (each 1 MiB, every few seconds, as
    # kubelet does every 10 s at most) behind it: generations are found and held open but not
    # read. The backlog must outlive every rotation: nothing is released before it is drained.
    pipeline = make_pipeline(
        forwarder={"spool": {"max_bytes": "2MiB", "segment_max_bytes": "1MiB"}}
    )
    await pipeline.forwarder.start()
    pipeline.start_loadgen(lines=scale(70_000, 300_000), rate=7000, rotate_bytes="1MiB")
    await pipeline.wait_loadgen()
    manifest = json.loads(pipeline.manifest.read_text())
    rotated = sum(1 for f in manifest["files"] if f.get("rotated"))
    assert rotated >= 12, rotated
    assert await pipeline.forwarder.metric("logferry_lag_bytes") > 0  # it is behind
    for aggregator in pipeline.aggregators:
        await aggregator.start()
    outcome = await pipeline.settle(f"4. rotation outruns the reader ({rotated} rotations)")
    assert_proven(outcome)
    assert await pipeline.forwarder.metric("logferry_sources_lost_total") == 0
    await pipeline.stop()


async def test_5_rotations_and_truncations_while_the_forwarder_is_down(
    make_pipeline: MakePipeline,
) -> None:
    pipeline = make_pipeline()
    files = {}
    for name in ("rotated", "truncated", "both"):  # kubelet's layout, one pod each
        log = container_log(pipeline.logs, f"{pipeline.prefix}-a", f"{name}-0")
        log.path.write_bytes(cri_lines(0, 2000, f"{name}-0"))
        files[name] = log.path
    await pipeline.start()
    await read_everything(pipeline)
    assert await pipeline.forwarder.stop() == 0
    # While it is down: a rename rotation with lines written before it, a truncation of a file
    # whose lines were all read (copytruncate), and a file rotated and then truncated.
    with files["rotated"].open("ab") as f:
        f.write(cri_lines(0, 700, "rotated-0-more"))
    os.rename(files["rotated"], files["rotated"].with_name("0.log.1"))
    files["rotated"].write_bytes(cri_lines(0, 500, "rotated-1"))
    with files["truncated"].open("r+b") as f:
        f.truncate(0)
    files["truncated"].write_bytes(cri_lines(0, 900, "truncated-1"))  # a new generation, same inode
    os.rename(files["both"], files["both"].with_name("0.log.1"))
    files["both"].write_bytes(cri_lines(0, 300, "both-1"))
    with files["both"].open("r+b") as f:
        f.truncate(0)
    files["both"].write_bytes(cri_lines(0, 400, "both-2"))
    # No loadgen here: verify counts the records in the files on disk (``--files``).
    await pipeline.forwarder.start()
    expected = sorted([2700, 500, 2000, 900, 2000, 400])  # every generation, its own source

    async def every_generation_complete() -> bool:
        # Verify alone could pass a moment early: until the forwarder saves the truncated
        # file's new generation, the files on disk are matched to the old one.
        report = await pipeline.verify()
        return sorted(row.found for row in report.sources) == expected

    await wait_until(every_generation_complete, timeout_s=120, what="all six sources complete")
    outcome = await pipeline.settle("5. rotations and truncations while down")
    assert_proven(outcome)
    assert sorted(row.found for row in outcome_rows(pipeline)) == expected
    await pipeline.stop()


def outcome_rows(pipeline: Pipeline) -> list[Any]:
    assert pipeline.last_report is not None
    return list(pipeline.last_report.sources)


async def test_7_aggregator_volume_full_acks_stop_and_resume(
    make_pipeline: MakePipeline, opensearch: Any
) -> None:
    proxy = TcpProxy.in_front_of(opensearch.url)
    await proxy.start()
    try:
        pipeline = make_pipeline(
            output_url=proxy.url,
            aggregator={
                "spool": {
                    "max_bytes": "6MiB",
                    # Split over two workers: 3MiB of volume and 2MiB per tenant each.
                    "tenant_max_bytes": "4MiB",
                    "segment_max_bytes": "1MiB",
                    "compression": "none",  # stored as rendered: the load fills the volumes
                }
            },
        )
        await pipeline.start()
        proxy.set_down()
        pipeline.start_loadgen(lines=scale(40_000, 200_000), rate=0)
        await pipeline.wait_loadgen()

        async def held_by_both() -> bool:
            # The aggregators' volumes are full: they stop acking, the node spool keeps the rest.
            # (The node spool also holds what is merely in flight, so it can pass its mark
            # before an aggregator holds anything: wait for both.)
            held = [await a.metric("logferry_spool_bytes") for a in pipeline.aggregators]
            forwarder = await pipeline.forwarder.metric("logferry_node_spool_bytes")
            return forwarder > 256 * 1024 and sum(held) > 0  # (one may have been favoured)

        await wait_until(held_by_both, timeout_s=120, what="both spools to hold data")
        held = [await a.metric("logferry_spool_bytes") for a in pipeline.aggregators]
        assert all(h <= 6 * 1024 * 1024 for h in held), held  # never past the volume cap
        for aggregator in pipeline.aggregators:
            assert await aggregator.ready()  # full is not broken
        proxy.set_up()
        outcome = await pipeline.settle("7. aggregator volume full")
        assert_proven(outcome)
        await pipeline.stop()
    finally:
        await proxy.stop()


async def test_8_damaged_spool_and_positions_are_quarantined_and_reported(
    make_pipeline: MakePipeline,
) -> None:
    pipeline = make_pipeline(
        forwarder={"spool": {"max_bytes": "64MiB", "segment_max_bytes": "1MiB"}}
    )
    await pipeline.forwarder.start()  # the aggregators stay down: records wait in the spool
    pipeline.start_loadgen(lines=scale(20_000, 100_000), rate=0, rotate_bytes="64MiB")
    await pipeline.wait_loadgen()
    await read_everything(pipeline)
    assert await pipeline.forwarder.stop() == 0

    # Damage one frame in the middle of the node spool and tear the last one: their records
    # are lost for good (the position has moved past them), and verify must report exactly
    # those as missing, source by source.
    spool_dir = Path(pipeline.forwarder.config["spool"]["directory"])
    segment = segments(spool_dir)[0]
    found = frames(segment)
    assert len(found) >= 3, len(found)
    offset, size, blocks = found[len(found) // 2]
    lost = forwarder_records(blocks)
    flip_byte(segment, offset + size // 2)
    # And a torn tail: the newest segment cut in the middle of its last frame.
    newest = segments(spool_dir)[-1]
    tail_offset, tail_size, tail_blocks = frames(newest)[-1]
    assert (newest, tail_offset) != (segment, offset)
    lost += forwarder_records(tail_blocks)
    os.truncate(newest, tail_offset + tail_size // 2)

    await pipeline.start()
    outcome = await pipeline.settle("8a. spool frame damaged", expected_missing=sum(lost.values()))
    assert outcome.missing == sum(lost.values()), outcome.line()
    assert outcome.duplicates == 0
    missing_by_source = {row.source: row.missing for row in outcome_rows(pipeline) if row.missing}
    assert missing_by_source == dict(lost)
    assert await pipeline.forwarder.metric("logferry_node_spool_quarantined_frames_total") >= 1

    # Now damage the position file while stopped: it is quarantined, every file is read again
    # from the start, the store's create-if-absent drops what it has, and the records lost with
    # the spool frame come back from the files still on disk.
    assert await pipeline.forwarder.stop() == 0
    flip_byte(pipeline.positions, pipeline.positions.stat().st_size // 2)
    await pipeline.forwarder.start()
    outcome = await pipeline.settle("8b. position file damaged")
    assert_proven(outcome)
    await pipeline.stop()
