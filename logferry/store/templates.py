"""logferry's composable index template: explicit mappings for every index it writes.

Without it, dynamic mapping makes ``_lf.src`` a text field (verify would need a ``.keyword``
sub-field), cuts nanosecond ``@timestamp`` to milliseconds, lets one tenant's parsed JSON grow
a mapping without end, and, on Elasticsearch 8/9, lets the built-in ``logs`` template (pattern
``logs-*-*``, priority 100) turn ``logs-<tenant>-<date>`` into data streams with its own
mappings. The template's priority is above that one, its pattern is the index prefix's, and it
carries a version and a hash of its body in ``_meta``: installing it is idempotent, and a newer
logferry's template is never replaced by an older one's.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from logferry.common.logs import get_logger
from logferry.store.client import StoreClient
from logferry.store.settings import IndexSettings

log = get_logger(__name__)

__all__ = [
    "TEMPLATE_VERSION",
    "ensure_template",
    "ensure_templates",
    "sealed",
    "template_body",
    "template_name",
]

TEMPLATE_VERSION = 3
"""Bumped whenever the mappings change in a way older aggregators must not undo (3: the
checkpoint fields). An aggregator installs its template over any older version, so a
store gets the new mappings from the first aggregator upgraded; indices made before keep
their own until they roll over to the next period."""

_KEYWORD = {"type": "keyword"}
_BOOLEAN = {"type": "boolean"}
_LONG = {"type": "long"}
_OPAQUE = {"type": "object", "enabled": False}


def template_name(prefix: str) -> str:
    """The template's name for indices ``<prefix>-*``."""
    return f"logferry-{prefix}"


def template_body(prefix: str, settings: IndexSettings) -> dict[str, Any]:
    """The composable index template for ``<prefix>-*`` (see the module docstring)."""
    body: dict[str, Any] = {
        "index_patterns": [f"{prefix}-*"],
        "priority": settings.template_priority,
        "version": TEMPLATE_VERSION,
        "template": {
            "settings": {
                "index": {
                    "number_of_shards": settings.shards,
                    "number_of_replicas": settings.replicas,
                    "mapping": {"total_fields": {"limit": settings.total_fields_limit}},
                }
            },
            "mappings": _mappings(),
        },
    }
    return sealed(body)


def sealed(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with ``_meta`` naming logferry and a hash of the rest (what
    :func:`ensure_template` compares)."""
    rest = {key: value for key, value in body.items() if key != "_meta"}
    digest = hashlib.sha256(orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return {**rest, "_meta": {"managed_by": "logferry", "hash": digest[:16]}}


def _mappings() -> dict[str, Any]:
    return {
        "dynamic_templates": [
            # Record identity and Kubernetes metadata are looked up and aggregated on, never
            # searched as prose; numbers stay numbers (dynamic mapping gives them long/float).
            {"lf": {"path_match": "_lf.*", "match_mapping_type": "string", "mapping": _KEYWORD}},
            {
                "kubernetes": {
                    "path_match": "kubernetes.*",
                    "match_mapping_type": "string",
                    "mapping": {"type": "keyword", "ignore_above": 1024},
                }
            },
            # Fields tenant pipelines parse out: searchable text with a short keyword for
            # aggregations; the total-fields limit bounds how many there can be.
            {
                "strings": {
                    "match_mapping_type": "string",
                    "mapping": {
                        "type": "text",
                        "fields": {"keyword": {"type": "keyword", "ignore_above": 256}},
                    },
                }
            },
        ],
        "properties": {
            "@timestamp": {"type": "date_nanos"},
            # Kept as it came: it is there because it was outside any sensible time range.
            "@timestamp_original": _KEYWORD,
            "log": {"type": "text"},
            "stream": _KEYWORD,
            "kubernetes": {
                "properties": {
                    name: _KEYWORD
                    for name in (
                        "namespace_name",
                        "pod_name",
                        "container_name",
                        "container_id",
                        "host",
                    )
                }
            },
            "_lf": {
                "properties": {
                    "id": _KEYWORD,
                    "src": _KEYWORD,
                    "seq": _LONG,
                    "seq_end": _LONG,
                    "kind": _KEYWORD,
                    # A kind a peer sent that logferry does not take as its own.
                    "wire_kind": _KEYWORD,
                    "lines": _LONG,
                    # Checkpoints: how far a source is durable, and how it ended. The auditor
                    # aggregates on them: their types must not hang on the first document of
                    # each index (dynamic mapping).
                    "next_seq": _LONG,
                    "state": _KEYWORD,
                    "lost_lines": _LONG,
                    # Free text from the forwarder: past this it is kept in _source only.
                    "reason": {"type": "keyword", "ignore_above": 1024},
                    "node": _KEYWORD,
                    # Read from _source by verify, never searched: no fields of their own.
                    "discarded": _OPAQUE,
                    "filtered_by": _KEYWORD,
                    "folded_into": _KEYWORD,
                    "truncated": _BOOLEAN,
                    "malformed": _BOOLEAN,
                    "partial_at_eof": _BOOLEAN,
                }
            },
            "rerouted": {"properties": {"from": _KEYWORD, "reason": _KEYWORD}},
            # Maps of any shape from peers and failed renders: kept in _source, not indexed,
            # so they never add fields to the mapping.
            "fluent_metadata": _OPAQUE,
            "fluent_metadata_wire": _OPAQUE,
            "unrenderable": _OPAQUE,
        },
    }


async def ensure_templates(
    client: StoreClient, templates: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """:func:`ensure_template` for each of ``templates`` (name: body); the outcomes."""
    return {name: await ensure_template(client, name, body) for name, body in templates.items()}


async def ensure_template(client: StoreClient, name: str, body: dict[str, Any]) -> str:
    """Install the template unless the store already has this one or a newer version;
    what happened: ``installed``, ``current`` or ``newer_kept``. Raises StoreError."""
    status, answer = await client.call("GET", f"/_index_template/{name}", accept=(404,))
    if status == 200:
        found: dict[str, Any] = next(iter((answer or {}).get("index_templates") or []), {})
        existing: dict[str, Any] = found.get("index_template") or {}
        version = int(existing.get("version") or 0)
        if version > TEMPLATE_VERSION:
            log.warning(
                "store.template_newer_kept", template=name, found=version, ours=TEMPLATE_VERSION
            )
            return "newer_kept"
        if version == TEMPLATE_VERSION and (existing.get("_meta") or {}) == body["_meta"]:
            return "current"
    await client.request("PUT", f"/_index_template/{name}", body)
    log.info("store.template_installed", template=name, version=TEMPLATE_VERSION)
    return "installed"
