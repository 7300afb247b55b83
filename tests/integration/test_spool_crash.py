"""kill -9 a spool writer at random moments: every acknowledged record survives exactly once.

Guarantees 1 and 7: an append returns only once its records are durable, and a torn write
(simulated by cutting the unacknowledged tail after some kills, as a power loss could) is
cut out on open without losing anything that was acknowledged. The writer subprocess
prints each batch only after ``append`` returned; after every kill the test reopens the
spool and checks each acknowledged record at or above the low-water mark is there exactly
once, with its own content, and that the mark never passed a record that was not committed.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from logferry.common.spool import Spool
from logferry.common.spool.segment import FrameHeader, parse_segment_name, scan_frames
from tests.support.spool_crash_writer import check_record

ROOT = Path(__file__).resolve().parents[2]
KILLS = 200 if os.environ.get("CHAOS_LONG") == "1" else 30


@dataclass
class Ledger:
    """What the writers claimed, over all runs: acknowledged records and commit intents."""

    acked: dict[int, str] = field(default_factory=dict)  # seq -> record id
    committed: set[int] = field(default_factory=set)
    acks_seen: int = 0

    def add(self, line: str) -> None:
        kind, *args = line.split()
        if kind == "ACK":
            first, batch_id, count = int(args[0]), args[1], int(args[2])
            for i in range(count):
                assert self.acked.setdefault(first + i, f"{batch_id}:{i}") == f"{batch_id}:{i}"
            self.acks_seen += 1
        elif kind == "COMMIT":
            self.committed.update(range(int(args[0]), int(args[1])))

    def commit_frontier(self, start: int) -> int:
        """The first sequence number at or after ``start`` that was never committed."""
        seq = start
        while seq in self.committed:
            seq += 1
        return seq


async def run_writer(directory: Path, run: int, kill_after_s: float) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.spool_crash_writer",
        str(directory),
        str(run),
        str(run * 7919),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    reader = asyncio.create_task(proc.stdout.read())
    try:
        await asyncio.wait_for(proc.wait(), kill_after_s)  # the fault's timing, not a sync
    except TimeoutError:
        proc.kill()
    # The writer never exits by itself: any other status is a crash of the writer.
    assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
    out = (await asyncio.wait_for(reader, 10)).decode()
    # Only complete lines: a line cut by the kill was never fully claimed.
    return out.splitlines()[: out.count("\n")]


def lose_unsynced_tail(directory: Path, ledger: Ledger, rng: random.Random) -> None:
    """Simulate a power loss: cut the newest segment anywhere after its last acked frame.

    (A SIGKILL alone never tears a ``pwrite``; a power cut can lose any unacked tail.)
    """
    names = sorted(n for n in os.listdir(directory) if parse_segment_name(n) is not None)
    if not names or not ledger.acked:
        return
    path = directory / names[-1]
    data = path.read_bytes()
    newest_acked = max(ledger.acked)
    keep = 0
    for item in scan_frames(data, 0):
        if isinstance(item, FrameHeader) and item.first_seq <= newest_acked:
            keep = item.end
    os.truncate(path, rng.randint(keep, len(data)))


async def verify(directory: Path, ledger: Ledger, previous_mark: int) -> int:
    spool = await Spool.open(directory, max_bytes=256 << 20, segment_max_bytes=128 << 10)
    try:
        mark = spool.low_water_mark
        assert mark >= previous_mark, "the low-water mark went backwards"
        assert mark <= ledger.commit_frontier(previous_mark), "mark passed an uncommitted record"
        for event in spool.quarantine_events:
            assert event.missing_seqs is None, f"acknowledged records lost: {event}"
        seen: dict[int, str] = {}
        while batch := await spool.read(max_records=5000, max_bytes=8 << 20, timeout_s=0):
            for seq, data in zip(range(batch.first_seq, batch.end_seq), batch.records, strict=True):
                assert seq not in seen, f"seq {seq} delivered twice"
                seen[seq] = check_record(data)
        assert sorted(seen) == list(range(mark, spool.next_seq)), "a gap in durable records"
        assert len(set(seen.values())) == len(seen), "a record stored twice"
        for seq, record_id in ledger.acked.items():
            if seq >= mark:
                assert seen.get(seq) == record_id, f"acknowledged record {record_id} lost"
        return mark
    finally:
        await spool.close()


@pytest.mark.integration
@pytest.mark.timeout(300)
async def test_kill_9_never_loses_or_duplicates_an_acknowledged_record(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "20240611")))
    ledger, mark = Ledger(), 0
    for run in range(KILLS):
        for line in await run_writer(tmp_path, run, rng.uniform(0.15, 1.0)):
            ledger.add(line)
        if rng.random() < 0.5:
            lose_unsynced_tail(tmp_path, ledger, rng)
        mark = await verify(tmp_path, ledger, mark)
        if os.environ.get("CHAOS_VERBOSE"):
            qdir = tmp_path / "quarantine"
            print(run, mark, len(ledger.acked), os.listdir(qdir) if qdir.exists() else [])
    assert ledger.acks_seen > KILLS  # the kills landed while appends were acknowledged
