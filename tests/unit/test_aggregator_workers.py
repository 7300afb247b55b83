"""Worker slots, the spool layout of several workers, and the pod's merged /metrics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from logferry.aggregator.config import ForwardInputSettings
from logferry.aggregator.spools import AggregatorSpoolSettings
from logferry.aggregator.worker_metrics import merge_expositions
from logferry.aggregator.workers import (
    WorkerSlot,
    available_cores,
    orphaned_spool_dirs,
    worker_count,
    worker_input_settings,
    worker_spool_settings,
)
from logferry.common.errors import ConfigError
from logferry.common.units import MiB


def test_a_worker_slot_comes_from_the_environment() -> None:
    env = {"LOGFERRY_WORKER": "1/3", "LOGFERRY_WORKER_SOCKETS": "24224,9"}
    assert WorkerSlot.from_env(env) == WorkerSlot(1, 3, 24224, 9)
    assert WorkerSlot.from_env({}) is None
    for bad in ({"LOGFERRY_WORKER": "3/3", "LOGFERRY_WORKER_SOCKETS": "24224,9"},
                {"LOGFERRY_WORKER": "x", "LOGFERRY_WORKER_SOCKETS": "24224,9"},
                {"LOGFERRY_WORKER": "0/2"}):  # fmt: skip
        with pytest.raises(ConfigError):
            WorkerSlot.from_env(bad)


def test_zero_workers_means_the_cores_this_process_may_use() -> None:
    assert worker_count(3) == 3
    assert 1 <= worker_count(0) == available_cores() <= len(os.sched_getaffinity(0))


def test_each_worker_has_its_folder_and_an_even_share(tmp_path: Path) -> None:
    settings = AggregatorSpoolSettings(
        directory=tmp_path, max_bytes=64 * MiB, tenant_max_bytes=32 * MiB,
        segment_max_bytes=4 * MiB,
    )  # fmt: skip
    first = worker_spool_settings(settings, WorkerSlot(0, 2, -1, -1))
    second = worker_spool_settings(settings, WorkerSlot(1, 2, -1, -1))
    # Worker 0 keeps the single-process layout, so a backlog stays where it was.
    assert (Path(first.directory), Path(second.directory)) == (tmp_path, tmp_path / "worker-1")
    assert (first.max_bytes, first.tenant_max_bytes) == (32 * MiB, 16 * MiB)
    with pytest.raises(ConfigError, match="less than two segments"):
        worker_spool_settings(settings, WorkerSlot(0, 5, -1, -1))


def test_folders_of_workers_that_are_gone_are_shared_out(tmp_path: Path) -> None:
    for name in ("tenants", "worker-1", "worker-2", "worker-3", "worker-4", "other"):
        (tmp_path / name).mkdir()

    def names(slot: WorkerSlot | None) -> list[str]:
        return [p.name for p in orphaned_spool_dirs(tmp_path, slot)]

    assert names(WorkerSlot(0, 2, -1, -1)) == ["worker-2", "worker-4"]
    assert names(WorkerSlot(1, 2, -1, -1)) == ["worker-3"]
    assert names(None) == ["worker-1", "worker-2", "worker-3", "worker-4"]  # one process: all
    assert names(WorkerSlot(0, 5, -1, -1)) == []


def worker_text(connections: int, acks: int) -> bytes:
    registry = CollectorRegistry()
    Gauge("logferry_connections", "open", registry=registry).set(connections)
    Counter("logferry_acks", "acks", ["tenant"], registry=registry).labels("a").inc(acks)
    return generate_latest(registry)


def test_the_pod_metrics_hold_every_worker_labelled_one_family_per_name() -> None:
    own = CollectorRegistry()
    Gauge("logferry_aggregator_workers", "n", registry=own).set(2)
    text = merge_expositions(
        [(None, generate_latest(own)), ("0", worker_text(3, 10)), ("1", worker_text(4, 5))]
    ).decode()
    assert text.count("# TYPE logferry_connections gauge") == 1
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("logferry_aggregator_workers", ())] == 2
    assert samples[("logferry_connections", (("worker", "0"),))] == 3
    assert samples[("logferry_connections", (("worker", "1"),))] == 4
    assert samples[("logferry_acks_total", (("tenant", "a"), ("worker", "1")))] == 5


def test_the_pod_wide_input_limits_are_shared_out() -> None:
    settings = ForwardInputSettings(
        allow_unauthenticated=True, max_connections=1024, max_connections_per_source=64,
        buffer_budget_bytes=256 * MiB, max_message_bytes=8 * MiB,
    )  # fmt: skip
    share = worker_input_settings(settings, WorkerSlot(1, 2, 24224, -1))
    assert (share.max_connections, share.max_connections_per_source) == (512, 32)
    assert share.buffer_budget_bytes == 128 * MiB
    tiny = worker_input_settings(settings, WorkerSlot(0, 64, 24224, -1))
    assert (tiny.max_connections_per_source, tiny.buffer_budget_bytes) == (1, 8 * MiB)


def test_the_pod_metrics_come_in_openmetrics_when_asked() -> None:
    text = merge_expositions([("0", worker_text(3, 10))], openmetrics=True).decode()
    assert text.endswith("# EOF\n")
    assert 'logferry_connections{worker="0"} 3.0' in text
