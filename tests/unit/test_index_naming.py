"""Index names: the date labels of each period (ISO weeks across year ends included), the
bounds a label stands for, the names :class:`IndexNamer` builds per tenant, and ``parse``
reading them back while refusing every name it could not have built."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from logferry.common.naming import IndexName, IndexNamer, Period, period_bounds, period_label


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    """UTC epoch seconds."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


# period_label


@pytest.mark.parametrize(
    ("when", "label"),
    [
        (ts(2026, 3, 7), "2026.03.07"),
        (ts(2026, 3, 7, 23, 59), "2026.03.07"),
        (ts(2026, 3, 8), "2026.03.08"),
        (ts(2026, 12, 31, 12), "2026.12.31"),
        (ts(1970, 1, 1), "1970.01.01"),
    ],
)
def test_day_label(when: float, label: str) -> None:
    assert period_label("day", when) == label


def test_day_label_takes_fractional_seconds() -> None:
    assert period_label("day", ts(2026, 3, 8) - 0.25) == "2026.03.07"


@pytest.mark.parametrize(
    ("when", "label"),
    [
        (ts(2026, 1, 5), "2026.w02"),  # a Monday
        (ts(2026, 1, 11, 23, 59), "2026.w02"),  # the Sunday after
        (ts(2026, 1, 12), "2026.w03"),
        (ts(2026, 12, 31), "2026.w53"),  # 2026 has 53 ISO weeks
        (ts(2027, 1, 1), "2026.w53"),  # ... and its last one runs into 2027
        (ts(2027, 1, 3), "2026.w53"),
        (ts(2027, 1, 4), "2027.w01"),
        (ts(2020, 12, 31), "2020.w53"),
        (ts(2021, 1, 3), "2020.w53"),
        (ts(2019, 12, 30), "2020.w01"),  # a December day in the next ISO year
    ],
)
def test_week_label_is_the_iso_week(when: float, label: str) -> None:
    assert period_label("week", when) == label


@pytest.mark.parametrize(
    ("when", "label"),
    [
        (ts(2026, 2, 1), "2026.02"),
        (ts(2026, 2, 28, 23, 59), "2026.02"),
        (ts(2026, 12, 31, 23, 59), "2026.12"),
        (ts(2027, 1, 1), "2027.01"),
    ],
)
def test_month_label(when: float, label: str) -> None:
    assert period_label("month", when) == label


# period_bounds


def test_day_bounds() -> None:
    assert period_bounds("day", "2026.03.07") == (ts(2026, 3, 7), ts(2026, 3, 8))


def test_day_bounds_at_year_end() -> None:
    assert period_bounds("day", "2026.12.31") == (ts(2026, 12, 31), ts(2027, 1, 1))


@pytest.mark.parametrize(
    ("label", "start", "end"),
    [
        ("2026.w02", ts(2026, 1, 5), ts(2026, 1, 12)),
        ("2026.w53", ts(2026, 12, 28), ts(2027, 1, 4)),
        ("2020.w53", ts(2020, 12, 28), ts(2021, 1, 4)),
        ("2020.w01", ts(2019, 12, 30), ts(2020, 1, 6)),
    ],
)
def test_week_bounds_run_monday_to_monday(label: str, start: float, end: float) -> None:
    assert period_bounds("week", label) == (start, end)


@pytest.mark.parametrize(
    ("label", "start", "end"),
    [
        ("2026.01", ts(2026, 1, 1), ts(2026, 2, 1)),
        ("2026.02", ts(2026, 2, 1), ts(2026, 3, 1)),
        ("2024.02", ts(2024, 2, 1), ts(2024, 3, 1)),
        ("2026.04", ts(2026, 4, 1), ts(2026, 5, 1)),
        ("2026.12", ts(2026, 12, 1), ts(2027, 1, 1)),
    ],
)
def test_month_bounds(label: str, start: float, end: float) -> None:
    assert period_bounds("month", label) == (start, end)


@pytest.mark.parametrize(
    ("period", "label"),
    [("day", "2026.02.30"), ("day", "2026.13.01"), ("week", "2026.w54"), ("month", "2026.13")],
)
def test_bounds_refuse_dates_that_do_not_exist(period: Period, label: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        period_bounds(period, label)


@pytest.mark.parametrize(
    ("period", "when"),
    [
        ("day", ts(2026, 3, 7, 13)),
        ("week", ts(2026, 12, 31, 13)),
        ("week", ts(2027, 1, 2)),
        ("month", ts(2026, 2, 14)),
    ],
)
def test_bounds_of_a_label_hold_the_time_it_was_made_from(period: Period, when: float) -> None:
    start, end = period_bounds(period, period_label(period, when))
    assert start <= when < end
    assert period_label(period, start) == period_label(period, end - 1)
    assert period_label(period, end) != period_label(period, start)


# IndexNamer.index


def test_index_uses_the_default_period() -> None:
    namer = IndexNamer("logs")
    assert namer.index("team-a", ts(2026, 3, 7, 10)) == "logs-team-a-2026.03.07"


def test_index_uses_the_tenant_period() -> None:
    namer = IndexNamer("logs", "day", {"weekly": "week", "monthly": "month"})
    when = ts(2027, 1, 1, 10)
    assert namer.index("weekly", when) == "logs-weekly-2026.w53"
    assert namer.index("monthly", when) == "logs-monthly-2027.01"
    assert namer.index("daily", when) == "logs-daily-2027.01.01"


def test_index_default_period_can_be_week() -> None:
    namer = IndexNamer("app", "week", {"busy": "day"})
    assert namer.index("quiet", ts(2026, 1, 5)) == "app-quiet-2026.w02"
    assert namer.index("busy", ts(2026, 1, 5)) == "app-busy-2026.01.05"


def test_index_with_suffix() -> None:
    namer = IndexNamer("logs", periods={"team": "month"})
    assert namer.index("team", ts(2026, 3, 7), "audit") == "logs-team.audit-2026.03"


def test_index_empty_suffix_is_no_suffix() -> None:
    namer = IndexNamer("logs")
    assert namer.index("team", ts(2026, 3, 7), "") == "logs-team-2026.03.07"


def test_index_cache_keeps_periods_apart() -> None:
    """The label cache is per (period, day): one tenant's week never leaks into a day."""
    namer = IndexNamer("logs", "day", {"weekly": "week"})
    when = ts(2026, 3, 7, 10)
    assert namer.index("weekly", when) == "logs-weekly-2026.w10"
    assert namer.index("daily", when) == "logs-daily-2026.03.07"
    assert namer.index("weekly", when + 3600) == "logs-weekly-2026.w10"


def test_index_cache_rolls_over_days() -> None:
    namer = IndexNamer("logs")
    assert namer.index("t", ts(2026, 3, 7, 23, 59)) == "logs-t-2026.03.07"
    assert namer.index("t", ts(2026, 3, 8)) == "logs-t-2026.03.08"
    for day in range(100):  # past the cache's size: it is cleared, labels stay right
        namer.index("t", ts(2026, 1, 1) + day * 86400)
    assert namer.index("t", ts(2026, 3, 7, 12)) == "logs-t-2026.03.07"


def test_period_of() -> None:
    namer = IndexNamer("logs", "month", {"a": "day"})
    assert namer.period_of("a") == "day"
    assert namer.period_of("b") == "month"


@pytest.mark.parametrize("prefix", ["", "Logs", "logs.x", "-logs", "logs-", "a" * 33, "logs\n"])
def test_bad_prefix_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="index prefix"):
        IndexNamer(prefix)


# IndexNamer.parse


@pytest.mark.parametrize(
    ("tenant", "suffix", "period", "when"),
    [
        ("team-a", None, "day", ts(2026, 3, 7, 10)),
        ("team-a", "audit", "day", ts(2026, 3, 7, 10)),
        ("team-a", None, "week", ts(2026, 12, 31)),
        ("team-a", "x-1", "week", ts(2027, 1, 2)),
        ("team-a", None, "month", ts(2026, 2, 28)),
        ("a", None, "day", ts(2020, 12, 31)),
        ("team-2026", None, "month", ts(2026, 1, 15)),
        ("team-2026", "01", "day", ts(2026, 1, 15)),
        ("_unroutable", None, "day", ts(2026, 3, 7)),
        ("9" * 63, "s" * 32, "week", ts(2026, 3, 7)),
    ],
)
def test_parse_round_trips(tenant: str, suffix: str | None, period: Period, when: float) -> None:
    namer = IndexNamer("logs", "day", {tenant: period})
    index = namer.index(tenant, when, suffix)
    start, end = period_bounds(period, period_label(period, when))
    assert namer.parse(index) == IndexName(tenant, suffix, period, start, end)
    assert namer.tenant_of_index(index) == tenant


def test_parse_reads_any_period_whatever_the_namer_is_set_to() -> None:
    """A tenant's period may change: its older indices of another period are still its."""
    namer = IndexNamer("logs", "day")
    parsed = namer.parse("logs-team-2026.w05")
    assert parsed is not None
    assert (parsed.tenant, parsed.period) == ("team", "week")
    assert (parsed.start_s, parsed.end_s) == (ts(2026, 1, 26), ts(2026, 2, 2))


def test_parse_with_another_prefix() -> None:
    namer = IndexNamer("app-logs")
    parsed = namer.parse("app-logs-team-2026.03")
    assert parsed is not None
    assert (parsed.tenant, parsed.period) == ("team", "month")
    assert namer.parse("logs-team-2026.03") is None


@pytest.mark.parametrize(
    "index",
    [
        "logs-team-backup",
        "logs-team-2020.01.01-restored",
        "other-team-2020.01.01",
        "logs2-team-2020.01.01",
        "logs-2020.01.01",
        "logs--2020.01.01",
        "logs-team-2026.02.30",
        "logs-team-2026.13.01",
        "logs-team-2026.00.10",
        "logs-team-2026.w54",
        "logs-team-2026.w00",
        "logs-team-2027.w53",  # 2027 has 52 ISO weeks
        "logs-team-2026.13",
        "logs-team-2026.00",
        "logs-team-2026.1.01",
        "logs-team-2026.01.1",
        "logs-team-2026.w5",
        "logs-team-26.01.01",
        "logs-Team-2026.01.01",
        "logs-team_a-2026.01.01",
        "logs--team-2026.01.01",
        "logs-team--2026.01.01",
        "logs-team.a.b-2026.01.01",
        "logs-team.A-2026.01.01",
        "logs-team.-x-2026.01.01",
        "logs-__x-2026.01.01",
        "logs-" + "a" * 64 + "-2026.01.01",
        "logs-team." + "s" * 33 + "-2026.01.01",
        "logs-team-2026.01.01\n",
        "logs-team-2026.w05\n",
        "logs-team-2026.01\n",
        "logs-team\n-2026.01.01",
        "logs-team.a\n-2026.01.01",
        "",
    ],
)
def test_parse_refuses_foreign_names(index: str) -> None:
    namer = IndexNamer("logs")
    assert namer.parse(index) is None
    assert namer.tenant_of_index(index) is None


def test_parse_refuses_an_empty_suffix() -> None:
    assert IndexNamer("logs").parse("logs-team.-2020.01.01") is None


@pytest.mark.parametrize(
    "index", ["logs-team-9999.12.31", "logs-team-9999.12", "logs-team-9999.w52"]
)
def test_parse_does_not_raise_on_the_last_period_of_year_9999(index: str) -> None:
    parsed = IndexNamer("logs").parse(index)
    assert parsed is None or parsed.tenant == "team"
