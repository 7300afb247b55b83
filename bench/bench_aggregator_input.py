"""Aggregator input throughput: Forward Protocol in, fsynced spool, acks out (null output).

Starts a real aggregator process (one worker; null output: records are committed as soon as
they are spooled), then 4, 8, 16, 32 and 64 concurrent senders (``--senders``) in this
process push pre-encoded CompressedPackedForward chunks, each waiting for its ack before
sending the next (at most ``--window`` chunks in flight per sender). By default the chunks
are realistic: ``logferry loadgen``'s node read and grouped by the forwarder's own reader and
block encoder (``bench_realistic.py``); ``--content uniform`` sends the old synthetic
docker-style records (one text, 1,000 per chunk): a labelled ceiling. Prints records/s, the
aggregator's CPU seconds per million records (its records/s per core), its peak RSS, and,
for realistic content, the floor on the same chunks measured in the same run (decode +
render + one write and fdatasync per chunk, in one loop) and the ratio aggregator/floor.

Run: ``.venv/bin/python bench/bench_aggregator_input.py``. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_multiline import write_logs  # noqa: E402
from bench_realistic import chunk, floor, payloads_of  # noqa: E402
from process_stats import proc_cpu_s, proc_peak_rss_mb, report  # noqa: E402

from tests.support.daemon import DaemonProcess  # noqa: E402
from tests.support.forward_client import ForwardClient  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.records import compressed_chunk, container_entries  # noqa: E402

Plan = list[tuple[list[bytes], list[str], list[int]]]
Payloads = list[tuple[bytes, int]]
CHUNK_RECORDS_REALISTIC = 2000


def plan(senders: int, seconds: float, chunk_records: int, payloads: Payloads) -> Plan:
    """Each sender's chunks (ids unique per sender), about ``seconds`` of work in all."""
    out: Plan = []
    if payloads:
        total = max(len(payloads), int(seconds * 100_000 / CHUNK_RECORDS_REALISTIC))
        for s in range(senders):
            mine = [payloads[n % len(payloads)] for n in range(s, total, senders)]
            ids = [f"s{s}-c{c}" for c in range(len(mine))]
            out.append(([chunk(p, i) for p, i in zip(mine, ids, strict=True)], ids,
                        [count for _, count in mine]))  # fmt: skip
        return out
    namespaces = [f"ns-{n}" for n in range(8)]
    per_sender = max(1, int(seconds * 250_000 / senders / chunk_records))
    for s in range(senders):
        entries = container_entries(namespaces[s % len(namespaces)], chunk_records, pod=f"p{s}")
        ids = [f"s{s}-c{c}" for c in range(per_sender)]
        out.append(([compressed_chunk(entries, i) for i in ids], ids, [chunk_records] * len(ids)))
    return out


async def sender(
    port: int, chunks: list[bytes], ids: list[str], counts: list[int], window: int
) -> int:
    async with ForwardClient("127.0.0.1", port) as client:
        await client.send_windowed(zip(ids, chunks, strict=True), window, timeout_s=120)
    return sum(counts)


async def run(
    senders: int,
    seconds: float,
    chunk_records: int,
    window: int,
    workdir: Path,
    compression: str | None,
    payloads: Payloads,
) -> float:
    spool: dict[str, str] = {"compression": compression} if compression else {}
    daemon = DaemonProcess(
        "aggregator",
        workdir / f"agg-{senders}",
        {
            "input": {
                "listen_host": "127.0.0.1",
                "listen_port": free_port(),
                "allow_unauthenticated": True,
            },
            "spool": {
                "directory": str(workdir / f"agg-{senders}" / "spool"),
                "max_bytes": "4GiB",
                "tenant_max_bytes": "1GiB",
                "segment_max_bytes": "64MiB",
                **spool,
            },
            "dlq": {"directory": str(workdir / f"agg-{senders}" / "dlq")},
            "output": {"type": "null"},
            "workers": 1,  # one process: its CPU and RSS are the figures
            "log": {"level": "warning", "format": "json"},
        },
    )
    await daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    port = int(daemon.config["input"]["listen_port"])
    plans = plan(senders, seconds, chunk_records, payloads)
    cpu0 = proc_cpu_s(pid)
    t0 = time.perf_counter()
    sent = await asyncio.gather(
        *(sender(port, chunks, ids, counts, window) for chunks, ids, counts in plans)
    )
    elapsed = time.perf_counter() - t0
    cpu = proc_cpu_s(pid) - cpu0
    records = sum(sent)
    print(
        f"senders={senders:3d}  records={records:9,d}  {records / elapsed:11,.0f} records/s  "
        f"aggregator CPU {cpu:6.2f}s = {cpu / records * 1e6:5.2f} CPU s per million "
        f"({records / cpu:11,.0f} records/s per core)  peak RSS {proc_peak_rss_mb(pid):5.0f} MB"
    )
    await daemon.stop()
    return cpu / records * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="target length of each run")
    parser.add_argument("--chunk-records", type=int, default=1000)
    parser.add_argument("--window", type=int, default=4, help="chunks in flight per sender")
    parser.add_argument(
        "--senders",
        default="4,8,16,32,64",
        help="comma-separated counts of concurrent senders, one run (and aggregator) each",
    )
    parser.add_argument(
        "--compression",
        choices=("none", "deflate"),
        help="spool.compression (default: the setting's default)",
    )
    parser.add_argument("--content", choices=["realistic", "uniform"], default="realistic")
    parser.add_argument("--lines", type=int, default=200_000, help="realistic: loadgen lines")
    args = parser.parse_args()
    counts = [int(count) for count in args.senders.split(",") if count.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="lf-bench-agg-", dir=str(REPO / ".cache")))
    try:
        payloads: Payloads = []
        if args.content == "realistic":
            write_logs(workdir / "node", args.lines)
            payloads = payloads_of(workdir / "node")
            print(f"realistic content: {args.lines:,} loadgen lines in {len(payloads)} chunks")
        else:
            print(f"uniform content (a ceiling): {args.chunk_records} records per chunk")
        figures = [
            await run(
                senders,
                args.seconds,
                args.chunk_records,
                args.window,
                workdir,
                args.compression,
                payloads,
            )
            for senders in counts
        ]
        if payloads:
            chunks = [chunk(p, f"f{n}") for n, p in enumerate(payloads)]
            floor_cpu, floor_records = floor(chunks, workdir / "floor.ndjson")
            low = floor_cpu / floor_records * 1e6
            ratios = "  ".join(f"{n}: {f / low:.2f}" for n, f in zip(counts, figures, strict=True))
            print(
                f"floor (decode + render + one write and fdatasync per chunk): {low:.2f} CPU s "
                f"per million; aggregator/floor by senders  {ratios}"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    (REPO / ".cache").mkdir(exist_ok=True)
    asyncio.run(main())
    report()
