"""Reconcile decisions for LogPipelines: status, events and the aggregators' ConfigMap.

Pure functions, no Kubernetes I/O: ``main`` feeds them the object the API server returned
and the operator's state, and carries out the result. Validation is the same code as the
offline ``logferry pipelines validate`` (``validate_document``), so a pipeline that passes
in CI passes here.

The state is the set of *accepted* pipelines, keyed ``"<namespace>/<name>"``, each value the
normalized document that is (or is about to be) in the ConfigMap (the offline renderer's
``rendered_document``: defaults filled in, ``metadata.generation`` and the
``logferry.io/spec-hash`` annotation). It is also what the ConfigMap holds, so a restarted
operator rebuilds it from there (:func:`accepted_from_configmap`) and last-known-good
survives restarts.

Last-known-good: an invalid new generation of a pipeline that was accepted before leaves
the accepted version in place; the status says ``Accepted=False`` for the new generation
and ``Applied=True`` (reason ``KeptLastKnownGood``) with the old hash.

Applied means loaded: with the aggregators to ask (an :class:`ApplyCheck`, what their
/metrics last said), ``Applied`` turns True only when every aggregator pod that answered, and
every worker in it, reports the hash in force (the new one, or the last good one) as applied.
Until then it is False, reason ``Pending``; past the apply timeout, reason ``NotLoaded`` with
why, per aggregator (still at another hash, rejected it and why, unreachable, none found).
:func:`refresh_applied` decides it again from newer reports, so a late aggregator still turns
it True. Without aggregators to ask, ``Applied`` says the ConfigMap was written, and says that
it was not confirmed.

Budget: every tenant's pipelines share one ConfigMap, capped at ``ConfigMapBudget.total_bytes``.
So that one tenant cannot fill it for the others, each tenant (namespace) may take at most
``ConfigMapBudget.tenant_bytes`` of it. A change that would take its tenant past that share
(or the ConfigMap past its total) and makes it bigger is refused: a new pipeline is not
applied, an update keeps its last-known-good, and the status says why (reason
``TenantBudgetExceeded`` or ``ConfigMapBudgetExceeded``) with the figures. Nothing accepted
is ever evicted, and a change that does not grow the tenant always passes the budget, so a
tenant over its share (after the share was lowered) can still fix or shrink its pipelines.
The pipeline refused is thus always the newest change, and other tenants are untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple

import yaml

from logferry.pipelines.render import rendered_document
from logferry.pipelines.spec import API_VERSION, KIND, SPEC_HASH_ANNOTATION
from logferry.pipelines.validate import Issue, TenantLimits, Verdict, validate_document

HASH_ANNOTATION: Final = SPEC_HASH_ANNOTATION

# A ConfigMap (like any object) is capped at 1 MiB by etcd; keep headroom for metadata so
# the write that would cross the cap is refused here, with a status, not by the API server.
CONFIGMAP_BUDGET_BYTES: Final = 900 * 1024
# One tenant's share of it by default: at least 14 tenants fit at their full share, and a
# share holds the 20 pipelines a tenant may have (TenantLimits) at ~3 KiB each, far above
# a typical pipeline (well under 1 KiB rendered).
TENANT_BUDGET_BYTES: Final = 64 * 1024
# Kubernetes caps an Event message at 1 KiB; a condition message at 32 KiB.
EVENT_MESSAGE_MAX_CHARS: Final = 1024
CONDITION_MESSAGE_MAX_CHARS: Final = 32 * 1024

ACCEPTED: Final = "Accepted"
APPLIED: Final = "Applied"

REASON_VALID: Final = "Valid"
REASON_APPLIED: Final = "Applied"
REASON_KEPT_LAST_KNOWN_GOOD: Final = "KeptLastKnownGood"
REASON_NOT_APPLIED: Final = "NotApplied"
REASON_PENDING: Final = "Pending"
REASON_NOT_LOADED: Final = "NotLoaded"
REASON_TENANT_BUDGET: Final = "TenantBudgetExceeded"
REASON_CONFIGMAP_BUDGET: Final = "ConfigMapBudgetExceeded"
# The first layer that failed names the rejection; layers run schema -> policy -> dry run.
REASON_BY_LAYER: Final[Mapping[str, str]] = {
    "schema": "SchemaError",
    "policy": "PolicyError",
    "dry_run": "DryRunError",
}

Accepted = Mapping[str, Mapping[str, Any]]
"""Accepted pipelines: ``"<namespace>/<name>"`` -> normalized, annotated document."""

AGGREGATORS_ENV: Final = "LOGFERRY_AGGREGATORS"
# How long the aggregators may take to load a written generation before Applied says
# NotLoaded. A ConfigMap change reaches a pod's volume after kubelet's next sync (every 60 s
# by default) with its cached copy of the ConfigMap (up to 60 s old with the default TTL
# cache), so up to about two minutes; the aggregator then sees the swap at once (inotify, its
# rescan of 10 s as the fallback). Three minutes leave a margin over that worst case, so
# NotLoaded means something is wrong, not slow.
APPLY_TIMEOUT_S: Final = 180.0
# Pods and workers named in a NotLoaded message: enough to see a pattern, never a wall.
MAX_PROBLEMS_SHOWN: Final = 10


@dataclasses.dataclass(frozen=True)
class LoadedPipeline:
    """What one aggregator worker reports of one pipeline (its /metrics)."""

    applied_hash: str | None = None
    """The hash in force there (``logferry_pipeline_applied_info``), if any."""
    observed_hash: str | None = None
    """The hash of the file it last read (``logferry_pipeline_observed_info``)."""
    state: str | None = None
    """``Accepted`` or ``Rejected``: its verdict on the observed hash."""
    reason: str = ""
    """Why it rejected the observed hash (the first issue)."""


@dataclasses.dataclass(frozen=True)
class AggregatorReport:
    """One aggregator pod, as one scrape of its /metrics showed it."""

    name: str
    """Its address (the URL scraped)."""
    error: str | None = None
    """Why it could not be read (then nothing else is known)."""
    workers: Mapping[str, Mapping[str, LoadedPipeline]] = dataclasses.field(default_factory=dict)
    """Worker label ("" for a single-process aggregator) -> pipeline key -> what it has."""
    expected_workers: int = 1
    """Workers the pod runs (its ``logferry_aggregator_workers``)."""


@dataclasses.dataclass(frozen=True)
class FleetReport:
    """Every aggregator pod found behind ``source``, from one round of scrapes."""

    source: str
    """``NAME:PORT`` (the aggregators' headless Service and metrics port)."""
    aggregators: tuple[AggregatorReport, ...] = ()
    error: str | None = None
    """Why no aggregator is listed (the name did not resolve; not scraped yet)."""


@dataclasses.dataclass(frozen=True)
class ApplyCheck:
    """What ``Applied`` is decided on when the aggregators are asked."""

    fleet: FleetReport
    timeout_s: float = APPLY_TIMEOUT_S
    waited_s: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Per spec hash: seconds since the operator wrote it (absent: just written)."""


@dataclasses.dataclass(frozen=True)
class Confirmation:
    """Whether the aggregators run one hash of one pipeline, and if not, why not."""

    confirmed: bool
    pods: int
    """Pods where every worker has it."""
    workers: int
    """Workers of those pods."""
    problems: tuple[str, ...]
    """Per aggregator that does not (or could not be asked): why."""


class AppliedState(NamedTuple):
    """The ``Applied`` condition decided, and the ``appliedHash`` to report with it."""

    ok: bool
    reason: str
    message: str
    applied_hash: str | None


@dataclasses.dataclass(frozen=True)
class AppliedRefresh:
    """A new ``Applied`` decision for a LogPipeline between its reconciles (see
    :func:`refresh_applied`)."""

    status: dict[str, Any]
    """The ``status`` merge patch: ``appliedHash`` and every condition (a merge patch
    replaces the list whole)."""
    events: tuple[Event, ...]
    previous: Mapping[str, Any] | None
    """The ``Applied`` condition it replaces."""
    condition: dict[str, Any]
    """The new ``Applied`` condition."""


@dataclasses.dataclass(frozen=True)
class ConfigMapBudget:
    """How many bytes of the aggregators' ConfigMap the pipelines may take (keys and values,
    as :func:`configmap_size` counts them): in all, and per tenant."""

    total_bytes: int = CONFIGMAP_BUDGET_BYTES
    tenant_bytes: int = TENANT_BUDGET_BYTES

    def __post_init__(self) -> None:
        if self.total_bytes <= 0 or self.tenant_bytes <= 0:
            raise ValueError("ConfigMap budgets must be positive")
        if self.tenant_bytes > self.total_bytes:
            raise ValueError(
                f"a tenant's share ({self.tenant_bytes} bytes) cannot exceed the ConfigMap "
                f"budget ({self.total_bytes} bytes)"
            )


@dataclasses.dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the LogPipeline."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class ReconcileResult:
    """What reconciling one LogPipeline decided; ``main`` carries it out in this order:
    write ``configmap_data`` (when ``configmap_changed``), then patch ``status``, then
    post ``events``, then adopt ``accepted`` as the new state."""

    key: str
    """``"<namespace>/<name>"``."""
    verdict: Verdict
    status: dict[str, Any]
    """The ``status`` merge patch (``appliedHash: None`` removes a stale hash)."""
    events: tuple[Event, ...]
    accepted: dict[str, dict[str, Any]]
    """The new state of accepted pipelines."""
    configmap_data: dict[str, str]
    """The ConfigMap ``data`` for the new state."""
    configmap_changed: bool
    """Whether ``configmap_data`` differs from the data of the previous state."""


@dataclasses.dataclass(frozen=True)
class DeleteResult:
    """What deleting one LogPipeline decided."""

    key: str
    accepted: dict[str, dict[str, Any]]
    configmap_data: dict[str, str]
    configmap_changed: bool


def pipeline_key(namespace: str, name: str) -> str:
    """The state key of a pipeline."""
    return f"{namespace}/{name}"


def configmap_key(namespace: str, name: str) -> str:
    """The ConfigMap key of a pipeline. Namespaces hold no dots (DNS labels), so the first
    dot separates namespace from name and two pipelines never share a key."""
    return f"{namespace}.{name}.yaml"


def spec_hash_of(document: Mapping[str, Any]) -> str | None:
    """The spec hash annotation of an accepted document."""
    value = _annotations(document).get(HASH_ANNOTATION)
    return value if isinstance(value, str) else None


def generation_of(document: Mapping[str, Any]) -> int | None:
    """The generation of an accepted document (``metadata.generation``)."""
    metadata = document.get("metadata")
    value = metadata.get("generation") if isinstance(metadata, Mapping) else None
    return value if isinstance(value, int) else None


def configmap_size(data: Mapping[str, str], namespace: str | None = None) -> int:
    """Bytes of the ConfigMap ``data`` (UTF-8 keys and values), or of one tenant's keys.

    Keys are ``<namespace>.<name>.yaml`` and namespaces hold no dots, so the text before
    the first dot names the tenant.
    """
    return sum(
        len(k.encode()) + len(v.encode())
        for k, v in data.items()
        if namespace is None or k.startswith(f"{namespace}.")
    )


def render_configmap(accepted: Accepted) -> dict[str, str]:
    """The ``data`` of the aggregators' ConfigMap: one ``<namespace>.<name>.yaml`` key per
    accepted pipeline, holding its normalized document.

    Deterministic: the same pipelines give byte-identical data whatever the mapping's
    order, so an unchanged state never rewrites the ConfigMap (nor wakes the aggregators).
    """
    data: dict[str, str] = {}
    for document in accepted.values():
        metadata = document["metadata"]
        data[configmap_key(metadata["namespace"], metadata["name"])] = _dump(document)
    return dict(sorted(data.items()))


def accepted_from_configmap(data: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Rebuild the state from the ConfigMap's ``data`` (at operator start).

    Returns the accepted pipelines and the keys that could not be read back (not ours, or
    damaged); those are dropped from the next write rather than served to the aggregators.
    """
    accepted: dict[str, dict[str, Any]] = {}
    unreadable: list[str] = []
    for key, text in sorted(data.items()):
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError:
            unreadable.append(key)
            continue
        metadata = document.get("metadata") if isinstance(document, dict) else None
        if (
            not isinstance(metadata, dict)
            or not isinstance(metadata.get("namespace"), str)
            or not isinstance(metadata.get("name"), str)
            or configmap_key(metadata["namespace"], metadata["name"]) != key
            or spec_hash_of(document) is None
        ):
            unreadable.append(key)
            continue
        accepted[pipeline_key(metadata["namespace"], metadata["name"])] = document
    return accepted, unreadable


def reconcile(
    obj: Mapping[str, Any],
    accepted: Accepted,
    *,
    limits: TenantLimits | None = None,
    budget: ConfigMapBudget | None = None,
    samples: Sequence[dict[str, Any]] | None = None,
    now: datetime | None = None,
    check: ApplyCheck | None = None,
) -> ReconcileResult:
    """Validate one LogPipeline as the API server returned it and decide status, events and
    the new ConfigMap content. ``accepted`` is not modified.

    ``budget`` caps the ConfigMap and each tenant's part of it (the defaults when None);
    ``samples`` are records for the dry run (the built-in samples when None); ``now`` stamps
    condition transitions; ``check`` is what the aggregators report, for ``Applied`` (None:
    there is no one to ask, and ``Applied`` means written).
    """
    metadata = obj.get("metadata") or {}
    namespace = str(metadata.get("namespace", ""))
    name = str(metadata.get("name", ""))
    generation = int(metadata.get("generation") or 0)
    key = pipeline_key(namespace, name)
    timestamp = _timestamp(now or datetime.now(UTC))

    limits = limits if limits is not None else TenantLimits()
    budget = budget if budget is not None else ConfigMapBudget()
    verdict = validate_document(
        tenant_document(obj),
        source=f"LogPipeline {key}",
        namespace=namespace,
        limits=limits,
        samples=samples,
    )
    new_state = {k: dict(v) for k, v in accepted.items()}
    issues: tuple[Issue, ...] = verdict.issues
    budget_reason: str | None = None
    previous_data = render_configmap(accepted)
    data = previous_data
    if verdict.ok and verdict.spec_hash is not None:
        new_state[key] = rendered_document(verdict)
        data = render_configmap(new_state)
        issues, budget_reason = _state_policy(
            key, namespace, accepted, previous_data, data, limits, budget
        )
        if issues:
            # Refused: the previous accepted version (if any) stays.
            if key in accepted:
                new_state[key] = dict(accepted[key])
            else:
                del new_state[key]
            data = previous_data
    ok = verdict.ok and verdict.spec_hash is not None and not issues

    old_conditions = _conditions_by_type(obj)

    def condition(type_: str, true: bool, reason: str, message: str) -> dict[str, Any]:
        return _condition(type_, true, reason, message, generation, timestamp, old_conditions)

    current = new_state.get(key)
    applied_hash = spec_hash_of(current) if current is not None else None
    status_hash = applied_hash
    if ok:
        accepted_cond = condition(ACCEPTED, True, REASON_VALID, f"generation {generation} is valid")
    else:
        reason = budget_reason or rejection_reason(issues)
        accepted_cond = condition(ACCEPTED, False, reason, describe_issues(issues, generation))
    if current is not None:
        state = applied_state(
            key, generation, current, kept=not ok, check=check, reported=_status_hash(obj)
        )
        applied_cond = condition(APPLIED, state.ok, state.reason, state.message)
        status_hash = state.applied_hash
    else:
        applied_cond = condition(
            APPLIED,
            False,
            REASON_NOT_APPLIED,
            "no generation of this pipeline has been accepted yet",
        )

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "appliedHash": status_hash,
        "conditions": [accepted_cond, applied_cond],
    }
    events = _events(obj, accepted_cond, applied_cond, applied_hash, accepted.get(key))
    return ReconcileResult(
        key=key,
        verdict=verdict,
        status=status,
        events=events,
        accepted=new_state,
        configmap_data=data,
        configmap_changed=data != previous_data,
    )


def forget(namespace: str, name: str, accepted: Accepted) -> DeleteResult:
    """A LogPipeline was deleted: its key leaves the ConfigMap."""
    key = pipeline_key(namespace, name)
    new_state = {k: dict(v) for k, v in accepted.items() if k != key}
    return DeleteResult(
        key=key,
        accepted=new_state,
        configmap_data=render_configmap(new_state),
        configmap_changed=key in accepted,
    )


def confirm(key: str, spec_hash: str, fleet: FleetReport) -> Confirmation:
    """Whether the aggregators of ``fleet`` run ``spec_hash`` of pipeline ``key``.

    Yes when at least one pod answered and every pod that answered has it applied in every
    one of its workers. A pod that does not answer is named but does not hold it up: it is
    not serving, and when it is again it loads the current ConfigMap before it takes a record.
    """
    problems: list[str] = []
    pods = workers = answered = 0
    for aggregator in fleet.aggregators:
        if aggregator.error is not None:
            problems.append(f"{aggregator.name} unreachable ({aggregator.error})")
            continue
        answered += 1
        notes: list[str] = []
        silent = aggregator.expected_workers - len(aggregator.workers)
        if silent > 0:
            notes.append(f"{silent} of its {aggregator.expected_workers} workers did not answer")
        lagging: dict[str, list[str]] = {}
        for worker, pipelines in sorted(aggregator.workers.items()):
            why = _worker_lag(pipelines.get(key), spec_hash)
            if why is not None:
                lagging.setdefault(why, []).append(worker)
        for why, names in lagging.items():
            notes.append(_workers_label(names) + why)
        if notes:
            problems.append(f"{aggregator.name}: " + "; ".join(notes))
        else:
            pods += 1
            workers += len(aggregator.workers)
    if not fleet.aggregators:
        detail = f": {fleet.error}" if fleet.error else ""
        problems.append(f"no aggregators resolved from {fleet.source}{detail}")
    return Confirmation(answered > 0 and pods == answered, pods, workers, tuple(problems))


def applied_state(
    key: str,
    generation: int,
    current: Mapping[str, Any],
    *,
    kept: bool,
    check: ApplyCheck | None,
    reported: str | None = None,
) -> AppliedState:
    """``Applied`` for the version ``current`` of pipeline ``key`` in the ConfigMap: the new
    generation (``kept`` False) or the last good one kept while ``generation`` is rejected.

    ``reported`` is the ``appliedHash`` the status shows now: kept while the aggregators have
    not confirmed ``current``, since until then they run that one, not the new one.
    """
    spec_hash = spec_hash_of(current) or ""
    version = f"generation {generation_of(current) if kept else generation} (hash {spec_hash})"
    # Kept: the tenant's new generation was refused; what is asked of the aggregators is
    # that they still run the last good one.
    before = f"generation {generation} was rejected; " if kept else ""
    reason_ok = REASON_KEPT_LAST_KNOWN_GOOD if kept else REASON_APPLIED
    if check is None:
        unconfirmed = f"not confirmed by the aggregators ({AGGREGATORS_ENV} is not set)"
        if kept:
            message = f"{before}the aggregators keep {version}; {unconfirmed}"
        else:
            message = f"{version} is in the aggregators' ConfigMap; {unconfirmed}"
        return AppliedState(True, reason_ok, message, spec_hash)
    outcome = confirm(key, spec_hash, check.fleet)
    if outcome.confirmed:
        by = f"{_count(outcome.pods, 'aggregator pod')} ({_count(outcome.workers, 'worker')})"
        if kept:
            message = f"{before}the aggregators keep {version}: loaded by {by}"
        else:
            message = f"{version} is loaded by {by}"
        if outcome.problems:  # pods that did not answer: they load it when they serve again
            message += "; not asked: " + _join_problems(outcome.problems)
        return AppliedState(True, reason_ok, message, spec_hash)
    timeout_s = check.timeout_s
    if check.waited_s.get(spec_hash, 0.0) < timeout_s:
        message = (
            f"{before}{version} written; waiting for the aggregators to load it "
            f"(up to {timeout_s:.0f} s)"
        )
        return AppliedState(False, REASON_PENDING, message, reported)
    message = (
        f"{before}{version} not loaded by the aggregators within {timeout_s:.0f} s: "
        + _join_problems(outcome.problems)
    )
    return AppliedState(
        False, REASON_NOT_LOADED, _truncate(message, CONDITION_MESSAGE_MAX_CHARS), reported
    )


def refresh_applied(
    obj: Mapping[str, Any],
    accepted: Accepted,
    check: ApplyCheck,
    *,
    now: datetime | None = None,
) -> AppliedRefresh | None:
    """``Applied`` decided again for a LogPipeline from newer aggregator reports (between
    reconciles, by a timer); None when it would not change, or when the object's status is
    not about the state's version yet (its reconcile has not finished: that decides it)."""
    metadata = obj.get("metadata") or {}
    generation = int(metadata.get("generation") or 0)
    key = pipeline_key(str(metadata.get("namespace", "")), str(metadata.get("name", "")))
    conditions = _conditions_by_type(obj)
    accepted_cond = conditions.get(ACCEPTED)
    current = accepted.get(key)
    if (
        accepted_cond is None
        or accepted_cond.get("observedGeneration") != generation
        or current is None
    ):
        return None
    kept = accepted_cond.get("status") != "True"
    if not kept and generation_of(current) != generation:
        return None
    state = applied_state(
        key, generation, current, kept=kept, check=check, reported=_status_hash(obj)
    )
    timestamp = _timestamp(now or datetime.now(UTC))
    new = _condition(
        APPLIED, state.ok, state.reason, state.message, generation, timestamp, conditions
    )
    old = conditions.get(APPLIED)
    unchanged = old is not None and all(
        old.get(field) == new[field]
        for field in ("status", "reason", "message", "observedGeneration")
    )
    if unchanged and _status_hash(obj) == state.applied_hash:
        return None
    events: list[Event] = []
    message = _truncate(state.message, EVENT_MESSAGE_MAX_CHARS)
    if state.reason == REASON_NOT_LOADED and (old is None or old.get("reason") != state.reason):
        events.append(Event("Warning", REASON_NOT_LOADED, message))
    elif state.ok and (old is None or old.get("status") != "True"):
        events.append(Event("Normal", state.reason, message))
    status = {
        "appliedHash": state.applied_hash,
        "conditions": [new if type_ == APPLIED else dict(c) for type_, c in conditions.items()]
        + ([] if old is not None else [new]),
    }
    return AppliedRefresh(status, tuple(events), old, new)


def awaits_aggregators(obj: Mapping[str, Any]) -> bool:
    """Whether ``Applied`` is still to be decided by the aggregators' reports: it waits
    (``Pending``, ``NotLoaded``) or is about another generation. Objects that are settled are
    left alone, so a timer runs only for the few that wait."""
    metadata = obj.get("metadata") or {}
    applied = _conditions_by_type(obj).get(APPLIED)
    if applied is None:
        return False
    return applied.get("reason") in (REASON_PENDING, REASON_NOT_LOADED) or applied.get(
        "observedGeneration"
    ) != metadata.get("generation")


def _worker_lag(loaded: LoadedPipeline | None, spec_hash: str) -> str | None:
    """Why one worker does not run ``spec_hash`` (None: it does)."""
    if loaded is not None and loaded.applied_hash == spec_hash:
        return None
    if loaded is None:
        return "has no version of it"
    if loaded.state == "Rejected" and loaded.observed_hash in (spec_hash, None):
        # No hash: its validation refused the file before hashing it (another logferry
        # version's schema, say); the file it read is still most likely this one.
        what = "it" if loaded.observed_hash == spec_hash else "the version it read"
        kept = f", keeps hash {loaded.applied_hash}" if loaded.applied_hash else ""
        return f"rejected {what} ({loaded.reason or 'no reason given'}){kept}"
    if loaded.applied_hash is None:
        return f"has no version of it in force (read hash {loaded.observed_hash}, {loaded.state})"
    return f"still at hash {loaded.applied_hash}"


def _workers_label(names: list[str]) -> str:
    if names == [""]:  # a single-process aggregator: the pod is the worker
        return ""
    return ("worker " if len(names) == 1 else "workers ") + ",".join(names) + " "


def _join_problems(problems: Sequence[str]) -> str:
    shown = list(problems[:MAX_PROBLEMS_SHOWN])
    if len(problems) > MAX_PROBLEMS_SHOWN:
        shown.append(f"and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    return "; ".join(shown)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _status_hash(obj: Mapping[str, Any]) -> str | None:
    status = obj.get("status")
    value = status.get("appliedHash") if isinstance(status, Mapping) else None
    return value if isinstance(value, str) else None


def _state_policy(
    key: str,
    namespace: str,
    accepted: Accepted,
    previous_data: Mapping[str, str],
    candidate_data: Mapping[str, str],
    limits: TenantLimits,
    budget: ConfigMapBudget,
) -> tuple[tuple[Issue, ...], str | None]:
    """The checks that need every accepted pipeline, not just this one: the issues (empty
    when the change passes) and the condition reason for a budget refusal."""
    if key not in accepted:
        # Offline, validate_documents refuses the pipelines last in run order; the operator
        # sees one object at a time, so it refuses the newcomer and never evicts a running one.
        owned = sum(1 for k in accepted if k.startswith(f"{namespace}/"))
        if owned >= limits.max_pipelines:
            return (
                Issue(
                    pipeline=key,
                    path="metadata.namespace",
                    reason=f"tenant {namespace} already has {owned} pipelines; the limit is "
                    f"{limits.max_pipelines}",
                    layer="policy",
                ),
            ), None
    # Only a change that grows is held to the budget: nothing accepted is evicted, and a
    # tenant already over its share (the share was lowered, or the operator restarted with
    # a smaller one) can still fix or shrink what it has.
    tenant_before = configmap_size(previous_data, namespace)
    tenant_after = configmap_size(candidate_data, namespace)
    if tenant_after > budget.tenant_bytes and tenant_after > tenant_before:
        return (
            Issue(
                pipeline=key,
                path="spec",
                reason=f"tenant {namespace}'s pipelines would take {tenant_after} bytes of the "
                f"aggregators' ConfigMap, over its share of {budget.tenant_bytes} bytes "
                f"(they take {tenant_before} bytes now); delete or shrink one of them",
                layer="policy",
            ),
        ), REASON_TENANT_BUDGET
    total_before = configmap_size(previous_data)
    total_after = configmap_size(candidate_data)
    if total_after > budget.total_bytes and total_after > total_before:
        return (
            Issue(
                pipeline=key,
                path="spec",
                reason=f"the rendered pipelines of all tenants would take {total_after} bytes, "
                f"over the aggregators' ConfigMap budget of {budget.total_bytes} bytes",
                layer="policy",
            ),
        ), REASON_CONFIGMAP_BUDGET
    return (), None


def tenant_document(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an API object the tenant wrote and the validator judges.

    The server adds uid, resourceVersion, managedFields, status, kopf's annotations...;
    none of them is the tenant's configuration, so none of them reaches validation or the
    rendered document (a kopf bookkeeping change must not rewrite the ConfigMap).
    """
    metadata = obj.get("metadata") or {}
    tenant_metadata = {"name": metadata.get("name"), "namespace": metadata.get("namespace")}
    if isinstance(metadata.get("generation"), int):
        # Not configuration, but rendered into the ConfigMap: status reports it back.
        tenant_metadata["generation"] = metadata["generation"]
    return {
        "apiVersion": obj.get("apiVersion", API_VERSION),
        "kind": obj.get("kind", KIND),
        "metadata": tenant_metadata,
        "spec": obj.get("spec"),
    }


def rejection_reason(issues: tuple[Issue, ...]) -> str:
    """The condition reason for a rejection: the earliest layer with an issue."""
    for layer, reason in REASON_BY_LAYER.items():
        if any(issue.layer == layer for issue in issues):
            return reason
    return REASON_BY_LAYER["schema"]


def describe_issues(issues: tuple[Issue, ...], generation: int) -> str:
    """A condition message: one ``path: reason`` per issue."""
    lines = [f"{issue.path}: {issue.reason}" for issue in issues] or ["rejected"]
    message = f"generation {generation} rejected: " + "; ".join(lines)
    return _truncate(message, CONDITION_MESSAGE_MAX_CHARS)


def _events(
    obj: Mapping[str, Any],
    accepted_cond: Mapping[str, Any],
    applied_cond: Mapping[str, Any],
    applied_hash: str | None,
    previous: Mapping[str, Any] | None,
) -> tuple[Event, ...]:
    # Only a new verdict makes events: resuming after an operator restart re-reconciles
    # every pipeline, and repeating the same event for each would bury the real ones.
    old = _conditions_by_type(obj).get(ACCEPTED)
    same_verdict = old is not None and all(
        old.get(field) == accepted_cond[field]
        for field in ("status", "reason", "message", "observedGeneration")
    )
    previous_hash = spec_hash_of(previous) if previous is not None else None
    if same_verdict and applied_hash == previous_hash:
        return ()
    if accepted_cond["status"] == "True":
        if applied_cond["reason"] == REASON_APPLIED:
            message = f"{accepted_cond['message']}; applied hash {applied_hash}"
        else:  # written, not loaded yet: the tenant hears of it again when it is
            message = f"{accepted_cond['message']}; {applied_cond['message']}"
        event_type: Literal["Normal", "Warning"] = (
            "Warning" if applied_cond["reason"] == REASON_NOT_LOADED else "Normal"
        )
        return (
            Event(event_type, applied_cond["reason"], _truncate(message, EVENT_MESSAGE_MAX_CHARS)),
        )
    events = [
        Event(
            "Warning",
            accepted_cond["reason"],
            _truncate(accepted_cond["message"], EVENT_MESSAGE_MAX_CHARS),
        )
    ]
    if applied_cond["reason"] in (REASON_KEPT_LAST_KNOWN_GOOD, REASON_NOT_LOADED):
        events.append(
            Event(
                "Warning",
                applied_cond["reason"],
                _truncate(applied_cond["message"], EVENT_MESSAGE_MAX_CHARS),
            )
        )
    return tuple(events)


def _condition(
    type_: str,
    ok: bool,
    reason: str,
    message: str,
    generation: int,
    timestamp: str,
    old_conditions: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    status = "True" if ok else "False"
    old = old_conditions.get(type_)
    # lastTransitionTime moves only when the status flips (the Kubernetes convention).
    if old is not None and old.get("status") == status and old.get("lastTransitionTime"):
        timestamp = str(old["lastTransitionTime"])
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": timestamp,
        "observedGeneration": generation,
    }


def condition_of(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    """The condition ``type_`` of an object's status, if it has one."""
    return _conditions_by_type(obj).get(type_)


def _conditions_by_type(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    status = obj.get("status") or {}
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    if not isinstance(conditions, list):
        return {}
    return {str(c["type"]): c for c in conditions if isinstance(c, Mapping) and "type" in c}


def _annotations(document: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = document.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    return annotations if isinstance(annotations, Mapping) else {}


def _dump(document: Mapping[str, Any]) -> str:
    # Sorted keys and a fixed width: byte-identical output for equal documents, whatever
    # order the tenant wrote map keys (selector labels, add/rename fields) in.
    text: str = yaml.safe_dump(
        document, sort_keys=True, default_flow_style=False, allow_unicode=True, width=4096
    )
    return text


def _timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
