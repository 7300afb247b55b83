"""Exponential backoff: the one formula behind every retry delay.

Retry ``attempt`` (0 for the first) waits up to ``min(max_s, initial_s * 2**attempt)``. The
jitter decides where under that ceiling: ``full`` (anywhere from 0, the default: retries of
many clients spread out the most), ``equal`` (from half the ceiling: spread out, but never
immediately) or ``none`` (the ceiling itself).
"""

from __future__ import annotations

import random
from typing import Literal

Jitter = Literal["full", "equal", "none"]
"""Where under the ceiling a delay falls; see the module docstring."""

# 2**62 times any positive initial delay is past every useful maximum, and still a float.
_MAX_DOUBLINGS = 62


def backoff_delay(
    attempt: int,
    initial_s: float,
    max_s: float,
    *,
    jitter: Jitter = "full",
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry ``attempt`` (0, 1, ...); ``rng`` defaults to the module's
    shared generator."""
    ceiling = min(max_s, initial_s * 2.0 ** min(max(attempt, 0), _MAX_DOUBLINGS))
    if jitter == "none":
        return ceiling
    uniform = rng.uniform if rng is not None else random.uniform
    if jitter == "equal":
        return ceiling / 2 + uniform(0, ceiling / 2)
    return uniform(0, ceiling)
