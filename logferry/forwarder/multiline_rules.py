"""Which multiline rule a container's log gets: the tenant's LogPipelines first, then the
pod's ``logferry.io/multiline: <preset>`` annotation, then the forwarder config's rules, then
its default.

Tenants keep declaring ``multiline`` in their LogPipelines; the same validated documents the
aggregators read (the operator's ConfigMap, mounted into the DaemonSet too) are read here, and
the multiline filter of the first pipeline (by order, then name) whose selector matches the
container applies. Its other filters still run at the aggregator. The annotation needs the
pod's metadata (``kubernetes.enabled``): a new file waits for it before its first read.

The directory is read again every ``reload_interval_s``; a document that is refused is
skipped with a warning (the operator only publishes accepted ones, so this means a hand
edit), and the last accepted version of a pipeline stays in force. A rule applies to files
opened after it changed: an open file keeps the rule it was opened with until it rotates, so
the joins of one file never change half-way through.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from logferry.common.config import ConfigModel
from logferry.common.logs import get_logger
from logferry.common.units import ByteSize, KiB
from logferry.forwarder.metadata import ContainerMeta
from logferry.forwarder.multiline import PRESETS, MultilineRule
from logferry.pipelines.loading import load_directory
from logferry.pipelines.spec import LogPipeline
from logferry.pipelines.validate import validate_documents
from logferry.pipelines.whitelist import Multiline

log = get_logger(__name__)

__all__ = ["MultilineRuleSettings", "MultilineSettings", "RuleBook"]

PresetName = Literal["java", "python", "go"]
MULTILINE_ANNOTATION = "logferry.io/multiline"
"""A pod annotation naming a preset (``java``, ``python``, ``go``) for its containers."""


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
    return value


class MultilineRuleSettings(ConfigModel):
    """One rule of the forwarder config: containers it covers and how lines continue."""

    namespaces: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    """Namespace globs."""
    pods: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    """Pod name globs."""
    containers: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    """Container name globs."""
    preset: PresetName | None = None
    """A built-in rule: ``java``, ``python`` or ``go``."""
    start: str | None = None
    """Regular expression of a record's first line (others continue it)."""
    continuation: str | None = None
    """Regular expression of a continuation line (others start a record)."""

    _check = field_validator("start", "continuation")(_check_regex)

    @model_validator(mode="after")
    def _one_way(self) -> MultilineRuleSettings:
        given = [self.preset is not None, self.start is not None, self.continuation is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of preset, start or continuation")
        return self

    def rule(self) -> MultilineRule:
        if self.preset is not None:
            return MultilineRule.preset(self.preset)
        return MultilineRule.of("config", self.start, self.continuation)

    def covers(self, meta: ContainerMeta) -> bool:
        return (
            _any(meta.namespace_name, self.namespaces)
            and _any(meta.pod_name, self.pods)
            and _any(meta.container_name, self.containers)
        )


class MultilineSettings(ConfigModel):
    """Joining continuation lines (stack traces) at the source, before the spool."""

    default: Literal["none", "java", "python", "go"] = "none"
    """The rule of every container no tenant pipeline and no ``rules`` entry covers."""
    rules: list[MultilineRuleSettings] = Field(default_factory=list)
    """Rules for some containers; the first that covers a container applies."""
    pipelines_directory: Path | None = None
    """The tenants' LogPipelines (the operator's ConfigMap): their ``multiline`` filters apply
    here, first of all."""
    reload_interval_s: float = Field(default=10.0, gt=0, le=3600)
    """How often ``pipelines_directory`` is read again."""
    flush_timeout_s: float = Field(default=1.0, ge=0.05, le=60)
    """A continuation more than this after the line before it starts a new record; an idle
    file's last record goes out this long (and a margin) after its last line."""
    max_lines: int = Field(default=500, ge=2, le=10_000)
    """Most lines in one joined record; past it a new record starts (never dropped)."""
    max_bytes: ByteSize = Field(default=256 * KiB, ge=4 * KiB, le=16 * 1024 * KiB)
    """Most bytes of text in one joined record; past it a new record starts."""


def _any(name: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs)


@dataclass(frozen=True, slots=True)
class _TenantRule:
    namespace: str
    order: tuple[int, str]
    pods: tuple[str, ...]
    containers: tuple[str, ...]
    rule: MultilineRule


class RuleBook:
    """The rules in force; :meth:`rule_for` at each file's opening."""

    def __init__(self, settings: MultilineSettings) -> None:
        self.settings = settings
        self._config = [(item, item.rule()) for item in settings.rules]
        self._default = (
            MultilineRule.preset(settings.default) if settings.default in PRESETS else None
        )
        self._tenants: list[_TenantRule] = []
        self._digest = ""
        self._refused: set[str] = set()
        self.refused_documents = 0
        """Pipeline documents refused on reading (counted once per version)."""

    def rule_for(
        self, meta: ContainerMeta, annotations: Mapping[str, str] | None = None
    ) -> MultilineRule | None:
        """The rule for a container's log, or None (every line on its own): the tenant's
        pipelines, then the pod's ``logferry.io/multiline: <preset>`` annotation, then the
        config's rules and default."""
        for tenant in self._tenants:
            if (
                tenant.namespace == meta.namespace_name
                and _any(meta.pod_name, list(tenant.pods))
                and _any(meta.container_name, list(tenant.containers))
            ):
                return tenant.rule
        preset = (annotations or {}).get(MULTILINE_ANNOTATION, "")
        if preset in PRESETS:
            return MultilineRule.preset(preset)
        for item, rule in self._config:
            if item.covers(meta):
                return rule
        return self._default

    def reload(self) -> bool:
        """Read the pipelines directory again; True if the tenants' rules changed."""
        directory = self.settings.pipelines_directory
        if directory is None:
            return False
        documents = load_directory(directory)
        digest = hashlib.sha256(repr(documents).encode()).hexdigest()
        if digest == self._digest:
            return False
        self._digest = digest
        before = {t.rule.name: t for t in self._tenants}
        rules: dict[str, _TenantRule] = {}
        for verdict in validate_documents(documents):
            if verdict.ok and verdict.spec is not None:
                rule = _tenant_rule(verdict.spec)
                if rule is not None:
                    rules[verdict.pipeline] = rule
                continue
            if verdict.pipeline in before:  # last known good
                rules[verdict.pipeline] = before[verdict.pipeline]
            marker = f"{verdict.pipeline}:{verdict.source}:{verdict.spec_hash}"
            if marker not in self._refused:
                self._refused.add(marker)
                self.refused_documents += 1
                log.warning(
                    "multiline.pipeline_refused",
                    pipeline=verdict.pipeline,
                    source=verdict.source,
                    reason="; ".join(issue.reason for issue in verdict.issues)[:300],
                    kept="the pipeline's last accepted version, if any",
                )
        self._tenants = sorted(rules.values(), key=lambda t: (t.namespace, t.order))
        log.info("multiline.rules_loaded", tenants=len(self._tenants))
        return True


def _tenant_rule(pipeline: LogPipeline) -> _TenantRule | None:
    spec = pipeline.spec
    for item in spec.filters:
        if isinstance(item, Multiline):
            key = f"{pipeline.metadata.namespace}/{pipeline.metadata.name}"
            return _TenantRule(
                pipeline.metadata.namespace,
                (spec.order, pipeline.metadata.name),
                tuple(spec.selector.pods),
                tuple(spec.selector.containers),
                MultilineRule.of(key, item.start, None, item.max_lines),
            )
    return None
