"""Shard arithmetic: what the configured periods and retention cost the cluster in shards.

One index per tenant per period, each with ``shards * (1 + replicas)`` shards, kept for the
retention after its period ends, plus the current one. Clusters refuse new indices past
``cluster.max_shards_per_node`` times the data nodes (1000 per node by default), and a day's records
then have nowhere to go: the estimate is there to see that coming.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from logferry.common.naming import Period
from logferry.store.settings import IndexSettings

__all__ = ["PERIOD_DAYS", "BudgetCheck", "budget_check", "indices_kept", "tenant_shards"]

PERIOD_DAYS: dict[Period, float] = {"day": 1.0, "week": 7.0, "month": 30.44}


def indices_kept(period: Period, retention_days: int) -> int | None:
    """Indices of one tenant (one index suffix) that exist at once: the current one and
    those inside retention; None when kept for ever (the count grows without end)."""
    if retention_days == 0:
        return None
    return 1 + math.ceil(retention_days / PERIOD_DAYS[period])


def tenant_shards(settings: IndexSettings, tenant: str) -> int | None:
    """Shards one tenant's indices hold in steady state; None when kept for ever."""
    kept = indices_kept(settings.period_of(tenant), settings.retention_of(tenant))
    return None if kept is None else kept * settings.shards * (1 + settings.replicas)


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    """The steady-state estimate against ``shard_budget.max_shards``."""

    shards: int | None
    """Estimated shards of the planned tenants; None if some are kept for ever."""
    budget: int
    tenants: int
    over: bool

    def message(self) -> str:
        """One line for the log and ``logferry store status``."""
        if self.shards is None:
            return (
                f"retention 0 (for ever) for some of {self.tenants} planned tenants: their "
                "shard count grows every period without end"
            )
        verdict = "over" if self.over else "within"
        return (
            f"{self.shards} shards estimated for {self.tenants} tenants, {verdict} the budget "
            f"of {self.budget}"
        )


def budget_check(settings: IndexSettings, known_tenants: Iterable[str] = ()) -> BudgetCheck:
    """The estimate for ``shard_budget.tenants`` tenants: the named ones (configured under
    ``indices.tenants`` and ``known_tenants``) with their own settings, the others with the
    defaults."""
    named = sorted(set(settings.tenants) | set(known_tenants))
    planned = max(settings.shard_budget.tenants, len(named))
    counts = [tenant_shards(settings, name) for name in named]
    default = tenant_shards(settings, "")  # a tenant with no settings of its own
    counts.extend([default] * (planned - len(named)))
    budget = settings.shard_budget.max_shards
    if any(count is None for count in counts):
        return BudgetCheck(None, budget, planned, over=budget > 0)
    total = sum(count for count in counts if count is not None)
    return BudgetCheck(total, budget, planned, over=budget > 0 and total > budget)
