"""LogPipeline documents for tests: the plain document a tenant writes, and the object the
Kubernetes API server hands the operator (server-set fields included)."""

from __future__ import annotations

import copy
from typing import Any

VALID_SPEC: dict[str, Any] = {
    "order": 10,
    "selector": {"pods": ["web-*"], "containers": ["app"]},
    "filters": [
        {"type": "grep", "field": "log", "regex": "healthz", "mode": "exclude"},
        {"type": "parse_json", "field": "log", "target": "json"},
        {"type": "add", "fields": {"team": "a"}},
    ],
    "destination": {"indexSuffix": "web"},
}
"""A spec the operator accepts, using selector, filters and destination."""


def log_pipeline(
    name: str = "web",
    filters: list[dict[str, Any]] | None = None,
    *,
    namespace: str = "team-a",
    **spec: Any,
) -> dict[str, Any]:
    """A LogPipeline document: ``filters`` (none by default) and any other ``spec`` keys."""
    return {
        "apiVersion": "logferry.io/v1alpha1",
        "kind": "LogPipeline",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"filters": filters or [], **spec},
    }


def api_object(
    name: str = "web",
    namespace: str = "team-a",
    generation: int = 1,
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A LogPipeline as the API server returns it, server-set fields included; its spec is a
    copy of ``spec`` (default :data:`VALID_SPEC`), so a test may change it freely."""
    obj = log_pipeline(name, namespace=namespace)
    obj["metadata"].update(
        {
            "generation": generation,
            "uid": "0d6f3c7e-8a51-4f7e-9a35-4d0e1f6a2b11",
            "resourceVersion": "4711",
            "creationTimestamp": "2026-11-26T11:00:00Z",
            "finalizers": ["logferry.io/operator"],
            "annotations": {"logferry.io/last-handled-configuration": "{}"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
        }
    )
    obj["spec"] = copy.deepcopy(spec if spec is not None else VALID_SPEC)
    if status is not None:
        obj["status"] = status
    return obj


def with_filter(filter_: dict[str, Any]) -> dict[str, Any]:
    """:data:`VALID_SPEC` with one more filter at the end."""
    spec = copy.deepcopy(VALID_SPEC)
    spec["filters"] = [*spec["filters"], filter_]
    return spec


SCHEMA_INVALID = with_filter({"type": "grep", "regex": "x", "mode": "sometimes"})
"""A spec the schema refuses (an unknown grep mode) in its fourth filter."""
