"""Aggregator memory while a large backlog sits in its spool (guarantee 6).

Starts a real aggregator whose output cannot deliver (``type: opensearch`` pointing at a closed
127.0.0.1 port, ``retry_max_s: 5``) with spool caps large enough for the whole backlog, then
4 concurrent Forward Protocol senders push ``--records`` docker-style records (one namespace
each, CompressedPackedForward chunks of 1,000, at most ``--window`` unacknowledged chunks per
sender). Every ack means the chunk is fsynced in the spool, so acked records are spooled
records. The aggregator's RSS is sampled every second; the script prints RSS when 1M, 2M, 5M
and 10M records are spooled, peak RSS (VmHWM), the spool's bytes on disk and the ingest rate;
then it holds the backlog for ``--hold-s`` (the output keeps retrying) and, unless
``--no-restart``, restarts the aggregator over the backlog (time to ready, RSS over the
next ``--hold-s``). The issue's target is a peak RSS under 200 MB with 10M records spooled.

To keep this process from being the bottleneck, each sender cycles through ``--distinct-chunks``
pre-compressed entry blocks (every chunk id is unique; record ids repeat every block cycle,
which the spool does not look at). The disk is checked first: the run is refused unless the
backlog fits with a 20% margin. The spool lives under ``.cache/`` and is deleted at the end.

Run: ``.venv/bin/python bench/bench_aggregator_backlog.py [--records 10000000]``
(``--records 2000000`` for a quicker run). Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from process_stats import proc_cpu_s, report  # noqa: E402

from logferry.aggregator.ingest import Ingest, Receipt  # noqa: E402
from logferry.aggregator.metrics import AggregatorMetrics  # noqa: E402
from logferry.aggregator.spools import AggregatorSpoolSettings, TenantSpools  # noqa: E402
from logferry.common import protocol  # noqa: E402
from logferry.common.naming import IndexNamer  # noqa: E402
from logferry.common.records import source_id  # noqa: E402
from tests.support.aggregator import aggregator_config  # noqa: E402
from tests.support.daemon import DaemonProcess  # noqa: E402
from tests.support.forward_client import ForwardClient  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.records import container_entries  # noqa: E402

SENDERS = 4
CHUNK_RECORDS = 1000
GiB = 1024**3
MILESTONES = (1_000_000, 2_000_000, 5_000_000, 10_000_000)
DISK_MARGIN = 1.2
FRAME_OVERHEAD_BYTES = 64
"""Spool framing per record (one record is one chunk's fragment), rounded up."""
TAG = "kube.bench"


def proc_status_kb(pid: int, key: str) -> int:
    """A ``VmXxx:`` value of /proc/<pid>/status, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (st_blocks, so sparse files count as they are)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # a segment freed while we walk
                continue
    return total


def namespace(sender: int) -> str:
    return f"lf-backlog-{sender}"


def rendered_bytes_per_record(workdir: Path) -> float:
    """Spool bytes one record takes, measured with the aggregator's own rendering."""
    ingest = Ingest(
        TenantSpools(AggregatorSpoolSettings(directory=workdir / "unused-spool")),
        AggregatorMetrics(),
        namer=IndexNamer("logs"),
        default_tenant="_default",
        instance="bench",
    )
    entries = container_entries(namespace(0), CHUNK_RECORDS, pod="pod-0")
    payload = protocol.encode_compressed_packed_forward(
        TAG, protocol.pack_entries(entries), len(entries), chunk="probe"
    )
    (message,) = protocol.ServerDecoder().feed(payload)
    assert isinstance(message, protocol.EventMessage)
    ((parts, count),) = ingest.render(message, Receipt("bench", 0, 0)).fragments.values()
    return (sum(len(part) for part in parts) + FRAME_OVERHEAD_BYTES) / count


def entry_blocks(sender: int, distinct: int) -> list[bytes]:
    """``distinct`` gzipped entry streams of CHUNK_RECORDS records with contiguous ids."""
    src = source_id("node-backlog", 1, 2000 + sender, 0)
    blocks = []
    for b in range(distinct):
        entries = container_entries(
            namespace(sender),
            CHUNK_RECORDS,
            pod=f"pod-{sender}",
            start_seq=b * CHUNK_RECORDS,
            src=src,
        )
        blocks.append(protocol.gzip_entries(protocol.pack_entries(entries)))
    return blocks


@dataclass
class Tracker:
    """Acked (= spooled) records and the aggregator's memory as they grow."""

    pid: int
    milestones: list[int]
    acked: int = 0
    t0: float = field(default_factory=time.perf_counter)
    hits: list[tuple[int, float, float]] = field(default_factory=list)
    """(milestone, seconds since start, RSS MB when it was reached)."""
    samples: list[tuple[float, int, float]] = field(default_factory=list)
    """(seconds since start, acked, RSS MB), one a second."""

    def rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmRSS") / 1024

    def add(self, records: int) -> None:
        self.acked += records
        while self.milestones and self.acked >= self.milestones[0]:
            self.hits.append((self.milestones.pop(0), time.perf_counter() - self.t0, self.rss_mb()))

    async def sample(self, every_s: float, print_every_s: float) -> None:
        """Sample RSS every ``every_s``; print a progress line every ``print_every_s``."""
        last_print = 0.0
        while True:
            now = time.perf_counter() - self.t0
            self.samples.append((now, self.acked, self.rss_mb()))
            if now - last_print >= print_every_s:
                last_print = now
                print(
                    f"  t={now:6.1f}s  spooled {self.acked:11,d}  "
                    f"RSS {self.samples[-1][2]:6.1f} MB",
                    flush=True,
                )
            await asyncio.sleep(every_s)


async def sender(
    port: int, sender_no: int, chunks: int, blocks: list[bytes], window: int, tracker: Tracker
) -> None:
    """Send ``chunks`` chunks (unique ids, cycling ``blocks``), at most ``window`` unacked."""
    async with ForwardClient("127.0.0.1", port) as client:
        inflight: list[str] = []
        for c in range(chunks):
            chunk_id = f"b{sender_no}-{c}"
            await client.send(
                protocol.encode_compressed_packed_forward(
                    TAG, b"", CHUNK_RECORDS, chunk=chunk_id, gzipped=blocks[c % len(blocks)]
                )
            )
            inflight.append(chunk_id)
            if len(inflight) >= window:
                await client.wait_ack(inflight.pop(0), timeout_s=300)
                tracker.add(CHUNK_RECORDS)
        for chunk_id in inflight:
            await client.wait_ack(chunk_id, timeout_s=300)
            tracker.add(CHUNK_RECORDS)


def aggregator(workdir: Path, spool_max: str) -> DaemonProcess:
    """An aggregator whose store is a closed port: everything stays in the spool."""
    return DaemonProcess(
        "aggregator",
        workdir,
        aggregator_config(
            workdir,
            f"http://127.0.0.1:{free_port()}",
            spool={
                "max_bytes": spool_max,
                "tenant_max_bytes": spool_max,
                "segment_max_bytes": "64MiB",
            },
            output={"retry_max_s": 5},
            log={"level": "error", "format": "json"},
            # The output is in backoff when we stop it: no point waiting the default 20 s.
            shutdown_deadline_s=5,
        ),
    )


async def bench(args: argparse.Namespace, workdir: Path, estimate_bytes: float) -> None:
    chunks_per_sender = max(1, -(-args.records // (SENDERS * CHUNK_RECORDS)))
    records = chunks_per_sender * SENDERS * CHUNK_RECORDS
    blocks = [entry_blocks(s, args.distinct_chunks) for s in range(SENDERS)]
    daemon = aggregator(workdir, args.spool_max)
    await daemon.start()
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        port = int(daemon.config["input"]["listen_port"])
        start_rss = proc_status_kb(pid, "VmRSS") / 1024
        print(
            f"backlog of {records:,d} records (~{estimate_bytes / GiB:.1f} GiB expected) into "
            f"{workdir / 'spool'}; aggregator pid {pid}, RSS at start {start_rss:.1f} MB",
            flush=True,
        )
        tracker = Tracker(pid, [m for m in MILESTONES if m <= records])
        sampler = asyncio.create_task(tracker.sample(1.0, args.print_every_s))
        cpu0 = proc_cpu_s(pid)
        try:
            await asyncio.gather(
                *(
                    sender(port, s, chunks_per_sender, blocks[s], args.window, tracker)
                    for s in range(SENDERS)
                )
            )
            ingest_s = time.perf_counter() - tracker.t0
            cpu_s = proc_cpu_s(pid) - cpu0
            await asyncio.sleep(args.hold_s)  # the backlog sits; the output keeps retrying
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        peak = proc_status_kb(pid, "VmHWM") / 1024
        held = [rss for t, _n, rss in tracker.samples if t >= ingest_s]
        delivered = await daemon.metric("logferry_records_out_total")
        failed = await daemon.metric("logferry_bulk_requests_total")
        spool_metric = await daemon.metric("logferry_spool_bytes")
        on_disk = disk_bytes(workdir / "spool")
        print(f"\nspooled {records:,d} records in {ingest_s:.1f}s = {records / ingest_s:,.0f} "
              f"records/s; aggregator CPU {cpu_s:.1f}s = {cpu_s / records * 1e6:.2f} CPU s "
              f"per million")  # fmt: skip
        for milestone, at_s, rss in tracker.hits:
            print(f"  RSS at {milestone:>11,d} records spooled (t={at_s:6.1f}s): {rss:6.1f} MB")
        if held:
            print(f"  RSS while the backlog sat for {args.hold_s:.0f}s: "
                  f"{min(held):.1f}-{max(held):.1f} MB")  # fmt: skip
        print(f"  peak RSS (VmHWM): {peak:.1f} MB")
        print(
            f"  spool on disk: {on_disk / GiB:.2f} GiB ({on_disk / records:.0f} bytes/record; "
            f"logferry_spool_bytes {spool_metric / GiB:.2f} GiB); delivered {delivered:.0f}, "
            f"{failed:.0f} bulk requests failed (closed port, retried)"
        )
        await daemon.stop(timeout_s=120)
        if args.restart:
            t0 = time.perf_counter()
            await daemon.start(timeout_s=600)
            assert daemon.proc is not None
            ready_s = time.perf_counter() - t0
            pid = daemon.proc.pid
            restart_rss: list[float] = []
            while time.perf_counter() - t0 < ready_s + args.hold_s:
                restart_rss.append(proc_status_kb(pid, "VmRSS") / 1024)
                await asyncio.sleep(1.0)
            pending = await daemon.metric("logferry_spool_fragments")
            print(
                f"  restart over the backlog: ready after {ready_s:.1f}s; over the next "
                f"{args.hold_s:.0f}s RSS {min(restart_rss):.1f}-{max(restart_rss):.1f} MB, "
                f"peak (VmHWM) {proc_status_kb(pid, 'VmHWM') / 1024:.1f} MB; "
                f"{pending:,.0f} fragments pending"
            )
    finally:
        await daemon.stop(timeout_s=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000_000, help="backlog size")
    parser.add_argument("--window", type=int, default=4, help="chunks in flight per sender")
    parser.add_argument("--distinct-chunks", type=int, default=16, help="entry blocks per sender")
    parser.add_argument("--spool-max", default="8GiB", help="spool max_bytes and tenant_max_bytes")
    parser.add_argument("--hold-s", type=float, default=10.0, help="keep the backlog this long")
    parser.add_argument("--print-every-s", type=float, default=10.0)
    parser.add_argument(
        "--no-restart", dest="restart", action="store_false", help="skip the restart step"
    )
    parser.add_argument(
        "--dir", type=Path, default=REPO / ".cache", help="where the spool goes (deleted after)"
    )
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="lf-bench-backlog-", dir=str(args.dir)))
    try:
        per_record = rendered_bytes_per_record(workdir)
        estimate = per_record * args.records
        free = shutil.disk_usage(workdir).free
        if estimate * DISK_MARGIN > free:
            print(
                f"refusing: a backlog of {args.records:,d} records needs about "
                f"{estimate / GiB:.1f} GiB ({per_record:.0f} bytes/record) plus a 20% margin "
                f"= {estimate * DISK_MARGIN / GiB:.1f} GiB, but {args.dir} has only "
                f"{free / GiB:.1f} GiB free. Pass a smaller --records or another --dir.",
                file=sys.stderr,
            )
            return 2
        spool_max = AggregatorSpoolSettings(directory=workdir, max_bytes=args.spool_max).max_bytes
        if estimate * DISK_MARGIN > spool_max:
            print(
                f"refusing: the backlog (~{estimate / GiB:.1f} GiB) would not fit under "
                f"--spool-max {args.spool_max} with a 20% margin; senders would block on "
                f"backpressure. Raise --spool-max.",
                file=sys.stderr,
            )
            return 2
        asyncio.run(bench(args, workdir, estimate))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    code = main()
    report()
    sys.exit(code)
