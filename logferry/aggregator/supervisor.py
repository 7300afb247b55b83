"""The aggregator as N worker processes: one port, one /metrics, one set of probes per pod.

The supervisor does no record work. It holds the Forward port (``SO_REUSEPORT``; each worker
listens on it with a socket of its own, the kernel spreading connections over them) and
binds a status socket on 127.0.0.1 per worker, starts the workers (the same
command with ``LOGFERRY_WORKER=<i>/<n>``), restarts one that exits unasked (after a backoff;
the new one reopens that worker's spools, so what it acked is delivered), and serves the
pod's /metrics (its own and every worker's, labelled ``worker``), /healthz and /readyz (ready
when every worker is). SIGTERM is passed to every worker, which shuts down as a single
aggregator does; one still running after the deadline is killed (its spool is crash-safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from logferry.aggregator.config import AggregatorConfig
from logferry.aggregator.metrics import SupervisorMetrics
from logferry.aggregator.reload import aggregator_policy
from logferry.aggregator.worker_metrics import http_get, merge_expositions
from logferry.aggregator.workers import PARENT_ENV, SOCKETS_ENV, WORKER_ENV, port_socket
from logferry.common.logs import get_logger
from logferry.common.reload import ConfigReloader
from logferry.common.status_http import StatusServer

log = get_logger(__name__)

_BIND_RETRY_S = 15.0
_POLL_S = 0.5
_PROBE_TIMEOUT_S = 2.0
_SCRAPE_TIMEOUT_S = 5.0
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0
_STABLE_S = 60.0  # a worker that ran this long starts its backoff afresh
_KILL_MARGIN_S = 10.0


@dataclass(eq=False)
class _Worker:
    index: int
    http: socket.socket
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    started: float = 0.0
    backoff_s: float = _BACKOFF_FIRST_S

    @property
    def http_port(self) -> int:
        return int(self.http.getsockname()[1])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


async def bind_port(
    host: str, port: int, *, listen: bool, retry_s: float = _BIND_RETRY_S
) -> socket.socket:
    """:func:`port_socket`, retrying an address in use for ``retry_s``: a port may be held
    a moment longer by a process that is being killed."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return port_socket(host, port, listen=listen)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.1)  # a retry interval: the old holder is being killed


class Supervisor:
    """Runs ``count`` workers of ``command`` (this very daemon) until ``stop`` is set."""

    def __init__(
        self,
        config: AggregatorConfig,
        count: int,
        command: list[str],
        config_path: Path | None = None,
    ) -> None:
        """``config_path``: reloaded here for the supervisor's own log (every worker reloads
        it for itself); None: no reloads."""
        self.config = config
        self.count = count
        self.command = command
        self.metrics = SupervisorMetrics()
        self.metrics.workers.set(count)
        self.workers: list[_Worker] = []
        self._input: socket.socket | None = None
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.reloader = (
            ConfigReloader(
                config_path,
                AggregatorConfig,
                config,
                aggregator_policy(None, None),
                self.metrics.registry,
                watch_interval_s=lambda c: c.reload.watch_interval_s,
            )
            if config_path is not None
            else None
        )
        self.status = StatusServer(
            config.http.listen_host,
            config.http.listen_port,
            self.metrics.registry,
            live=lambda: (True, "ok"),
            ready=self._ready,
            exposition=self._exposition,
        )

    async def run(self, stop: asyncio.Event) -> int:
        """Supervise until ``stop`` is set; 0 when every worker stopped cleanly."""
        settings = self.config.input
        try:
            # Held, never listened on: the workers listen on the port with sockets of their own.
            self._input = await bind_port(settings.listen_host, settings.listen_port, listen=False)
            for index in range(self.count):
                http = await bind_port("127.0.0.1", 0, listen=True)
                self.workers.append(_Worker(index, http))
            for worker in self.workers:
                await self._spawn(worker)
                self._tasks.append(asyncio.create_task(self._watch(worker, stop)))
            self._tasks.append(asyncio.create_task(self._poll_ready(stop)))
            if self.reloader is not None:
                self._tasks.append(asyncio.create_task(self.reloader.run(stop)))
            await self.status.start()
            log.info(
                "aggregator.supervising",
                workers=self.count,
                pids=[w.proc.pid for w in self.workers if w.proc is not None],
                input_port=self._input.getsockname()[1],
                http_port=self.status.port,
            )
            await stop.wait()
        finally:
            code = await self._shutdown()
        return code

    def request_reload(self) -> None:
        """SIGHUP: every worker reloads its config, and so does the supervisor (its log)."""
        for worker in self.workers:
            if worker.running and worker.proc is not None:
                worker.proc.send_signal(signal.SIGHUP)
        if self.reloader is not None:
            self.reloader.request()

    async def _spawn(self, worker: _Worker) -> None:
        assert self._input is not None
        port, fds = self._input.getsockname()[1], (worker.http.fileno(),)
        env = {
            **os.environ,
            WORKER_ENV: f"{worker.index}/{self.count}",
            SOCKETS_ENV: f"{port},{fds[0]}",
            PARENT_ENV: str(os.getpid()),
        }
        # A session of its own: a terminal's Ctrl-C reaches the supervisor only, which then
        # stops each worker once (a second signal would make a worker exit at once).
        worker.proc = await asyncio.create_subprocess_exec(
            *self.command, env=env, pass_fds=fds, start_new_session=True
        )
        worker.started = time.monotonic()
        worker.ready = False
        self._count_running()

    async def _watch(self, worker: _Worker, stop: asyncio.Event) -> None:
        """Restart ``worker`` whenever it exits unasked, with a growing backoff."""
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            worker.ready = False
            self._count_running()
            if self._stopping or stop.is_set():
                return
            ran_s = time.monotonic() - worker.started
            if ran_s >= _STABLE_S:
                worker.backoff_s = _BACKOFF_FIRST_S
            self.metrics.restarts.labels(str(worker.index)).inc()
            log.error(
                "aggregator.worker_exited",
                worker=worker.index,
                exit_code=code,
                signal=signal.Signals(-code).name if code < 0 else None,
                ran_s=round(ran_s, 3),
                restart_in_s=worker.backoff_s,
                why="restarting it: it reopens its own spools, so what it acked is delivered",
            )
            while True:  # until it starts again (or we stop)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), worker.backoff_s)
                if self._stopping or stop.is_set():
                    return
                worker.backoff_s = min(_BACKOFF_MAX_S, worker.backoff_s * 2)
                try:
                    await self._spawn(worker)
                    break
                except OSError as exc:  # no process at all (fork failed, out of memory)
                    log.error(
                        "aggregator.worker_start_failed",
                        worker=worker.index,
                        error=str(exc),
                        retry_in_s=worker.backoff_s,
                    )

    async def _poll_ready(self, stop: asyncio.Event) -> None:
        """Keep each worker's readiness current for /readyz (answered from memory)."""
        while not stop.is_set():
            await asyncio.gather(*(self._probe(w) for w in self.workers))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _POLL_S)

    async def _probe(self, worker: _Worker) -> None:
        if not worker.running:
            worker.ready = False
            return
        try:
            status, _ = await http_get(worker.http_port, "/readyz", _PROBE_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            status = 0
        worker.ready = status == 200

    def _ready(self) -> tuple[bool, str]:
        if self._stopping:
            return False, "stopping"
        waiting = [str(w.index) for w in self.workers if not w.ready]
        if not self.workers or waiting:
            return False, "workers not ready: " + ",".join(waiting)
        return True, "ok"

    async def _exposition(self, own: bytes, openmetrics: bool) -> bytes:
        async def scrape(worker: _Worker) -> tuple[str, bytes] | None:
            if not worker.running:
                return None
            try:
                status, body = await http_get(worker.http_port, "/metrics", _SCRAPE_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
                return None  # a worker restarting: logferry_aggregator_workers_running says so
            return (str(worker.index), body) if status == 200 else None

        scraped = await asyncio.gather(*(scrape(w) for w in self.workers))
        parts: list[tuple[str | None, bytes]] = [(None, own)]
        parts.extend(part for part in scraped if part is not None)
        return merge_expositions(parts, openmetrics=openmetrics)

    def _count_running(self) -> None:
        self.metrics.running.set(sum(1 for w in self.workers if w.running))

    async def _shutdown(self) -> int:
        """SIGTERM every worker, wait out the deadline, kill the rest; the exit code."""
        self._stopping = True
        log.info("aggregator.stopping_workers", workers=len(self.workers))
        for worker in self.workers:
            if worker.running and worker.proc is not None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = self.config.shutdown_deadline_s + _KILL_MARGIN_S
        waits = [w.proc.wait() for w in self.workers if w.proc is not None]
        codes: list[int] = []
        try:
            codes = list(await asyncio.wait_for(asyncio.gather(*waits), deadline))
        except TimeoutError:
            for worker in self.workers:
                if worker.running and worker.proc is not None:
                    log.error("aggregator.worker_killed", worker=worker.index, after_s=deadline)
                    worker.proc.kill()
                    await worker.proc.wait()
            codes = [1]
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.status.stop()
        for worker in self.workers:
            worker.http.close()
        if self._input is not None:
            self._input.close()
        self._count_running()
        code = 0 if all(c == 0 for c in codes) else 1
        log.info("aggregator.stopped", workers=len(self.workers), exit_code=code)
        return code
