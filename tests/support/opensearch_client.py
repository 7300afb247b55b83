"""Reading what reached OpenSearch, for assertions, and waiting for documents to get there."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.support.net import wait_until

LOG_RECORDS: dict[str, Any] = {"bool": {"must_not": [{"exists": {"field": "_lf.kind"}}]}}
"""Log records only: not logferry's own documents (accounting records, checkpoints), which
a pattern like ``logs-*`` also matches. What :class:`StoreReader` counts unless told."""
ANY_DOCUMENT: dict[str, Any] = {"match_all": {}}
"""Every document, logferry's own included (accounting records, checkpoints)."""


class StoreReader:
    """Counts and fetches documents (refreshing first, so writes are visible).

    Without a query, :meth:`count`, :meth:`search` and :func:`wait_count` see log records
    only (:data:`LOG_RECORDS`); pass :data:`ANY_DOCUMENT`, or a query of your own, to see
    accounting records and checkpoints."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    async def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, f"{self.url}{path}", json=body, timeout=aiohttp.ClientTimeout(total=60)
            ) as response,
        ):
            return response.status, await response.json(content_type=None)

    async def refresh(self, pattern: str) -> None:
        await self._request(
            "POST", f"/{pattern}/_refresh?ignore_unavailable=true&allow_no_indices=true"
        )

    async def count(self, pattern: str, query: dict[str, Any] | None = None) -> int:
        await self.refresh(pattern)
        body = {"query": query or LOG_RECORDS}
        status, payload = await self._request(
            "POST", f"/{pattern}/_count?ignore_unavailable=true&allow_no_indices=true", body
        )
        if status == 404:
            return 0
        return int(payload.get("count", 0))

    async def search(
        self, pattern: str, size: int = 10000, query: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        await self.refresh(pattern)
        status, payload = await self._request(
            "POST",
            f"/{pattern}/_search?ignore_unavailable=true&allow_no_indices=true",
            {"size": size, "query": query or LOG_RECORDS},
        )
        if status == 404:
            return []
        return list(payload["hits"]["hits"])

    async def search_where(
        self, pattern: str, query: dict[str, Any], fields: list[str], size: int = 10000
    ) -> list[dict[str, Any]]:
        """The ``_source`` (only ``fields``) of the documents matching ``query``."""
        await self.refresh(pattern)
        status, payload = await self._request(
            "POST",
            f"/{pattern}/_search?ignore_unavailable=true&allow_no_indices=true",
            {"size": size, "query": query, "_source": fields},
        )
        if status == 404:
            return []
        return [hit["_source"] for hit in payload["hits"]["hits"]]

    async def field_types(self, pattern: str, root: str) -> dict[str, dict[str, Any]]:
        """Per index of ``pattern``: the mapping of each field under the object ``root``."""
        _status, payload = await self._request("GET", f"/{pattern}/_mapping")
        return {
            index: body["mappings"]["properties"][root]["properties"]
            for index, body in (payload or {}).items()
        }

    async def put(self, path: str, body: Any) -> tuple[int, Any]:
        return await self._request("PUT", path, body)

    async def delete(self, path: str) -> tuple[int, Any]:
        return await self._request("DELETE", path)

    async def seq_stats(self, pattern: str) -> dict[str, tuple[int, int, int, int]]:
        """Per ``_lf.src``: (documents, min seq, max seq, seqs held by more than one document),
        by aggregation (exact on a single shard; no scan of the documents); log records only
        (checkpoints and accounting records carry ``_lf.src`` but no seq)."""
        await self.refresh(pattern)
        body = {
            "size": 0,
            "query": LOG_RECORDS,
            "aggs": {
                "src": {
                    "terms": {"field": "_lf.src", "size": 10_000},
                    "aggs": {
                        "lo": {"min": {"field": "_lf.seq"}},
                        "hi": {"max": {"field": "_lf.seq"}},
                        "doubled": {"terms": {"field": "_lf.seq", "min_doc_count": 2, "size": 100}},
                    },
                }
            },
        }
        _status, payload = await self._request("POST", f"/{pattern}/_search", body)
        return {
            bucket["key"]: (
                int(bucket["doc_count"]),
                int(bucket["lo"]["value"]),
                int(bucket["hi"]["value"]),
                len(bucket["doubled"]["buckets"]),
            )
            for bucket in payload["aggregations"]["src"]["buckets"]
        }


async def wait_count(
    store: StoreReader,
    pattern: str,
    expected: int,
    timeout_s: float = 60,
    query: dict[str, Any] | None = None,
) -> None:
    """Wait until at least ``expected`` documents match ``pattern`` (and ``query``: log
    records by default); a test asserts the exact count itself where more would be wrong."""

    async def reached() -> bool:
        return await store.count(pattern, query) >= expected

    await wait_until(reached, timeout_s=timeout_s, what=f"{expected} documents in {pattern}")
