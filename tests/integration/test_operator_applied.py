"""The operator's Applied against real aggregators: a two-worker and a single-process
aggregator, each with its own copy of the pipelines ConfigMap mounted as kubelet lays it out
(and syncs it when the test says, as kubelet does when it gets to it), and the operator's
controller and aggregator watch pointed at their /metrics.

Applied stays False (Pending) until every worker of every aggregator has loaded the hash
written; an aggregator that never loads it, or refuses it, makes it NotLoaded past the
timeout, with why; and it turns True when they catch up. The Kubernetes side is the
controller's own: the ConfigMap in memory, the LogPipeline object a dict that its status
patches are merged into, and the kopf timer's body called as kopf would."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from logferry.operator import main
from logferry.operator import reconcile as rc
from logferry.operator.aggregators import AggregatorWatch
from tests.support.aggregator import MakeAggregator
from tests.support.daemon import DaemonProcess
from tests.support.log_pipelines import VALID_SPEC, api_object
from tests.support.net import free_port, wait_until

pytestmark = pytest.mark.integration

SOURCE = "logferry-aggregator-metrics.logferry.svc:2020"
KEY = "team-a/web"


class ConfigMapVolume:
    """A ConfigMap mounted in a pod: ``..<version>/`` holds the files, ``..data`` links to
    it and is swapped in one rename, and each key is a link through ``..data``."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True)
        self.path = path
        self.syncs = 0

    def sync(self, data: Mapping[str, str]) -> None:
        self.syncs += 1
        version = self.path / f"..2026_11_26_{self.syncs:04d}"
        version.mkdir()
        for key, text in data.items():
            (version / key).write_text(text)
        old = (self.path / "..data").resolve() if (self.path / "..data").exists() else None
        os.symlink(version.name, self.path / "..data_tmp")
        os.replace(self.path / "..data_tmp", self.path / "..data")
        for key in data:
            if not (self.path / key).is_symlink():
                os.symlink(f"..data/{key}", self.path / key)
        for entry in self.path.iterdir():
            if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in data:
                entry.unlink()
        if old is not None:
            shutil.rmtree(old)


class MemoryConfigMap:
    """The operator's ConfigMap (``logferry-pipelines``)."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    async def read(self) -> dict[str, str] | None:
        return dict(self.data)

    async def write(self, data: Mapping[str, str]) -> None:
        self.data = dict(data)


class Clock:
    """Monotonic seconds the test moves on: the apply timeout passes without waiting it out."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Operator:
    controller: main.Controller
    watch: AggregatorWatch
    store: MemoryConfigMap
    clock: Clock
    events: list[tuple[str, rc.Event]]
    urls: list[str]
    """What the Service name resolves to."""

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The create/update handler; its status patch merged into ``obj``."""
        status: dict[str, Any] = {}
        await self.controller.apply(obj, status)
        obj["status"] = {**obj.get("status", {}), **status}
        return applied(obj)

    def tick(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The kopf timer, while kopf runs it (on objects still waiting)."""
        if rc.awaits_aggregators(obj):
            patch: dict[str, Any] = {}
            self.controller.refresh(obj, patch)
            obj["status"] = {**obj["status"], **patch}
        return applied(obj)

    async def settle(self, obj: dict[str, Any], reason: str) -> dict[str, Any]:
        async def reached() -> bool:
            return bool(self.tick(obj)["reason"] == reason)

        await wait_until(reached, timeout_s=30, what=f"Applied {reason}", detail=lambda: str(obj))
        return applied(obj)

    async def rounds(self, count: int) -> None:
        """Wait until the watch has scraped ``count`` more rounds."""
        target = self.watch.rounds + count
        await wait_until(lambda: self.watch.rounds >= target, timeout_s=30, what="scrape rounds")

    async def loaded(self, aggregator: DaemonProcess, key: str, spec_hash: str | None) -> None:
        """Wait until every worker of ``aggregator`` reports ``spec_hash`` of ``key`` as read."""
        url = f"http://127.0.0.1:{aggregator.http_port}"

        def seen() -> bool:
            report = next((a for a in self.watch.latest.aggregators if a.name == url), None)
            return (
                report is not None
                and report.error is None
                and bool(report.workers)
                and all(
                    (w.get(key) or rc.LoadedPipeline()).observed_hash == spec_hash
                    for w in report.workers.values()
                )
            )

        await wait_until(seen, timeout_s=30, what=f"{url} to read {key} {spec_hash}")


def applied(obj: Mapping[str, Any]) -> dict[str, Any]:
    condition = rc.condition_of(obj, rc.APPLIED)
    assert condition is not None
    return dict(condition)


def pipelines(volume: ConfigMapVolume, **limits: Any) -> dict[str, Any]:
    return {
        "pipelines": {
            "directory": str(volume.path),
            "debounce_s": 0.1,
            "rescan_interval_s": 1,
            **limits,
        }
    }


@pytest.fixture
async def cluster(
    make_aggregator: MakeAggregator, tmp_path: Path
) -> AsyncIterator[tuple[Operator, DaemonProcess, ConfigMapVolume, DaemonProcess, ConfigMapVolume]]:
    mount_a = ConfigMapVolume(tmp_path / "mount-a")
    mount_b = ConfigMapVolume(tmp_path / "mount-b")
    agg_a = make_aggregator(None, name="agg-a", workers=2, **pipelines(mount_a))
    # One pipeline per tenant here, where the operator allows 20: the one place the two can
    # disagree on a valid pipeline, so the aggregator refuses what the operator accepted.
    agg_b = make_aggregator(None, name="agg-b", **pipelines(mount_b, max_pipelines_per_tenant=1))
    await asyncio.gather(agg_a.start(), agg_b.start())
    # The headless Service's A records: the two pods, and one that answers nothing.
    urls = [f"http://127.0.0.1:{d.http_port}" for d in (agg_a, agg_b)]
    urls.append(f"http://127.0.0.1:{free_port()}")
    watch = AggregatorWatch(SOURCE, interval_s=0.2, resolve=lambda _source: list(urls))
    events: list[tuple[str, rc.Event]] = []
    clock = Clock()
    store = MemoryConfigMap()
    controller = main.Controller(
        store,
        lambda body, event: events.append((body["metadata"]["name"], event)),
        aggregators=watch,
        apply_timeout_s=180.0,
        clock=clock,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(watch.run(stop))
    try:
        yield (
            Operator(controller, watch, store, clock, events, urls),
            agg_a,
            mount_a,
            agg_b,
            mount_b,
        )
    finally:
        stop.set()
        await task
        for daemon in (agg_a, agg_b):
            assert await daemon.stop() == 0


async def test_applied_waits_for_every_worker_of_every_aggregator_and_says_who_did_not_load_it(
    cluster: tuple[Operator, DaemonProcess, ConfigMapVolume, DaemonProcess, ConfigMapVolume],
    caplog: pytest.LogCaptureFixture,
) -> None:
    op, agg_a, mount_a, agg_b, mount_b = cluster
    dead = op.urls[2]

    # Generation 1 is written; no aggregator has it yet.
    web = api_object(generation=1)
    condition = await op.apply(web)
    assert (condition["status"], condition["reason"]) == ("False", "Pending")
    assert "waiting for the aggregators to load it" in condition["message"]
    assert web["status"]["appliedHash"] is None  # nothing confirmed yet
    h1 = rc.spec_hash_of(op.controller.accepted[KEY])
    assert h1
    await op.rounds(2)  # both aggregators answered, without it
    assert op.tick(web)["reason"] == "Pending"

    # kubelet updates one pod's volume: its two workers load it; the other pod has not.
    mount_a.sync(op.store.data)
    await op.loaded(agg_a, KEY, h1)
    await op.rounds(1)
    assert op.tick(web)["reason"] == "Pending"
    # ...and then the other's: Applied, with how many pods and workers confirmed.
    mount_b.sync(op.store.data)
    condition = await op.settle(web, "Applied")
    assert condition["status"] == "True"
    assert (
        f"generation 1 (hash {h1}) is loaded by 2 aggregator pods (3 workers)"
        in (condition["message"])
    )
    assert f"not asked: {dead} unreachable" in condition["message"]
    assert web["status"]["appliedHash"] == h1
    assert not rc.awaits_aggregators(web)

    # Generation 2: one pod loads it, the other never gets the new volume.
    web = api_object(generation=2, spec={**VALID_SPEC, "order": 5}, status=web["status"])
    assert (await op.apply(web))["reason"] == "Pending"
    h2 = rc.spec_hash_of(op.controller.accepted[KEY])
    assert h2
    assert h2 != h1
    assert web["status"]["appliedHash"] == h1  # what the aggregators still run
    mount_a.sync(op.store.data)
    await op.loaded(agg_a, KEY, h2)
    await op.rounds(1)
    assert op.tick(web)["reason"] == "Pending"  # the timeout has not passed
    op.clock.now += 181
    with caplog.at_level(logging.WARNING, logger="logferry.operator"):
        condition = await op.settle(web, "NotLoaded")
    b_url = f"http://127.0.0.1:{agg_b.http_port}"
    a_url = f"http://127.0.0.1:{agg_a.http_port}"
    assert condition["status"] == "False"
    assert (
        f"generation 2 (hash {h2}) not loaded by the aggregators within 180 s"
        in (condition["message"])
    )
    assert f"{b_url}: still at hash {h1}" in condition["message"]
    assert a_url not in condition["message"]
    assert [r.message for r in caplog.records if "event=not_loaded" in r.message]
    assert ("web", "Warning", "NotLoaded") in [(n, e.type, e.reason) for n, e in op.events]

    # kubelet gets to it after all: the timer turns it True.
    mount_b.sync(op.store.data)
    condition = await op.settle(web, "Applied")
    assert web["status"]["appliedHash"] == h2

    # A second pipeline the operator accepts and the single-process aggregator refuses (one
    # pipeline per tenant there): NotLoaded names the refusal and its reason.
    api = api_object(name="api", generation=1, spec={**VALID_SPEC, "order": 20})
    assert (await op.apply(api))["reason"] == "Pending"
    h_api = rc.spec_hash_of(op.controller.accepted["team-a/api"])
    mount_a.sync(op.store.data)
    mount_b.sync(op.store.data)
    await op.loaded(agg_a, "team-a/api", h_api)
    await op.loaded(agg_b, "team-a/api", h_api)
    op.clock.now += 181
    condition = await op.settle(api, "NotLoaded")
    assert f"{b_url}: rejected it (" in condition["message"]
    assert "(policy)" in condition["message"]
    assert a_url not in condition["message"]
    # The refusal does not touch the pipeline that was there first.
    assert op.tick(web)["reason"] == "Applied"
