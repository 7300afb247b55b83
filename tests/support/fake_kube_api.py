"""A small API server on 127.0.0.1 that speaks the pods list/watch wire protocol.

No real API server runs on these machines. This one answers ``GET /api/v1/pods`` with
``fieldSelector=spec.nodeName=...`` as a list (``limit``/``continue`` paging, a resource
version) or, with ``watch=1``, as a chunked stream of JSON events (one per line: ADDED,
MODIFIED, DELETED, BOOKMARK, ERROR). A test adds and changes pods, cuts a watch in the
middle, makes the next watch answer 410 Gone, or takes the server down.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web


def pod(
    namespace: str,
    name: str,
    uid: str,
    node: str,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    containers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod object as the API server returns it (the fields the forwarder reads)."""
    return {
        "metadata": {
            "namespace": namespace,
            "name": name,
            "uid": uid,
            "labels": labels or {},
            "annotations": annotations or {},
        },
        "spec": {"nodeName": node},
        "status": {
            "containerStatuses": [
                {"name": c, "image": image, "imageID": f"{image}@sha256:{'a' * 64}"}
                for c, image in (containers or {}).items()
            ]
        },
    }


class FakeKubeApi:
    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.namespace_watchers: list[asyncio.Queue[dict[str, Any] | None]] = []
        self.version = 100
        self.watchers: list[asyncio.Queue[dict[str, Any] | None]] = []
        self.gone_next_watch = False
        self.lists = 0
        self.watches = 0
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/pods", self._pods)
        app.router.add_get("/api/v1/namespaces", self._namespaces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self.cut_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def upsert(self, obj: dict[str, Any]) -> None:
        uid = obj["metadata"]["uid"]
        kind = "MODIFIED" if uid in self.pods else "ADDED"
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.pods[uid] = obj
        self._send({"type": kind, "object": obj})

    def upsert_namespace(self, name: str, labels: dict[str, str]) -> None:
        """Add or change a namespace (its watchers see it)."""
        kind = "MODIFIED" if name in self.namespaces else "ADDED"
        self.version += 1
        obj = {"metadata": {"name": name, "labels": labels, "resourceVersion": str(self.version)}}
        self.namespaces[name] = obj
        for queue in self.namespace_watchers:
            queue.put_nowait({"type": kind, "object": obj})

    async def _namespaces(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path_qs)
        if request.query.get("watch") != "1":
            meta = {"resourceVersion": str(self.version)}
            items = list(self.namespaces.values())
            return web.json_response({"kind": "NamespaceList", "metadata": meta, "items": items})
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.namespace_watchers.append(queue)
        try:
            while (event := await queue.get()) is not None:
                await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.namespace_watchers.remove(queue)
        return response

    def delete(self, uid: str) -> None:
        obj = self.pods.pop(uid)
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self._send({"type": "DELETED", "object": obj})

    def bookmark(self) -> None:
        self.version += 1
        self._send(
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(self.version)}}}
        )

    def cut_watches(self) -> None:
        """End every open watch stream now (a proxy restart, a load balancer timeout)."""
        for queue in [*self.watchers, *self.namespace_watchers]:
            queue.put_nowait(None)

    def _send(self, event: dict[str, Any]) -> None:
        for queue in self.watchers:
            queue.put_nowait(event)

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path_qs)
        node = request.query.get("fieldSelector", "").removeprefix("spec.nodeName=")
        mine = [p for p in self.pods.values() if p["spec"]["nodeName"] == node]
        if request.query.get("watch") != "1":
            self.lists += 1
            start = int(request.query.get("continue") or 0)
            limit = int(request.query.get("limit") or 500)
            page = mine[start : start + limit]
            more = start + limit < len(mine)
            meta: dict[str, Any] = {"resourceVersion": str(self.version)}
            if more:
                meta["continue"] = str(start + limit)
            return web.json_response({"kind": "PodList", "metadata": meta, "items": page})
        self.watches += 1
        if self.gone_next_watch:
            self.gone_next_watch = False
            return web.json_response(
                {"kind": "Status", "code": 410, "message": "too old resource version"},
                status=410,
            )
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.watchers.append(queue)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    break
                obj = event["object"]
                node_of = (obj.get("spec") or {}).get("nodeName")
                if event["type"] != "BOOKMARK" and node_of != node:
                    continue
                await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.remove(queue)
        return response
