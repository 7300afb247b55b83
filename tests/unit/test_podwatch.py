"""The pod watcher against a local server speaking the list/watch protocol: list then watch,
bookmarks, a cut watch resumed from its version, 410 Gone relisted, the server down at start,
a bounded cache that keeps deleted pods a while."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from logferry.forwarder.podwatch import ApiAccess, PodCache, PodInfo, PodWatcher
from tests.support.fake_kube_api import FakeKubeApi, pod
from tests.support.net import free_port, wait_until


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeApi]:
    server = FakeKubeApi()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def run_watcher(
    url: str, cache: PodCache
) -> tuple[PodWatcher, asyncio.Event, asyncio.Task[None]]:
    watcher = PodWatcher(ApiAccess(url), "node-1", cache, backoff_max_s=0.2)
    stop = asyncio.Event()
    return watcher, stop, asyncio.create_task(watcher.run(stop))


async def test_list_then_watch_keeps_this_nodes_pods(api: FakeKubeApi) -> None:
    api.upsert(
        pod("team-a", "web-1", "u1", "node-1", {"app": "web"}, containers={"web": "nginx:1"})
    )
    api.upsert(pod("team-a", "other", "u9", "node-2"))  # another node: never listed
    cache = PodCache()
    watcher, stop, task = await run_watcher(api.url, cache)
    try:
        await asyncio.wait_for(watcher.synced.wait(), 10)
        info = cache.get("u1")
        assert info is not None
        assert (info.labels, info.images["web"][0]) == ({"app": "web"}, "nginx:1")
        assert cache.get("u9") is None
        await wait_until(
            lambda: api.watches == 1 and len(api.watchers) == 1, timeout_s=10, what="the watcher"
        )
        api.upsert(pod("team-a", "web-1", "u1", "node-1", {"app": "web", "v": "2"}))
        api.upsert(pod("team-b", "api-1", "u2", "node-1", {"app": "api"}))
        api.bookmark()
        await wait_until(
            lambda: cache.get("u2") is not None and cache.get("u1").labels.get("v") == "2",  # type: ignore[union-attr]
            timeout_s=10,
            what="the watched changes in the cache",
        )
        assert all("fieldSelector=spec.nodeName%3Dnode-1" in r for r in api.requests)
        assert "allowWatchBookmarks=true" in api.requests[-1]
        # A cut watch resumes from the last version it saw (the bookmark's), no relist.
        version = str(api.version)
        api.cut_watches()
        await wait_until(lambda: api.watches == 2, timeout_s=10, what="the watcher")
        assert api.requests[-1].endswith(f"resourceVersion={version}")
        assert api.lists == 1
        # 410 Gone: list again.
        api.gone_next_watch = True
        api.cut_watches()
        await wait_until(
            lambda: api.lists == 2 and len(api.watchers) == 1, timeout_s=10, what="the watcher"
        )
        api.delete("u2")
        await wait_until(lambda: watcher.relists == 2, timeout_s=10, what="the watcher")
    finally:
        stop.set()
        await task


async def test_the_server_down_at_start_is_retried_until_it_answers() -> None:
    port = free_port()
    cache = PodCache()
    watcher, stop, task = await run_watcher(f"http://127.0.0.1:{port}", cache)
    server = FakeKubeApi()
    try:
        await wait_until(lambda: watcher.failures >= 2, timeout_s=10, what="the watcher")
        assert not watcher.synced.is_set()
        server.upsert(pod("team-a", "web-1", "u1", "node-1"))
        await server.start(port)
        await asyncio.wait_for(watcher.synced.wait(), 10)
        assert cache.get("u1") is not None
    finally:
        stop.set()
        await task
        await server.stop()


def info(uid: str) -> PodInfo:
    return PodInfo(uid, "ns", uid, {}, {}, {})


def test_deleted_pods_stay_a_while_and_the_cache_is_bounded() -> None:
    now = [0.0]
    cache = PodCache(max_pods=3, deleted_ttl_s=60, clock=lambda: now[0])
    for uid in ("a", "b", "c"):
        cache.put(info(uid))
    cache.delete("a")
    assert cache.get("a") is not None  # its files are still being drained
    cache.put(info("d"))  # over the bound: the deleted one goes first
    assert cache.get("a") is None
    assert len(cache) == 3
    cache.delete("b")
    now[0] = 61
    cache.replace([info("c"), info("d")])
    assert cache.get("b") is None
    assert {cache.get(u) is not None for u in ("c", "d")} == {True}


def test_a_500_pod_node_fits_the_cache_bound() -> None:
    import tracemalloc

    from logferry.forwarder.podwatch import pod_info
    from tests.support.fake_kube_api import pod

    labels = {
        "app.kubernetes.io/name": "payments",
        "app.kubernetes.io/instance": "payments-prod",
        "app.kubernetes.io/version": "1.42.7",
        "pod-template-hash": "5d9c7b8f4d",
        "team": "checkout",
        "tier": "backend",
    }
    annotations = {"logferry.io/multiline": "java", "prometheus.io/scrape": "true"}
    objects = [
        pod(
            f"ns-{n % 40}",
            f"payments-5d9c7b8f4d-{n:05d}",
            f"{n:08x}-aaaa-bbbb-cccc-123456789abc",
            "node-1",
            {**labels, "replica": str(n)},
            annotations,
            {"app": "registry.example.com/payments:1.42.7", "istio-proxy": "istio/proxyv2:1.24"},
        )
        for n in range(500)
    ]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    cache = PodCache(max_pods=1000)
    for obj in objects:
        info = pod_info(obj)
        assert info is not None
        cache.put(info)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    used = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert len(cache) == 500
    # The documented bound (docs/operations.md): under 2 KiB per pod with this many labels,
    # so 500 pods stay under 1 MiB and the default max_pods (1000) under 2 MiB.
    assert used < 1024 * 1024, used
    print(f"500 pods: {used / 1024:.0f} KiB in the cache")
