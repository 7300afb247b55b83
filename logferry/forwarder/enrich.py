"""A file's ``kubernetes`` map: what its name says, plus its pod's metadata when known.

The keys are Fluent Bit's: ``labels``, ``annotations``, ``pod_id``, ``container_image``,
``container_hash``. The map is built once per file (and again when the pod's metadata
arrives or changes), encoded once, and embedded in every record of the file: enrichment
costs nothing per line. Routing never depends on it: the tenant is the namespace of the path.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from logferry.forwarder.metadata import ContainerMeta
from logferry.forwarder.podwatch import PodInfo

__all__ = ["EXCLUDE_ANNOTATION", "enriched", "excluded_by_annotation", "pod_uid"]

EXCLUDE_ANNOTATION = "logferry.io/exclude"
_POD_DIR = re.compile(r"/[^/_]+_[^/_]+_(?P<uid>[^/_]+)/[^/]+/[^/]+\Z")


def pod_uid(real_path: str) -> str | None:
    """The pod uid from kubelet's ``pods/<ns>_<pod>_<uid>/<container>/<n>.log`` path."""
    found = _POD_DIR.search(real_path)
    return found["uid"] if found else None


def _picked(values: dict[str, str], globs: list[str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if any(fnmatch.fnmatchcase(k, g) for g in globs)}


def enriched(
    meta: ContainerMeta,
    info: PodInfo | None,
    *,
    labels: list[str],
    annotations: list[str],
    namespace: PodInfo | None = None,
) -> dict[str, Any]:
    """The record's ``kubernetes`` map; ``metadata_incomplete`` when the pod is unknown.
    ``namespace``: the namespace's labels go to ``namespace_labels``."""
    record: dict[str, Any] = dict(meta.as_record())
    if namespace is not None and namespace.labels:
        record["namespace_labels"] = dict(namespace.labels)
    if info is None:
        record["metadata_incomplete"] = True
        return record
    record["pod_id"] = info.uid
    picked = _picked(info.labels, labels)
    if picked:
        record["labels"] = picked
    noted = _picked(info.annotations, annotations)
    if noted:
        record["annotations"] = noted
    image = info.images.get(meta.container_name)
    if image is not None:
        record["container_image"] = image[0]
        if image[1]:
            record["container_hash"] = image[1]
    return record


def excluded_by_annotation(info: PodInfo | None) -> bool:
    """``logferry.io/exclude: "true"`` on the pod."""
    return info is not None and info.annotations.get(EXCLUDE_ANNOTATION, "").lower() == "true"
