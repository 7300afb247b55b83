"""REST calls to an Elasticsearch/OpenSearch store: JSON in and out over one aiohttp session,
handing over to the next node when one cannot be reached.

Used for everything but ``_bulk`` (templates, retention, status, ``verify``); nodes,
credentials and TLS are a :class:`~logferry.common.store_access.StoreAccess`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from logferry.common.errors import OutputError
from logferry.common.store_access import StoreAccess

__all__ = ["StoreClient", "StoreError", "open_store", "store_reason"]


class StoreError(OutputError):
    """A store call failed: unreachable, or an HTTP status the caller did not accept.
    ``status`` is 0 when no answer came; ``payload`` the decoded answer, if any."""

    def __init__(self, message: str, *, status: int = 0, payload: Any = None) -> None:
        super().__init__(message, retriable=status == 0 or status == 429 or status >= 500)
        self.status = status
        self.payload = payload

    @property
    def error_type(self) -> str:
        """The store's error type (``resource_already_exists_exception``), or ''."""
        error = self.payload.get("error") if isinstance(self.payload, dict) else None
        if isinstance(error, dict):
            root = (error.get("root_cause") or [error])[0]
            return str(root.get("type", "")) if isinstance(root, dict) else ""
        return ""


class StoreClient:
    """JSON REST calls over a session the caller owns (see :func:`open_store`)."""

    def __init__(
        self,
        urls: Collection[str],
        session: aiohttp.ClientSession,
        ssl: Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._urls = deque(url.rstrip("/") for url in urls)
        self._session = session
        self._ssl = ssl
        self._headers = {"Content-Type": "application/json", **(headers or {})}

    @property
    def url(self) -> str:
        """The node requests go to: the first URL, until it cannot be reached."""
        return self._urls[0]

    async def request(
        self, method: str, path: str, body: Any = None, *, accept: Collection[int] = ()
    ) -> Any:
        """The decoded JSON answer of a 2xx, or of a status in ``accept`` (then use
        :meth:`call` to see which); StoreError otherwise, with the store's reason."""
        _status, payload = await self.call(method, path, body, accept=accept)
        return payload

    async def call(
        self, method: str, path: str, body: Any = None, *, accept: Collection[int] = ()
    ) -> tuple[int, Any]:
        """``(status, decoded answer)``; see :meth:`request`."""
        data = None if body is None else orjson.dumps(body)
        for nodes_left in reversed(range(len(self._urls))):
            try:
                async with self._session.request(
                    method,
                    f"{self.url}{path}",
                    data=data,
                    headers=self._headers,
                    ssl=self._ssl,
                ) as response:
                    raw = await response.read()
                    status = response.status
                break
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if isinstance(exc, aiohttp.ClientConnectorError) and nodes_left:
                    self._urls.rotate(-1)  # never reached: that node goes last, try the next
                    continue
                raise StoreError(f"store {self.url}: {type(exc).__name__}: {exc}") from exc
        try:
            payload = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            payload = raw[:300].decode("utf-8", "replace")
        if 200 <= status < 300 or status in accept:
            return status, payload
        where = f"{method} {path.split('?')[0]}"
        raise StoreError(
            f"store {where}: {store_reason(status, payload)}", status=status, payload=payload
        )


def store_reason(status: int, payload: Any) -> str:
    """``HTTP <status>: <error type>: <reason>`` from a store's error answer."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        root = (error.get("root_cause") or [error])[0]
        return f"HTTP {status}: {root.get('type', '')}: {root.get('reason', '')}"
    return f"HTTP {status}: {str(error or payload)[:300]}"


@asynccontextmanager
async def open_store(access: StoreAccess, timeout_s: float = 60.0) -> AsyncIterator[StoreClient]:
    """A :class:`StoreClient` over a new session (auth, TLS, timeout), closed on leaving.
    The secret files and the CA bundle are read here (OutputError if they cannot be)."""
    headers, ssl = access.headers(), access.ssl_option()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        yield StoreClient(access.urls, session, ssl)
