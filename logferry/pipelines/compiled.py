"""Accepted pipelines compiled for batch runs: selection, first-match routing, time budget.

A batch of one tenant's records is split by pipeline (each record goes to the first pipeline,
by ``order`` then name, whose selector matches it) and each pipeline's filter chain runs over
its group, filter by filter. Records matching no pipeline pass unchanged to the tenant's main
index.

Nothing is lost on the way: a filter that raises on a record leaves that record exactly as it
came (it skips the rest of the pipeline) and is counted in ``errors``; a pipeline that runs out
of the batch's time budget passes its whole group on unfiltered, to its own destination, and
sets ``over_budget``. Records are changed in place (copy-on-write at the top level, see
:mod:`.steps`), which is what makes both undoable.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from logferry.pipelines.accounting import Discard, accounting_records
from logferry.pipelines.steps import (
    AddStep,
    BudgetExceeded,
    DropLevelStep,
    GrepStep,
    ParseJsonStep,
    ParseRegexStep,
    PassStep,
    Record,
    RemoveStep,
    RenameStep,
    RunContext,
    SampleStep,
    Step,
)
from logferry.pipelines.whitelist import (
    Add,
    AnyFilter,
    DropLevel,
    Grep,
    Multiline,
    ParseJson,
    ParseRegex,
    Remove,
    Rename,
    Sample,
)

if TYPE_CHECKING:
    from logferry.pipelines.spec import LogPipeline

Clock = Callable[[], float]
_MAX_CACHED_NAMES = 10_000


STEPS: dict[type[Any], Callable[[int, Any], Step]] = {
    Grep: GrepStep,
    ParseJson: ParseJsonStep,
    ParseRegex: ParseRegexStep,
    Add: AddStep,
    Remove: RemoveStep,
    Rename: RenameStep,
    DropLevel: DropLevelStep,
    Sample: SampleStep,
    # Joined at the forwarder, before the spool (forwarder/multiline.py): records arrive
    # here joined already, and the step passes them on as they are.
    Multiline: PassStep,
}


def compile_step(index: int, config: AnyFilter) -> Step:
    """The step for a validated filter config."""
    return STEPS[type(config)](index, config)


def _globs(patterns: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


@dataclass
class GroupResult:
    """What one pipeline did to its group of records."""

    kept: list[Record]
    """Records to write, in group order (restored ones included)."""
    dropped: int = 0
    """Discarded by a filter (grep, drop_level, sample)."""
    errors: list[tuple[int, str]] = field(default_factory=list)
    """(filter index, reason) of each record a filter raised on."""
    over_budget_at: int | None = None
    """Filter index during which the budget ran out (-1: before the first); None if it did not."""
    dropped_by: dict[int, int] = field(default_factory=dict)
    """id() of each discarded record: the index of the filter that discarded it."""


class CompiledPipeline:
    """One accepted LogPipeline, ready to select and process records."""

    __slots__ = (
        "_containers",
        "_labels",
        "_names",
        "_pods",
        "audit",
        "index_suffix",
        "name",
        "namespace",
        "order",
        "spec_hash",
        "step_types",
        "steps",
    )

    def __init__(self, pipeline: LogPipeline, spec_hash: str) -> None:
        spec = pipeline.spec
        self.name = pipeline.metadata.name
        self.namespace = pipeline.metadata.namespace
        self.order = spec.order
        self.spec_hash = spec_hash
        self.index_suffix = spec.destination.index_suffix
        self.audit = spec.destination.audit
        self.steps: tuple[Step, ...] = tuple(
            compile_step(i, cfg) for i, cfg in enumerate(spec.filters)
        )
        self.step_types = tuple(cfg.type for cfg in spec.filters)
        self._pods = _globs(spec.selector.pods)
        self._containers = _globs(spec.selector.containers)
        self._labels = tuple(spec.selector.labels.items())
        # Pods and containers repeat across batches: the glob result is remembered.
        self._names: dict[tuple[str, str], bool] = {}

    def __repr__(self) -> str:
        return f"CompiledPipeline({self.namespace}/{self.name}, order={self.order})"

    def selects(self, record: Record) -> bool:
        """Whether the selector matches the record's pod, container and labels."""
        k8s = record.get("kubernetes")
        if not isinstance(k8s, dict):
            k8s = {}
        pod, container = k8s.get("pod_name"), k8s.get("container_name")
        if not isinstance(pod, str) or not isinstance(container, str):
            return False  # also keeps unhashable junk out of the cache
        names = self._names.get((pod, container))
        if names is None:
            names = (
                self._pods.match(pod) is not None and self._containers.match(container) is not None
            )
            if len(self._names) >= _MAX_CACHED_NAMES:
                self._names.clear()
            self._names[(pod, container)] = names
        if not names:
            return False
        if self._labels:
            labels = k8s.get("labels")
            if not isinstance(labels, dict):
                return False
            return all(labels.get(key) == value for key, value in self._labels)
        return True

    def run_group(self, records: list[Record], deadline: float, clock: Clock) -> GroupResult:
        """Run the filter chain over ``records`` (changed in place) before ``deadline``."""
        snapshots = [dict(r) for r in records]
        ctx = RunContext(deadline, clock)
        flow = records
        try:
            ctx.check(-1)
            dropped_by: dict[int, int] = {}
            for step in self.steps:
                if not flow:
                    break
                before = flow
                flow = step.run(flow, ctx)
                if step.drops and len(flow) < len(before):
                    still = {id(r) for r in flow}
                    for record in before:
                        if id(record) not in still and id(record) not in ctx.failed:
                            dropped_by[id(record)] = step.index
                ctx.check(step.index)
        except BudgetExceeded as exc:
            # Unfiltered, never half-filtered: every record of the group goes back to what it
            # was, including those an earlier filter had already discarded or joined.
            for record, snapshot in zip(records, snapshots, strict=True):
                _restore(record, snapshot)
            return GroupResult(kept=list(records), over_budget_at=exc.index)
        restored: set[int] = set()
        errors: list[tuple[int, str]] = []
        for key, (_record, index, reason) in ctx.failed.items():
            errors.append((index, reason))
            restored.add(key)
        survivors = {id(r) for r in flow}
        result = GroupResult(kept=[], errors=errors, dropped_by=dropped_by)
        for record, snapshot in zip(records, snapshots, strict=True):
            key = id(record)
            if key in restored:
                _restore(record, snapshot)
                result.kept.append(record)
            elif key in survivors:
                result.kept.append(record)
            else:
                result.dropped += 1
        return result


def _restore(record: Record, snapshot: Record) -> None:
    record.clear()
    record.update(snapshot)


@dataclass
class Processed:
    """The outcome of one batch."""

    kept: list[tuple[Record, str | None]]
    """(record, index suffix) in input order; None is the tenant's main index."""
    dropped: int = 0
    """Records discarded by filters."""
    by_pipeline: dict[str, int] = field(default_factory=dict)
    """Records selected by each pipeline (by name), including passed-through ones."""
    over_budget: bool = False
    """A pipeline ran out of the time budget; its records passed through unfiltered."""
    errors: int = 0
    """Records a filter raised on (kept unchanged)."""
    dropped_by_pipeline: dict[str, int] = field(default_factory=dict)
    """Discarded records per pipeline name (only pipelines that discarded any)."""
    over_budget_pipelines: list[str] = field(default_factory=list)
    """Names of the pipelines that ran out of budget."""
    accounting: list[tuple[int, Record]] = field(default_factory=list)
    """(position of the first line it lists, record): the accounting records of the lines
    filters discarded, one per source (see :mod:`.accounting`); their index suffix is
    ``ACCOUNTING_SUFFIX``."""


class TenantPipelines:
    """All accepted pipelines of one tenant, in run order, with a version for the set."""

    __slots__ = ("clock", "pipelines", "tenant", "version")

    def __init__(
        self,
        tenant: str,
        pipelines: Iterable[CompiledPipeline],
        clock: Clock = time.perf_counter,
    ) -> None:
        self.tenant = tenant
        self.pipelines = tuple(sorted(pipelines, key=lambda p: (p.order, p.name)))
        self.clock = clock
        listing = [[p.name, p.order, p.spec_hash] for p in self.pipelines]
        text = json.dumps([tenant, listing], separators=(",", ":"))
        self.version = hashlib.sha256(text.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"TenantPipelines({self.tenant}, {len(self.pipelines)} pipelines, {self.version})"

    def process(
        self, records: list[Record], budget_s: float = 0.5, *, account: bool = False
    ) -> Processed:
        """Run a batch: route each record to its pipeline, filter, and say where it goes.

        Records are changed in place. The budget is for the whole batch; pipelines run in
        order, and those that start after it ran out pass their records through unfiltered.
        With ``account``, the lines filters discard (those that carry ``_lf.src`` and
        ``_lf.seq``) are listed in accounting records, one per source (``Processed.accounting``):
        the drop is then visible, per source and seq, to the proof of delivery.
        """
        discards: list[Discard] = []
        deadline = self.clock() + budget_s
        suffixes: list[str | None] = [None] * len(records)
        keep = [True] * len(records)
        groups: dict[int, list[int]] = {}
        for position, record in enumerate(records):
            for number, pipeline in enumerate(self.pipelines):
                if pipeline.selects(record):
                    groups.setdefault(number, []).append(position)
                    break
        result = Processed(kept=[])
        for number in sorted(groups):
            pipeline = self.pipelines[number]
            positions = groups[number]
            result.by_pipeline[pipeline.name] = len(positions)
            group = [records[p] for p in positions]
            outcome = pipeline.run_group(group, deadline, self.clock)
            if outcome.over_budget_at is not None:
                result.over_budget = True
                result.over_budget_pipelines.append(pipeline.name)
            result.errors += len(outcome.errors)
            if outcome.dropped:
                result.dropped += outcome.dropped
                result.dropped_by_pipeline[pipeline.name] = outcome.dropped
            survivors = {id(r) for r in outcome.kept}
            for position in positions:
                suffixes[position] = pipeline.index_suffix
                keep[position] = id(records[position]) in survivors
                if not keep[position] and account:
                    discard = _discard(records[position], position, pipeline, outcome)
                    if discard is not None:
                        discards.append(discard)
        result.kept = [(r, suffixes[p]) for p, r in enumerate(records) if keep[p]]
        if discards:
            result.accounting = accounting_records(discards)
        return result


def _discard(
    record: Record, position: int, pipeline: CompiledPipeline, outcome: GroupResult
) -> Discard | None:
    """What the accounting record says of a discarded line; None without an identity."""
    lf = record.get("_lf")
    if not isinstance(lf, dict):
        return None
    src, seq = lf.get("src"), lf.get("seq")
    if not isinstance(src, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    k8s = record.get("kubernetes")
    namespace = k8s.get("namespace_name") if isinstance(k8s, dict) else None
    step = outcome.dropped_by.get(id(record), -1)
    return Discard(
        position=position,
        src=src,
        seq=seq,
        namespace=namespace if isinstance(namespace, str) else pipeline.namespace,
        pipeline=pipeline.name,
        filter=step,
        filter_type=pipeline.step_types[step] if step >= 0 else "joined",
    )


def compile_tenants(
    accepted: Iterable[tuple[LogPipeline, str]], clock: Clock = time.perf_counter
) -> dict[str, TenantPipelines]:
    """Compile validated pipelines, each with its spec hash, grouped by tenant."""
    by_tenant: dict[str, list[CompiledPipeline]] = {}
    for pipeline, spec_hash in accepted:
        compiled = CompiledPipeline(pipeline, spec_hash)
        by_tenant.setdefault(compiled.namespace, []).append(compiled)
    return {
        tenant: TenantPipelines(tenant, pipelines, clock)
        for tenant, pipelines in sorted(by_tenant.items())
    }
