"""The one backoff formula: exponential ceilings, capped, with full, equal or no jitter."""

from __future__ import annotations

import random

from logferry.common.backoff import backoff_delay


def test_full_jitter_stays_under_the_doubling_ceiling_and_reaches_the_cap() -> None:
    random.seed(7)
    for attempt in range(40):
        ceiling = min(2.0, 0.1 * 2**attempt)
        delays = [backoff_delay(attempt, 0.1, 2.0) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in delays)
    assert max(backoff_delay(1000, 0.1, 2.0) for _ in range(200)) > 1.0  # capped, not zero


def test_equal_jitter_never_comes_before_half_the_ceiling() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0), (499, 4.0)]:
        for _ in range(20):
            delay = backoff_delay(attempt, 0.5, 4.0, jitter="equal", rng=rng)
            assert ceiling / 2 <= delay <= ceiling


def test_no_jitter_is_the_ceiling_itself() -> None:
    assert [backoff_delay(n, 0.5, 5.0, jitter="none") for n in range(6)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        5.0,
        5.0,
    ]
    assert backoff_delay(-3, 0.5, 5.0, jitter="none") == 0.5  # a negative attempt is the first


def test_a_given_generator_makes_delays_repeatable() -> None:
    first = [backoff_delay(n, 0.1, 2.0, rng=random.Random(3)) for n in range(10)]
    again = [backoff_delay(n, 0.1, 2.0, rng=random.Random(3)) for n in range(10)]
    assert first == again
