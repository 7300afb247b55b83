"""An OpenSearch store seeded by hand for the proof's tests (``logferry verify``, the
auditor): documents shaped like the aggregator's (logferry's index template, ``_id`` =
``_lf.id``), joined records, accounting and checkpoint records, and the ``store`` fixture
that installs the template first."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
import orjson
import pytest

from devtools.opensearch_node import OpenSearchNode
from logferry.common.records import record_id
from logferry.common.store_access import StoreAccess
from logferry.store.client import open_store
from logferry.store.lifecycle import templates_for
from logferry.store.settings import IndexSettings
from logferry.store.templates import ensure_templates

NODE = "node-vt"


def pod_log(ns: str, pod: str) -> str:
    return f"/var/log/containers/{pod}_{ns}_app-{'b' * 64}.log"


def document(src: str, seq: int, ns: str, stamp: str, offset: int | None = None) -> dict[str, Any]:
    """A document as the aggregator writes it (``_lf.id`` from the line's byte offset)."""
    return {
        "@timestamp": stamp,
        "log": f"line {seq}",
        "stream": "stdout",
        "kubernetes": {
            "namespace_name": ns,
            "pod_name": "web-1",
            "container_name": "app",
            "host": NODE,
        },
        "_lf": {
            "id": record_id(src, seq * 100 if offset is None else offset),
            "src": src,
            "seq": seq,
        },
    }


class Store:
    """Bulk-indexing and one raw aggregation, over aiohttp."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self._session = session

    async def index(self, index: str, docs: Iterable[dict[str, Any]]) -> None:
        lines: list[bytes] = []
        for doc in docs:
            lines.append(orjson.dumps({"create": {"_index": index, "_id": doc["_lf"]["id"]}}))
            lines.append(orjson.dumps(doc))
        for start in range(0, len(lines), 20_000):
            body = b"\n".join(lines[start : start + 20_000]) + b"\n"
            async with self._session.post(
                f"{self.url}/_bulk",
                data=io.BytesIO(body),
                headers={"Content-Type": "application/x-ndjson"},
            ) as response:
                payload = await response.json()
            assert response.status == 200, payload
            assert not payload["errors"], [i for i in payload["items"] if "error" in i["create"]]

    async def raw_cardinality(self, index: str, src: str, block: int) -> int:
        """What the plain cardinality aggregation says about one 1000-seq block."""
        await self._session.post(f"{self.url}/{index}/_refresh")
        query = {
            "bool": {
                "filter": [
                    {"term": {"_lf.src": src}},
                    {"range": {"_lf.seq": {"gte": block, "lt": block + 1000}}},
                ]
            }
        }
        body = {
            "size": 0,
            "query": query,
            "aggs": {"n": {"cardinality": {"field": "_lf.seq", "precision_threshold": 4000}}},
        }
        async with self._session.post(f"{self.url}/{index}/_search", json=body) as response:
            payload = await response.json()
        return int(payload["aggregations"]["n"]["value"])

    async def delete_document(self, index: str, doc_id: str) -> None:
        """Delete one document (and refresh, so the next search no longer sees it)."""
        async with self._session.delete(f"{self.url}/{index}/_doc/{doc_id}?refresh=true") as r:
            assert r.status == 200, await r.text()

    async def delete(self, pattern: str) -> None:
        async with self._session.delete(f"{self.url}/{pattern}?ignore_unavailable=true"):
            pass


@pytest.fixture
async def store(opensearch: OpenSearchNode) -> AsyncIterator[Store]:
    async with open_store(StoreAccess(urls=[opensearch.url])) as client:
        # What an aggregator installs at start; here whichever test runs first.
        await ensure_templates(client, templates_for("logs", IndexSettings(replicas=0)))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield Store(opensearch.url, session)


def joined(src: str, first: int, last: int, ns: str, stamp: str) -> dict[str, Any]:
    """A record that covers seqs ``first..last`` (a multiline join), id of its first line."""
    doc = document(src, first, ns, stamp)
    doc["_lf"]["seq_end"] = last
    doc["log"] = "\n".join(f"line {s}" for s in range(first, last + 1))
    return doc


def accounting(src: str, ns: str, stamp: str, *ranges: tuple[int, int]) -> dict[str, Any]:
    """An accounting record as the aggregator writes it."""
    return {
        "@timestamp": stamp,
        "kubernetes": {"namespace_name": ns},
        "_lf": {
            "id": f"acct-{src}-{ranges}",
            "src": src,
            "kind": "accounting",
            "lines": sum(b - a + 1 for a, b in ranges),
            "discarded": [
                {"first": a, "last": b, "pipeline": "p", "filter": 0, "type": "sample"}
                for a, b in ranges
            ],
        },
    }


def checkpoint(
    src: str,
    next_seq: int,
    ns: str,
    stamp: str,
    *,
    state: str = "open",
    lost_lines: int = 0,
    reason: str = "",
) -> dict[str, Any]:
    """A forwarder's checkpoint record as the aggregator stores it (accounting indices)."""
    lf: dict[str, Any] = {"kind": "checkpoint", "src": src, "next_seq": next_seq, "state": state}
    if state == "lost":
        lf["lost_lines"] = lost_lines
    if reason:
        lf["reason"] = reason
    text = f"{src}|{next_seq}|{state}|{lost_lines}"
    lf["id"] = "ckpt-" + hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
    lf["node"] = NODE
    return {"@timestamp": stamp, "kubernetes": {"namespace_name": ns}, "_lf": lf}
