"""Fair shares of CPU between tenants' pipelines: a token bucket per tenant.

Each tenant earns ``rate_s_per_s`` seconds of pipeline time per second, up to ``burst_s``
saved. Running its pipelines spends what they took. A tenant whose balance is below zero is
*bypassed*: its records go on unfiltered (never dropped) until the balance is back at zero,
so one tenant's expensive regexes cost the others nothing but their own share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(slots=True)
class _Bucket:
    balance_s: float
    updated: float
    bypassed: bool = False


class CpuAllowance:
    """Per-tenant pipeline time: ``allows`` before a run, ``spend`` after it."""

    def __init__(
        self, rate_s_per_s: float, burst_s: float, *, clock: Clock = time.monotonic
    ) -> None:
        self.rate_s_per_s = rate_s_per_s
        self.burst_s = burst_s
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, tenant: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(self.burst_s, now)
        else:
            earned = (now - bucket.updated) * self.rate_s_per_s
            bucket.balance_s = min(self.burst_s, bucket.balance_s + earned)
            bucket.updated = now
        return bucket

    def allows(self, tenant: str) -> bool:
        """True when ``tenant``'s pipelines may run now (its balance is not below zero)."""
        return self._bucket(tenant).balance_s >= 0

    def spend(self, tenant: str, seconds: float) -> None:
        """Charge a run of ``seconds`` to ``tenant``."""
        self._bucket(tenant).balance_s -= seconds

    def transition(self, tenant: str, bypassed: bool) -> bool:
        """Record whether ``tenant`` is bypassed now; True if that changed."""
        bucket = self._bucket(tenant)
        changed = bucket.bypassed != bypassed
        bucket.bypassed = bypassed
        return changed

    def bypassed(self) -> list[str]:
        """Tenants bypassed at their last run."""
        return sorted(t for t, b in self._buckets.items() if b.bypassed)
