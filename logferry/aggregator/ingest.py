"""Ingest: a decoded message in, durable tenant fragments out.

For every entry: find its tenant, run that tenant's filters, give it its deterministic id and
its index inside the tenant's prefix, and render it as a ``_bulk`` action + source line. The
documents of one message for one tenant become one spool record (a fragment); the call returns
only when every fragment of the message is fsynced, which is when the server may ack.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from logferry.aggregator.documents import render_fragment
from logferry.aggregator.filters import FilterChain
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.routing import NAMESPACE, IndexNamer
from logferry.aggregator.spools import TenantSpools
from logferry.common.protocol import EventMessage, EventTime
from logferry.common.records import derived_record_id

_TIME = struct.Struct(">II")
ChainFor = Callable[[str], FilterChain]


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where a message came from, for ids of entries that carry no ``_lf.id`` and no chunk."""

    instance: str
    connection: int
    message: int


def _default(value: Any) -> Any:
    # msgpack bin fields (raw container bytes from some clients) and ext values have no JSON form.
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, EventTime):
        return value.to_float()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError


class _Stamps:
    """``@timestamp`` strings, with the second-resolution part cached."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def iso(self, seconds: int, nanoseconds: int) -> str:
        if seconds != self._second:
            self._second = seconds
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        return f"{self._text}.{nanoseconds:09d}Z"


class Ingest:
    """Turns messages into durable tenant fragments; shared by every connection."""

    def __init__(
        self,
        spools: TenantSpools,
        metrics: AggregatorMetrics,
        *,
        namer: IndexNamer,
        default_tenant: str,
        chain_for: ChainFor,
        instance: str,
    ) -> None:
        self._spools = spools
        self._metrics = metrics
        self._namer = namer
        self._default_tenant = default_tenant
        self._chain_for = chain_for
        self.instance = instance
        self._namespaces: set[str] = set()
        self._action_heads: dict[str, bytes] = {}
        self._stamps = _Stamps()

    def _tenant(self, record: dict[str, Any]) -> str:
        k8s = record.get("kubernetes")
        if k8s.__class__ is dict:
            namespace = k8s.get("namespace_name")
            if namespace in self._namespaces:
                return namespace  # type: ignore[no-any-return]
            if isinstance(namespace, str) and NAMESPACE.match(namespace):
                if len(self._namespaces) < 100_000:
                    self._namespaces.add(namespace)
                return namespace
        return self._default_tenant

    def _action_head(self, index: str) -> bytes:
        head = self._action_heads.get(index)
        if head is None:
            if len(self._action_heads) > 10_000:
                self._action_heads.clear()
            # The index name is ours (safe charset), so only the id needs JSON escaping per record.
            head = b'{"create":{"_index":' + orjson.dumps(index) + b',"_id":'
            self._action_heads[index] = head
        return head

    def render(self, message: EventMessage, receipt: Receipt) -> dict[str, tuple[bytes, int]]:
        """Route, filter and render a message: tenant -> (fragment, document count)."""
        by_tenant: dict[str, list[tuple[int, Any, dict[str, Any]]]] = {}
        tenant_of = self._tenant
        for position, (when, record) in enumerate(message.entries):
            tenant = tenant_of(record)
            group = by_tenant.get(tenant)
            if group is None:
                group = by_tenant[tenant] = []
            group.append((position, when, record))
        out: dict[str, tuple[bytes, int]] = {}
        for tenant, group in by_tenant.items():
            self._metrics.records_in.labels(tenant).inc(len(group))
            chain = self._chain_for(tenant)
            if chain.filters:
                kept_records, discarded = chain.run([record for _p, _w, record in group])
                if discarded:
                    self._metrics.records_filtered.labels(tenant).inc(discarded)
                    kept = {id(record) for record in kept_records}
                    group = [item for item in group if id(item[2]) in kept]
            if group:
                out[tenant] = (self._render_group(tenant, group, message, receipt), len(group))
        return out

    def _render_group(
        self,
        tenant: str,
        group: list[tuple[int, Any, dict[str, Any]]],
        message: EventMessage,
        receipt: Receipt,
    ) -> bytes:
        pairs: list[tuple[bytes, bytes]] = []
        dumps = orjson.dumps
        iso = self._stamps.iso
        index_for = self._namer.index
        for position, when, record in group:
            if isinstance(when, EventTime):
                seconds, nanoseconds = _TIME.unpack(when[1])
            else:
                seconds, nanoseconds = int(when), 0
            if "@timestamp" not in record:
                record["@timestamp"] = iso(seconds, nanoseconds)
            lf = record.get("_lf")
            doc_id = lf.get("id") if lf.__class__ is dict else None
            if not isinstance(doc_id, str) or not doc_id or len(doc_id) > 512:
                doc_id = self._derived_id(message, receipt, position, seconds, nanoseconds, record)
            action = self._action_head(index_for(tenant, seconds)) + dumps(doc_id) + b"}}"
            pairs.append((action, dumps(record, default=_default)))
        return render_fragment(pairs)

    def _derived_id(
        self,
        message: EventMessage,
        receipt: Receipt,
        position: int,
        seconds: int,
        nanoseconds: int,
        record: dict[str, Any],
    ) -> str:
        if message.chunk is not None:
            where = f"{message.chunk}:{position}"
        else:
            where = f"{receipt.instance}:{receipt.connection}:{receipt.message}:{position}"
        return derived_record_id(message.tag, where, seconds * 1_000_000_000 + nanoseconds, record)

    async def accept(self, message: EventMessage, receipt: Receipt) -> int:
        """Make the message durable; returns the number of documents spooled."""
        fragments = self.render(message, receipt)
        if not fragments:
            return 0
        await self._spools.wait_for_space()
        spools = [(tenant, await self._spools.get(tenant)) for tenant in fragments]
        appends = []
        for tenant, spool in spools:
            fragment, _count = fragments[tenant]
            if spool.bytes_used + len(fragment) > spool.max_bytes:
                self._metrics.backpressure_waits.labels(tenant).inc()
            appends.append(spool.append([fragment]))
        await asyncio.gather(*appends)
        return sum(count for _fragment, count in fragments.values())
