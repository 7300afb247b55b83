"""The operator's ConfigMap client against a small fake API server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from aiohttp import web

from logferry.operator.kubeapi import ConfigMapStore, KubeApiError, MirroredStore

PATH = "/api/v1/namespaces/logferry/configmaps"


class FakeApiServer:
    def __init__(self) -> None:
        self.object: dict[str, Any] | None = None
        self.requests: list[tuple[str, str, str | None]] = []
        self.force_status: int | None = None
        self.version = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, request.headers.get("Authorization")))
        if self.force_status is not None:
            return web.json_response({"message": "forced"}, status=self.force_status)
        if request.method == "GET" and request.path == f"{PATH}/logferry-pipelines":
            if self.object is None:
                return web.json_response({"message": "not found"}, status=404)
            return web.json_response(self.object)
        if request.method == "POST" and request.path == PATH:
            return self._store(await request.json(), status=201)
        if request.method == "PUT" and request.path == f"{PATH}/logferry-pipelines":
            body = await request.json()
            assert self.object is not None
            if (
                body["metadata"].get("resourceVersion")
                != self.object["metadata"]["resourceVersion"]
            ):
                return web.json_response({"message": "conflict"}, status=409)
            return self._store(body, status=200)
        return web.json_response({"message": "unexpected"}, status=400)

    def _store(self, body: dict[str, Any], status: int) -> web.Response:
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.object = body
        return web.json_response(body, status=status)


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeApiServer, ConfigMapStore]]:
    server = FakeApiServer()
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    info = kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}", token="sekret")
    try:
        yield server, ConfigMapStore("logferry", "logferry-pipelines", lambda: info)
    finally:
        await runner.cleanup()


async def test_missing_configmap_reads_as_none_and_is_created_on_write(
    api: tuple[FakeApiServer, ConfigMapStore],
) -> None:
    server, store = api
    assert await store.read() is None

    await store.write({"team-a.web.yaml": "a: 1\n"})

    assert server.object is not None
    assert server.object["data"] == {"team-a.web.yaml": "a: 1\n"}
    assert server.object["metadata"]["labels"]["app.kubernetes.io/managed-by"] == (
        "logferry-operator"
    )
    assert [m for m, _, _ in server.requests] == ["GET", "GET", "POST"]
    assert {auth for _, _, auth in server.requests} == {"Bearer sekret"}


async def test_write_replaces_data_and_keeps_the_rest_of_the_object(
    api: tuple[FakeApiServer, ConfigMapStore],
) -> None:
    server, store = api
    await store.write({"team-a.web.yaml": "a: 1\n"})
    assert server.object is not None
    server.object["metadata"]["annotations"] = {"note": "kept"}

    await store.write({"team-b.api.yaml": "b: 2\n"})

    assert await store.read() == {"team-b.api.yaml": "b: 2\n"}
    assert server.object["metadata"]["annotations"] == {"note": "kept"}


@pytest.mark.parametrize(("status", "retriable"), [(409, True), (503, True), (403, False)])
async def test_api_errors_say_whether_to_retry(
    api: tuple[FakeApiServer, ConfigMapStore], status: int, retriable: bool
) -> None:
    server, store = api
    server.force_status = status
    with pytest.raises(KubeApiError) as raised:
        await store.write({})
    assert raised.value.status == status
    assert raised.value.retriable is retriable


async def test_an_unreachable_api_server_is_a_retriable_error() -> None:
    info = kopf.ConnectionInfo(server="http://127.0.0.1:9", token="t")
    store = ConfigMapStore("logferry", "logferry-pipelines", lambda: info)
    with pytest.raises(KubeApiError) as raised:
        await store.read()
    assert raised.value.retriable


async def test_a_mirrored_store_writes_every_copy_before_the_primary() -> None:
    servers = [FakeApiServer(), FakeApiServer()]
    runners = []
    stores = []
    for server in servers:
        runner = web.AppRunner(server.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        info = kopf.ConnectionInfo(server=f"http://127.0.0.1:{runner.addresses[0][1]}")
        stores.append(ConfigMapStore("logferry", "logferry-pipelines", lambda info=info: info))
    primary, mirror = servers
    store = MirroredStore(stores[0], [stores[1]])
    try:
        await store.write({"team-a.web.yaml": "a: 1\n"})
        assert primary.object is not None
        assert mirror.object is not None
        assert primary.object["data"] == mirror.object["data"] == {"team-a.web.yaml": "a: 1\n"}
        # A copy that cannot be written fails the write, and the primary keeps the old data:
        # the operator's status never claims a version the forwarders do not have.
        mirror.force_status = 500
        with pytest.raises(KubeApiError):
            await store.write({"team-a.web.yaml": "a: 2\n"})
        assert await store.read() == {"team-a.web.yaml": "a: 1\n"}
    finally:
        for runner in runners:
            await runner.cleanup()
