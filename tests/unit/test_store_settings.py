"""The ``indices`` settings (defaults, per-tenant periods and retention, tenant names), the
shard arithmetic and budget check built on them, and retention: which of logferry's indices are
past their tenant's retention, oldest first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from logferry.common.naming import IndexNamer, Period
from logferry.store.retention import Expired, describe, expired_indices
from logferry.store.settings import IndexSettings
from logferry.store.shards import budget_check, indices_kept, tenant_shards

DAY_S = 86400


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    """UTC epoch seconds."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


def settings(**values: Any) -> IndexSettings:
    """Settings as the YAML loader builds them (nested sections as plain mappings)."""
    return IndexSettings.model_validate(values)


# IndexSettings


def test_defaults() -> None:
    s = IndexSettings()
    assert s.period == "day"
    assert s.retention_days == 0
    assert (s.shards, s.replicas) == (1, 1)
    assert s.total_fields_limit == 1000
    assert s.template_priority == 500
    assert s.lifecycle == "janitor"
    assert s.janitor.interval_s == 3600.0
    assert s.janitor.lease_s == 600.0
    assert s.shard_budget.max_shards == 0
    assert s.shard_budget.tenants == 100
    assert s.tenants == {}
    assert s.periods() == {}


def test_period_and_retention_of_a_tenant_without_settings() -> None:
    s = settings(period="week", retention_days=30)
    assert s.period_of("anyone") == "week"
    assert s.retention_of("anyone") == 30


def test_tenant_overrides_period_and_retention() -> None:
    s = settings(
        period="day",
        retention_days=30,
        tenants={"slow": {"period": "month"}, "short": {"retention_days": 3}},
    )
    assert s.period_of("slow") == "month"
    assert s.retention_of("slow") == 30  # not set: the default
    assert s.period_of("short") == "day"  # not set: the default
    assert s.retention_of("short") == 3


def test_tenant_retention_zero_overrides_the_default() -> None:
    s = settings(retention_days=30, tenants={"audit": {"retention_days": 0}})
    assert s.retention_of("audit") == 0
    assert s.retention_of("other") == 30


def test_periods_lists_only_tenants_with_a_period() -> None:
    s = settings(
        period="week",
        tenants={
            "a": {"period": "month"},
            "b": {"retention_days": 3},
            "c": {"period": "day", "retention_days": 1},
            "_default": {"period": "week"},
        },
    )
    assert s.periods() == {"a": "month", "c": "day", "_default": "week"}


@pytest.mark.parametrize(
    "name",
    ["Team", "team.a", "team_a", "-team", "team-", "", "a" * 64, "__x", "team\n", "_"],
)
def test_tenant_names_that_are_not_namespaces_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="not a namespace name"):
        settings(tenants={name: {"retention_days": 1}})


@pytest.mark.parametrize("name", ["team", "team-a", "a", "0", "a" * 63, "_default"])
def test_namespace_tenant_names_accepted(name: str) -> None:
    assert name in settings(tenants={name: {}}).tenants


@pytest.mark.parametrize(
    "values",
    [
        {"retention_days": -1},
        {"retention_days": 36501},
        {"shards": 0},
        {"replicas": 17},
        {"total_fields_limit": 99},
        {"template_priority": 100},  # must stay above Elasticsearch's built-in logs template
        {"period": "year"},
        {"lifecycle": "cron"},
        {"tenants": {"t": {"retention_days": -1}}},
        {"tenants": {"t": {"period": "hour"}}},
        {"tenants": {"t": {"shards": 2}}},
        {"unknown": 1},
    ],
)
def test_invalid_values_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        settings(**values)


# shards


@pytest.mark.parametrize(
    ("period", "retention", "kept"),
    [
        ("day", 1, 2),
        ("day", 30, 31),
        ("week", 7, 2),
        ("week", 8, 3),
        ("week", 30, 6),
        ("month", 30, 2),
        ("month", 31, 3),
        ("month", 365, 13),
    ],
)
def test_indices_kept(period: Period, retention: int, kept: int) -> None:
    assert indices_kept(period, retention) == kept


@pytest.mark.parametrize("period", ["day", "week", "month"])
def test_indices_kept_for_ever_is_unbounded(period: Period) -> None:
    assert indices_kept(period, 0) is None


def test_tenant_shards_counts_primaries_and_replicas() -> None:
    s = settings(retention_days=30, shards=2, replicas=2)
    assert tenant_shards(s, "t") == 31 * 2 * 3


def test_tenant_shards_uses_the_tenant_settings() -> None:
    s = settings(retention_days=30, tenants={"w": {"period": "week", "retention_days": 14}})
    assert tenant_shards(s, "w") == 3 * 2
    assert tenant_shards(s, "other") == 31 * 2


def test_tenant_shards_kept_for_ever() -> None:
    s = settings(retention_days=30, tenants={"audit": {"retention_days": 0}})
    assert tenant_shards(s, "audit") is None


def test_budget_all_tenants_with_defaults() -> None:
    s = settings(retention_days=30, shard_budget={"max_shards": 1000, "tenants": 10})
    check = budget_check(s)
    assert (check.shards, check.budget, check.tenants, check.over) == (620, 1000, 10, False)
    assert check.message() == "620 shards estimated for 10 tenants, within the budget of 1000"


def test_budget_over() -> None:
    s = settings(retention_days=30, shard_budget={"max_shards": 619, "tenants": 10})
    check = budget_check(s)
    assert check.shards == 620
    assert check.over
    assert "over the budget of 619" in check.message()


def test_budget_exactly_at_the_limit_is_within() -> None:
    s = settings(retention_days=30, shard_budget={"max_shards": 620, "tenants": 10})
    assert not budget_check(s).over


def test_budget_without_a_limit_is_never_over() -> None:
    s = settings(retention_days=3650, shard_budget={"tenants": 1000})
    check = budget_check(s)
    assert check.shards == 3651 * 2 * 1000
    assert not check.over


def test_budget_named_tenants_with_their_own_settings_plus_defaults() -> None:
    s = settings(
        retention_days=30,
        tenants={
            "big": {"retention_days": 365},
            "monthly": {"period": "month", "retention_days": 365},
        },
        shard_budget={"max_shards": 1000, "tenants": 10},
    )
    check = budget_check(s)
    # big: 366 days; monthly: 13 months; the 8 others: 31 days each; 2 shards an index.
    assert check.shards == (366 + 13 + 8 * 31) * 2
    assert check.tenants == 10
    assert check.over


def test_budget_known_tenants_beyond_the_plan_are_all_counted() -> None:
    s = settings(retention_days=1, shard_budget={"max_shards": 100, "tenants": 2})
    check = budget_check(s, ["a", "b", "c", "b"])
    assert check.tenants == 3
    assert check.shards == 3 * 2 * 2


def test_budget_known_and_configured_tenants_counted_once() -> None:
    s = settings(
        retention_days=1,
        tenants={"a": {"retention_days": 9}},
        shard_budget={"tenants": 1},
    )
    check = budget_check(s, ["a", "b"])
    assert check.tenants == 2
    assert check.shards == (10 + 2) * 2


def test_budget_retention_zero_gives_no_estimate() -> None:
    s = settings(shard_budget={"max_shards": 1000})
    check = budget_check(s)
    assert check.shards is None
    assert check.over  # a budget is set and the count grows without end
    assert check.message().startswith("retention 0 (for ever) for some of 100 planned tenants")


def test_budget_retention_zero_without_a_budget_is_not_over() -> None:
    check = budget_check(IndexSettings())
    assert check.shards is None
    assert not check.over


def test_budget_one_tenant_kept_for_ever_gives_no_estimate() -> None:
    s = settings(
        retention_days=30,
        tenants={"audit": {"retention_days": 0}},
        shard_budget={"max_shards": 10**6},
    )
    check = budget_check(s)
    assert check.shards is None
    assert check.over


def test_budget_kept_for_ever_default_with_every_tenant_named() -> None:
    """When all planned tenants are named with a retention, the default's none counts."""
    s = settings(
        tenants={"a": {"retention_days": 1}, "b": {"retention_days": 1}},
        shard_budget={"max_shards": 100, "tenants": 2},
    )
    check = budget_check(s)
    assert check.shards == 2 * 2 * 2
    assert not check.over


# retention


NAMER = IndexNamer("logs")


def expired_names(
    indices: list[str], s: IndexSettings, now_s: float, namer: IndexNamer = NAMER
) -> list[str]:
    return [e.index for e in expired_indices(indices, namer, s, now_s)]


def test_day_index_expires_retention_days_after_its_day_ends() -> None:
    s = settings(retention_days=30)
    index = "logs-team-2026.01.01"  # ends 2026-01-02T00:00Z
    assert expired_names([index], s, ts(2026, 2, 1) + 1) == [index]
    assert expired_names([index], s, ts(2026, 2, 1)) == []
    assert expired_names([index], s, ts(2026, 1, 31, 23, 59)) == []


def test_expired_records_how_long_ago() -> None:
    s = settings(retention_days=30)
    [found] = expired_indices(["logs-team.x-2026.01.01"], NAMER, s, ts(2026, 2, 3, 12))
    assert found.index == "logs-team.x-2026.01.01"
    assert (found.name.tenant, found.name.suffix) == ("team", "x")
    assert found.retention_days == 30
    assert found.expired_s == 2.5 * DAY_S


@pytest.mark.parametrize(
    ("index", "retention", "deadline"),
    [
        ("logs-team-2026.w53", 7, ts(2027, 1, 11)),  # the week ends 2027-01-04
        ("logs-team-2026.w02", 1, ts(2026, 1, 13)),
        ("logs-team-2026.01", 30, ts(2026, 3, 3)),  # the month ends 2026-02-01
        ("logs-team-2026.12", 1, ts(2027, 1, 2)),
        ("logs-team-2026.02", 1, ts(2026, 3, 2)),
    ],
)
def test_week_and_month_indices_expire_after_their_period(
    index: str, retention: int, deadline: float
) -> None:
    s = settings(retention_days=retention)
    assert expired_names([index], s, deadline) == []
    assert expired_names([index], s, deadline + 1) == [index]


def test_period_of_the_index_counts_not_the_configured_one() -> None:
    """A tenant moved from week to day: its weekly indices still last to their week's end."""
    s = settings(retention_days=1, tenants={"team": {"period": "day"}})
    index = "logs-team-2026.w02"  # 2026-01-05 to 2026-01-12
    assert expired_names([index], s, ts(2026, 1, 12, 12)) == []
    assert expired_names([index], s, ts(2026, 1, 13, 12)) == [index]


def test_nothing_expires_when_kept_for_ever() -> None:
    assert expired_names(["logs-team-2000.01.01"], IndexSettings(), ts(2026, 1, 1)) == []


def test_tenant_kept_for_ever_never_expires() -> None:
    s = settings(retention_days=1, tenants={"audit": {"retention_days": 0}})
    indices = ["logs-audit-2000.01.01", "logs-audit.x-2000.01", "logs-team-2000.01.01"]
    assert expired_names(indices, s, ts(2026, 1, 1)) == ["logs-team-2000.01.01"]


def test_tenant_retention_under_a_default_kept_for_ever() -> None:
    s = settings(tenants={"short": {"retention_days": 2}})
    indices = ["logs-short-2026.01.01", "logs-long-2026.01.01"]
    assert expired_names(indices, s, ts(2026, 2, 1)) == ["logs-short-2026.01.01"]


def test_tenant_with_a_longer_retention_than_the_default() -> None:
    s = settings(retention_days=1, tenants={"long": {"retention_days": 60}})
    indices = ["logs-long-2026.01.01", "logs-short-2026.01.01"]
    assert expired_names(indices, s, ts(2026, 2, 1)) == ["logs-short-2026.01.01"]


def test_only_parsable_names_are_considered() -> None:
    s = settings(retention_days=1)
    indices = [
        "logs-team-backup",
        "logs-team-2020.01.01-restored",
        "other-team-2020.01.01",
        "logs-team-2020.02.30",
        "logs-team-2020.w54",
        "logs-Team-2020.01.01",
        "logs-team-2020.01.01\n",
        ".kibana",
        "logs-team-2020.01.01",
    ]
    assert expired_names(indices, s, ts(2026, 1, 1)) == ["logs-team-2020.01.01"]


def test_only_the_namer_prefix_is_considered() -> None:
    s = settings(retention_days=1)
    indices = ["logs-team-2020.01.01", "app-team-2020.01.01"]
    assert expired_names(indices, s, ts(2026, 1, 1), IndexNamer("app")) == ["app-team-2020.01.01"]


def test_expired_sorted_oldest_first() -> None:
    s = settings(retention_days=1)
    indices = [
        "logs-b-2026.01.03",
        "logs-a-2026.w01",  # ends 2026-01-05
        "logs-a-2025.12",  # ends 2026-01-01
        "logs-b-2026.01.01",  # ends 2026-01-02
        "logs-a-2026.01.01",
        "logs-a-2026.01.03",
        "logs-c-2026.01.20",  # not yet
    ]
    assert expired_names(indices, s, ts(2026, 1, 10)) == [
        "logs-a-2025.12",
        "logs-a-2026.01.01",
        "logs-b-2026.01.01",
        "logs-a-2026.01.03",
        "logs-b-2026.01.03",
        "logs-a-2026.w01",
    ]


def test_expired_takes_any_iterable() -> None:
    s = settings(retention_days=1)
    found = expired_indices(iter(["logs-t-2026.01.01"]), NAMER, s, ts(2026, 2, 1))
    assert [e.index for e in found] == ["logs-t-2026.01.01"]


def test_describe() -> None:
    s = settings(retention_days=7, tenants={"a": {"retention_days": 1}})
    expired: list[Expired] = expired_indices(
        ["logs-a-2026.01.01", "logs-b.x-2026.w01"], NAMER, s, ts(2026, 1, 20, 3)
    )
    assert describe(expired) == [
        {
            "index": "logs-a-2026.01.01",
            "tenant": "a",
            "retention_days": 1,
            "past_retention_days": 17.1,  # from 2026-01-03T00:00Z
        },
        {
            "index": "logs-b.x-2026.w01",
            "tenant": "b",
            "retention_days": 7,
            "past_retention_days": 8.1,  # the week ends 2026-01-05, plus 7 days
        },
    ]


def test_describe_nothing() -> None:
    assert describe([]) == []
