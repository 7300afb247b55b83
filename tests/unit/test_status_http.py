"""The status endpoint over a real socket: routes, status codes, and garbage handled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter

from logferry.common.status_http import StatusServer


@pytest.fixture
async def server() -> AsyncIterator[StatusServer]:
    registry = CollectorRegistry()
    Counter("logferry_things", "Things.", registry=registry).inc(3)
    scrapes: list[int] = []
    status = StatusServer(
        "127.0.0.1",
        0,
        registry,
        live=lambda: (True, "ok"),
        ready=lambda: (False, "spool recovering"),
        before_scrape=lambda: scrapes.append(1),
    )
    await status.start()
    yield status
    await status.stop()
    await status.stop()  # twice is fine


async def get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, response.headers["Content-Type"], await response.text()


async def test_metrics_and_probes(server: StatusServer) -> None:
    status, content_type, body = await get(server.port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    assert "logferry_things_total 3.0" in body
    assert await get(server.port, "/healthz") == (200, "text/plain", "ok\n")
    assert await get(server.port, "/readyz?verbose=1") == (503, "text/plain", "spool recovering\n")
    assert (await get(server.port, "/nope"))[0] == 404
    assert (await get(server.port, "/metrics", "POST"))[0] == 405
    status, _type, body = await get(server.port, "/healthz", "HEAD")
    assert (status, body) == (200, "")


async def test_garbage_and_silent_clients_are_closed_without_harm(server: StatusServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"\x16\x03\x01 not http\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
    writer.close()
    # A client that connects and hangs up before sending anything.
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.close()
    assert (await get(server.port, "/healthz"))[0] == 200


async def test_a_scraper_asking_for_openmetrics_gets_it(server: StatusServer) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{server.port}/metrics", headers={"Accept": accept}
        ) as response,
    ):
        body = await response.text()
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert "logferry_things_total 3.0" in body
    assert body.endswith("# EOF\n")
    _status, content_type, plain = await get(server.port, "/metrics")  # no Accept: as before
    assert content_type.startswith("text/plain; version=")
    assert "# EOF" not in plain
