"""Forwarder throughput: docker json-file lines on disk -> forwarder -> acked at an aggregator.

Writes ``--files`` container log files holding ``--lines`` docker lines (about 180 bytes
each) in all, starts a real aggregator (null output) and a real forwarder pointed at them,
and waits until the forwarder reports every record acked. Prints lines/s, the forwarder's CPU
seconds per million lines (its lines/s per core) and its peak RSS.

Run: ``.venv/bin/python bench/bench_forwarder.py [--lines 1000000] [--files 4]
[--format docker|cri]``; ``--files 500`` gives the peak RSS while tailing 500 files. Asserts
nothing about time.
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

from process_stats import proc_cpu_s, proc_peak_rss_mb, report  # noqa: E402

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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--format", choices=["docker", "cri"], default="docker")
    args = parser.parse_args()
    (REPO / ".cache").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lf-bench-fwd-", dir=str(REPO / ".cache")))
    try:
        logs = work / "node"
        paths = write_files(logs, args.files, args.lines, args.format)
        total = (args.lines // args.files) * args.files
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
            f"{total:,} {args.format} lines ({size / total:.0f} bytes each) in {args.files} files: "
            f"{total / elapsed:,.0f} lines/s; forwarder CPU {cpu:.1f}s = "
            f"{cpu / total * 1e6:.2f} CPU s per million ({total / cpu:,.0f} lines/s per core); "
            f"peak RSS {proc_peak_rss_mb(pid):.0f} MB"
        )
        await fwd.stop()
        await agg.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
    report()
