"""The pipeline watcher on real files and inotify: a ConfigMap-style symlink swap is seen at
once, and a burst of edits applies once; its metrics say what is in force, and only that."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.pipeline_watch import (
    REASON_LABEL_MAX_CHARS,
    PipelineRegistry,
    PipelineSettings,
    PipelineState,
    PipelineWatcher,
)
from tests.support.log_pipelines import log_pipeline
from tests.support.net import wait_until


def document(mark: str) -> str:
    return yaml.safe_dump(log_pipeline("p", [{"type": "add", "fields": {"mark": mark}}]))


@pytest.fixture
async def watching(tmp_path: Path) -> AsyncIterator[tuple[PipelineWatcher, Path]]:
    directory = tmp_path / "mount"
    directory.mkdir()
    # kubelet's ConfigMap layout: a timestamped dir, ..data -> it, and top-level links.
    (directory / "..2026_11_25_a").mkdir()
    (directory / "..2026_11_25_a" / "p.yaml").write_text(document("v1"))
    os.symlink("..2026_11_25_a", directory / "..data")
    os.symlink("..data/p.yaml", directory / "p.yaml")
    settings = PipelineSettings(directory=directory, debounce_s=0.3, rescan_interval_s=600)
    watcher = PipelineWatcher(settings, PipelineRegistry(), status_file=tmp_path / "status.json")
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))

    async def loaded() -> bool:
        return watcher.applies == 1

    await wait_until(loaded, timeout_s=10, what="the first load")
    yield watcher, directory
    stop.set()
    await task


def mark_in_force(watcher: PipelineWatcher) -> str | None:
    tenant = watcher.registry.snapshot().get("team-a")
    if tenant is None:
        return None
    k8s = {"namespace_name": "team-a", "pod_name": "p", "container_name": "c"}
    record = {"log": "x", "kubernetes": k8s}
    ((kept, _suffix),) = tenant.process([record]).kept
    return str(kept.get("mark"))


async def test_a_configmap_symlink_swap_is_applied_without_waiting_for_a_rescan(
    watching: tuple[PipelineWatcher, Path],
) -> None:
    watcher, directory = watching
    assert mark_in_force(watcher) == "v1"
    (directory / "..2026_11_25_b").mkdir()
    (directory / "..2026_11_25_b" / "p.yaml").write_text(document("v2"))
    os.symlink("..2026_11_25_b", directory / "..data_tmp")
    os.rename(directory / "..data_tmp", directory / "..data")  # the atomic swap kubelet does

    async def swapped() -> bool:
        return mark_in_force(watcher) == "v2"

    await wait_until(swapped, timeout_s=10, what="v2 in force (rescan is 600 s away)")
    assert watcher.states["team-a/p"].state == "Accepted"


async def test_a_burst_of_edits_applies_once(watching: tuple[PipelineWatcher, Path]) -> None:
    watcher, directory = watching
    target = directory / "..2026_11_25_a" / "p.yaml"
    for n in range(10):  # back to back, well inside the 0.3 s debounce
        target.write_text(document(f"burst-{n}"))

    async def last_in_force() -> bool:
        return mark_in_force(watcher) == "burst-9"

    await wait_until(last_in_force, timeout_s=10, what="the last edit in force")
    assert watcher.applies == 2  # the first load, then the whole burst once


def in_force(registry: CollectorRegistry) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """The pipeline info series an aggregator's /metrics holds: family -> label sets."""
    out: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name.startswith("logferry_pipeline_") and family.name.endswith("_info"):
            out[family.name] = {tuple(sorted(s.labels.items())) for s in family.samples}
    return out


def test_metrics_show_the_hash_in_force_and_the_hash_observed_and_nothing_stale(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "pipelines"
    directory.mkdir()
    metrics = AggregatorMetrics()
    settings = PipelineSettings(directory=directory)
    watcher = PipelineWatcher(settings, PipelineRegistry(), status_file=tmp_path / "s.json")
    metrics.registry.register(watcher)  # as the aggregator does
    (directory / "p.yaml").write_text(document("v1"))
    watcher.reload()
    v1 = watcher.states["team-a/p"].applied_hash
    assert v1 is not None
    assert in_force(metrics.registry) == {
        "logferry_pipeline_applied_info": {(("hash", v1), ("pipeline", "p"), ("tenant", "team-a"))},
        "logferry_pipeline_observed_info": {
            (("hash", v1), ("pipeline", "p"), ("reason", ""), ("status", "Accepted"),
             ("tenant", "team-a"))
        },
    }  # fmt: skip

    (directory / "p.yaml").write_text(document("v2"))
    watcher.reload()
    v2 = watcher.states["team-a/p"].applied_hash
    assert v2 not in (None, v1)
    assert {
        dict(s)["hash"] for s in in_force(metrics.registry)["logferry_pipeline_applied_info"]
    } == {v2}

    bad = yaml.safe_load(document("v3"))
    bad["spec"]["filters"].append({"type": "grep", "regex": "x", "mode": "sometimes"})
    (directory / "p.yaml").write_text(yaml.safe_dump(bad))
    watcher.reload()
    rejected = watcher.states["team-a/p"]
    series = in_force(metrics.registry)
    # The last good version stays in force; the observed one is there with why it was refused.
    assert {dict(s)["hash"] for s in series["logferry_pipeline_applied_info"]} == {v2}
    (observed,) = series["logferry_pipeline_observed_info"]
    labels = dict(observed)
    # A document the schema refuses has no spec hash: the label is empty, not missing.
    assert (labels["hash"], labels["status"]) == (rejected.observed_hash or "", "Rejected")
    assert labels["reason"].startswith("spec.filters[1].mode: ")
    assert labels["reason"].endswith("(schema)")

    (directory / "p.yaml").unlink()
    watcher.reload()
    assert in_force(metrics.registry) == {
        "logferry_pipeline_applied_info": set(),
        "logferry_pipeline_observed_info": set(),
    }


def test_a_long_rejection_reason_is_cut_to_a_bounded_label() -> None:
    state = PipelineState("t/p", "Rejected", "h", None, "p.yaml", ("x" * 500, "second"))
    assert len(state.reason) <= REASON_LABEL_MAX_CHARS + len(" (and 1 more)")
    assert state.reason.endswith("... (and 1 more)")
    assert PipelineState("t/p", "Accepted", "h", "h", "p.yaml").reason == ""
