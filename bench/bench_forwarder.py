"""Forwarder throughput: container log files on disk -> forwarder -> acked at an aggregator.

By default the files are realistic: ``logferry loadgen``'s node (access logs, JSON and Java
services, long lines split by docker, docker and CRI files, advancing timestamps, 4
namespaces x 3 pods). ``--content uniform`` writes the old synthetic input instead (one
180-byte docker line repeated with a counter, one timestamp): a labelled ceiling. A real
aggregator (null output, one process) and a real forwarder pointed at the files run until
the forwarder reports every record acked. Prints lines/s, the forwarder's CPU seconds per
million lines (its lines/s per core), its peak RSS, and the **floor** measured in the same
run on the same files: read them, split lines, parse docker JSON or CRI, MessagePack-encode
the entries and gzip them in blocks, in one loop in this process; and the ratio
forwarder/floor (what the figure means on any machine).

Run: ``.venv/bin/python bench/bench_forwarder.py [--lines 1000000] [--content uniform
--files 4 --format docker|cri]``; ``--content uniform --files 500`` gives the peak RSS while
tailing 500 files. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import msgspec  # noqa: E402
import orjson  # noqa: E402
from bench_multiline import write_logs  # noqa: E402
from process_stats import proc_cpu_s, proc_peak_rss_mb, report  # noqa: E402

from logferry.common.deflate import gzip_parts  # noqa: E402
from tests.support.daemon import DaemonProcess  # noqa: E402
from tests.support.kubelet import container_log, glob_of  # noqa: E402
from tests.support.net import free_port, wait_until  # noqa: E402


def write_files(root: Path, files: int, lines: int, fmt: str) -> list[Path]:
    """Container logs in kubelet's layout under ``root`` (containers/ links into pods/)."""
    per_file = lines // files
    text = "GET /api/v1/orders/12345 200 3.2ms user=alice trace=4bf92f3577b34da6a3ce929d0e0e4736 "
    stamp = "2026-11-25T19:50:31.123456789Z"
    paths = []
    for i in range(files):
        path = container_log(root, "bench", f"web-{i}").path
        paths.append(path)
        with path.open("wb", buffering=1 << 20) as f:
            for n in range(per_file):
                if fmt == "cri":
                    f.write(f"{stamp} stdout F {text}{n}\n".encode())
                    continue
                line = {"log": f"{text}{n}\n", "stream": "stdout", "time": stamp}
                f.write(json.dumps(line).encode() + b"\n")
    return paths


BLOCK_RECORDS = 2000


def floor(paths: list[Path]) -> tuple[float, int]:
    """What shipping these files cannot avoid, in one loop: CPU seconds and lines."""
    encode = msgspec.msgpack.Encoder().encode
    started = time.process_time()
    lines = 0
    for path in paths:
        block: list[bytes] = []
        for raw in path.read_bytes().splitlines():
            if raw[:1] == b"{":
                doc = orjson.loads(raw)
                entry = [doc["time"], {"log": doc["log"], "stream": doc["stream"]}]
            else:
                stamp, stream, _tag, text = raw.split(b" ", 3)
                entry = [stamp.decode(), {"log": text.decode("utf-8", "replace"),
                                          "stream": stream.decode()}]  # fmt: skip
            block.append(encode(entry))
            if len(block) == BLOCK_RECORDS:
                gzip_parts(block)
                block = []
            lines += 1
        if block:
            gzip_parts(block)
    return time.process_time() - started, lines


def log_files(logs: Path) -> list[Path]:
    return sorted(p for p in (logs / "pods").rglob("*") if p.is_file() and ".log" in p.name)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--content", choices=["realistic", "uniform"], default="realistic")
    parser.add_argument("--files", type=int, default=4, help="uniform content only")
    parser.add_argument("--format", choices=["docker", "cri"], default="docker",
                        help="uniform content only")  # fmt: skip
    args = parser.parse_args()
    (REPO / ".cache").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lf-bench-fwd-", dir=str(REPO / ".cache")))
    try:
        logs = work / "node"
        if args.content == "uniform":
            paths = write_files(logs, args.files, args.lines, args.format)
            total = (args.lines // args.files) * args.files
            what = f"{args.format} lines (uniform) in {args.files} files"
        else:
            write_logs(logs, args.lines)
            paths = log_files(logs)
            total = args.lines
            what = f"realistic lines in {len(paths)} files"
        size = sum(p.stat().st_size for p in paths)
        port = free_port()
        agg = DaemonProcess(
            "aggregator",
            work / "agg",
            {
                "input": {
                    "listen_host": "127.0.0.1",
                    "listen_port": port,
                    "allow_unauthenticated": True,
                },
                "spool": {
                    "directory": str(work / "agg" / "spool"),
                    "max_bytes": "4GiB",
                    "tenant_max_bytes": "2GiB",
                },
                "output": {"type": "null"},
                "workers": 1,  # one process: its CPU and RSS are the figures
                "log": {"level": "warning", "format": "json"},
            },
        )
        fwd = DaemonProcess(
            "forwarder",
            work / "fwd",
            {
                "node_name": "bench",
                "spool": {"directory": str(work / "fwd" / "spool"), "max_bytes": "2GiB"},
                "source": {"path_glob": glob_of(logs), "poll_interval_s": 0.05},
                "sender": {"servers": [f"127.0.0.1:{port}"]},
                "log": {"level": "warning", "format": "json"},
            },
        )
        await agg.start()
        t0 = time.perf_counter()
        await fwd.start()
        assert fwd.proc is not None
        pid = fwd.proc.pid

        async def all_acked() -> bool:
            return await fwd.metric("logferry_sender_records_acked_total") >= total

        await wait_until(all_acked, timeout_s=1800, what="every line acked", poll_s=0.2)
        elapsed = time.perf_counter() - t0
        cpu = proc_cpu_s(pid)
        print(
            f"{total:,} {what} ({size / total:.0f} bytes each): "
            f"{total / elapsed:,.0f} lines/s; forwarder CPU {cpu:.1f}s = "
            f"{cpu / total * 1e6:.2f} CPU s per million ({total / cpu:,.0f} lines/s per core); "
            f"peak RSS {proc_peak_rss_mb(pid):.0f} MB"
        )
        floor_cpu, physical = floor(paths)
        per_m = floor_cpu / total * 1e6
        print(
            f"floor    : {per_m:.2f} CPU s per million lines (read, split, parse, MessagePack, "
            f"gzip per {BLOCK_RECORDS}, over the {physical:,} physical lines); "
            f"forwarder/floor {cpu / total * 1e6 / per_m:.2f}"
        )
        await fwd.stop()
        # What proof of delivery adds: the checkpoint records of the run, its shutdown's too
        # (per source and interval, checkpoints.interval_s, 60 s here by default).
        checkpoints = await agg.metric("logferry_checkpoints_received_total")
        print(
            f"checkpoints: {checkpoints:.0f} records for {total:,} lines in {elapsed:.0f}s = "
            f"{checkpoints / total * 1e6:.1f} per million lines"
        )
        await agg.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
    report()
