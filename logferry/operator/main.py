"""kopf wiring of the LogPipeline operator: ``kopf run -m logferry.operator.main --all-namespaces``.

Thin on purpose: every decision is in :mod:`logferry.operator.reconcile`. Here we only load
the state, write the ConfigMap, fill kopf's status patch and post events, in that order, so
a status never claims ``Applied`` for a ConfigMap write that failed (kopf retries the
handler instead).

Environment: ``LOGFERRY_CONFIGMAP_NAMESPACE`` (default: the operator's own namespace) and
``LOGFERRY_CONFIGMAP_NAME`` (default ``logferry-pipelines``) name the aggregators' ConfigMap;
``LOGFERRY_TENANT_CONFIGMAP_BYTES`` (bytes or units such as ``64KiB``; default
:data:`~logferry.operator.reconcile.TENANT_BUDGET_BYTES`) is one tenant's share of it;
``LOGFERRY_CONFIGMAP_MIRROR_NAMESPACES`` (comma-separated) names namespaces that get a copy
of it (the forwarders', which join multiline records from the tenants' pipelines).

``LOGFERRY_AGGREGATORS`` (``NAME:PORT``: the aggregators' headless Service and metrics port)
makes ``Applied`` mean loaded: :mod:`~logferry.operator.aggregators` scrapes every pod behind
it once per interval in a background task, and a kopf timer (only on LogPipelines still
waiting) decides ``Applied`` again from the last round, ``NotLoaded`` past
``LOGFERRY_APPLY_TIMEOUT_S`` (seconds; default
:data:`~logferry.operator.reconcile.APPLY_TIMEOUT_S`). Unset, ``Applied`` means written to the
ConfigMap, as its message says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Final, Protocol

import kopf

from logferry.common.units import parse_byte_size
from logferry.operator import reconcile as rc
from logferry.operator.aggregators import POLL_INTERVAL_S, AggregatorWatch
from logferry.operator.kubeapi import ConfigMapStore, KubeApiError, MirroredStore

GROUP: Final = "logferry.io"
VERSION: Final = "v1alpha1"
PLURAL: Final = "logpipelines"
FINALIZER: Final = "logferry.io/operator"
DEFAULT_CONFIGMAP_NAME: Final = "logferry-pipelines"
DEFAULT_NAMESPACE: Final = "logferry"
SERVICE_ACCOUNT_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
RETRY_DELAY_S: Final = 10.0
RETRY_DELAY_PERMANENT_S: Final = 120.0
TENANT_BUDGET_ENV: Final = "LOGFERRY_TENANT_CONFIGMAP_BYTES"
AGGREGATORS_ENV: Final = rc.AGGREGATORS_ENV
APPLY_TIMEOUT_ENV: Final = "LOGFERRY_APPLY_TIMEOUT_S"

log = logging.getLogger("logferry.operator")


class PipelineStore(Protocol):
    """Where accepted pipelines go (the ConfigMap; a fake in tests)."""

    async def read(self) -> dict[str, str] | None: ...

    async def write(self, data: Mapping[str, str]) -> None: ...


class FleetSource(Protocol):
    """Where the aggregators' last reports come from (:class:`AggregatorWatch`)."""

    @property
    def latest(self) -> rc.FleetReport: ...


EventPoster = Callable[[Mapping[str, Any], rc.Event], None]


class Controller:
    """Holds the accepted pipelines and carries out reconcile results.

    kopf runs handlers of different objects concurrently; one lock serializes them because
    they share the state and the one ConfigMap.

    With ``aggregators``, ``Applied`` waits for them (:meth:`refresh` decides it again from
    their newer reports); ``clock`` (monotonic seconds) times how long each written hash has
    waited, in memory: after an operator restart the wait starts again.
    """

    def __init__(
        self,
        store: PipelineStore,
        post_event: EventPoster,
        budget: rc.ConfigMapBudget | None = None,
        *,
        aggregators: FleetSource | None = None,
        apply_timeout_s: float = rc.APPLY_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._post_event = post_event
        self._budget = budget if budget is not None else rc.ConfigMapBudget()
        self.aggregators = aggregators
        self.apply_timeout_s = apply_timeout_s
        self._clock = clock
        # Per pipeline: the hash in its ConfigMap key and when the operator first saw it there.
        self._since: dict[str, tuple[str, float]] = {}
        self._lock = asyncio.Lock()
        self._accepted: dict[str, dict[str, Any]] | None = None
        # What the ConfigMap holds, as far as we know: written only when it would change.
        self._written: dict[str, str] | None = None

    @property
    def accepted(self) -> Mapping[str, Mapping[str, Any]]:
        """The accepted pipelines (empty until loaded)."""
        return self._accepted or {}

    async def apply(
        self, body: Mapping[str, Any], status: MutableMapping[str, Any]
    ) -> rc.ReconcileResult:
        """Reconcile one LogPipeline; fills ``status`` (kopf's ``patch.status``)."""
        async with self._lock:
            accepted = await self._load()
            key = _key_of(body)
            # Times the hash in force; a hash the reconcile writes anew has waited 0 s.
            check = self._check(key, accepted.get(key))
            result = rc.reconcile(body, accepted, budget=self._budget, check=check)
            await self._write(result.configmap_data)
            self._accepted = result.accepted
            self._waited(key, result.accepted.get(key))  # a new hash's wait starts now
        status.update(result.status)
        for event in result.events:
            self._post_event(body, event)
        self._log_applied(
            result.key, rc.condition_of(body, rc.APPLIED), result.status["conditions"][1]
        )
        log.info(
            "event=reconciled pipeline=%s generation=%s accepted=%s applied=%s applied_hash=%s",
            result.key,
            result.status["observedGeneration"],
            result.verdict.ok,
            result.status["conditions"][1]["reason"],
            result.status["appliedHash"],
        )
        return result

    def refresh(
        self, body: Mapping[str, Any], status: MutableMapping[str, Any]
    ) -> rc.AppliedRefresh | None:
        """Decide ``Applied`` again from the aggregators' last reports; fills ``status`` when
        it changes. No I/O: the reports are gathered by the background watch."""
        if self.aggregators is None or self._accepted is None:
            return None
        key = _key_of(body)
        check = self._check(key, self._accepted.get(key))
        if check is None:
            return None
        refreshed = rc.refresh_applied(body, self._accepted, check)
        if refreshed is None:
            return None
        status.update(refreshed.status)
        for event in refreshed.events:
            self._post_event(body, event)
        self._log_applied(key, refreshed.previous, refreshed.condition)
        return refreshed

    def _check(self, key: str, document: Mapping[str, Any] | None) -> rc.ApplyCheck | None:
        """What the aggregators report, and how long ``document``'s hash has waited."""
        if self.aggregators is None:
            return None
        return rc.ApplyCheck(
            self.aggregators.latest, self.apply_timeout_s, self._waited(key, document)
        )

    def _waited(self, key: str, document: Mapping[str, Any] | None) -> dict[str, float]:
        """{hash: seconds} since the hash of ``document`` was first in pipeline ``key``'s
        ConfigMap entry (its wait starts now when it is new)."""
        spec_hash = rc.spec_hash_of(document) if document is not None else None
        if spec_hash is None:
            return {}
        now = self._clock()
        seen = self._since.get(key)
        if seen is None or seen[0] != spec_hash:
            seen = self._since[key] = (spec_hash, now)
        return {spec_hash: now - seen[1]}

    def _log_applied(self, key: str, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> None:
        reason = new["reason"]
        if reason == (old or {}).get("reason") and new["message"] == (old or {}).get("message"):
            return
        if reason == rc.REASON_NOT_LOADED:
            log.warning(
                "event=not_loaded pipeline=%s generation=%s message=%s",
                key,
                new["observedGeneration"],
                new["message"],
            )
        elif self.aggregators is not None and new["status"] == "True":
            log.info("event=loaded pipeline=%s message=%s", key, new["message"])

    async def delete(self, namespace: str, name: str) -> rc.DeleteResult:
        """A LogPipeline is being deleted: drop it from the ConfigMap."""
        async with self._lock:
            accepted = await self._load()
            result = rc.forget(namespace, name, accepted)
            await self._write(result.configmap_data)
            self._accepted = result.accepted
            self._since.pop(result.key, None)
        log.info("event=deleted pipeline=%s removed=%s", result.key, result.configmap_changed)
        return result

    async def _load(self) -> dict[str, dict[str, Any]]:
        if self._accepted is None:
            # Rebuild last-known-good from the ConfigMap: without this, a restarted operator
            # would forget the good version of every currently invalid pipeline.
            data = await self._store.read() or {}
            self._accepted, unreadable = rc.accepted_from_configmap(data)
            self._written = data
            for key in unreadable:
                log.warning("event=configmap_key_dropped key=%s reason=unreadable", key)
        return self._accepted

    async def _write(self, data: dict[str, str]) -> None:
        if data == self._written:
            return
        await self._store.write(data)
        self._written = data


def _key_of(body: Mapping[str, Any]) -> str:
    metadata = body.get("metadata") or {}
    return rc.pipeline_key(str(metadata.get("namespace", "")), str(metadata.get("name", "")))


def _post_kopf_event(body: Mapping[str, Any], event: rc.Event) -> None:
    kopf.event(body, type=event.type, reason=event.reason, message=event.message)  # type: ignore[arg-type]


def budget_from_env(environ: Mapping[str, str]) -> rc.ConfigMapBudget:
    """The ConfigMap budget, with the tenant share from ``LOGFERRY_TENANT_CONFIGMAP_BYTES``.

    Raises ValueError for a value that is not a byte size, or one that is not positive or
    is over the whole budget: the operator then stops at start instead of running with a
    share no one chose.
    """
    raw = environ.get(TENANT_BUDGET_ENV, "").strip()
    if not raw:
        return rc.ConfigMapBudget()
    try:
        tenant_bytes = parse_byte_size(raw)
    except ValueError as exc:
        raise ValueError(f"{TENANT_BUDGET_ENV}={raw!r}: {exc}") from exc
    try:
        return rc.ConfigMapBudget(tenant_bytes=tenant_bytes)
    except ValueError as exc:
        raise ValueError(f"{TENANT_BUDGET_ENV}={raw!r}: {exc}") from exc


def apply_timeout_from_env(environ: Mapping[str, str]) -> float:
    """``LOGFERRY_APPLY_TIMEOUT_S`` (default :data:`~logferry.operator.reconcile.APPLY_TIMEOUT_S`);
    ValueError for a value that is not a positive number of seconds."""
    raw = environ.get(APPLY_TIMEOUT_ENV, "").strip()
    if not raw:
        return rc.APPLY_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{APPLY_TIMEOUT_ENV}={raw!r}: not a number of seconds") from exc
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{APPLY_TIMEOUT_ENV}={raw!r}: must be a positive number of seconds")
    return value


def aggregators_from_env(environ: Mapping[str, str]) -> AggregatorWatch | None:
    """The watch of ``LOGFERRY_AGGREGATORS`` (None when unset); ValueError when it is not
    ``NAME:PORT``."""
    raw = environ.get(AGGREGATORS_ENV, "").strip()
    if not raw:
        return None
    try:
        return AggregatorWatch(raw)
    except ValueError as exc:
        raise ValueError(f"{AGGREGATORS_ENV}={raw!r}: {exc}") from exc


def _mirror_namespaces(env: Mapping[str, str]) -> list[str]:
    raw = env.get("LOGFERRY_CONFIGMAP_MIRROR_NAMESPACES") or ""
    return [item.strip() for item in raw.split(",") if item.strip()]


def _configmap_namespace() -> str:
    configured = os.environ.get("LOGFERRY_CONFIGMAP_NAMESPACE")
    if configured:
        return configured
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


_controller: Controller | None = None
_watch_task: asyncio.Task[None] | None = None
_watch_stop: asyncio.Event | None = None


def _get_controller() -> Controller:
    if _controller is None:
        raise kopf.TemporaryError("operator not started", delay=RETRY_DELAY_S)
    return _controller


def _retry(exc: KubeApiError) -> kopf.TemporaryError:
    # A non-retriable API error (403: RBAC) still deserves retries, just slower: the fix is
    # an RBAC change, after which the operator must catch up without a restart.
    delay = RETRY_DELAY_S if exc.retriable else RETRY_DELAY_PERMANENT_S
    return kopf.TemporaryError(str(exc), delay=delay)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Set kopf up, build the controller and start watching the aggregators."""
    global _controller, _watch_task, _watch_stop
    # Keep kopf's bookkeeping in annotations: the status schema is ours and strict.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    # Tenants see our events (kopf.event); kopf's "handler succeeded" chatter is noise.
    settings.posting.level = logging.WARNING

    def credentials() -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
            settings=settings
        )

    name = os.environ.get("LOGFERRY_CONFIGMAP_NAME") or DEFAULT_CONFIGMAP_NAME
    primary = ConfigMapStore(_configmap_namespace(), name, credentials)
    mirrors = [
        ConfigMapStore(namespace, name, credentials)
        for namespace in _mirror_namespaces(os.environ)
        if namespace != primary.namespace
    ]
    store = MirroredStore(primary, mirrors) if mirrors else primary
    budget = budget_from_env(os.environ)
    watch = aggregators_from_env(os.environ)
    timeout_s = apply_timeout_from_env(os.environ)
    _controller = Controller(
        store, _post_kopf_event, budget, aggregators=watch, apply_timeout_s=timeout_s
    )
    if watch is None:
        log.warning(
            "event=aggregators_not_set reason=%s is not set: Applied says the ConfigMap was "
            "written, not that the aggregators loaded it",
            AGGREGATORS_ENV,
        )
    else:
        _watch_stop = asyncio.Event()
        _watch_task = asyncio.create_task(watch.run(_watch_stop), name="aggregators")
    log.info(
        "event=started configmap=%s/%s budget_bytes=%d tenant_budget_bytes=%d aggregators=%s "
        "apply_timeout_s=%s",
        store.namespace,
        store.name,
        budget.total_bytes,
        budget.tenant_bytes,
        watch.source if watch is not None else "-",
        timeout_s,
    )


@kopf.on.cleanup()
async def stop_watching(**_: Any) -> None:
    """Stop the aggregators' watch with the operator."""
    if _watch_stop is not None:
        _watch_stop.set()
    if _watch_task is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await _watch_task


def _awaiting_aggregators(body: kopf.Body, **_: Any) -> bool:
    controller = _controller
    return (
        controller is not None
        and controller.aggregators is not None
        and rc.awaits_aggregators(body)
    )


@kopf.timer(GROUP, VERSION, PLURAL, interval=POLL_INTERVAL_S, when=_awaiting_aggregators)
async def check_applied(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """While ``Applied`` waits for the aggregators, decide it again from their last reports
    (no I/O here: the background watch scrapes them once per interval for every pipeline)."""
    controller = _controller
    if controller is not None:
        controller.refresh(body, patch.status)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def reconcile_pipeline(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Validate the LogPipeline, update the ConfigMap, report status and events."""
    try:
        await _get_controller().apply(body, patch.status)
    except KubeApiError as exc:
        raise _retry(exc) from exc


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete_pipeline(namespace: str | None, name: str | None, **_: Any) -> None:
    """Remove the LogPipeline from the ConfigMap (kopf's finalizer holds the deletion)."""
    if namespace is None or name is None:
        return
    try:
        await _get_controller().delete(namespace, name)
    except KubeApiError as exc:
        raise _retry(exc) from exc
