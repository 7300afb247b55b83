"""What ``logferry status`` shows, computed from two scrapes of each daemon's /metrics.

Pure functions over parsed samples: rates are the counters' growth between the two scrapes
divided by the time between them; gauges are read from the second. An aggregator of several
workers serves their samples labelled ``worker``: they are summed (or the maximum taken, for
ages), so a pod reads as one aggregator.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from logferry.common.scrape import Samples, Scrape
from logferry.common.scrape import parse_samples as parse_samples  # where it used to live


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def by_label(samples: Samples, name: str, label: str, *, fold: str = "sum") -> dict[str, float]:
    """Samples of ``name`` summed (or their maximum, ``fold="max"``) per value of ``label``."""
    out: dict[str, float] = {}
    for (n, labels), value in samples.items():
        key = dict(labels).get(label)
        if n != name or key is None:
            continue
        out[key] = max(out.get(key, value), value) if fold == "max" else out.get(key, 0) + value
    return out


def kind_of(samples: Samples) -> str:
    """``forwarder`` or ``aggregator`` (a supervisor serves its workers': an aggregator)."""
    kinds = {dict(ls).get("kind") for (n, ls) in samples if n == "logferry_build_info"}
    return "forwarder" if kinds == {"forwarder"} else "aggregator" if kinds else "unknown"


@dataclass(slots=True)
class TenantRow:
    """One tenant across every aggregator scraped."""

    tenant: str
    records_in_per_s: float = 0.0
    records_out_per_s: float = 0.0
    backlog_chunks: float = 0.0
    spool_bytes: float = 0.0
    oldest_age_s: float = 0.0
    dead_lettered: float = 0.0
    pipelines: str = ""
    bypassed: bool = False


@dataclass(slots=True)
class DaemonRow:
    """One daemon (an aggregator pod counts once, whatever its workers)."""

    url: str
    kind: str
    up: bool
    error: str | None = None
    figures: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class StatusView:
    """The whole deployment: its daemons and its tenants."""

    interval_s: float
    daemons: list[DaemonRow]
    tenants: list[TenantRow]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _rate(before: Samples, after: Samples, seconds: float, name: str) -> float:
    if seconds <= 0:
        return 0.0
    return max(0.0, total(after, name) - total(before, name)) / seconds


def _mean_latency(before: Samples, after: Samples, name: str) -> float:
    count = total(after, f"{name}_count") - total(before, f"{name}_count")
    seconds = total(after, f"{name}_sum") - total(before, f"{name}_sum")
    return seconds / count if count > 0 else 0.0


def daemon_row(before: Scrape, after: Scrape) -> DaemonRow:
    """The figures of one daemon between its two scrapes."""
    if after.error is not None or not after.samples:
        return DaemonRow(after.url, "unknown", False, after.error or "no metrics")
    a, b, dt = before.samples, after.samples, after.at_s - before.at_s
    kind = kind_of(b)
    if kind == "forwarder":
        figures = {
            "lines_read_per_s": _rate(a, b, dt, "logferry_lines_read_total"),
            "records_acked_per_s": _rate(a, b, dt, "logferry_sender_records_acked_total"),
            "backlog_blocks": total(b, "logferry_node_spool_blocks"),
            "spool_bytes": total(b, "logferry_node_spool_bytes"),
            "spool_capacity_bytes": total(b, "logferry_node_spool_capacity_bytes"),
            "ack_latency_s": _mean_latency(a, b, "logferry_sender_ack_latency_seconds"),
            "retries_per_s": _rate(a, b, dt, "logferry_sender_chunks_retried_total"),
            "endpoints_up": total(b, "logferry_sender_endpoints_up"),
        }
    else:
        ages = by_label(b, "logferry_spool_oldest_record_age_seconds", "tenant", fold="max")
        figures = {
            "records_in_per_s": _rate(a, b, dt, "logferry_records_in_total"),
            "records_out_per_s": _rate(a, b, dt, "logferry_records_out_total"),
            "backlog_chunks": total(b, "logferry_spool_fragments"),
            "spool_bytes": total(b, "logferry_spool_bytes"),
            "spool_capacity_bytes": total(b, "logferry_spool_capacity_bytes", kind="volume"),
            "oldest_age_s": max(ages.values(), default=0.0),
            "ack_latency_s": _mean_latency(a, b, "logferry_ack_latency_seconds"),
            "retries_per_s": _rate(a, b, dt, "logferry_output_retries_total"),
            "dead_lettered": total(b, "logferry_dlq_records_total"),
            "workers": total(b, "logferry_aggregator_workers_running") or 1.0,
        }
    return DaemonRow(after.url, kind, True, None, figures)


def tenant_rows(pairs: Iterable[tuple[Scrape, Scrape]]) -> list[TenantRow]:
    """Every tenant the aggregators know, its figures summed over them."""
    rows: dict[str, TenantRow] = {}
    for before, after in pairs:
        a, b, dt = before.samples, after.samples, after.at_s - before.at_s
        if not b or kind_of(b) != "aggregator":
            continue

        def row(tenant: str) -> TenantRow:
            return rows.setdefault(tenant, TenantRow(tenant))

        for name, attribute in (
            ("logferry_records_in_total", "records_in_per_s"),
            ("logferry_records_out_total", "records_out_per_s"),
        ):
            now, then = by_label(b, name, "tenant"), by_label(a, name, "tenant")
            for tenant, value in now.items():
                rate = max(0.0, value - then.get(tenant, 0.0)) / dt if dt > 0 else 0.0
                setattr(row(tenant), attribute, getattr(row(tenant), attribute) + rate)
        for tenant, value in by_label(b, "logferry_spool_fragments", "tenant").items():
            row(tenant).backlog_chunks += value
        for tenant, value in by_label(b, "logferry_spool_bytes", "tenant").items():
            row(tenant).spool_bytes += value
        ages = by_label(b, "logferry_spool_oldest_record_age_seconds", "tenant", fold="max")
        for tenant, value in ages.items():
            row(tenant).oldest_age_s = max(row(tenant).oldest_age_s, value)
        for tenant, value in by_label(b, "logferry_dlq_records_total", "tenant").items():
            row(tenant).dead_lettered += value
        for tenant, value in by_label(b, "logferry_pipeline_bypassed", "tenant").items():
            row(tenant).bypassed = row(tenant).bypassed or value > 0
        states: dict[str, set[str]] = {}
        for (n, labels), value in b.items():
            named = dict(labels)
            if n == "logferry_pipelines" and value > 0 and "tenant" in named:
                states.setdefault(named["tenant"], set()).add(named.get("status", "?"))
        for tenant, found in states.items():
            row(tenant).pipelines = ",".join(sorted(found))
    return sorted(rows.values(), key=lambda r: r.tenant)


def status_view(pairs: list[tuple[Scrape, Scrape]]) -> StatusView:
    """The view of every daemon scraped twice."""
    intervals = [after.at_s - before.at_s for before, after in pairs]
    return StatusView(
        interval_s=round(max(intervals, default=0.0), 3),
        daemons=[daemon_row(before, after) for before, after in pairs],
        tenants=tenant_rows(pairs),
    )
