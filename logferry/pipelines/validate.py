"""Validation of LogPipeline documents in three layers, each error naming the pipeline, the
field path and the reason.

1. **schema**: shape, types, ranges, regexes (compiled, size-bounded, probed for catastrophic
   backtracking, see :mod:`.regexes`);
2. **policy**: what a tenant may do: only its own namespace, an index suffix that can only
   ever name an index inside its own prefix, no dropping filter in an audit stream, and the
   per-tenant limits (pipelines, filters, regex size);
3. **dry run**: the compiled pipeline over sample records within a time budget; a filter that
   raises or is too slow refuses the pipeline.

A layer runs only when the one before passed (a policy on a malformed document would only
repeat the schema's errors), except the checks on the raw document that catch a cross-tenant
attempt, which are always reported. The operator and the offline command
(``logferry pipelines validate``) call the same functions.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import ValidationError

from logferry.common.config import error_reason, format_path
from logferry.common.naming import SUFFIX, IndexNamer
from logferry.pipelines.accounting import RESERVED_SUFFIX_PREFIX
from logferry.pipelines.compiled import CompiledPipeline
from logferry.pipelines.loading import LoadFailure, load_directory
from logferry.pipelines.samples import builtin_samples
from logferry.pipelines.spec import LogPipeline, spec_hash
from logferry.pipelines.whitelist import DROPPING_TYPES, regex_fields

__all__ = [
    "DRY_RUN_BUDGET_S",
    "Issue",
    "TenantLimits",
    "Verdict",
    "accepted",
    "label_selector_warning",
    "load_directory",
    "validate_document",
    "validate_documents",
]

Layer = Literal["schema", "policy", "dry_run"]
DRY_RUN_BUDGET_S = 0.2
"""Time the dry run may take over the sample records."""

# Keys a tenant might use to reach outside its namespace; refused with the policy's reason
# rather than a bare "unknown key", so the author learns why.
_NAMESPACE_KEYS = frozenset({"namespace", "namespaces", "namespaceSelector"})
_INDEX_KEYS = frozenset({"index", "indexName", "indexPrefix", "namespace", "tenant"})


@dataclass(frozen=True)
class Issue:
    """One reason a pipeline is refused."""

    pipeline: str
    """``namespace/name`` (``?`` where the document does not say)."""
    path: str
    """Field path in the document, e.g. ``spec.filters[2].regex``; empty for the whole."""
    reason: str
    layer: Layer


@dataclass(frozen=True)
class Verdict:
    """The outcome of validating one document."""

    pipeline: str
    ok: bool
    issues: tuple[Issue, ...]
    spec_hash: str | None
    """Hash of the normalized spec, when the schema accepted it."""
    spec: LogPipeline | None
    """The parsed document, when the schema accepted it (also if a later layer refused)."""
    source: str
    """Where it came from: ``file:N`` (document N of the file)."""


@dataclass(frozen=True)
class TenantLimits:
    """Per-tenant limits (the policy layer)."""

    max_pipelines: int = 20
    """Pipelines per tenant (namespace)."""
    max_filters: int = 30
    """Filters per pipeline."""
    max_regex_chars: int = 1000
    """Characters of one regular expression."""

    @property
    def max_pipelines_per_tenant(self) -> int:
        """Alias of ``max_pipelines`` (both spellings are in use by callers)."""
        return self.max_pipelines

    @property
    def max_filters_per_pipeline(self) -> int:
        """Alias of ``max_filters``."""
        return self.max_filters


def _label(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    namespace, name = meta.get("namespace"), meta.get("name")
    namespace = namespace if isinstance(namespace, str) else "?"
    return f"{namespace}/{name if isinstance(name, str) else '?'}"


def _loc_path(loc: Sequence[int | str], doc: Any) -> str:
    """pydantic's error location as a document path, without the union tags it inserts
    (``spec.filters[0].grep.regex`` -> ``spec.filters[0].regex``)."""
    parts: list[int | str] = []
    node = doc
    for part in loc:
        if (
            isinstance(part, str)
            and isinstance(node, Mapping)
            and part not in node
            and (node.get("type") == part or "[" in part)
        ):
            continue  # the discriminator value or a validator tag, not a key
        parts.append(part)
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return format_path(parts)


def _schema_issues(exc: ValidationError, doc: Mapping[str, Any], label: str) -> list[Issue]:
    issues = []
    for error in exc.errors(include_url=False):
        issues.append(Issue(label, _loc_path(error["loc"], doc), error_reason(error), "schema"))
    return issues


def _raw_policy(doc: Mapping[str, Any], label: str, namespace: str | None) -> list[Issue]:
    issues = []
    meta = doc.get("metadata")
    actual = meta.get("namespace") if isinstance(meta, Mapping) else None
    if namespace is not None and actual is not None and actual != namespace:
        issues.append(
            Issue(
                label,
                "metadata.namespace",
                f"pipeline is in namespace {actual!r} but only {namespace!r} may be configured "
                "here: a tenant configures its own namespace only",
                "policy",
            )
        )
    spec = doc.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    for section, keys, reason in (
        (
            "selector",
            _NAMESPACE_KEYS,
            "a selector cannot name namespaces: a pipeline only ever sees records of its "
            "own namespace",
        ),
        (
            "destination",
            _INDEX_KEYS,
            "a destination names only an index suffix: the index is always "
            "<prefix>-<namespace>.<suffix>-YYYY.MM.DD of the pipeline's own namespace",
        ),
    ):
        part = spec.get(section)
        if isinstance(part, Mapping):
            for key in sorted(k for k in part if k in keys):
                issues.append(Issue(label, f"spec.{section}.{key}", reason, "policy"))
    return issues


def _policy(pipeline: LogPipeline, label: str, limits: TenantLimits) -> list[Issue]:
    issues = []
    spec = pipeline.spec
    suffix = spec.destination.index_suffix
    if suffix is not None:
        namer = IndexNamer("logs")
        if not SUFFIX.match(suffix):
            issues.append(
                Issue(
                    label,
                    "spec.destination.indexSuffix",
                    f"index suffix {suffix!r} must be 1-32 lowercase letters, digits or '-' "
                    "(no dots, no slashes): it only ever extends the tenant's own index name",
                    "policy",
                )
            )
        elif suffix.startswith(RESERVED_SUFFIX_PREFIX):
            issues.append(
                Issue(
                    label,
                    "spec.destination.indexSuffix",
                    f"index suffix {suffix!r}: suffixes starting with "
                    f"{RESERVED_SUFFIX_PREFIX!r} are logferry's own (accounting records)",
                    "policy",
                )
            )
        elif namer.tenant_of_index(namer.index(pipeline.metadata.namespace, 0, suffix)) != (
            pipeline.metadata.namespace
        ):
            # Belt and braces: the routing module must read the tenant back from the name.
            issues.append(
                Issue(
                    label,
                    "spec.destination.indexSuffix",
                    "index suffix would name another tenant's index",
                    "policy",
                )
            )
    if len(spec.filters) > limits.max_filters:
        issues.append(
            Issue(
                label,
                "spec.filters",
                f"{len(spec.filters)} filters; the limit is {limits.max_filters} per pipeline",
                "policy",
            )
        )
    for number, config in enumerate(spec.filters):
        if spec.destination.audit and config.type in DROPPING_TYPES:
            issues.append(
                Issue(
                    label,
                    f"spec.filters[{number}].type",
                    f"an audit pipeline may not discard records, and {config.type!r} does "
                    "(audit streams are never sampled or dropped by a filter)",
                    "policy",
                )
            )
        for key, pattern in regex_fields(config):
            if len(pattern) > limits.max_regex_chars:
                issues.append(
                    Issue(
                        label,
                        f"spec.filters[{number}].{key}",
                        f"regular expression is {len(pattern)} characters; the limit is "
                        f"{limits.max_regex_chars}",
                        "policy",
                    )
                )
    return issues


def _dry_run(
    pipeline: LogPipeline, hash_: str, label: str, samples: Sequence[dict[str, Any]] | None
) -> list[Issue]:
    records = copy.deepcopy(list(samples)) if samples is not None else None
    if records is None:
        records = builtin_samples(pipeline.metadata.namespace)
    compiled = CompiledPipeline(pipeline, hash_)
    clock = time.perf_counter
    # The selector is not applied: the point is to run every filter over every shape.
    outcome = compiled.run_group(records, clock() + DRY_RUN_BUDGET_S, clock)
    issues = []
    if outcome.over_budget_at is not None:
        at = outcome.over_budget_at
        issues.append(
            Issue(
                label,
                f"spec.filters[{at}]" if at >= 0 else "spec.filters",
                f"took over {DRY_RUN_BUDGET_S * 1000:.0f} ms on {len(records)} sample records",
                "dry_run",
            )
        )
    reported: set[int] = set()
    for index, reason in outcome.errors:
        if index not in reported:
            reported.add(index)
            issues.append(
                Issue(
                    label,
                    f"spec.filters[{index}]",
                    f"failed on a sample record: {reason}",
                    "dry_run",
                )
            )
    return issues


def _refused(
    label: str,
    source: str,
    issues: Sequence[Issue],
    pipeline: LogPipeline | None = None,
    hash_: str | None = None,
) -> Verdict:
    return Verdict(label, False, tuple(issues), hash_, pipeline, source)


def validate_document(
    doc: Mapping[str, Any],
    *,
    source: str = "<document>",
    namespace: str | None = None,
    limits: TenantLimits = TenantLimits(),  # frozen: safe to share
    samples: Sequence[dict[str, Any]] | None = None,
) -> Verdict:
    """Validate one document through the three layers.

    ``namespace``, when given, is the only namespace the document may be in (a per-tenant
    directory, or the namespace the operator read the object from). ``samples`` are records
    for the dry run (the tenant's recent ones); the built-in samples otherwise. The per-tenant
    pipeline count and duplicate names need every document: see :func:`validate_documents`.
    """
    if isinstance(doc, LoadFailure):
        return _refused("?/?", source, [Issue("?/?", "", doc.reason, "schema")])
    if not isinstance(doc, Mapping):
        reason = f"a document must be a mapping (a LogPipeline), not {type(doc).__name__}"
        return _refused("?/?", source, [Issue("?/?", "", reason, "schema")])
    label = _label(doc)
    raw = _raw_policy(doc, label, namespace)
    try:
        pipeline = LogPipeline.model_validate(dict(doc))
    except ValidationError as exc:
        flagged = {issue.path for issue in raw}
        schema = [i for i in _schema_issues(exc, doc, label) if i.path not in flagged]
        return _refused(label, source, schema + raw)
    hash_ = spec_hash(pipeline.spec)
    if raw:
        return _refused(label, source, raw, pipeline, hash_)
    policy = _policy(pipeline, label, limits)
    if policy:
        return _refused(label, source, policy, pipeline, hash_)
    dry = _dry_run(pipeline, hash_, label, samples)
    if dry:
        return _refused(label, source, dry, pipeline, hash_)
    return Verdict(label, True, (), hash_, pipeline, source)


def _add(verdict: Verdict, issue: Issue) -> Verdict:
    return replace(verdict, ok=False, issues=(*verdict.issues, issue))


def validate_documents(
    docs: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    namespace: str | None = None,
    limits: TenantLimits = TenantLimits(),  # frozen: safe to share
    samples_for: Callable[[str], Sequence[Mapping[str, Any]]] | None = None,
) -> list[Verdict]:
    """Validate ``(source, document)`` pairs, then the checks that need all of them: a
    ``namespace/name`` defined twice refuses every copy (which one is meant is not ours to
    guess; the tenant keeps its last good one), and a tenant over its pipeline limit has the
    pipelines last in run order refused. Verdicts come back in input order.

    ``samples_for(namespace)`` gives the dry run the tenant's own recent records (the built-in
    samples when it returns none)."""
    verdicts = [
        validate_document(
            doc,
            source=src,
            namespace=namespace,
            limits=limits,
            samples=_samples(samples_for, doc),
        )
        for src, doc in docs
    ]
    by_key: dict[str, list[int]] = {}
    for number, verdict in enumerate(verdicts):
        if verdict.spec is not None:
            by_key.setdefault(verdict.spec.key, []).append(number)
    for key, numbers in by_key.items():
        if len(numbers) > 1:
            for number in numbers:
                others = ", ".join(verdicts[n].source for n in numbers if n != number)
                verdicts[number] = _add(
                    verdicts[number],
                    Issue(
                        key,
                        "metadata.name",
                        f"{key} is defined more than once (also in {others})",
                        "policy",
                    ),
                )
    by_tenant: dict[str, list[int]] = {}
    for number, verdict in enumerate(verdicts):
        if verdict.ok and verdict.spec is not None:
            by_tenant.setdefault(verdict.spec.metadata.namespace, []).append(number)
    for tenant, numbers in by_tenant.items():
        if len(numbers) <= limits.max_pipelines:
            continue
        ranked = sorted(numbers, key=lambda n: _run_order(verdicts[n]))
        for number in ranked[limits.max_pipelines :]:
            verdicts[number] = _add(
                verdicts[number],
                Issue(
                    verdicts[number].pipeline,
                    "metadata.namespace",
                    f"tenant {tenant} has {len(numbers)} pipelines; the limit is "
                    f"{limits.max_pipelines} (those last in run order are refused)",
                    "policy",
                ),
            )
    return verdicts


def label_selector_warning(verdict: Verdict) -> str | None:
    """What to say about an accepted pipeline whose selector uses pod labels when the
    forwarders do not ship them (``kubernetes.enabled: false``): it can match no record."""
    spec = verdict.spec
    if not verdict.ok or spec is None or not spec.spec.selector.labels:
        return None
    return (
        "spec.selector.labels: the forwarders do not ship pod labels (their "
        "kubernetes.enabled is false), so this pipeline matches no record from them"
    )


def accepted(verdicts: Iterable[Verdict]) -> list[tuple[LogPipeline, str]]:
    """The accepted pipelines of ``verdicts`` with their spec hashes, to compile."""
    return [
        (verdict.spec, verdict.spec_hash)
        for verdict in verdicts
        if verdict.ok and verdict.spec is not None and verdict.spec_hash is not None
    ]


def _run_order(verdict: Verdict) -> tuple[int, str]:
    assert verdict.spec is not None
    return verdict.spec.spec.order, verdict.spec.metadata.name


def _samples(
    samples_for: Callable[[str], Sequence[Mapping[str, Any]]] | None, doc: Mapping[str, Any]
) -> Sequence[dict[str, Any]] | None:
    if samples_for is None:
        return None
    metadata = doc.get("metadata") if isinstance(doc, Mapping) else None
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    if not isinstance(namespace, str):
        return None
    recent = [dict(record) for record in samples_for(namespace)]
    return recent or None
