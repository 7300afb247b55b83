"""The pods of this node, from the API server: list, then watch, into a cache keyed by pod uid.

Only this node's pods (``fieldSelector=spec.nodeName=<node>``): a node holds a few hundred
at most, so the cache is small and bounded (``max_pods``). The watch asks for bookmarks and
resumes from the last resource version after a cut; a ``410 Gone`` (the version is too old)
means a fresh list. Failures back off and never stop the forwarder: records go on with the
file name's metadata, flagged incomplete, until the cache knows the pod.

A deleted pod stays in the cache for ``deleted_ttl_s``: its files are still being drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from logferry.common.backoff import backoff_delay
from logferry.common.events import first_set
from logferry.common.logs import get_logger

log = get_logger(__name__)

__all__ = ["PodCache", "PodInfo", "PodWatcher", "WatchGone", "namespace_info", "pod_info"]

WATCH_TIMEOUT_S = 300


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What records may carry about their pod."""

    uid: str
    namespace: str
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    images: dict[str, tuple[str, str]]
    """Container name -> (image, image id)."""


def namespace_info(obj: dict[str, Any]) -> PodInfo | None:
    """A namespace object -> :class:`PodInfo` keyed (``uid``) by its name: only its labels
    are used."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str):
        return None
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    return PodInfo(name, name, name, labels, {}, {})


def pod_info(obj: dict[str, Any]) -> PodInfo | None:
    """A pod object of the API -> :class:`PodInfo` (None if it has no uid)."""
    meta = obj.get("metadata") or {}
    uid = meta.get("uid")
    if not isinstance(uid, str):
        return None
    images: dict[str, tuple[str, str]] = {}
    status = obj.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for item in status.get(key) or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                images[item["name"]] = (str(item.get("image", "")), str(item.get("imageID", "")))
    return PodInfo(
        uid,
        str(meta.get("namespace", "")),
        str(meta.get("name", "")),
        {str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
        images,
    )


@dataclass(slots=True)
class PodCache:
    """Pods by uid; deleted ones kept a while (their files are still drained)."""

    max_pods: int = 1000
    deleted_ttl_s: float = 600.0
    clock: Callable[[], float] = time.monotonic
    _pods: dict[str, PodInfo] = field(default_factory=dict)
    _deleted: dict[str, float] = field(default_factory=dict)
    evicted: int = 0

    def get(self, uid: str) -> PodInfo | None:
        return self._pods.get(uid)

    def __len__(self) -> int:
        return len(self._pods)

    def put(self, info: PodInfo) -> None:
        self._deleted.pop(info.uid, None)
        self._pods[info.uid] = info
        self._bound()

    def delete(self, uid: str) -> None:
        if uid in self._pods:
            self._deleted[uid] = self.clock()
        self._expire()

    def replace(self, pods: list[PodInfo]) -> None:
        """A fresh list: pods missing from it count as deleted now."""
        listed = {p.uid for p in pods}
        for uid in list(self._pods):
            if uid not in listed and uid not in self._deleted:
                self._deleted[uid] = self.clock()
        for info in pods:
            self.put(info)
        self._expire()

    def _expire(self) -> None:
        now = self.clock()
        for uid, at in list(self._deleted.items()):
            if now - at > self.deleted_ttl_s:
                self._deleted.pop(uid)
                self._pods.pop(uid, None)

    def _bound(self) -> None:
        while len(self._pods) > self.max_pods:
            # Deleted pods go first (oldest deletion first), then the oldest entries.
            victim = min(self._deleted, key=self._deleted.__getitem__, default=None)
            if victim is None:
                victim = next(iter(self._pods))
                log.warning(
                    "kubernetes.pod_cache_full",
                    max_pods=self.max_pods,
                    evicted=self._pods[victim].name,
                    effect="its new files get the file name's metadata only "
                    "(logferry_records_metadata_incomplete_total); raise kubernetes.max_pods",
                )
            self._deleted.pop(victim, None)
            self._pods.pop(victim, None)
            self.evicted += 1


class WatchGone(Exception):
    """The watch's resource version is too old (410): list again."""


@dataclass(slots=True)
class ApiAccess:
    """Where the API server is and how to authenticate."""

    url: str
    token_file: Path | None = None
    ca_file: Path | None = None

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token_file is not None:
            try:  # read per request: projected tokens rotate
                token = self.token_file.read_text().strip()
            except OSError:
                token = ""
            if token:
                headers["Authorization"] = f"Bearer {token}"
        return headers

    def ssl(self) -> ssl.SSLContext | bool:
        if not self.url.startswith("https://"):
            return False
        if self.ca_file is None:
            return True
        return ssl.create_default_context(cafile=str(self.ca_file))


class PodWatcher:
    """Keeps a :class:`PodCache` of this node's pods current until stopped (or, with
    ``resource="namespaces"``, of the cluster's namespaces, keyed by name)."""

    def __init__(
        self,
        access: ApiAccess,
        node: str,
        cache: PodCache,
        *,
        backoff_max_s: float = 30.0,
        on_change: Callable[[], None] = lambda: None,
        resource: str = "pods",
    ) -> None:
        self.access = access
        self.node = node
        self.cache = cache
        self.resource = resource
        self._parse = namespace_info if resource == "namespaces" else pod_info
        self.backoff_max_s = backoff_max_s
        self.on_change = on_change
        self.synced = asyncio.Event()
        """Set once the first list is in the cache."""
        self.relists = 0
        self.failures = 0
        self._version = ""

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=WATCH_TIMEOUT_S + 30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                try:
                    if not self._version:
                        await self._list(session)
                    if not await self._watch_until(session, stop):
                        return
                    attempt = 0
                except WatchGone:
                    self._version = ""
                    continue
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                    attempt += 1
                    self.failures += 1
                    if attempt == 1 or attempt % 10 == 0:
                        log.warning(
                            "kubernetes.watch_failed",
                            error=f"{type(exc).__name__}: {exc}",
                            attempt=attempt,
                            meanwhile="records go on with the file name's metadata",
                        )
                    await first_set((stop,), backoff_delay(attempt, 0.2, self.backoff_max_s))

    async def _watch_until(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> bool:
        """One watch, cut short by ``stop`` (a watch waits minutes for its next event);
        False if stopped."""
        watching = asyncio.ensure_future(self._watch(session, stop))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({watching, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not watching.done():
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            return False
        watching.result()  # its exception, if any
        return True

    def _pods_path(self) -> str:
        if self.resource == "namespaces":
            return "/api/v1/namespaces?labelSelector="
        selector = quote(f"spec.nodeName={self.node}", safe="")
        return f"/api/v1/pods?fieldSelector={selector}"

    async def _list(self, session: aiohttp.ClientSession) -> None:
        pods: list[PodInfo] = []
        token = ""
        while True:
            path = self._pods_path() + "&limit=500" + (f"&continue={quote(token)}" if token else "")
            body = await self._get_json(session, path)
            for item in body.get("items") or []:
                info = self._parse(item)
                if info is not None:
                    pods.append(info)
            meta = body.get("metadata") or {}
            token = str(meta.get("continue") or "")
            if not token:
                self._version = str(meta.get("resourceVersion") or "")
                break
        self.cache.replace(pods)
        self.relists += 1
        self.synced.set()
        self.on_change()
        log.info(
            "kubernetes.listed", resource=self.resource, items=len(pods), version=self._version
        )

    @contextlib.asynccontextmanager
    async def _get(
        self, session: aiohttp.ClientSession, path: str, what: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET ``path`` from the API server; 410 Gone is :class:`WatchGone`, any other
        status than 200 an error naming ``what`` (list or watch)."""
        async with session.get(
            self.access.url.rstrip("/") + path,
            headers=self.access.headers(),
            ssl=self.access.ssl(),
        ) as response:
            if response.status == 410:
                raise WatchGone()
            if response.status != 200:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message=f"{what} failed"
                )
            yield response

    async def _get_json(self, session: aiohttp.ClientSession, path: str) -> dict[str, Any]:
        async with self._get(session, path, "list") as response:
            body = await response.json(content_type=None)
            if not isinstance(body, dict):
                raise ValueError("the pod list is not an object")
            return body

    async def _watch(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        path = (
            self._pods_path()
            + f"&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_TIMEOUT_S}"
            + f"&resourceVersion={quote(self._version)}"
        )
        async with self._get(session, path, "watch") as response:
            async for event in _events(response, stop):
                self._apply(event)

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise WatchGone()
            raise ValueError(f"watch error: {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if isinstance(version, str) and version:
            self._version = version
        if kind == "BOOKMARK":
            return
        info = self._parse(obj)
        if info is None:
            return
        if kind == "DELETED":
            self.cache.delete(info.uid)
        else:
            self.cache.put(info)
        self.on_change()


async def _events(
    response: aiohttp.ClientResponse, stop: asyncio.Event
) -> AsyncIterator[dict[str, Any]]:
    """The watch stream's events, one JSON object per line."""
    while not stop.is_set():
        line = await response.content.readline()
        if not line:
            return  # the server ended the watch (timeoutSeconds): watch again
        line = line.strip()
        if line:
            event = json.loads(line)
            if isinstance(event, dict):
                yield event
