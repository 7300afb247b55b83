"""Crash points for the chaos suite: the process kills itself at a named step.

``LOGFERRY_CRASH_AT=<point>[:<n>]`` in a daemon's environment makes it SIGKILL itself the
n-th time (default the first) it passes ``crash_point("<point>")``: after a batch is received,
after it is durable but before its ack, after the ack, in the middle of a bulk request. A
signal sent from outside cannot hit such a step on purpose; the guarantees are about exactly
these instants. Unset — always, outside the chaos tests — a crash point is one comparison.
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_ENV", "crash_point"]

CRASH_ENV = "LOGFERRY_CRASH_AT"


def _target(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, count = value.partition(":")
    return name, int(count) if count else 1


_TARGET = _target(os.environ.get(CRASH_ENV))
_hits = 0


def crash_point(name: str) -> None:
    """SIGKILL this process if it is the configured crash point's n-th pass."""
    global _hits
    if _TARGET is None or _TARGET[0] != name:
        return
    _hits += 1
    if _hits >= _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
