"""Tenant and index names: the patterns every name is checked against, and the one place
index names are built.

Index names are always ``<prefix>-<tenant>[.<suffix>]-<date>`` (UTC), the date ``YYYY.MM.DD``,
``YYYY.wWW`` or ``YYYY.MM`` by the tenant's period: a namespace is a DNS label (no dots) and
each date form has a fixed shape, so the tenant and the period can be read back from any index
name unambiguously and no tenant's name or suffix can produce another tenant's index. Every
pattern matches a whole name: anchored at the very end of the text, never with ``$``, which
also matches before a final newline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
"""A Kubernetes namespace name (RFC 1123 DNS label)."""
DEFAULT_TENANT = re.compile(r"^_[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
"""The tenant for unroutable records starts with '_' so it can never be a real namespace."""
SUFFIX = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?\Z")
PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?\Z")


Period = Literal["day", "week", "month"]
"""How much time one index covers: a UTC day, an ISO week (Monday to Sunday) or a month."""

_DATE = re.compile(
    r"-(?P<day>\d{4}\.\d{2}\.\d{2})\Z|-(?P<week>\d{4}\.w\d{2})\Z|-(?P<month>\d{4}\.\d{2})\Z"
)
_DAY_S = 86400


@dataclass(frozen=True, slots=True)
class IndexName:
    """An index name of ours, read back: whose it is and the time it covers."""

    tenant: str
    suffix: str | None
    period: Period
    start_s: int
    """Start of the period covered (UTC epoch seconds, inclusive)."""
    end_s: int
    """End of the period covered (exclusive)."""


def period_label(period: Period, epoch_s: float) -> str:
    """The date part of an index name: ``YYYY.MM.DD``, ``YYYY.wWW`` (ISO week) or ``YYYY.MM``."""
    day = datetime.fromtimestamp(int(epoch_s // _DAY_S) * _DAY_S, UTC)
    if period == "day":
        return day.strftime("%Y.%m.%d")
    if period == "week":
        year, week, _ = day.isocalendar()
        return f"{year:04d}.w{week:02d}"
    return day.strftime("%Y.%m")


def period_bounds(period: Period, label: str) -> tuple[int, int]:
    """``[start, end)`` in UTC epoch seconds of the period a date label names; ValueError if
    the label is not a real date of that period."""
    if period == "day":
        start = datetime.strptime(label, "%Y.%m.%d").replace(tzinfo=UTC)
        end = start + timedelta(days=1)
    elif period == "week":
        year, week = int(label[:4]), int(label[6:])
        start = datetime.fromisocalendar(year, week, 1).replace(tzinfo=UTC)
        end = start + timedelta(days=7)
    else:
        start = datetime.strptime(label, "%Y.%m").replace(tzinfo=UTC)
        end = (start + timedelta(days=32)).replace(day=1)
    return int(start.timestamp()), int(end.timestamp())


class IndexNamer:
    """Builds index names, caching the date part per UTC day (the hot path calls it per record).

    Each tenant's indices cover its own period (``periods``, else ``default_period``). The
    period comes from the record's own time, so a resent record lands in the index it was
    first written to and its ``create`` finds it there.
    """

    __slots__ = ("_days", "default_period", "periods", "prefix")

    def __init__(
        self,
        prefix: str = "logs",
        default_period: Period = "day",
        periods: Mapping[str, Period] | None = None,
    ) -> None:
        if not PREFIX.match(prefix):
            raise ValueError(f"index prefix {prefix!r} must be lowercase letters, digits and '-'")
        self.prefix = prefix
        self.default_period: Period = default_period
        self.periods: dict[str, Period] = dict(periods or {})
        self._days: dict[tuple[Period, int], str] = {}

    def label(self, period: Period, epoch_s: float) -> str:
        """The date part for a UTC time (cached per day)."""
        key = (period, int(epoch_s // _DAY_S))
        text = self._days.get(key)
        if text is None:
            if len(self._days) > 64:
                self._days.clear()
            text = period_label(period, epoch_s)
            self._days[key] = text
        return text

    def period_of(self, tenant: str) -> Period:
        """The period of ``tenant``'s indices."""
        return self.periods.get(tenant, self.default_period)

    def index(self, tenant: str, epoch_s: float, suffix: str | None = None) -> str:
        """The index for ``tenant`` at ``epoch_s``, inside the tenant's own prefix."""
        middle = f"{tenant}.{suffix}" if suffix else tenant
        return f"{self.prefix}-{middle}-{self.label(self.period_of(tenant), epoch_s)}"

    def parse(self, index: str) -> IndexName | None:
        """What an index name of ours says, or None if ``index`` is not one this namer (with
        any period) could have built: foreign indices are never taken for ours."""
        head = f"{self.prefix}-"
        found = _DATE.search(index)
        if not index.startswith(head) or found is None:
            return None
        period: Period = "day" if found["day"] else "week" if found["week"] else "month"
        label = found[period]
        tenant, dot, suffix = index[len(head) : found.start()].partition(".")
        valid_tenant = NAMESPACE.match(tenant) or DEFAULT_TENANT.match(tenant)
        if not valid_tenant or (dot and not SUFFIX.match(suffix)):
            return None
        try:
            start, end = period_bounds(period, label)
        except (ValueError, OverflowError):  # not a date, or one whose period ends past 9999
            return None
        if period_label(period, start) != label:  # 2026.02.30, 2026.w54: not a real date
            return None
        return IndexName(tenant, suffix or None, period, start, end)

    def tenant_of_index(self, index: str) -> str | None:
        """The tenant an index name belongs to, or None if it is not one of ours."""
        parsed = self.parse(index)
        return parsed.tenant if parsed is not None else None
