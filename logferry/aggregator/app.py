"""The aggregator daemon: wiring and lifecycle.

Start: metrics -> output -> tenant spools (existing backlog starts draining) -> forward input
-> HTTP status. Stop (SIGTERM): stop accepting -> finish in-flight chunks and ack them ->
outputs flush within the deadline -> close spools (what is left is delivered after restart)
-> close clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from logferry.aggregator.allowance import CpuAllowance
from logferry.aggregator.config import AggregatorConfig
from logferry.aggregator.dlq import DeadLetterQueue
from logferry.aggregator.ingest import Ingest
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs import BulkOutputSettings, build_output
from logferry.aggregator.outputs.base import Output
from logferry.aggregator.outputs.bulk_output import BulkOutput
from logferry.aggregator.outputs.pump import drain
from logferry.aggregator.pipeline_watch import PipelineRegistry, PipelineWatcher
from logferry.aggregator.reload import Prepared, aggregator_policy
from logferry.aggregator.render import TimeWindow
from logferry.aggregator.routing import TenantResolver
from logferry.aggregator.server import ForwardServer
from logferry.aggregator.spools import TenantSpools
from logferry.aggregator.workers import (
    WorkerSlot,
    orphaned_spool_dirs,
    worker_input_settings,
    worker_spool_dir,
    worker_spool_settings,
)
from logferry.common.disk_full import DiskStalls
from logferry.common.errors import OutputError
from logferry.common.logs import get_logger
from logferry.common.naming import IndexNamer
from logferry.common.reload import ConfigReloader
from logferry.common.spool import Spool
from logferry.common.status_http import StatusServer
from logferry.store.checks import check_indices
from logferry.store.client import open_store
from logferry.store.retention import Janitor

log = get_logger(__name__)


class Aggregator:
    """One aggregator process. ``run`` returns when ``stop`` is set and shutdown is done."""

    def __init__(
        self,
        config: AggregatorConfig,
        slot: WorkerSlot | None = None,
        config_path: Path | None = None,
    ) -> None:
        """``config_path``: the file ``config`` came from, reloaded on SIGHUP and when it (or
        a key or certificate it names) changes; None: no reloads."""
        self.config = config
        self.slot = slot
        """Which worker of a supervised aggregator this is (None: the only process)."""
        self.metrics = AggregatorMetrics()
        self.hostname = socket.gethostname()
        self.instance = f"{self.hostname}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        stalls = DiskStalls(self.metrics.registry)
        spool_settings = config.spool if slot is None else worker_spool_settings(config.spool, slot)
        self.spools = TenantSpools(spool_settings, stalls=stalls)
        self.metrics.spool_capacity.labels("volume").set(spool_settings.max_bytes)
        self.metrics.spool_capacity.labels("tenant").set(spool_settings.tenant_max_bytes)
        # Spools of workers that no longer exist (the count shrank): drained, never written.
        self.orphans = [
            TenantSpools(spool_settings.model_copy(update={"directory": path}), stalls=stalls)
            for path in orphaned_spool_dirs(config.spool.directory, slot)
        ]
        self.dlq = DeadLetterQueue.from_settings(config.dlq)
        self.output: Output = build_output(
            config.output,
            self.metrics,
            self.dlq,
            prefix=config.routing.index_prefix,
            indices=config.indices,
        )
        self.pipelines = PipelineRegistry()
        self.pipeline_watcher: PipelineWatcher | None = None
        if config.pipelines is not None:
            status_file = config.pipelines.status_file or (
                Path(config.spool.directory).parent / "pipelines-status.json"
            )
            if slot is not None and slot.index > 0:  # worker 0 writes the pod's status file
                status_file = worker_spool_dir(config.spool.directory, slot.index) / (
                    "pipelines-status.json"
                )
            self.pipeline_watcher = PipelineWatcher(
                config.pipelines,
                self.pipelines,
                status_file=status_file,
                on_applied=self._pipelines_applied,
                samples_for=lambda tenant: self.ingest.recent_records(tenant),
            )
            # The hash of each pipeline in force, which the operator reads to say Applied.
            self.metrics.registry.register(self.pipeline_watcher)
        routing = config.routing
        self.namer = IndexNamer(
            routing.index_prefix, config.indices.period, config.indices.periods()
        )
        allowed = routing.allowed_namespaces
        self.resolver = TenantResolver(
            routing.default_tenant,
            max_tenants=routing.max_tenants,
            allowed=frozenset(allowed) if allowed is not None else None,
        )
        pipelines = config.pipelines
        self.ingest = Ingest(
            self.spools,
            self.metrics,
            namer=self.namer,
            default_tenant=routing.default_tenant,
            instance=self.instance,
            pipelines=self.pipelines if pipelines is not None else None,
            pipeline_budget_s=pipelines.batch_budget_s if pipelines else 0.5,
            account_discarded=pipelines.account_discarded if pipelines else True,
            dlq=self.dlq,
            divert_stuck_after_s=config.spool.divert_stuck_after_s,
            window=TimeWindow(routing.max_event_age_s, routing.max_event_ahead_s),
            resolver=self.resolver,
            allowance=(
                CpuAllowance(pipelines.cpu_allowance_s_per_s, pipelines.cpu_burst_s)
                if pipelines is not None
                else None
            ),
            on_bypass=self._bypass_changed,
        )
        inputs = config.input if slot is None else worker_input_settings(config.input, slot)
        self.server = ForwardServer(inputs, self.ingest, self.metrics, hostname=self.hostname)
        self.status = StatusServer(
            config.http.listen_host,
            config.http.listen_port,
            self.metrics.registry,
            live=self._live,
            ready=self._ready,
            before_scrape=self._update_gauges,
        )
        self.reloader = (
            ConfigReloader(
                config_path,
                AggregatorConfig,
                config,
                aggregator_policy(slot, self._apply),
                self.metrics.registry,
                watch_interval_s=lambda c: c.reload.watch_interval_s,
            )
            if config_path is not None
            else None
        )
        self._reload_task: asyncio.Task[None] | None = None
        self._pipelines_stop = asyncio.Event()
        self._pipeline_task: asyncio.Task[None] | None = None
        self._janitor_task: asyncio.Task[None] | None = None
        self._drain_stop = asyncio.Event()
        self._drains: set[asyncio.Task[None]] = set()
        self._accepting = False
        self._failure: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._shut_down = False

    @property
    def _leader(self) -> bool:
        """The process that does what is done once per aggregator (worker 0, or the only one)."""
        return self.slot is None or self.slot.index == 0

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until ``stop`` is set (or a task fails); returns the exit code."""
        self._stop = stop
        started = time.monotonic()
        try:
            await self.output.start()
            self.spools.on_new_tenant(self._start_drain)
            await self.spools.start()
            for orphan in self.orphans:
                orphan.on_new_tenant(self._start_drain)
                await orphan.start()
                log.warning(
                    "aggregator.adopted_worker_spools",
                    directory=str(orphan.settings.directory),
                    tenants=len(orphan.spools),
                    why="a worker of a larger worker count left these; drained from here",
                )
            # Tenants with a spool on the volume count against routing.max_tenants.
            self.resolver.admit_existing(self.spools.spools)
            if self.pipeline_watcher is not None:
                # Pipelines in force before the first record is accepted, not just after.
                await asyncio.to_thread(self.pipeline_watcher.reload)
            slot = self.slot
            await self.server.start(
                slot.input_socket(self.config.input.listen_host) if slot else None
            )
            await self.status.start(slot.http_socket() if slot else None)
            if self.pipeline_watcher is not None:
                self._pipeline_task = asyncio.create_task(
                    self.pipeline_watcher.run(self._pipelines_stop), name="pipelines"
                )
            self._janitor_task = self._start_janitor()
            if self.reloader is not None:
                self._reload_task = asyncio.create_task(
                    self.reloader.run(self._pipelines_stop), name="reload"
                )
            self._accepting = True
            log.info(
                "aggregator.started",
                instance=self.instance,
                worker=f"{slot.index}/{slot.count}" if slot else None,
                input_port=self.server.port,
                http_port=self.status.port,
                tenants_with_backlog=len(self.spools.spools),
                startup_s=round(time.monotonic() - started, 3),
            )
            await stop.wait()
        finally:
            await self.shutdown()
        return 1 if self._failure is not None else 0

    def _start_janitor(self) -> asyncio.Task[None] | None:
        """The retention janitor, when the store is ours to clean (see ``indices``)."""
        indices = self.config.indices
        check_indices(indices, self.spools.spools)
        output = self.config.output
        if not self._leader:
            return None  # the retention janitor runs once per aggregator, in worker 0
        if not isinstance(output, BulkOutputSettings) or indices.lifecycle != "janitor":
            return None
        if not (indices.retention_days or any(t.retention_days for t in indices.tenants.values())):
            return None
        return asyncio.create_task(self._run_janitor(output), name="janitor")

    async def _run_janitor(self, output: BulkOutputSettings) -> None:
        try:
            async with open_store(output, output.request_timeout_s) as client:
                janitor = Janitor(
                    client,
                    self.namer,
                    self.config.indices,
                    holder=self.instance,
                    deleted=self.metrics.indices_deleted,
                    runs=self.metrics.janitor_runs,
                )
                await janitor.run(self._pipelines_stop)
        except OutputError as exc:  # the credentials files: the bulk output says so too
            log.error("store.janitor_not_started", error=str(exc))

    def request_reload(self) -> None:
        """SIGHUP: read the config file again and apply what can change live."""
        if self.reloader is not None:
            self.reloader.request()

    def _apply(self, prepared: Prepared) -> None:
        self.config = prepared.config
        self.server.apply(prepared.input, prepared.credentials)
        if prepared.store is not None and isinstance(self.output, BulkOutput):
            self.output.use_access(*prepared.store)
        if prepared.store is not None and self._janitor_task is not None:
            # Its session carries the credentials it was opened with: open a new one. A
            # round cut short is done again (deleting an expired index twice is a no-op).
            self._janitor_task.cancel()
            self._janitor_task = self._start_janitor()

    def _bypass_changed(self, tenant: str, bypassed: bool) -> None:
        if self.pipeline_watcher is not None:
            self.pipeline_watcher.note_bypass(tenant, bypassed)

    def _pipelines_applied(self, states: dict[str, Any]) -> None:
        counts: dict[tuple[str, str], int] = {}
        for key, state in states.items():
            tenant = key.split("/", 1)[0]
            counts[(tenant, state.state)] = counts.get((tenant, state.state), 0) + 1
            if state.state == "Rejected":
                self.metrics.pipeline_rejections.labels(tenant).inc()
        self.metrics.pipeline_states.clear()
        for (tenant, status), count in counts.items():
            self.metrics.pipeline_states.labels(tenant, status).set(count)

    async def shutdown(self) -> None:
        """The shutdown sequence (safe to call twice)."""
        if self._shut_down:
            return
        self._shut_down = True
        deadline = self.config.shutdown_deadline_s
        began = time.monotonic()
        self._accepting = False
        log.info("aggregator.stopping", deadline_s=deadline)
        self._pipelines_stop.set()
        for task in (self._pipeline_task, self._janitor_task, self._reload_task):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        await self.server.stop_accepting()
        await self.server.drain(deadline_s=deadline / 2)
        self._drain_stop.set()
        remaining = max(1.0, deadline - (time.monotonic() - began))
        if self._drains:
            _done, pending = await asyncio.wait(self._drains, timeout=remaining)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("aggregator.output_cut", tenants=len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        backlog = {t: s.records_pending for t, s in self.spools.spools.items() if s.records_pending}
        await self.spools.close()
        for orphan in self.orphans:
            await orphan.close()
        await self.output.close()
        self.dlq.close()
        await self.status.stop()
        log.info(
            "aggregator.stopped",
            took_s=round(time.monotonic() - began, 3),
            left_in_spool=sum(backlog.values()),
        )

    async def _start_drain(self, tenant: str, spool: Spool) -> None:
        if spool.quarantined_bytes:
            self.metrics.spool_quarantined.inc(spool.quarantined_bytes)
        task = asyncio.create_task(
            drain(
                self.output, tenant, spool, self._drain_stop, self.config.shutdown_deadline_s / 2
            ),
            name=f"drain-{tenant}",
        )
        self._drains.add(task)
        task.add_done_callback(self._drain_done)

    def _drain_done(self, task: asyncio.Task[None]) -> None:
        self._drains.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self._drain_stop.is_set():
            # A dead drain would leave its tenant's backlog pending forever: take the process
            # down loudly; the orchestrator restarts it and the spool resumes where it was.
            self._failure = exc
            log.error("aggregator.drain_failed", task=task.get_name(), error=repr(exc))
            if self._stop is not None:
                self._stop.set()

    def _live(self) -> tuple[bool, str]:
        if self._failure is not None:
            return False, f"failed: {self._failure!r}"
        return True, "ok"

    def _ready(self) -> tuple[bool, str]:
        if not self._accepting:
            return False, "not accepting"
        return True, "ok"

    def _update_gauges(self) -> None:
        # A tenant's backlog includes what it has in adopted folders (workers that are gone).
        totals: dict[str, tuple[int, int, float]] = {}
        for spools in (self.spools, *self.orphans):
            for tenant, spool in list(spools.spools.items()):
                with contextlib.suppress(Exception):
                    used, pending, age = totals.get(tenant, (0, 0, 0.0))
                    totals[tenant] = (
                        used + spool.bytes_used,
                        pending + spool.records_pending,
                        max(age, spool.oldest_pending_age_s),
                    )
        metrics = self.metrics
        for tenant, (used, pending, age) in totals.items():
            metrics.spool_bytes.labels(tenant).set(used)
            metrics.spool_fragments.labels(tenant).set(pending)
            metrics.spool_oldest_age.labels(tenant).set(age)
