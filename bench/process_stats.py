"""What every benchmark prints at the end: CPU seconds used and peak RSS of this process."""

from __future__ import annotations

import resource


def report() -> None:
    """Print this process's CPU time (user + system) and peak resident set size."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    print(f"process: {cpu:.1f} CPU seconds in all, peak RSS {usage.ru_maxrss / 1024:.0f} MB")
