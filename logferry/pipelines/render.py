"""Rendering accepted pipelines as one normalized YAML stream: what the operator writes into
the ConfigMap the aggregators mount, and what ``logferry pipelines render`` prints.

Normalized means every default filled in, keys in a fixed order, and only the metadata that
matters downstream (name, namespace, generation, and the ``logferry.io/spec-hash``
annotation), so two equivalent inputs render to the same bytes and a ConfigMap only changes
when behaviour does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from logferry.pipelines.spec import (
    API_VERSION,
    KIND,
    SPEC_HASH_ANNOTATION,
    normalized_spec,
)
from logferry.pipelines.validate import Verdict


def rendered_document(verdict: Verdict) -> dict[str, Any]:
    """The normalized document of one accepted verdict."""
    if not verdict.ok or verdict.spec is None or verdict.spec_hash is None:
        raise ValueError(f"{verdict.pipeline} is not accepted; only accepted ones are rendered")
    meta = verdict.spec.metadata
    metadata: dict[str, Any] = {"name": meta.name, "namespace": meta.namespace}
    if meta.generation is not None:
        metadata["generation"] = meta.generation
    metadata["annotations"] = {SPEC_HASH_ANNOTATION: verdict.spec_hash}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": normalized_spec(verdict.spec.spec),
    }


def render(verdicts: Iterable[Verdict]) -> str:
    """Accepted verdicts as one YAML document stream, sorted by namespace, order, name."""
    accepted = [v for v in verdicts if v.ok and v.spec is not None]
    accepted.sort(
        key=lambda v: (
            v.spec.metadata.namespace if v.spec else "",
            v.spec.spec.order if v.spec else 0,
            v.spec.metadata.name if v.spec else "",
        )
    )
    documents = [rendered_document(v) for v in accepted]
    if not documents:
        return ""
    text: str = yaml.safe_dump_all(
        documents, sort_keys=False, explicit_start=True, allow_unicode=True, width=1000
    )
    return text
