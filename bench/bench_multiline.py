"""What joining stack traces at the source costs the forwarder, on realistic content.

``logferry loadgen`` writes one node's container logs (access logs, JSON services and Java
services whose exceptions span 5-21 lines; docker and CRI files; advancing timestamps), then
the same files are shipped twice by a real forwarder to a real aggregator (null output):
once with no multiline rule, once with the ``java`` preset on every container (the worst
case: every line of every file goes through the rule). Prints, for each, the forwarder's CPU
seconds per million lines and peak RSS, how many lines were joined, and the ratio of the
two runs measured back to back on this machine.

Run: ``.venv/bin/python bench/bench_multiline.py [--lines 400000]``. Asserts nothing
about time.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from process_stats import proc_cpu_s, proc_peak_rss_mb, report  # noqa: E402

from tests.support.daemon import DaemonProcess  # noqa: E402
from tests.support.net import free_port, wait_until  # noqa: E402


def write_logs(root: Path, lines: int) -> None:
    subprocess.run(
        [
            sys.executable, "-m", "logferry.tools.loadgen", "--dir", str(root),
            "--namespaces", "4", "--pods", "3", "--lines", str(lines), "--rate", "0",
            "--rotate-bytes", "0", "--seed", "11", "--quiet",
        ],
        check=True,
        cwd=REPO,
    )  # fmt: skip


async def ship(work: Path, logs: Path, lines: int, sections: dict[str, Any]) -> dict[str, float]:
    """One forwarder run over ``logs`` (with the forwarder config ``sections`` added) into an
    aggregator (null output) until every record is acked; both daemons' figures."""
    port = free_port()
    agg = DaemonProcess(
        "aggregator",
        work / "agg",
        {
            "input": {"listen_host": "127.0.0.1", "listen_port": port,
                      "allow_unauthenticated": True},
            "spool": {"directory": str(work / "agg" / "spool"), "max_bytes": "4GiB",
                      "tenant_max_bytes": "2GiB"},
            "output": {"type": "null"}, "workers": 1,
            "log": {"level": "warning", "format": "json"},
        },
    )  # fmt: skip
    fwd = DaemonProcess(
        "forwarder",
        work / "fwd",
        {
            "node_name": "bench",
            "spool": {"directory": str(work / "fwd" / "spool"), "max_bytes": "2GiB"},
            "source": {"path_glob": str(logs / "containers" / "*.log"), "poll_interval_s": 0.05},
            "sender": {"servers": [f"127.0.0.1:{port}"]},
            "log": {"level": "warning", "format": "json"},
            **sections,
        },
    )
    await agg.start()
    await fwd.start()
    assert fwd.proc is not None
    assert agg.proc is not None
    pid = fwd.proc.pid

    async def all_read() -> bool:
        return await fwd.metric("logferry_lines_read_total") >= lines

    async def all_acked() -> bool:
        spooled = await fwd.metric("logferry_records_spooled_total")
        acked = await fwd.metric("logferry_sender_records_acked_total")
        return spooled > 0 and acked >= spooled

    await wait_until(all_read, timeout_s=1800, what="every line read", poll_s=0.2)
    # The last joined records wait out the flush timeout, then go out.
    await wait_until(all_acked, timeout_s=600, what="every record acked", poll_s=0.2)
    figures = {
        "cpu_s": proc_cpu_s(pid),
        "rss_mb": proc_peak_rss_mb(pid),
        "records": await fwd.metric("logferry_records_spooled_total"),
        "joined": await fwd.metric("logferry_multiline_joined_lines_total"),
        "agg_cpu_s": proc_cpu_s(agg.proc.pid),
        "agg_rss_mb": proc_peak_rss_mb(agg.proc.pid),
    }
    await fwd.stop()
    await agg.stop()
    shutil.rmtree(work / "fwd", ignore_errors=True)
    shutil.rmtree(work / "agg", ignore_errors=True)
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=400_000)
    args = parser.parse_args()
    (REPO / ".cache").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lf-bench-ml-", dir=str(REPO / ".cache")))
    try:
        logs = work / "node"
        started = time.perf_counter()
        write_logs(logs, args.lines)
        size = sum(p.stat().st_size for p in (logs / "pods").rglob("*.log*"))
        print(
            f"loadgen: {args.lines:,} lines, {size / args.lines:.0f} bytes each on average, "
            f"in {time.perf_counter() - started:.1f} s"
        )
        plain = await ship(work, logs, args.lines, {"multiline": {"default": "none"}})
        java = await ship(work, logs, args.lines, {"multiline": {"default": "java"}})
        for name, run in (("no multiline", plain), ("java preset on every file", java)):
            print(
                f"{name:28s}: forwarder {run['cpu_s'] / args.lines * 1e6:.2f} CPU s per million "
                f"lines, peak RSS {run['rss_mb']:.0f} MB, {run['records']:,.0f} records "
                f"({run['joined']:,.0f} lines joined into the line before them)"
            )
        print(f"ratio with/without multiline: {java['cpu_s'] / plain['cpu_s']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
    report()
