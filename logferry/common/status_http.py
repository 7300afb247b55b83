"""The HTTP endpoint both daemons serve: /metrics (Prometheus), /healthz and /readyz."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from logferry.common.logs import get_logger

log = get_logger(__name__)
Check = Callable[[], tuple[bool, str]]


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
    ) -> None:
        self._host, self._port = host, port
        self._registry = registry
        self._live, self._ready = live, ready
        self._before_scrape = before_scrape
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        """Bind and serve."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._probe(self._live))
        app.router.add_get("/readyz", self._probe(self._ready))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("http.listening", host=self._host, port=self.port)

    async def stop(self) -> None:
        """Stop serving. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        if self._before_scrape is not None:
            self._before_scrape()
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _probe(self, check: Check) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(_request: web.Request) -> web.StreamResponse:
            ok, reason = check()
            return web.Response(status=200 if ok else 503, text=(reason or "ok") + "\n")

        return handler
