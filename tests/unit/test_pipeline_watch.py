"""The pipeline watcher on real files and inotify: a ConfigMap-style symlink swap is seen at
once, and a burst of edits applies once."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from logferry.aggregator.pipeline_watch import PipelineRegistry, PipelineSettings, PipelineWatcher
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
