"""Full disks, for real: a forwarder's spool and an aggregator's spool on small tmpfs volumes
that fill up. Nothing crashes, nothing is lost or stored twice, a position never moves past
what the spool holds, and everything flows once there is space again.

Needs root (the volumes are real tmpfs mounts); skipped with the reason otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest

from logferry.common.protocol import decode_entries
from logferry.common.spool.segment import DamagedRange, scan_frames
from logferry.common.spool.segment import read_frame as read_spool_frame
from logferry.forwarder.entries import block_stream
from logferry.forwarder.positions import decode_positions
from tests.support.aggregator import MakeAggregator, input_address
from tests.support.daemon import DaemonProcess
from tests.support.file_store import assert_exactly_once, documents
from tests.support.kubelet import CRI_TIME, ContainerLog, container_log, glob_of
from tests.support.net import free_port, wait_until
from tests.support.spool_damage import segments
from tests.support.tmpfs import fill, free_bytes, mounted_tmpfs

pytestmark = pytest.mark.integration


class Writer:
    """Appends CRI lines that hardly compress (hex noise) to container logs, counting them."""

    def __init__(self, logs: list[ContainerLog]) -> None:
        self.logs = logs
        self.written = [0] * len(logs)

    def write(self, per_file: int) -> None:
        for i, log in enumerate(self.logs):
            first = self.written[i]
            noise = os.urandom(per_file * 60).hex()
            data = b"".join(
                f"{CRI_TIME.format(n)} stdout F {noise[k * 120 : k * 120 + 120]} {n}\n".encode()
                for k, n in enumerate(range(first, first + per_file))
            )
            with log.path.open("ab") as f:
                f.write(data)
            self.written[i] += per_file

    @property
    def total(self) -> int:
        return sum(self.written)


async def healthy(daemon: DaemonProcess) -> bool:
    url = f"http://127.0.0.1:{daemon.http_port}/healthz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status == 200


def spooled_seqs(spool_dir: Path) -> dict[str, set[int]]:
    """Per source, the seqs of the records held in the forwarder's spool segments (valid
    frames only: a frame being retried on a full disk may be half there for a moment)."""
    held: dict[str, set[int]] = {}
    for path in segments(spool_dir):
        data = path.read_bytes()
        for item in scan_frames(data, 0):
            if isinstance(item, DamagedRange):
                continue
            found = read_spool_frame(data, item.offset)
            assert found is not None
            for block in found[1]:
                for _time, record in decode_entries(block_stream(block)):
                    if "kind" not in record["_lf"]:  # a checkpoint record has no seq
                        held.setdefault(record["_lf"]["src"], set()).add(record["_lf"]["seq"])
    return held


def assert_positions_trail_the_spool(positions: Path, spool_dir: Path) -> int:
    """Every record below each saved position is in the spool (nothing was committed: the
    aggregators are down); returns how many sources were checked."""
    states, _released = decode_positions(positions.read_bytes())
    held = spooled_seqs(spool_dir)
    for state in states:
        missing = set(range(state.next_seq)) - held.get(state.source_id, set())
        assert not missing, f"{state.source_id}: position {state.next_seq} past the spool"
    return len(states)


async def test_forwarder_spool_volume_full_pauses_tailing_then_delivers_everything_once(
    tmp_path: Path, daemons: list[DaemonProcess], make_aggregator: MakeAggregator
) -> None:
    with mounted_tmpfs(tmp_path / "fwdvol", size="8m") as volume:
        node = tmp_path / "node"
        writer = Writer([container_log(node, f"ns-{i}", f"pod-{i}") for i in range(3)])
        agg_port = free_port()  # nothing listens there yet: the aggregators are down
        fwd_dir = tmp_path / "fwd"
        spool_dir = volume / "spool"  # positions and parked chunks beside it, on the tmpfs too
        fwd = DaemonProcess(
            "forwarder",
            fwd_dir,
            {
                "node_name": "node-full",
                "spool": {
                    "directory": str(spool_dir),
                    "max_bytes": "64MiB",  # far above the 8 MiB volume: the disk fills first
                    "segment_max_bytes": "1MiB",
                },
                "source": {"path_glob": glob_of(node), "poll_interval_s": 0.05},
                "sender": {
                    "servers": [f"127.0.0.1:{agg_port}"],
                    "ack_timeout_s": 60,
                    "backoff_max_s": 1,
                },
            },
        )
        daemons.append(fwd)
        await fwd.start()
        assert len(fwd.events("spool.volume_small")) == 1  # 8 MiB < spool.max_bytes
        assert await fwd.metric("logferry_node_spool_volume_bytes") == 8 << 20
        writer.write(100)
        positions = volume / "positions"

        async def positions_saved() -> bool:
            if not positions.exists():
                return False
            states, _released = decode_positions(positions.read_bytes())
            return sorted(s.next_seq for s in states) == [100, 100, 100]

        await wait_until(positions_saved, timeout_s=60, what="positions of the first lines")
        writer.write(40_000)  # ~30 MB of lines, ~15 MB compressed: about twice the volume

        async def spool_disk_full() -> bool:
            return await fwd.metric("logferry_disk_full", kind="spool") == 1

        await wait_until(spool_disk_full, timeout_s=120, what="the spool volume to fill")
        assert free_bytes(volume) < 1 << 20
        assert await healthy(fwd)
        assert await fwd.metric("logferry_lag_bytes") > 1 << 20  # tailing waits, reads no more
        assert await fwd.metric("logferry_disk_full_stalls_total", kind="spool") == 1
        warned = [e for e in fwd.events("disk.full") if e["kind"] == "spool"]
        assert len(warned) == 1  # once per stall, however many retries
        assert warned[0]["level"] == "warning"
        assert not fwd.events("daemon.crashed")
        assert assert_positions_trail_the_spool(positions, spool_dir) == 3

        # SIGTERM while full: it stops (the appends it cannot make are abandoned; positions
        # stay behind them), and starts again on the still full volume.
        assert await fwd.stop(timeout_s=30) == 0
        assert assert_positions_trail_the_spool(positions, spool_dir) == 3
        await fwd.start()
        await wait_until(spool_disk_full, timeout_s=60, what="the restarted spool to stall")

        out = tmp_path / "out"
        agg = make_aggregator(
            None,
            input={"listen_port": agg_port},
            output={"type": "file", "directory": str(out)},
        )
        await agg.start()  # delivery frees segments: the spool resumes by itself
        writer.write(2_000)

        async def everything_delivered() -> bool:
            return len(documents(out)) >= writer.total

        await wait_until(everything_delivered, timeout_s=300, what=f"{writer.total} documents")
        assert_exactly_once(out, writer.written)
        assert await fwd.metric("logferry_disk_full", kind="spool") == 0
        assert await fwd.metric("logferry_lag_bytes") == 0
        assert not fwd.events("daemon.crashed")
        assert await fwd.stop() == 0
        assert await agg.stop() == 0


async def test_aggregator_spool_volume_full_holds_acks_then_delivers_everything_once(
    tmp_path: Path, daemons: list[DaemonProcess], make_aggregator: MakeAggregator
) -> None:
    with (
        mounted_tmpfs(tmp_path / "aggvol", size="8m") as agg_volume,
        mounted_tmpfs(tmp_path / "outvol", size="64m") as out_volume,
    ):
        out = out_volume / "out"
        filler = fill(out_volume)  # the output cannot write: the spool keeps everything
        agg = make_aggregator(
            None,
            spool={
                "directory": str(agg_volume / "spool"),
                "segment_max_bytes": "1MiB",
                "compression": "none",  # stored as rendered: 20,000 lines fill the volume
            },
            output={
                "type": "file",
                "directory": str(out),
                "retry_initial_s": 0.05,
                "retry_max_s": 0.5,
            },
        )
        await agg.start()
        node = tmp_path / "node"
        writer = Writer([container_log(node, f"ns-{i}", f"pod-{i}") for i in range(3)])
        fwd_dir = tmp_path / "fwd"
        fwd = DaemonProcess(
            "forwarder",
            fwd_dir,
            {
                "node_name": "node-agg-full",
                "spool": {"directory": str(fwd_dir / "spool"), "segment_max_bytes": "4MiB"},
                "source": {"path_glob": glob_of(node), "poll_interval_s": 0.05},
                # No resend while the aggregator holds a chunk: a resend would be a second
                # copy in the file output, which (unlike a store) does not deduplicate.
                "sender": {
                    "servers": [input_address(agg)],
                    "ack_timeout_s": 600,
                },
            },
        )
        daemons.append(fwd)
        await fwd.start()
        writer.write(20_000)  # ~15 MB of lines; rendered in the aggregator's spool, ~2x that

        async def aggregator_disk_full() -> bool:
            return any(e["kind"] == "spool" for e in agg.events("disk.full"))

        await wait_until(aggregator_disk_full, timeout_s=120, what="the aggregator volume to fill")

        async def forwarder_read_everything() -> bool:
            return await fwd.metric("logferry_lag_bytes") == 0

        await wait_until(forwarder_read_everything, timeout_s=120, what="the forwarder to read")
        acks = await agg.metric("logferry_acks_total")
        writer.write(2_000)  # read and held by the forwarder; no ack comes meanwhile

        async def forwarder_holds_the_rest() -> bool:
            spooled = await fwd.metric("logferry_records_spooled_total")
            return spooled >= writer.total and await fwd.metric("logferry_lag_bytes") == 0

        await wait_until(forwarder_holds_the_rest, timeout_s=120, what="the last lines spooled")
        assert await agg.metric("logferry_acks_total") == acks  # backpressure: acks stopped
        assert await fwd.metric("logferry_sender_records_acked_total") < writer.total
        assert free_bytes(agg_volume) < 1 << 20
        assert await healthy(agg)
        assert await agg.metric("logferry_connections") == 1  # the connection stays open
        assert not agg.events("input.connection_failed")
        assert not agg.events("daemon.crashed")
        assert "traceback" not in agg.log_path.read_text()

        filler.unlink()  # the output can write again: delivery frees the spool volume

        async def everything_delivered() -> bool:
            return len(documents(out)) >= writer.total

        await wait_until(everything_delivered, timeout_s=300, what=f"{writer.total} documents")
        assert_exactly_once(out, writer.written)
        assert await fwd.metric("logferry_sender_chunks_retried_total") == 0
        assert "traceback" not in agg.log_path.read_text()
        assert await fwd.stop() == 0
        assert await agg.stop() == 0
