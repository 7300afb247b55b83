"""Process figures for benchmarks: CPU seconds and peak RSS, of this process or another."""

from __future__ import annotations

import os
import resource
from pathlib import Path


def report() -> None:
    """Print this process's CPU time (user + system) and peak resident set size."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    print(f"process: {cpu:.1f} CPU seconds in all, peak RSS {usage.ru_maxrss / 1024:.0f} MB")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of process ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0
