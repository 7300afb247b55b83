"""A lease in the store: one holder at a time for work several aggregators would race on.

The lease is one document in the index ``logferry-leases``: created with ``op_type=create``
(only one creator wins), taken over once its ``expires_ms`` has passed with the sequence
number and primary term it was read with (only one taker wins), and deleted on release only
if it is still the holder's. A holder that dies leaves a lease that expires by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import quote

from logferry.store.client import StoreClient

__all__ = ["LEASE_INDEX", "Lease"]

LEASE_INDEX = "logferry-leases"
_INDEX_SETTINGS = {
    "settings": {"index": {"number_of_shards": 1, "auto_expand_replicas": "0-1"}},
    "mappings": {"dynamic": False, "properties": {"holder": {"type": "keyword"}}},
}


class Lease:
    """The lease ``name`` for ``holder``, held ``lease_s`` at most."""

    def __init__(
        self,
        client: StoreClient,
        name: str,
        holder: str,
        lease_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._path = f"/{LEASE_INDEX}/_doc/{quote(name, safe='')}"
        self._holder = holder
        self._lease_s = lease_s
        self._clock = clock
        self._held: tuple[int, int] | None = None  # seq_no, primary_term of our document

    async def acquire(self) -> bool:
        """True if ``holder`` now holds the lease. Raises StoreError."""
        await self._ensure_index()
        body = {"holder": self._holder, "expires_ms": self._expiry_ms()}
        status, answer = await self._client.call(
            "PUT", f"{self._path}?op_type=create&refresh=false", body, accept=(409,)
        )
        if status != 409:
            self._held = (int(answer["_seq_no"]), int(answer["_primary_term"]))
            return True
        status, current = await self._client.call("GET", self._path, accept=(404,))
        if status == 404:
            return False  # released between our two calls: try again next round
        source = current.get("_source") or {}
        mine = source.get("holder") == self._holder
        if not mine and int(source.get("expires_ms", 0)) > self._clock() * 1000:
            return False
        seq, term = int(current["_seq_no"]), int(current["_primary_term"])
        status, answer = await self._client.call(
            "PUT", f"{self._path}?if_seq_no={seq}&if_primary_term={term}", body, accept=(409,)
        )
        if status == 409:
            return False  # another aggregator took it over first
        self._held = (int(answer["_seq_no"]), int(answer["_primary_term"]))
        return True

    async def release(self) -> None:
        """Give the lease back if it is still ours. Raises StoreError."""
        if self._held is None:
            return
        seq, term = self._held
        self._held = None
        await self._client.call(
            "DELETE", f"{self._path}?if_seq_no={seq}&if_primary_term={term}", accept=(404, 409)
        )

    def _expiry_ms(self) -> int:
        return int((self._clock() + self._lease_s) * 1000)

    async def _ensure_index(self) -> None:
        # An index of its own, outside every logferry prefix's pattern (no template, no
        # retention applies to it); 400 means another aggregator made it first.
        status, _ = await self._client.call("HEAD", f"/{LEASE_INDEX}", accept=(404,))
        if status == 404:
            await self._client.call("PUT", f"/{LEASE_INDEX}", _INDEX_SETTINGS, accept=(400,))
