"""Metric helpers: a drop's counter and its log line come from one call."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from logferry.common.logs import get_logger, setup_logging
from logferry.common.metrics import count_and_log, counter, render


def test_count_and_log_moves_counter_and_logs_once(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "json")
    registry = CollectorRegistry()
    dropped = counter(registry, "records_dropped", "Records dropped.", ("reason",))
    count_and_log(dropped, get_logger("t"), "records.dropped", amount=3, labels={"reason": "x"})
    assert registry.get_sample_value("logferry_records_dropped_total", {"reason": "x"}) == 3
    event = json.loads(capsys.readouterr().err.strip())
    assert (event["event"], event["count"], event["reason"]) == ("records.dropped", 3, "x")
    assert b"logferry_records_dropped_total" in render(registry)


def test_unbounded_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="not in"):
        counter(CollectorRegistry(), "lines_read", "Lines.", ("path",))


def test_every_daemon_exports_process_python_and_build_metrics() -> None:
    from logferry import __version__
    from logferry.aggregator.metrics import AggregatorMetrics, SupervisorMetrics
    from logferry.forwarder.metrics import ForwarderMetrics

    for kind, metrics in (
        ("forwarder", ForwarderMetrics()),
        ("aggregator", AggregatorMetrics()),
        ("supervisor", SupervisorMetrics()),
    ):
        registry = metrics.registry
        labels = {"version": __version__, "kind": kind}
        assert registry.get_sample_value("logferry_build_info", labels) == 1
        assert (registry.get_sample_value("process_resident_memory_bytes") or 0) > 0
        assert registry.get_sample_value("python_gc_objects_collected_total", {"generation": "0"})
        assert b"python_info{" in render(registry)
