"""Discovery of container log files: kubelet symlinks, exclusions, inotify, rescans, stop."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from logferry.forwarder.config import SourceSettings
from logferry.forwarder.discovery import Discovery, FoundFile, watch_root
from logferry.forwarder.metrics import ForwarderMetrics

CID = "c" * 64
DEADLINE_S = 5.0


def container_log(tmp_path: Path, pod: str, ns: str, container: str, body: bytes = b"") -> Path:
    """kubelet's layout: the real file under pods/, a symlink to it under containers/."""
    target = tmp_path / "pods" / f"{ns}_{pod}_uid" / container / "0.log"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(body)
    link = tmp_path / "containers" / f"{pod}_{ns}_{container}-{CID}.log"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def settings(tmp_path: Path, **overrides: object) -> SourceSettings:
    values: dict[str, object] = {
        "path_glob": str(tmp_path / "containers" / "*.log"),
        "rescan_interval_s": 3600.0,
    }
    values.update(overrides)
    return SourceSettings.model_validate(values)


class Recorder:
    """Collects on_change calls; tests wait on a condition over them, with a deadline."""

    def __init__(self) -> None:
        self.calls: list[dict[str, FoundFile]] = []
        self._changed = asyncio.Condition()

    async def __call__(self, found: dict[str, FoundFile]) -> None:
        async with self._changed:
            self.calls.append(found)
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[dict[str, FoundFile]], bool]) -> None:
        async with asyncio.timeout(DEADLINE_S), self._changed:
            await self._changed.wait_for(lambda: bool(self.calls) and predicate(self.calls[-1]))


@asynccontextmanager
async def running(discovery: Discovery) -> AsyncIterator[Recorder]:
    recorder = Recorder()
    stop = asyncio.Event()
    task = asyncio.create_task(discovery.run(recorder, stop))
    try:
        await recorder.wait_for(lambda _: True)  # the initial scan
        yield recorder
    finally:
        stop.set()
        async with asyncio.timeout(DEADLINE_S):
            await task


def test_symlinked_container_logs_are_found_with_the_targets_identity(tmp_path: Path) -> None:
    link = container_log(tmp_path, "web-1", "shop", "nginx", b"hello\n")
    found = Discovery(settings(tmp_path), "node-1").scan()
    assert list(found) == [str(link)]
    entry = found[str(link)]
    target = tmp_path / "pods" / "shop_web-1_uid" / "nginx" / "0.log"
    assert entry.real_path == str(target.resolve())
    target_stat = os.stat(target)
    assert (entry.device, entry.inode, entry.size) == (target_stat.st_dev, target_stat.st_ino, 6)
    assert entry.meta.as_record() == {
        "namespace_name": "shop",
        "pod_name": "web-1",
        "container_name": "nginx",
        "container_id": CID,
        "host": "node-1",
    }


def test_excluded_namespaces_pods_and_containers_are_skipped_and_tallied_in_the_scan_stats(
    tmp_path: Path,
) -> None:
    keep = container_log(tmp_path, "web-1", "shop", "nginx")
    container_log(tmp_path, "coredns-1", "kube-system", "coredns")
    container_log(tmp_path, "debug-1", "shop", "app")
    container_log(tmp_path, "web-2", "shop", "istio-proxy")
    discovery = Discovery(
        settings(
            tmp_path,
            exclude_namespaces=["kube-*"],
            exclude_pods=["debug-*"],
            exclude_containers=["istio-proxy"],
        ),
        "n1",
    )
    assert list(discovery.scan()) == [str(keep)]
    assert discovery.stats.skipped == {"excluded": 3}


def test_names_that_are_not_container_logs_are_skipped(tmp_path: Path) -> None:
    keep = container_log(tmp_path, "web-1", "shop", "nginx")
    (tmp_path / "containers" / "syslog.log").write_text("x")
    (tmp_path / "containers" / f"A_b_c-{CID}.log").write_text("x")
    discovery = Discovery(settings(tmp_path), "n1")
    assert list(discovery.scan()) == [str(keep)]
    assert discovery.stats.skipped == {"not_container": 2}


def test_dangling_symlink_is_skipped_not_an_error(tmp_path: Path) -> None:
    keep = container_log(tmp_path, "web-1", "shop", "nginx")
    gone = container_log(tmp_path, "web-2", "shop", "nginx")
    os.unlink(gone.resolve())  # the target was rotated away
    discovery = Discovery(settings(tmp_path), "n1")
    assert list(discovery.scan()) == [str(keep)]
    assert discovery.stats.skipped == {"dangling": 1}


def test_a_directory_matching_the_glob_is_not_a_file(tmp_path: Path) -> None:
    target = tmp_path / "pods" / "shop_web-1_uid" / "nginx" / "0.log"
    target.mkdir(parents=True)
    (tmp_path / "containers").mkdir()
    (tmp_path / "containers" / f"web-1_shop_nginx-{CID}.log").symlink_to(target)
    # Not a link into the pods root at all: refused for that, before it is even looked at.
    (tmp_path / "containers" / f"web-2_shop_nginx-{CID}.log").mkdir()
    discovery = Discovery(settings(tmp_path), "n1")
    assert discovery.scan() == {}
    assert discovery.stats.skipped == {"not_regular": 1, "outside_pods_root": 1}


def test_missing_directory_scans_as_empty(tmp_path: Path) -> None:
    assert Discovery(settings(tmp_path), "n1").scan() == {}


def test_watch_root_is_the_fixed_part_of_the_glob() -> None:
    assert watch_root("/var/log/containers/*.log") == ("/var/log/containers", False)
    assert watch_root("/var/log/pods/*/*/0.log") == ("/var/log/pods", True)


async def test_file_created_after_start_is_reported_through_inotify(tmp_path: Path) -> None:
    (tmp_path / "containers").mkdir()
    async with running(Discovery(settings(tmp_path), "n1")) as recorder:
        assert recorder.calls == [{}]
        link = container_log(tmp_path, "web-1", "shop", "nginx")
        await recorder.wait_for(lambda found: str(link) in found)


async def test_deleted_file_is_reported(tmp_path: Path) -> None:
    link = container_log(tmp_path, "web-1", "shop", "nginx")
    async with running(Discovery(settings(tmp_path), "n1")) as recorder:
        assert list(recorder.calls[0]) == [str(link)]
        link.resolve().unlink()  # as kubelet removes a container: its file, then its link
        link.unlink()
        await recorder.wait_for(lambda found: found == {})


async def test_a_burst_of_creates_causes_few_scans(tmp_path: Path) -> None:
    (tmp_path / "containers").mkdir()
    discovery = Discovery(settings(tmp_path), "n1")
    async with running(discovery) as recorder:
        links = [container_log(tmp_path, f"web-{i}", "shop", "nginx") for i in range(50)]
        await recorder.wait_for(lambda found: len(found) == len(links))
        # One scan at start, then one per burst; a slow machine may split the burst once
        # or twice, but never anywhere near one scan per event.
        assert len(recorder.calls) <= 4
        assert discovery.stats.scans == len(recorder.calls)


async def test_rescan_finds_files_when_inotify_is_off(tmp_path: Path) -> None:
    (tmp_path / "containers").mkdir()
    before = set(threading.enumerate())
    discovery = Discovery(settings(tmp_path, rescan_interval_s=0.05), "n1", use_inotify=False)
    async with running(discovery) as recorder:
        assert set(threading.enumerate()) - before <= _to_thread_workers()
        link = container_log(tmp_path, "web-1", "shop", "nginx")
        await recorder.wait_for(lambda found: str(link) in found)


async def test_directory_created_after_start_is_found_and_then_watched(tmp_path: Path) -> None:
    async with running(Discovery(settings(tmp_path), "n1")) as recorder:
        assert recorder.calls == [{}]
        first = container_log(tmp_path, "web-1", "shop", "nginx")
        await recorder.wait_for(lambda found: str(first) in found)
        # The rescan interval is an hour: only a watch on the new directory can see this.
        second = container_log(tmp_path, "web-2", "shop", "nginx")
        await recorder.wait_for(lambda found: str(second) in found)


async def test_stop_joins_the_observer_threads(tmp_path: Path) -> None:
    (tmp_path / "containers").mkdir()
    before = set(threading.enumerate())
    async with running(Discovery(settings(tmp_path), "n1")):
        started = set(threading.enumerate()) - before - _to_thread_workers()
        assert started, "the observer should run while discovery runs"
    leaked = [t for t in started if t.is_alive()]
    assert leaked == []


async def test_an_error_in_on_change_ends_the_run_and_joins_the_observer(
    tmp_path: Path,
) -> None:
    (tmp_path / "containers").mkdir()
    before = set(threading.enumerate())

    async def fail(found: dict[str, FoundFile]) -> None:
        raise LookupError("downstream broke")

    with pytest.raises(LookupError):
        async with asyncio.timeout(DEADLINE_S):
            await Discovery(settings(tmp_path), "n1").run(fail, asyncio.Event())
    assert set(threading.enumerate()) - before <= _to_thread_workers()


def _to_thread_workers() -> set[threading.Thread]:
    """asyncio.to_thread's pool workers: the loop's executor owns them, not discovery."""
    return {t for t in threading.enumerate() if t.name.startswith("asyncio_")}


def test_the_pods_layout_is_read_directly_and_a_file_found_both_ways_once(tmp_path: Path) -> None:
    linked = container_log(tmp_path, "web-1", "shop", "nginx")
    # A runtime that keeps no /var/log/containers link for this one.
    alone = tmp_path / "pods" / "shop_api-1_0f1e2d3c-aaaa-bbbb-cccc-123456789abc" / "api" / "0.log"
    alone.parent.mkdir(parents=True)
    alone.write_bytes(b"")
    found = Discovery(settings(tmp_path), "n1").scan()
    assert sorted(found) == sorted([str(linked), str(alone)])
    meta = found[str(alone)].meta
    assert (meta.namespace_name, meta.pod_name, meta.container_name) == ("shop", "api-1", "api")
    assert meta.container_id == ""
    assert found[str(linked)].real_path == str(linked.resolve())
    only_links = Discovery(settings(tmp_path, pods_glob=None), "n1").scan()
    assert list(only_links) == [str(linked)]


def test_a_file_no_container_can_be_named_for_is_counted_and_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "containers").mkdir()
    odd = tmp_path / "containers" / "web-1_shop_nginx-abc123.log"  # a short container id
    odd.write_bytes(b"x\n")
    metrics = ForwarderMetrics()
    discovery = Discovery(settings(tmp_path), "n1", metrics=metrics)
    with caplog.at_level(logging.WARNING):
        assert discovery.scan() == {}
        assert discovery.scan() == {}
    warned = [r for r in caplog.records if r.getMessage() == "discovery.file_unattributable"]
    assert len(warned) == 1
    sample = metrics.files_skipped.labels(reason="not_container")._value.get()
    assert sample == 1
    assert discovery.stats.skipped == {"not_container": 1}


def test_a_plain_files_glob_matching_a_folder_is_counted_and_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "containers").mkdir()
    agent = tmp_path / "agent"
    (agent / "odd.log").mkdir(parents=True)  # a folder the glob matches
    (agent / "real.log").write_bytes(b"x\n")
    metrics = ForwarderMetrics()
    files = [{"glob": str(agent / "*.log"), "tenant": "node-logs"}]
    discovery = Discovery(settings(tmp_path, files=files), "n1", metrics=metrics)
    with caplog.at_level(logging.WARNING):
        assert list(discovery.scan()) == [str(agent / "real.log")]
        assert list(discovery.scan()) == [str(agent / "real.log")]
    warned = [r for r in caplog.records if r.getMessage() == "discovery.file_not_regular"]
    assert len(warned) == 1
    assert metrics.files_skipped.labels(reason="not_regular")._value.get() == 1
