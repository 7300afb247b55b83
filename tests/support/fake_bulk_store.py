"""A fake OpenSearch ``_bulk`` endpoint whose answers a test decides, request by request and
item by item."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class FakeStore:
    """A ``_bulk`` endpoint on 127.0.0.1 whose answers a test decides.

    ``respond(request_no, docs)`` gets the request's (action, source) objects and returns
    either an int (a whole-request HTTP status) or a list of per-item (status, error type).
    """

    respond: Callable[[int, list[tuple[dict[str, Any], dict[str, Any]]]], Any]
    requests: list[list[str]] = field(default_factory=list)
    """The ``_id``s of every request received, in order."""
    authorizations: list[str | None] = field(default_factory=list)
    """The ``Authorization`` header of every request received, in order."""
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
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
