"""Prometheus metrics helpers.

Names start with ``logferry_``, use base units and end counters in ``_total``. Labels come
from a small fixed set (tenant, endpoint, status, reason, ...): never a path or a record field.
A drop or fault is reported through :func:`count_and_log`, so its log line and its counter
can never disagree.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from logferry import __version__
from logferry.common.logs import EventLogger

ALLOWED_LABELS = frozenset(
    {
        "tenant",
        "endpoint",
        "status",
        "reason",
        "mode",
        "kind",
        "signal",
        "outcome",
        "worker",
        "version",
    }
)


def check_labels(labels: tuple[str, ...]) -> tuple[str, ...]:
    """Refuse a label outside the fixed set (unbounded cardinality is an outage in waiting)."""
    unknown = set(labels) - ALLOWED_LABELS
    if unknown:
        raise ValueError(f"metric labels {sorted(unknown)} are not in {sorted(ALLOWED_LABELS)}")
    return labels


def counter(
    registry: CollectorRegistry, name: str, doc: str, labels: tuple[str, ...] = ()
) -> Counter:
    """A ``logferry_<name>_total`` counter registered on ``registry``."""
    return Counter(f"logferry_{name}", doc, check_labels(labels), registry=registry)


def gauge(registry: CollectorRegistry, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
    """A ``logferry_<name>`` gauge registered on ``registry``."""
    return Gauge(f"logferry_{name}", doc, check_labels(labels), registry=registry)


def render_openmetrics(registry: CollectorRegistry) -> bytes:
    """``registry`` in the OpenMetrics text format (what a scraper that asks for it gets)."""
    body: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
    return body


def standard(registry: CollectorRegistry, daemon: str) -> None:
    """What every exporter is expected to have: ``process_*`` (CPU, memory, file
    descriptors), ``python_*`` (the interpreter, the garbage collector) and
    ``logferry_build_info{version, kind}`` (always 1), so dashboards can join on it."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    info = gauge(registry, "build_info", "The running build (always 1).", ("version", "kind"))
    info.labels(__version__, daemon).set(1)


def count_and_log(
    metric: Counter,
    log: EventLogger,
    event: str,
    *,
    amount: float = 1,
    labels: dict[str, str] | None = None,
    level: str = "warning",
    **fields: Any,
) -> None:
    """Increment ``metric`` and log ``event`` with the same labels and fields, in one call."""
    (metric.labels(**labels) if labels else metric).inc(amount)
    getattr(log, level)(event, count=amount, **(labels or {}), **fields)


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
