"""What the aggregator says at start about its indices: retention, and the shard budget."""

from __future__ import annotations

from collections.abc import Iterable

from logferry.common.logs import get_logger
from logferry.store.settings import IndexSettings
from logferry.store.shards import budget_check

log = get_logger(__name__)

__all__ = ["check_indices"]


def check_indices(settings: IndexSettings, known_tenants: Iterable[str] = ()) -> None:
    """Log what the index settings imply: a warning when the shard estimate is over the
    budget (or unbounded under one), a line when nothing is ever deleted."""
    if settings.retention_days == 0:
        log.info(
            "store.retention_forever",
            detail="indices.retention_days is 0: indices are never deleted (set it, or a "
            "store lifecycle policy, before the cluster runs out of shards)",
        )
    check = budget_check(settings, known_tenants)
    if check.over:
        log.warning(
            "store.shard_budget_exceeded",
            estimate=check.shards,
            budget=check.budget,
            tenants=check.tenants,
            detail=check.message(),
        )
