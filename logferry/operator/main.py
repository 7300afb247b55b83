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
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Final, Protocol

import kopf

from logferry.common.units import parse_byte_size
from logferry.operator import reconcile as rc
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

log = logging.getLogger("logferry.operator")


class PipelineStore(Protocol):
    """Where accepted pipelines go (the ConfigMap; a fake in tests)."""

    async def read(self) -> dict[str, str] | None: ...

    async def write(self, data: Mapping[str, str]) -> None: ...


EventPoster = Callable[[Mapping[str, Any], rc.Event], None]


class Controller:
    """Holds the accepted pipelines and carries out reconcile results.

    kopf runs handlers of different objects concurrently; one lock serializes them because
    they share the state and the one ConfigMap.
    """

    def __init__(
        self,
        store: PipelineStore,
        post_event: EventPoster,
        budget: rc.ConfigMapBudget | None = None,
    ) -> None:
        self._store = store
        self._post_event = post_event
        self._budget = budget if budget is not None else rc.ConfigMapBudget()
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
            result = rc.reconcile(body, accepted, budget=self._budget)
            await self._write(result.configmap_data)
            self._accepted = result.accepted
        status.update(result.status)
        for event in result.events:
            self._post_event(body, event)
        log.info(
            "event=reconciled pipeline=%s generation=%s accepted=%s applied_hash=%s",
            result.key,
            result.status["observedGeneration"],
            result.verdict.ok,
            result.status["appliedHash"],
        )
        return result

    async def delete(self, namespace: str, name: str) -> rc.DeleteResult:
        """A LogPipeline is being deleted: drop it from the ConfigMap."""
        async with self._lock:
            accepted = await self._load()
            result = rc.forget(namespace, name, accepted)
            await self._write(result.configmap_data)
            self._accepted = result.accepted
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
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Set kopf up and build the controller."""
    global _controller
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
    _controller = Controller(store, _post_kopf_event, budget)
    log.info(
        "event=started configmap=%s/%s budget_bytes=%d tenant_budget_bytes=%d",
        store.namespace,
        store.name,
        budget.total_bytes,
        budget.tenant_bytes,
    )


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
