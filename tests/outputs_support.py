"""Helpers shared by the output tests: documents, spools, a drain runner, a fake store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from logferry.aggregator.documents import action_line, render_fragment
from logferry.aggregator.outputs.base import Output
from logferry.aggregator.outputs.pump import drain
from logferry.common.spool import Spool

DEADLINE_S = 30.0


def make_docs(
    index: str, count: int, *, start: int = 0, **fields: Any
) -> list[tuple[bytes, bytes]]:
    """(action, source) pairs with ids ``<index>-<n>`` and a ``n`` field."""
    return [
        (action_line(index, f"{index}-{n}"), orjson.dumps({"log": f"line {n}", "n": n, **fields}))
        for n in range(start, start + count)
    ]


async def open_spool(directory: Path) -> Spool:
    """A small real spool."""
    return await Spool.open(directory, max_bytes=64 << 20, segment_max_bytes=1 << 20)


async def fill(spool: Spool, docs: list[tuple[bytes, bytes]], per_fragment: int = 10) -> int:
    """Append ``docs`` as fragments of ``per_fragment`` documents; return the fragment count."""
    fragments = [
        render_fragment(docs[i : i + per_fragment]) for i in range(0, len(docs), per_fragment)
    ]
    await spool.append(fragments)
    return len(fragments)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    """Poll a condition until it holds; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


async def drain_until(
    output: Output,
    tenant: str,
    spool: Spool,
    condition: Callable[[], bool],
    *,
    deadline_s: float = 5.0,
    timeout_s: float = DEADLINE_S,
) -> None:
    """Drain ``spool`` into ``output`` until ``condition`` holds, then stop and wait."""
    stop = asyncio.Event()
    task = asyncio.create_task(drain(output, tenant, spool, stop, deadline_s))
    try:
        await wait_until(lambda: condition() or task.done(), timeout_s)
    finally:
        stop.set()
        await task


@dataclass
class FakeStore:
    """A ``_bulk`` endpoint on 127.0.0.1 whose answers a test decides.

    ``respond(request_no, docs)`` gets the request's (action, source) objects and returns
    either an int (a whole-request HTTP status) or a list of per-item (status, error type).
    """

    respond: Callable[[int, list[tuple[dict[str, Any], dict[str, Any]]]], Any]
    requests: list[list[str]] = field(default_factory=list)
    """The ``_id``s of every request received, in order."""
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp decompresses the gzip body
        lines = [orjson.loads(line) for line in body.split(b"\n") if line]
        docs = [(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]
        self.requests.append([action["create"]["_id"] for action, _ in docs])
        answer = self.respond(len(self.requests) - 1, docs)
        if isinstance(answer, int):
            return web.Response(status=answer, text="whole request refused")
        items = []
        for (action, _), (status, kind) in zip(docs, answer, strict=True):
            item: dict[str, Any] = {"_index": action["create"]["_index"], "status": status}
            if kind:
                item["error"] = {"type": kind, "reason": f"fake {kind}"}
            items.append({"create": item})
        errors = any(status >= 300 for status, _ in answer)
        return web.json_response({"took": 1, "errors": errors, "items": items})


@asynccontextmanager
async def fake_store(
    respond: Callable[[int, list[tuple[dict[str, Any], dict[str, Any]]]], Any],
) -> AsyncIterator[FakeStore]:
    """Serve a :class:`FakeStore` for the duration of the block."""
    store = FakeStore(respond)
    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/_bulk", store.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    store.url = f"http://127.0.0.1:{port}"
    try:
        yield store
    finally:
        await runner.cleanup()


def all_created(_: int, docs: list[Any]) -> list[tuple[int, str]]:
    """A store that creates everything."""
    return [(201, "")] * len(docs)
