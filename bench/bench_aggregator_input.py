"""Aggregator input throughput: Forward Protocol in, fsynced spool, acks out (null output).

Starts a real aggregator process (null output: records are committed as soon as they are
spooled), then 4, 8, 16, 32 and 64 concurrent senders (``--senders``) in this process push
pre-encoded CompressedPackedForward chunks of docker-style records, each waiting for its ack
before sending the next (at most ``--window`` chunks in flight per sender). Prints records/s,
the aggregator's CPU seconds per million records (its records/s per core), and its peak RSS.

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

from process_stats import proc_cpu_s, proc_peak_rss_mb, report  # noqa: E402

from tests.support.daemon import DaemonProcess  # noqa: E402
from tests.support.forward_client import ForwardClient  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.records import compressed_chunk, container_entries  # noqa: E402


async def sender(port: int, chunks: list[bytes], ids: list[str], window: int) -> int:
    sent = 0
    async with ForwardClient("127.0.0.1", port) as client:
        inflight: list[str] = []
        for payload, chunk_id in zip(chunks, ids, strict=True):
            await client.send(payload)
            inflight.append(chunk_id)
            if len(inflight) >= window:
                await client.wait_ack(inflight.pop(0), timeout_s=120)
            sent += 1
        for chunk_id in inflight:
            await client.wait_ack(chunk_id, timeout_s=120)
    return sent


async def run(
    senders: int,
    seconds: float,
    chunk_records: int,
    window: int,
    workdir: Path,
    compression: str | None,
) -> None:
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
    namespaces = [f"ns-{n}" for n in range(8)]
    per_sender = max(1, int(seconds * 250_000 / senders / chunk_records))
    plans = []
    for s in range(senders):
        entries = container_entries(namespaces[s % len(namespaces)], chunk_records, pod=f"p{s}")
        ids = [f"s{s}-c{c}" for c in range(per_sender)]
        plans.append(([compressed_chunk(entries, chunk_id) for chunk_id in ids], ids))
    cpu0 = proc_cpu_s(pid)
    t0 = time.perf_counter()
    sent = await asyncio.gather(*(sender(port, chunks, ids, window) for chunks, ids in plans))
    elapsed = time.perf_counter() - t0
    cpu = proc_cpu_s(pid) - cpu0
    records = sum(sent) * chunk_records
    print(
        f"senders={senders:3d}  records={records:9,d}  {records / elapsed:11,.0f} records/s  "
        f"aggregator CPU {cpu:6.2f}s = {cpu / records * 1e6:5.2f} CPU s per million "
        f"({records / cpu:11,.0f} records/s per core)  peak RSS {proc_peak_rss_mb(pid):5.0f} MB"
    )
    await daemon.stop()


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
    args = parser.parse_args()
    counts = [int(count) for count in args.senders.split(",") if count.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="lf-bench-agg-", dir=str(REPO / ".cache")))
    try:
        for senders in counts:
            await run(
                senders, args.seconds, args.chunk_records, args.window, workdir, args.compression
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    (REPO / ".cache").mkdir(exist_ok=True)
    asyncio.run(main())
    report()
