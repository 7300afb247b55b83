"""The LogPipeline document: what a tenant writes, shaped like the Kubernetes custom resource.

::

    apiVersion: logferry.io/v1alpha1
    kind: LogPipeline
    metadata: {name: web-errors, namespace: team-a}
    spec:
      order: 10
      selector: {pods: ["web-*"], containers: ["*"], labels: {app: web}}
      filters: [{type: grep, field: log, regex: "ERROR|WARN"}]
      destination: {indexSuffix: errors, audit: false}

Keys are camelCase as the CRD has them (pydantic aliases); the Python attributes are
snake_case. This module checks shape and types only (the schema layer); what a tenant is
allowed to do is :mod:`.validate`'s policy layer.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from logferry.common.config import ConfigModel
from logferry.common.naming import NAMESPACE
from logferry.pipelines.whitelist import PipelineFilter

API_VERSION = "logferry.io/v1alpha1"
KIND = "LogPipeline"
SPEC_HASH_ANNOTATION = "logferry.io/spec-hash"

# A Kubernetes object name (RFC 1123 subdomain), kept to 63 characters: it names metrics,
# status entries and files.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?\Z")
# Pod and container names are DNS names; a glob adds * ? and [...] classes.
_GLOB = re.compile(r"^[a-z0-9\-.*?\[\]!]{1,253}\Z")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?\Z")

_STRICT = ConfigDict(strict=True, populate_by_name=True)


class Metadata(ConfigModel):
    """Kubernetes object metadata; the fields the API server adds are accepted and ignored."""

    model_config = _STRICT

    name: str
    """Pipeline name, unique in its namespace."""
    namespace: str
    """The tenant: a pipeline only ever sees and writes its own namespace's records."""
    generation: int | None = Field(default=None, ge=0)
    """Set by Kubernetes; reported back as the observed generation."""
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    """Set by Kubernetes; informational."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Object labels (not record labels); informational."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Object annotations; rendering sets ``logferry.io/spec-hash``."""
    uid: str | None = None
    """Set by Kubernetes; ignored."""
    creation_timestamp: Any = Field(default=None, alias="creationTimestamp")
    """Set by Kubernetes; ignored."""
    deletion_timestamp: Any = Field(default=None, alias="deletionTimestamp")
    """Set by Kubernetes; ignored."""
    deletion_grace_period_seconds: Any = Field(default=None, alias="deletionGracePeriodSeconds")
    """Set by Kubernetes; ignored."""
    managed_fields: Any = Field(default=None, alias="managedFields")
    """Set by Kubernetes; ignored."""
    finalizers: Any = None
    """Set by controllers; ignored."""
    owner_references: Any = Field(default=None, alias="ownerReferences")
    """Set by controllers; ignored."""
    generate_name: Any = Field(default=None, alias="generateName")
    """Ignored."""
    self_link: Any = Field(default=None, alias="selfLink")
    """Ignored."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("a name is lowercase letters, digits, '-' and '.', at most 63")
        return value

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not NAMESPACE.match(value):
            raise ValueError("not a Kubernetes namespace name (lowercase DNS label)")
        return value


class Selector(ConfigModel):
    """Which of the tenant's containers a pipeline applies to; every given part must match."""

    model_config = _STRICT

    pods: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=100)
    """Pod name globs (``web-*``); a record matches if its ``kubernetes.pod_name`` matches one."""
    containers: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=100)
    """Container name globs, matched against ``kubernetes.container_name``."""
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    """Pod labels that must all be equal in ``kubernetes.labels``. A record that carries no
    labels does not match a selector with labels (a filter meant for one app must not run
    on another's records just because their labels are unknown)."""

    @field_validator("pods", "containers")
    @classmethod
    def _check_globs(cls, value: list[str]) -> list[str]:
        for glob in value:
            if not _GLOB.match(glob):
                raise ValueError(
                    f"{glob!r} is not a name glob (lowercase letters, digits, '-', '.', "
                    "'*', '?', '[...]')"
                )
        return value

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not _LABEL_KEY.match(key):
                raise ValueError(f"{key!r} is not a Kubernetes label key")
            if not _LABEL_VALUE.match(label):
                raise ValueError(f"{label!r} (label {key}) is not a Kubernetes label value")
        return value


class Destination(ConfigModel):
    """Where a pipeline's records go: always inside the tenant's own index prefix."""

    model_config = _STRICT

    index_suffix: str | None = Field(default=None, alias="indexSuffix")
    """Index ``<prefix>-<namespace>.<suffix>-YYYY.MM.DD``; none: the tenant's main index."""
    audit: bool = False
    """An audit stream: no filter of the pipeline may discard records (grep, drop_level and
    sample are refused)."""


class PipelineSpec(ConfigModel):
    """What a pipeline does."""

    model_config = _STRICT

    order: int = Field(default=100, ge=0, le=1_000_000)
    """Run order among the tenant's pipelines (lower first; ties by name). A record is
    processed by the first pipeline whose selector matches it, and only by that one."""
    selector: Selector = Field(default_factory=Selector)
    """Which containers' records this pipeline takes."""
    filters: list[PipelineFilter] = Field(default_factory=list, max_length=1000)
    """Filters, applied in this order."""
    destination: Destination = Field(default_factory=Destination)
    """Index suffix and audit flag."""


class LogPipeline(ConfigModel):
    """A tenant's log pipeline (the ``LogPipeline`` custom resource)."""

    model_config = _STRICT

    api_version: Literal["logferry.io/v1alpha1"] = Field(alias="apiVersion")
    """Always ``logferry.io/v1alpha1``."""
    kind: Literal["LogPipeline"]
    """Always ``LogPipeline``."""
    metadata: Metadata
    """Name and namespace (the tenant)."""
    spec: PipelineSpec
    """What the pipeline does."""
    status: dict[str, Any] | None = None
    """Written by the operator; ignored here."""

    @property
    def key(self) -> str:
        """``namespace/name``: how pipelines are named in messages and statuses."""
        return f"{self.metadata.namespace}/{self.metadata.name}"


def normalized_spec(spec: PipelineSpec) -> dict[str, Any]:
    """The spec as plain JSON data with every default filled in, camelCase keys."""
    data: dict[str, Any] = spec.model_dump(mode="json", by_alias=True)
    return data


def spec_hash(spec: PipelineSpec) -> str:
    """A stable hash of the normalized spec: sha256 of its sorted JSON, first 16 hex digits.

    Writing a default explicitly or reordering keys does not change it; any change of
    behaviour does.
    """
    text = json.dumps(normalized_spec(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
