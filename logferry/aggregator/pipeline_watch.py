"""Tenant pipelines applied without a restart: watch a directory, validate, swap, report.

The directory holds LogPipeline documents (on Kubernetes, the ConfigMap the operator writes,
mounted read-only: its files are symlinks into a ``..data`` directory that kubelet swaps in
one rename). A change — an inotify burst, debounced, or the periodic rescan — reloads every
document and runs the same validation as ``logferry pipelines validate``:

- a valid pipeline is compiled and takes effect for the next message: the registry holds one
  immutable mapping of tenants to compiled pipelines and a change replaces it whole, so a
  message is processed entirely by the old or entirely by the new version, never half;
- an invalid pipeline is refused and its tenant keeps that pipeline's last good version (the
  last-known-good); other pipelines and other tenants are untouched;
- every pipeline's state (Accepted/Rejected with the reasons, the hash observed and the hash
  in force) is written to a status file and counted in metrics;
- the hash in force and the hash observed, per pipeline, are exported in /metrics
  (``logferry_pipeline_applied_info``, ``logferry_pipeline_observed_info``): the operator
  reads them to tell a tenant when its generation is really loaded, by every worker of every
  aggregator, or why not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import Field
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from logferry.common.config import ConfigModel
from logferry.common.events import first_set
from logferry.common.files import write_file_atomic
from logferry.common.logs import get_logger
from logferry.pipelines.compiled import TenantPipelines, compile_tenants
from logferry.pipelines.validate import (
    TenantLimits,
    Verdict,
    accepted,
    label_selector_warning,
    load_directory,
    validate_documents,
)

log = get_logger(__name__)

__all__ = ["PipelineRegistry", "PipelineSettings", "PipelineWatcher", "in_force_families"]

APPLIED_INFO = "logferry_pipeline_applied_info"
OBSERVED_INFO = "logferry_pipeline_observed_info"
# A label value, not a report: the first issue is enough to say why (the status file and
# the pipeline.rejected log line have them all), and a bound keeps the series small.
REASON_LABEL_MAX_CHARS = 200


class PipelineSettings(ConfigModel):
    """Tenant LogPipelines, applied at run time (``logferry pipelines validate`` checks the
    same rules offline)."""

    directory: Path
    """Where the LogPipeline files are (the operator's ConfigMap, mounted)."""
    debounce_s: float = Field(default=1.0, ge=0, le=60)
    """A burst of changes applies once, this long after the last one."""
    rescan_interval_s: float = Field(default=10.0, gt=0, le=3600)
    """Reload as a safety net beside inotify, even without an event."""
    status_file: Path | None = None
    """Per-pipeline state (JSON). Default: ``pipelines-status.json`` beside the spool."""
    batch_budget_s: float = Field(default=0.5, gt=0, le=60)
    """Most time one tenant's pipelines may spend on one message; past it the rest of the
    records go on unfiltered (never dropped) and it is counted."""
    cpu_allowance_s_per_s: float = Field(default=0.1, gt=0, le=64)
    """CPU seconds a tenant's pipelines may use per second, over time (a fair share): a
    tenant that keeps exceeding it has its pipelines bypassed (records pass unfiltered, never
    dropped, counted, the tenant's status marked) until it is back under. Each of the
    aggregator's ``workers`` enforces it on the records that reach it: the allowance keeps
    one tenant from stalling the others that share a worker's event loop. The pipelines
    status file (worker 0's) lists the tenants bypassed there."""
    cpu_burst_s: float = Field(default=1.0, gt=0, le=3600)
    """CPU seconds of unused allowance a tenant may save up for a burst."""
    max_pipelines_per_tenant: int = Field(default=20, ge=1, le=1000)
    """More pipelines than this in one namespace are refused."""
    labels_shipped: bool = True
    """The forwarders ship pod labels (their ``kubernetes.enabled``). ``false``: a pipeline
    whose ``selector.labels`` is set is warned about (it can match no record)."""
    account_discarded: bool = True
    """List the lines a pipeline discards (grep, drop_level, sample) in accounting records,
    one small record per source and message with the discarded seq ranges and the filter
    that discarded them (index ``<prefix>-<tenant>.lf-accounting-<date>``), so ``logferry
    verify`` can tell a filtered line from a lost one. ``false`` saves that; verify then
    reports filtered lines as missing."""


class PipelineRegistry:
    """The compiled pipelines in force, per tenant. Readers take :meth:`snapshot` once per
    message; a change replaces the whole mapping in one assignment."""

    def __init__(self) -> None:
        self._tenants: Mapping[str, TenantPipelines] = MappingProxyType({})
        self.version = 0

    def snapshot(self) -> Mapping[str, TenantPipelines]:
        return self._tenants

    def swap(self, tenants: dict[str, TenantPipelines]) -> None:
        self._tenants = MappingProxyType(dict(tenants))
        self.version += 1


@dataclass(frozen=True, slots=True)
class PipelineState:
    """What the status file says about one pipeline."""

    pipeline: str
    state: str
    """``Accepted`` or ``Rejected``."""
    observed_hash: str | None
    applied_hash: str | None
    """The version in force: the observed one when accepted, the last good one otherwise."""
    source: str
    issues: tuple[str, ...] = ()
    observed_generation: int | None = None
    """``metadata.generation`` of the document seen (set by Kubernetes), if any."""

    @property
    def reason(self) -> str:
        """Why it was rejected, in one bounded line ("" when accepted)."""
        if not self.issues:
            return ""
        first = self.issues[0]
        if len(first) > REASON_LABEL_MAX_CHARS:
            first = first[: REASON_LABEL_MAX_CHARS - 3] + "..."
        more = len(self.issues) - 1
        return f"{first} (and {more} more)" if more else first

    def as_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "state": self.state,
            "observed_generation": self.observed_generation,
            "observed_hash": self.observed_hash,
            "applied_hash": self.applied_hash,
            "source": self.source,
            "issues": list(self.issues),
        }


class PipelineWatcher:
    """Keeps :class:`PipelineRegistry` in step with the directory."""

    def __init__(
        self,
        settings: PipelineSettings,
        registry: PipelineRegistry,
        *,
        status_file: Path,
        on_applied: Any = None,
        samples_for: Callable[[str], Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        self.settings = settings
        self._warned: dict[str, str | None] = {}
        self.registry = registry
        self.status_file = status_file
        self._on_applied = on_applied
        self._samples_for = samples_for
        self._last_good: dict[str, Verdict] = {}
        self._states: dict[str, PipelineState] = {}
        self._loaded_hash: str | None = None
        self._bypassed: set[str] = set()
        self.applies = 0

    @property
    def states(self) -> dict[str, PipelineState]:
        return dict(self._states)

    def reload(self) -> bool:
        """Load, validate and apply the directory if it changed; True if anything was applied.

        Synchronous and quick (YAML of a few files, validation with bounded dry runs): run it
        in a thread from the event loop.
        """
        directory = self.settings.directory
        docs = load_directory(directory) if directory.is_dir() else []
        digest = hashlib.sha256(
            orjson.dumps([(src, doc) for src, doc in docs], default=str)
        ).hexdigest()
        if digest == self._loaded_hash:
            return False
        self._loaded_hash = digest
        limits = TenantLimits(max_pipelines=self.settings.max_pipelines_per_tenant)
        verdicts = validate_documents(docs, limits=limits, samples_for=self._samples_for)
        self._apply(verdicts)
        return True

    def _apply(self, verdicts: list[Verdict]) -> None:
        seen: set[str] = set()
        states: dict[str, PipelineState] = {}
        for verdict in verdicts:
            key = verdict.pipeline
            seen.add(key)
            generation = verdict.spec.metadata.generation if verdict.spec is not None else None
            if verdict.ok:
                warning = None if self.settings.labels_shipped else label_selector_warning(verdict)
                if warning is not None and self._warned.get(key) != verdict.spec_hash:
                    self._warned[key] = verdict.spec_hash
                    log.warning(
                        "pipeline.selector_labels_unavailable", pipeline=key, detail=warning
                    )
                self._last_good[key] = verdict
                states[key] = PipelineState(
                    key,
                    "Accepted",
                    verdict.spec_hash,
                    verdict.spec_hash,
                    verdict.source,
                    observed_generation=generation,
                )
                continue
            good = self._last_good.get(key)
            issues = tuple(f"{i.path}: {i.reason} ({i.layer})" for i in verdict.issues)
            states[key] = PipelineState(
                key,
                "Rejected",
                verdict.spec_hash,
                good.spec_hash if good is not None else None,
                verdict.source,
                issues,
                observed_generation=generation,
            )
            log.warning(
                "pipeline.rejected",
                pipeline=key,
                kept=good.spec_hash if good is not None else "none",
                issues="; ".join(issues)[:2000],
            )
        for key in list(self._last_good):
            if key not in seen:  # removed from the directory: no longer in force
                del self._last_good[key]
        self._states = states
        self.registry.swap(compile_tenants(accepted(self._last_good.values())))
        self.applies += 1
        self._write_status()
        log.info(
            "pipeline.applied",
            pipelines=len(self._last_good),
            rejected=sum(1 for s in states.values() if s.state == "Rejected"),
            version=self.registry.version,
        )
        if self._on_applied is not None:
            self._on_applied(states)

    def collect(self) -> Iterator[Metric]:
        """The hash in force and the hash observed of every pipeline, as Prometheus info
        gauges (a collector: built from the current states at each scrape, so a pipeline
        changed or deleted leaves no series of its old hash behind)."""
        return iter(in_force_families([self]))

    def note_bypass(self, tenant: str, bypassed: bool) -> None:
        """A tenant's pipelines were bypassed (over its CPU allowance), or are running again:
        say so in the status file (its pipelines show ``bypassed: true``)."""
        if bypassed:
            self._bypassed.add(tenant)
        else:
            self._bypassed.discard(tenant)
        try:
            self._write_status()
        except OSError as exc:  # the status is advisory: never fail the message for it
            log.warning("pipeline.status_write_failed", error=str(exc))

    def _write_status(self) -> None:
        pipelines = []
        for key, state in sorted(self._states.items()):
            entry = state.as_json()
            entry["bypassed"] = key.split("/", 1)[0] in self._bypassed
            pipelines.append(entry)
        body = {
            "version": self.registry.version,
            "bypassed_tenants": sorted(self._bypassed),
            "pipelines": pipelines,
        }
        self.status_file.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(str(self.status_file), orjson.dumps(body, option=orjson.OPT_INDENT_2))

    async def run(self, stop: asyncio.Event) -> None:
        """Apply now, then after every debounced burst of events and every rescan interval."""
        loop = asyncio.get_running_loop()
        dirty = asyncio.Event()
        observer = self._watch(loop, dirty)
        try:
            await asyncio.to_thread(self.reload)
            while not stop.is_set():
                await first_set((dirty, stop), self.settings.rescan_interval_s)
                if stop.is_set():
                    break
                if dirty.is_set():
                    await self._settle(dirty, stop)
                dirty.clear()
                try:
                    await asyncio.to_thread(self.reload)
                except Exception as exc:  # a reload must never take the aggregator down
                    log.error("pipeline.reload_failed", error=type(exc).__name__, detail=str(exc))
        finally:
            if observer is not None:
                observer.stop()
                await asyncio.to_thread(observer.join, 5)

    async def _settle(self, dirty: asyncio.Event, stop: asyncio.Event) -> None:
        while not stop.is_set():
            dirty.clear()
            if await first_set((dirty, stop), self.settings.debounce_s) is None:
                return

    def _watch(self, loop: asyncio.AbstractEventLoop, dirty: asyncio.Event) -> BaseObserver | None:
        directory = self.settings.directory
        if not directory.is_dir():
            log.warning("pipeline.no_directory", directory=str(directory))
            return None

        class Poke(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed under a late event
                    loop.call_soon_threadsafe(dirty.set)

        observer = Observer()
        try:
            observer.schedule(Poke(), os.fspath(directory), recursive=True)
            observer.start()
        except OSError as exc:
            log.warning("pipeline.watch_failed", error=type(exc).__name__, detail=str(exc))
            return None
        return observer


def in_force_families(watchers: Sequence[PipelineWatcher]) -> list[Metric]:
    """``logferry_pipeline_applied_info{tenant,pipeline,hash}`` (1 per pipeline with a version
    in force) and ``logferry_pipeline_observed_info{tenant,pipeline,hash,status,reason}`` (1 per
    pipeline file seen: its hash, Accepted or Rejected, and why) of ``watchers``. Both families
    are there even when empty.

    Their ``pipeline`` and ``hash`` labels are outside the fixed label set on purpose: the
    operator needs them to confirm what each aggregator loaded, and they stay bounded (one
    series per pipeline, at most ``pipelines.max_pipelines_per_tenant`` per tenant; a new
    hash replaces the old one, because the series are built from the current states)."""
    applied = GaugeMetricFamily(
        APPLIED_INFO,
        "The version of each LogPipeline in force (its spec hash); the last good one while a "
        "newer one is rejected. Always 1.",
        labels=("tenant", "pipeline", "hash"),
    )
    observed = GaugeMetricFamily(
        OBSERVED_INFO,
        "The version of each LogPipeline last read from the pipelines directory, its state "
        "(Accepted, Rejected) and, when rejected, the first reason. Always 1.",
        labels=("tenant", "pipeline", "hash", "status", "reason"),
    )
    for watcher in watchers:
        for key, state in sorted(watcher.states.items()):
            tenant, _, name = key.partition("/")
            if state.applied_hash is not None:
                applied.add_metric((tenant, name, state.applied_hash), 1)
            observed.add_metric(
                (tenant, name, state.observed_hash or "", state.state, state.reason), 1
            )
    return [applied, observed]
