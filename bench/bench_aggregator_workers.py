"""One aggregator worker against two, on realistic content: throughput to a null output.

``logferry loadgen`` writes a node's container logs (as in ``bench_realistic.py``); they are
made into the forwarder's own CompressedPackedForward chunks once, in this process. Then a
real aggregator (null output, fsynced spools, acks) is started with ``workers: 1`` and with
``workers: 2``, and the same chunks, ``--rounds`` times over, are pushed by ``--senders``
long-lived connections (as forwarders keep; each waits for its acks, at most ``--window``
chunks in flight). Prints for
each: records/s (wall), the CPU seconds per million records of the whole aggregator (the
supervisor and its workers), each process's peak RSS, how many chunks each worker took, and
the throughput ratio two workers / one. The senders run in this process and need a share of
the same cores: their CPU is printed too.

Run: ``.venv/bin/python bench/bench_aggregator_workers.py [--lines 300000]``. Asserts
nothing about time.
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
from bench_realistic import chunk, payloads_of  # noqa: E402
from process_stats import proc_cpu_s, proc_peak_rss_mb, report  # noqa: E402

from tests.support.daemon import DaemonProcess, process_tree  # noqa: E402
from tests.support.forward_client import ForwardClient  # noqa: E402
from tests.support.net import free_port  # noqa: E402


async def sender(port: int, chunks: list[tuple[str, bytes]], window: int) -> None:
    async with ForwardClient("127.0.0.1", port) as client:
        await client.send_windowed(chunks, window)


async def run(workers: int, payloads: list[tuple[bytes, int]], args: argparse.Namespace,
              work: Path) -> float:  # fmt: skip
    home = work / f"agg-{workers}"
    daemon = DaemonProcess(
        "aggregator",
        home,
        {
            "input": {"listen_host": "127.0.0.1", "listen_port": free_port(),
                      "allow_unauthenticated": True},
            "spool": {"directory": str(home / "spool"), "max_bytes": "4GiB",
                      "tenant_max_bytes": "2GiB", "segment_max_bytes": "64MiB"},
            "output": {"type": "null"},
            "workers": workers,
            "log": {"level": "warning", "format": "json"},
        },
    )  # fmt: skip
    await daemon.start()
    assert daemon.proc is not None
    pids = process_tree(daemon.proc.pid)
    port = int(daemon.config["input"]["listen_port"])
    # One long-lived connection per sender, as a forwarder keeps: its share of the chunks,
    # ``rounds`` times over, each with an id of its own.
    plans = [
        [
            (f"s{s}-r{r}-c{n}", chunk(payload, f"s{s}-r{r}-c{n}"))
            for r in range(args.rounds)
            for n, payload in enumerate(payloads[s :: args.senders])
        ]
        for s in range(args.senders)
    ]
    cpu0 = [proc_cpu_s(pid) for pid in pids]
    own0 = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(sender(port, mine, args.window) for mine in plans))
    elapsed = time.perf_counter() - started
    cpu = sum(proc_cpu_s(pid) - before for pid, before in zip(pids, cpu0, strict=True))
    own = time.process_time() - own0
    total = sum(count for _, count in payloads) * args.rounds
    taken = [await daemon.metric("logferry_acks_total", worker=str(i)) for i in range(workers)]
    rss = ", ".join(f"{proc_peak_rss_mb(pid):.0f}" for pid in pids)
    print(
        f"workers={workers}  {total:,} records in {elapsed:5.1f}s = {total / elapsed:9,.0f}/s  "
        f"aggregator CPU {cpu / total * 1e6:5.2f} s per million  peak RSS {rss} MB  "
        f"senders' CPU {own / total * 1e6:4.2f} s per million"
        + (f"  chunks per worker {[int(t) for t in taken]}" if workers > 1 else "")
    )
    await daemon.stop()
    return total / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--window", type=int, default=4, help="chunks in flight per sender")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--dir", type=Path, default=REPO / ".cache",
                        help="where the spools go (a tmpfs takes the disk out of it)")  # fmt: skip
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lf-bench-workers-", dir=str(args.dir)))
    try:
        logs = work / "node"
        write_logs(logs, args.lines)
        payloads = payloads_of(logs)
        records = sum(count for _, count in payloads)
        print(f"loadgen: {args.lines:,} lines -> {len(payloads)} chunks, {records:,} records; "
              f"{args.senders} senders, window {args.window}, {args.rounds} rounds")  # fmt: skip
        one = await run(1, payloads, args, work)
        two = await run(2, payloads, args, work)
        print(f"two workers / one: {two / one:.2f}x the throughput")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
    report()
