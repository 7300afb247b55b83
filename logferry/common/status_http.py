"""The HTTP endpoint both daemons serve: /metrics (Prometheus), /healthz and /readyz.

Three GET routes answered from memory need no web framework: this is a minimal HTTP/1.1
server on ``asyncio.start_server`` (one request per connection, ``Connection: close``), so
the forwarder, which must stay small on every node, does not load aiohttp's server for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT

from logferry.common.logs import get_logger
from logferry.common.metrics import render_openmetrics

log = get_logger(__name__)
Check = Callable[[], tuple[bool, str]]

_HEAD_LIMIT = 16 * 1024
OPENMETRICS_TYPE = b"application/openmetrics-text"
_READ_TIMEOUT_S = 10.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class StatusServer:
    """Serves metrics and probes. ``live`` says the process works at all (a failing liveness
    probe restarts the pod); ``ready`` says it can take traffic now."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        *,
        live: Check,
        ready: Check,
        before_scrape: Callable[[], None] | None = None,
        exposition: Callable[[bytes, bool], Awaitable[bytes]] | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._registry = registry
        self._live, self._ready = live, ready
        self._before_scrape = before_scrape
        self._exposition = exposition
        """Turns the registry's own text (Prometheus format) into the body served, in
        OpenMetrics when the flag says so (the aggregator's supervisor merges its workers'
        metrics in); None serves the registry as it is."""
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, sock: socket.socket | None = None) -> None:
        """Bind and serve (on ``sock`` when given: a listening socket bound by a parent)."""
        if sock is not None:
            self._server = await asyncio.start_server(self._serve, sock=sock, limit=_HEAD_LIMIT)
        else:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._port, reuse_address=True, limit=_HEAD_LIMIT
            )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("http.listening", host=self._host, port=self.port)

    async def stop(self) -> None:
        """Stop serving. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            status, content_type, body = await self._respond(head)
            method = head.split(b" ", 1)[0]
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a probe that hung up or sent garbage: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _respond(self, head: bytes) -> tuple[int, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target not in (b"/metrics", b"/healthz", b"/readyz"):
            return 404, "text/plain", b"not found\n"
        if method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if target == b"/metrics":
            if self._before_scrape is not None:
                self._before_scrape()
            # A scraper that asks for OpenMetrics (Prometheus does, first) gets it.
            openmetrics = OPENMETRICS_TYPE in _header(head, b"accept")
            if self._exposition is not None:
                body = await self._exposition(generate_latest(self._registry), openmetrics)
            elif openmetrics:
                body = render_openmetrics(self._registry)
            else:
                body = generate_latest(self._registry)
            return 200, (OPENMETRICS_CONTENT if openmetrics else CONTENT_TYPE_LATEST), body
        ok, reason = (self._live if target == b"/healthz" else self._ready)()
        return (200 if ok else 503), "text/plain", ((reason or "ok") + "\n").encode()


def _header(head: bytes, name: bytes) -> bytes:
    """The value of header ``name`` (lowercase) in a request head, lowercased; b"" if absent."""
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip().lower()
    return b""
