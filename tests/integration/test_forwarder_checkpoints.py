"""Checkpoint records from the forwarder daemon (issue 19): real files, a real spool, a real
aggregator. A checkpoint says a source's records below ``next_seq`` are durable in the node
spool ahead of it; these tests read the spool in its order (the aggregators down, so nothing
leaves it) or what an aggregator's file output received."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from logferry.forwarder.entries import block_stream
from tests.support.aggregator import MakeAggregator, input_port
from tests.support.daemon import DaemonProcess
from tests.support.file_store import assert_exactly_once, documents, marks
from tests.support.forwarder_daemon import forwarder_config
from tests.support.kubelet import container_log, cri_lines, glob_of
from tests.support.net import free_port, wait_until
from tests.support.spool_damage import frames, segments

pytestmark = pytest.mark.integration

MakeForwarder = Callable[..., DaemonProcess]


@pytest.fixture
def make_forwarder(tmp_path: Path, daemons: list[DaemonProcess]) -> MakeForwarder:
    """``make(interval_s, agg_port=None)``: the node's forwarder (not started) tailing the
    kubelet layout under ``tmp_path / "node"``, sending to ``agg_port`` (None: a port where
    nothing listens, so that its spool keeps every record)."""

    def make(interval_s: float, agg_port: int | None = None) -> DaemonProcess:
        workdir = tmp_path / "fwd"
        daemon = DaemonProcess(
            "forwarder",
            workdir,
            forwarder_config(
                workdir,
                glob_of(tmp_path / "node"),
                [f"127.0.0.1:{agg_port or free_port()}"],
                node_name="node-ck",
                sender={"shutdown_deadline_s": 0 if agg_port is None else 10},
                checkpoints={"interval_s": interval_s},
            ),
        )
        daemons.append(daemon)
        return daemon

    return make


def spooled(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """Every record in the forwarder's spool, in spool order (a frame being written is left
    out: its CRC does not match yet)."""
    spool = Path(daemon.config["spool"]["directory"])
    out: list[dict[str, Any]] = []
    if not spool.is_dir():
        return out
    for segment in segments(spool):
        for _offset, _size, blocks in frames(segment):
            for block in blocks:
                unpacker = msgpack.Unpacker(raw=False)
                unpacker.feed(block_stream(block))
                out += [record for _time, record in unpacker]
    return out


def checkpoints(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [r["_lf"] for r in spooled(daemon) if r["_lf"].get("kind") == "checkpoint"]


async def checkpoint_at(daemon: DaemonProcess, next_seq: int) -> None:
    await wait_until(
        lambda: any(c["next_seq"] == next_seq for c in checkpoints(daemon)),
        timeout_s=30,
        what=f"a checkpoint at {next_seq}",
        detail=daemon.tail,
    )


async def spooled_count(daemon: DaemonProcess, count: int) -> None:
    async def done() -> bool:
        return await daemon.metric("logferry_records_spooled_total") == count

    await wait_until(done, timeout_s=60, what=f"{count} records spooled", detail=daemon.tail)


def assert_never_ahead(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every checkpoint's next_seq is the count of its source's records before it in spool
    order (each seq once, in order); returns the checkpoints."""
    seen: dict[str, int] = {}
    found = []
    for record in records:
        lf = record["_lf"]
        if lf.get("kind") == "checkpoint":
            assert lf["next_seq"] == seen.get(lf["src"], 0), (lf, seen)
            found.append(lf)
        else:
            assert lf["seq"] == seen.get(lf["src"], 0), lf
            seen[lf["src"]] = lf["seq"] + 1
    return found


async def test_interval_checkpoints_never_claim_a_record_not_spooled_ahead(
    make_forwarder: MakeForwarder, tmp_path: Path
) -> None:
    node = tmp_path / "node"
    busy = container_log(node, "ck-a", "busy", body=cri_lines(0, 500, "busy")).path
    container_log(node, "ck-b", "quiet", body=cri_lines(0, 7, "quiet"))
    fwd = make_forwarder(0.2)
    await fwd.start()
    written = 500
    for _round in range(4):
        await checkpoint_at(fwd, written)
        with busy.open("ab") as f:
            f.write(cri_lines(written, 300, "busy"))
        written += 300
    await checkpoint_at(fwd, written)
    said = await fwd.metric("logferry_checkpoints_total")
    assert await fwd.metric("logferry_records_spooled_total") == written + 7
    assert await fwd.metric("logferry_lines_read_total") == written + 7
    assert await fwd.stop() == 0
    found = assert_never_ahead(spooled(fwd))
    assert len(found) == said  # nothing advanced since: no shutdown checkpoint
    by_source: dict[str, list[int]] = {}
    for lf in found:
        assert lf["state"] == "open"
        assert lf["node"] == "node-ck"
        by_source.setdefault(lf["src"], []).append(lf["next_seq"])
    quiet, loud = sorted(by_source.values(), key=len)
    assert quiet == [7]  # once, then idle: no more, not even at shutdown
    assert loud == sorted(set(loud))  # only when it advanced
    assert loud[-1] == written


async def test_a_rotated_file_is_finished_at_its_last_seq(
    make_forwarder: MakeForwarder, tmp_path: Path
) -> None:
    log = container_log(tmp_path / "node", "ck-rot", "web", body=cri_lines(0, 400, "one")).path
    fwd = make_forwarder(3600)
    await fwd.start()
    await spooled_count(fwd, 400)
    with log.open("ab") as f:
        f.write(cri_lines(400, 150, "one"))
    os.rename(log, log.with_name("0.log.20261125-000000"))
    log.write_bytes(cri_lines(0, 20, "two"))
    await wait_until(
        lambda: any(c["state"] == "finished" for c in checkpoints(fwd)),
        timeout_s=60,
        what="a finished checkpoint",
        detail=fwd.tail,
    )
    await spooled_count(fwd, 570)
    assert await fwd.metric("logferry_checkpoints_total", tenant="ck-rot") == 1
    assert await fwd.stop() == 0
    found = assert_never_ahead(spooled(fwd))
    finished = [c for c in found if c["state"] == "finished"]
    assert [(c["next_seq"], c["reason"]) for c in finished] == [(550, "rotated")]
    # the new file's source: its shutdown checkpoint; the finished one says nothing more
    assert sorted((c["state"], c["next_seq"]) for c in found) == [
        ("finished", 550),
        ("open", 20),
    ]


async def test_a_file_gone_while_down_is_lost_with_its_unread_lines_counted(
    make_forwarder: MakeForwarder, tmp_path: Path
) -> None:
    log = container_log(tmp_path / "node", "ck-lost", "web", body=cri_lines(0, 300, "one")).path
    fwd = make_forwarder(3600)
    await fwd.start()
    await spooled_count(fwd, 300)
    assert await fwd.stop() == 0
    # While it is down: 120 more lines, then kubelet rotates the file, compresses the rotated
    # one and deletes it. (The new 0.log is made first, so it cannot get the old inode.)
    with log.open("ab") as f:
        f.write(cri_lines(300, 120, "one"))
    rotated = log.with_name("0.log.20261125-000000")
    os.rename(log, rotated)
    log.write_bytes(cri_lines(0, 10, "two"))
    rotated.with_name(rotated.name + ".gz").write_bytes(gzip.compress(rotated.read_bytes()))
    os.unlink(rotated)
    await fwd.start()
    await wait_until(
        lambda: any(c["state"] == "lost" for c in checkpoints(fwd)),
        timeout_s=60,
        what="the lost checkpoint",
        detail=fwd.tail,
    )
    assert await fwd.metric("logferry_sources_lost_total") == 1
    assert await fwd.stop() == 0
    records = spooled(fwd)
    found = assert_never_ahead(records)
    (lost,) = [c for c in found if c["state"] == "lost"]
    assert (lost["next_seq"], lost["lost_lines"], lost["reason"]) == (300, 120, "gone_while_down")
    (shutdown,) = [c for c in found if c["src"] == lost["src"] and c["state"] == "open"]
    assert shutdown["next_seq"] == 300  # the first run's stop said as much
    # routed like the source's own records: the same kubernetes map
    ours = [r for r in records if r["_lf"]["src"] == lost["src"]]
    assert {str(r["kubernetes"]) for r in ours} == {str(ours[0]["kubernetes"])}
    assert ours[0]["kubernetes"]["namespace_name"] == "ck-lost"


async def test_sigterm_writes_the_shutdown_checkpoint_after_the_last_records(
    make_forwarder: MakeForwarder, tmp_path: Path
) -> None:
    node = tmp_path / "node"
    for i in (0, 1):
        container_log(node, "ck-stop", f"pod-{i}", body=cri_lines(0, 90 + i, "s"))
    fwd = make_forwarder(3600)
    await fwd.start()
    await spooled_count(fwd, 181)
    assert checkpoints(fwd) == []  # no interval has passed
    assert await fwd.stop() == 0
    records = spooled(fwd)
    found = assert_never_ahead(records)
    assert sorted(c["next_seq"] for c in found) == [90, 91]
    assert {c["state"] for c in found} == {"open"}
    assert all("reason" not in c for c in found)
    assert [r["_lf"].get("kind") for r in records[-2:]] == ["checkpoint", "checkpoint"]


async def test_checkpoints_reach_the_aggregator_and_stay_out_of_the_record_counts(
    make_aggregator: MakeAggregator, make_forwarder: MakeForwarder, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    agg = make_aggregator(None, output={"type": "file", "directory": str(out)})
    await agg.start()
    log = container_log(tmp_path / "node", "ck-e2e", "web", body=cri_lines(0, 250, "e")).path
    fwd = make_forwarder(0.2, input_port(agg))
    await fwd.start()
    with log.open("ab") as f:
        f.write(cri_lines(250, 250, "e"))

    def arrived() -> bool:
        return any(m["_lf"]["next_seq"] == 500 for m in marks(out)) and len(documents(out)) >= 500

    await wait_until(
        arrived, timeout_s=60, what="500 records and their checkpoint", detail=fwd.tail
    )
    assert_exactly_once(out, [500])  # checkpoints are not log records
    (src,) = {doc["_lf"]["src"] for doc in documents(out)}
    for mark in marks(out):
        assert mark["_lf"]["src"] == src
        assert mark["kubernetes"]["namespace_name"] == "ck-e2e"

    async def all_acked() -> bool:
        return await fwd.metric("logferry_sender_records_acked_total") >= 500

    await wait_until(all_acked, timeout_s=30, what="the records acked")
    assert await fwd.metric("logferry_sender_records_acked_total") == 500
    assert await fwd.metric("logferry_records_spooled_total") == 500
    assert await fwd.metric("logferry_checkpoints_total", tenant="ck-e2e") >= 1
    assert await fwd.stop() == 0
    assert await agg.stop() == 0
