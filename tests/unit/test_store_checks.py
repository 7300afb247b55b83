"""What the aggregator says at start about its indices (``store.checks.check_indices``)."""

from __future__ import annotations

import logging

import pytest

from logferry.store.checks import check_indices
from logferry.store.settings import IndexSettings


def events(caplog: pytest.LogCaptureFixture) -> dict[str, dict[str, object]]:
    return {r.getMessage(): getattr(r, "logferry_fields", {}) for r in caplog.records}


def test_over_the_budget_is_a_warning_with_the_estimate(caplog: pytest.LogCaptureFixture) -> None:
    # 100 tenants x (1 + 30) daily indices x 1 shard x 2 copies = 6200 shards
    settings = IndexSettings.model_validate(
        {"retention_days": 30, "shard_budget": {"max_shards": 3000, "tenants": 100}}
    )
    with caplog.at_level(logging.INFO):
        check_indices(settings)
    warning = events(caplog)["store.shard_budget_exceeded"]
    assert (warning["estimate"], warning["budget"], warning["tenants"]) == (6200, 3000, 100)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_monthly_quiet_tenants_fit_where_daily_ones_do_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = IndexSettings.model_validate(
        {
            "period": "month",
            "retention_days": 30,
            "replicas": 1,
            "shard_budget": {"max_shards": 3000, "tenants": 100},
            "tenants": {"busy": {"period": "day"}},
        }
    )
    with caplog.at_level(logging.INFO):
        check_indices(settings, ["quiet-a"])
    assert caplog.records == []  # 99 x 3 x 2 + 31 x 2 = 656 shards


def test_kept_for_ever_is_said_and_is_over_any_budget(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        check_indices(IndexSettings())
    assert set(events(caplog)) == {"store.retention_forever"}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        check_indices(IndexSettings.model_validate({"shard_budget": {"max_shards": 10}}))
    assert "store.shard_budget_exceeded" in events(caplog)
