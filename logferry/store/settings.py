"""The ``indices:`` section of aggregator.yaml: how tenants' indices are cut, kept and sized."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from logferry.common.config import ConfigModel
from logferry.common.naming import DEFAULT_TENANT, NAMESPACE, Period

__all__ = [
    "IndexSettings",
    "JanitorSettings",
    "Lifecycle",
    "ShardBudget",
    "TenantIndexSettings",
]

Lifecycle = Literal["janitor", "ism", "ilm", "none"]
"""Who deletes indices past retention: the aggregators' janitor, the store's own lifecycle
plugin (OpenSearch ISM, Elasticsearch ILM; policies from ``logferry store setup``), or nobody."""


class TenantIndexSettings(ConfigModel):
    """One tenant's exceptions to the defaults of ``indices``."""

    period: Period | None = None
    """Time one index covers: ``day``, ``week`` (ISO, Monday to Sunday) or ``month``."""
    retention_days: int | None = Field(default=None, ge=0, le=36500)
    """Days an index is kept after the end of the period it covers; 0: for ever."""


class JanitorSettings(ConfigModel):
    """The janitor that deletes indices past retention (with ``lifecycle: janitor``)."""

    interval_s: float = Field(default=3600.0, ge=10, le=86400)
    """How often each aggregator looks; a lease in the store lets one of them work at a time."""
    lease_s: float = Field(default=600.0, ge=30, le=86400)
    """How long the lease holds if its holder dies before giving it back."""


class ShardBudget(ConfigModel):
    """The shards the configured indices may take, checked at start and by ``logferry store
    status``: a warning, not a refusal."""

    max_shards: int = Field(default=0, ge=0)
    """Shards (primaries and replicas) logferry's indices may hold together; 0: no check."""
    tenants: int = Field(default=100, ge=1)
    """Tenants to plan for: those named under ``indices.tenants`` count with their own
    settings, the rest with the defaults."""


class IndexSettings(ConfigModel):
    """Index template, periods and retention of the tenants' indices."""

    period: Period = "day"
    """Time one index covers by default: ``day``, ``week`` or ``month``. The index is chosen
    from the record's own time, so a resend lands in the index it was first written to."""
    retention_days: int = Field(default=0, ge=0, le=36500)
    """Days an index is kept after the end of its period by default; 0 (the default): for ever,
    nothing is ever deleted unless you ask."""
    shards: int = Field(default=1, ge=1, le=1024)
    """Primary shards per index."""
    replicas: int = Field(default=1, ge=0, le=16)
    """Replicas per shard."""
    total_fields_limit: int = Field(default=1000, ge=100, le=100_000)
    """Most fields one index's mapping may hold: a tenant pipeline that parses wild JSON gets
    its documents refused into the DLQ past this, instead of growing the mapping for ever."""
    template_priority: int = Field(default=500, ge=101, le=1_000_000)
    """Priority of logferry's index template: above Elasticsearch's built-in ``logs``
    template (100), which would otherwise turn ``logs-*-*`` indices into data streams."""
    lifecycle: Lifecycle = "janitor"
    """Who deletes indices past retention."""
    janitor: JanitorSettings = JanitorSettings()
    """The built-in janitor."""
    shard_budget: ShardBudget = ShardBudget()
    """The warning about too many shards."""
    tenants: dict[str, TenantIndexSettings] = Field(default_factory=dict)
    """Per-tenant exceptions, by namespace: ``period`` and ``retention_days``."""

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, value: dict[str, TenantIndexSettings]) -> dict[str, TenantIndexSettings]:
        for name in value:
            if not (NAMESPACE.match(name) or DEFAULT_TENANT.match(name)):
                raise ValueError(f"{name!r} is not a namespace name")
        return value

    def period_of(self, tenant: str) -> Period:
        """The period of ``tenant``'s indices."""
        own = self.tenants.get(tenant)
        return own.period if own is not None and own.period is not None else self.period

    def retention_of(self, tenant: str) -> int:
        """Days ``tenant``'s indices are kept after their period; 0 for ever."""
        own = self.tenants.get(tenant)
        if own is not None and own.retention_days is not None:
            return own.retention_days
        return self.retention_days

    def periods(self) -> dict[str, Period]:
        """The tenants whose period is not the default, with theirs."""
        return {name: own.period for name, own in self.tenants.items() if own.period is not None}
