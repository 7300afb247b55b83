"""Ingest: a decoded message in, durable tenant fragments out.

For every entry: find its tenant, run that tenant's filters, give it its deterministic id and
its index inside the tenant's prefix, and render it as a ``_bulk`` action + source line. The
documents of one message for one tenant become one spool record (a fragment); the call returns
only when every fragment of the message is fsynced, which is when the server may ack.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import msgpack
import msgspec
import orjson

from logferry.aggregator.dlq import DeadLetter, DeadLetterQueue
from logferry.aggregator.filters import FilterChain
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.pipeline_watch import PipelineRegistry
from logferry.aggregator.pipelines.compiled import TenantPipelines
from logferry.aggregator.routing import IndexNamer, TenantResolver
from logferry.aggregator.spools import TenantSpools
from logferry.common.errors import OutputError
from logferry.common.logs import get_logger
from logferry.common.metrics import count_and_log
from logferry.common.protocol import EventMessage, EventTime
from logferry.common.records import derived_record_id
from logferry.common.spool import Spool

_TIME = struct.Struct(">II")
ChainFor = Callable[[str], FilterChain]


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where a message came from, for ids of entries that carry no ``_lf.id`` and no chunk."""

    instance: str
    connection: int
    message: int


def _enc_hook(value: Any) -> Any:
    # Ext values (a nested EventTime, another ext type) have no JSON form of their own.
    if isinstance(value, EventTime):
        return value.to_float()
    if isinstance(value, msgpack.ExtType):
        return {"ext": value.code, "data": value.data.hex()}
    raise TypeError(f"cannot encode {type(value).__name__}")


_json = msgspec.json.Encoder(enc_hook=_enc_hook)


def _text_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _text_keys(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_text_keys(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class _Stamps:
    """The second-resolution part of ``@timestamp``, cached (records of a chunk share it)."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def set_second(self, seconds: int) -> None:
        self.second = seconds
        self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


log = get_logger(__name__)
_DIVERT_CHECK_S = 2.0
"""How often a fragment waiting for a full tenant spool re-checks whether the tenant is stuck."""
# Every n-th message leaves one record per tenant as a sample for pipeline dry runs.
_SAMPLE_EVERY = 50
_SAMPLES_PER_TENANT = 20
_SAMPLE_TENANTS = 10_000


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
        inflight_max_bytes: int = 64 * 1024 * 1024,
        pipelines: PipelineRegistry | None = None,
        pipeline_budget_s: float = 0.5,
        drop_markers: bool = True,
        dlq: DeadLetterQueue | None = None,
        divert_stuck_after_s: float = 0.0,
    ) -> None:
        self._spools = spools
        self._metrics = metrics
        self._namer = namer
        self._chain_for = chain_for
        self._pipelines = pipelines
        self._pipeline_budget_s = pipeline_budget_s
        self._drop_markers = drop_markers
        self._dlq = dlq
        self._divert_after_s = divert_stuck_after_s if dlq is not None else 0.0
        self._recent: dict[str, deque[dict[str, Any]]] = {}
        self._sample_tick = 0
        self.instance = instance
        self._default_tenant = default_tenant
        self._tenant_of = TenantResolver(default_tenant)
        self._stamps = _Stamps()
        self._budget = ByteBudget(inflight_max_bytes)

    def render(self, message: EventMessage, receipt: Receipt) -> dict[str, tuple[bytes, int]]:
        """Route, filter and render a message: tenant -> (fragment, document count)."""
        by_tenant: dict[str, list[tuple[int, Any, dict[str, Any]]]] = {}
        tenant_of = self._tenant_of
        for position, (when, record) in enumerate(message.entries):
            tenant = tenant_of(record)
            group = by_tenant.get(tenant)
            if group is None:
                group = by_tenant[tenant] = []
            group.append((position, when, record))
        out: dict[str, tuple[bytes, int]] = {}
        # One snapshot per message: a pipeline change applies between messages, never inside.
        in_force = self._pipelines.snapshot() if self._pipelines is not None else None
        self._sample_tick += 1
        keep_sample = self._pipelines is not None and self._sample_tick % _SAMPLE_EVERY == 0
        for tenant, group in by_tenant.items():
            self._metrics.records_in.labels(tenant).inc(len(group))
            if keep_sample:
                self._keep_sample(tenant, group[0][2])
            chain = self._chain_for(tenant)
            if chain.filters:
                kept_records, discarded = chain.run([record for _p, _w, record in group])
                if discarded:
                    self._metrics.records_filtered.labels(tenant).inc(discarded)
                    kept = {id(record) for record in kept_records}
                    group = [item for item in group if id(item[2]) in kept]
            suffixes: list[str | None] | None = None
            compiled = in_force.get(tenant) if in_force else None
            if compiled is not None and group:
                group, suffixes = self._run_pipelines(tenant, compiled, group)
            if group:
                rendered = self._render_group(tenant, group, message, receipt, suffixes)
                out[tenant] = (rendered, len(group))
        return out

    def _keep_sample(self, tenant: str, record: dict[str, Any]) -> None:
        try:  # a deep copy that owes nothing to the original (filters change records in place)
            copy = orjson.loads(orjson.dumps(record, default=str))
        except (TypeError, orjson.JSONEncodeError, orjson.JSONDecodeError):
            return
        recent = self._recent.get(tenant)
        if recent is None:
            if len(self._recent) >= _SAMPLE_TENANTS:
                return
            recent = self._recent[tenant] = deque(maxlen=_SAMPLES_PER_TENANT)
        recent.append(copy)

    def recent_records(self, tenant: str) -> list[dict[str, Any]]:
        """A few of the tenant's recent records (as received), for a pipeline's dry run."""
        return list(self._recent.get(tenant, ()))

    def _run_pipelines(
        self,
        tenant: str,
        compiled: TenantPipelines,
        group: list[tuple[int, Any, dict[str, Any]]],
    ) -> tuple[list[tuple[int, Any, dict[str, Any]]], list[str | None]]:
        """The tenant's LogPipelines over its records: kept records with their index suffix."""
        processed = compiled.process(
            [record for _p, _w, record in group],
            self._pipeline_budget_s,
            drop_markers=self._drop_markers,
        )
        metrics = self._metrics
        if processed.dropped:
            metrics.records_filtered.labels(tenant).inc(processed.dropped)
        if processed.merged:
            metrics.records_merged.labels(tenant).inc(processed.merged)
        if processed.over_budget:
            metrics.pipeline_over_budget.labels(tenant).inc()
        if processed.errors:
            metrics.pipeline_errors.labels(tenant).inc(processed.errors)
        where = {id(record): (position, when) for position, when, record in group}
        first_position, first_when, _r = group[0]
        kept: list[tuple[int, Any, dict[str, Any]]] = []
        suffixes: list[str | None] = []
        for record, suffix in processed.kept:
            position, when = where.get(id(record), (first_position, first_when))
            kept.append((position, when, record))
            suffixes.append(suffix)
        return kept, suffixes

    def _render_group(
        self,
        tenant: str,
        group: list[tuple[int, Any, dict[str, Any]]],
        message: EventMessage,
        receipt: Receipt,
        suffixes: list[str | None] | None = None,
    ) -> bytes:
        # The hot loop: per record only dict lookups and two small dicts; all JSON is written
        # by one C call (encode_lines) that emits the _bulk body, action and source lines.
        items: list[Any] = []
        append = items.append
        unpack = _TIME.unpack
        stamps = self._stamps
        day_span = 86400
        current_day = -1
        index = ""
        suffix: str | None = None
        each_suffix = iter(suffixes) if suffixes is not None else None
        for position, when, record in group:
            if each_suffix is not None:
                wanted = next(each_suffix)
                if wanted != suffix:
                    suffix, current_day = wanted, -1  # another destination: index again
            if when.__class__ is EventTime:
                seconds, nanoseconds = unpack(when[1])
            else:
                seconds, nanoseconds = int(when), 0
            if "@timestamp" not in record:
                if seconds != stamps.second:
                    stamps.set_second(seconds)
                record["@timestamp"] = f"{stamps.text}.{nanoseconds:09d}Z"
            lf = record.get("_lf")
            doc_id = lf.get("id") if lf.__class__ is dict else None
            if doc_id.__class__ is not str or not doc_id or len(doc_id) > 512:
                doc_id = self._derived_id(message, receipt, position, seconds, nanoseconds, record)
            if seconds // day_span != current_day:
                current_day = seconds // day_span
                index = self._namer.index(tenant, seconds, suffix)
            log = record.get("log")
            if log.__class__ is bytes:
                # Raw container bytes sent as msgpack bin: text, as a log line is, not base64.
                record["log"] = log.decode("utf-8", "replace")
            append({"create": {"_index": index, "_id": doc_id}})
            append(record)
        try:
            return _json.encode_lines(items)
        except (TypeError, msgspec.EncodeError):
            # Some record JSON cannot hold as it is (e.g. bytes keys): write it with its keys
            # as text instead of refusing the chunk (which its sender would resend forever).
            return _json.encode_lines([_text_keys(item) for item in items])

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

    async def park_signal(self, message: EventMessage, receipt: Receipt) -> int:
        """Keep a non-log signal's payload (metrics, traces, ...) in the DLQ, durably, so its
        message can be acked: refusing it would make the peer resend it forever. Returns 0
        (no documents)."""
        assert self._dlq is not None, "the aggregator always has a DLQ"
        name = message.signal_name
        where = message.chunk or f"{receipt.instance}:{receipt.connection}:{receipt.message}"
        options = message.options
        signal, compressed = options.get("fluent_signal"), options.get("compressed")
        source = orjson.dumps(
            {
                "tag": message.tag,
                "mode": str(message.mode),
                "signal": name,
                "fluent_signal": signal if type(signal) is int else None,
                "compressed": compressed if type(compressed) is str else None,
                "chunk": message.chunk,
                "payload_msgpack_base64": base64.b64encode(message.payload).decode("ascii"),
            }
        )
        letter = DeadLetter(
            tenant=self._default_tenant,
            index="",  # nothing to replay into: `dlq replay` leaves these entries alone
            doc_id=f"signal:{where}",
            status=415,
            reason=f"unsupported_signal: a {name} payload (fluent_signal), not log entries",
            source=source,
        )
        delay_s = 0.5
        while True:
            try:
                await self._dlq.append([letter])
                break
            except OutputError as exc:  # full or failing: hold the ack (backpressure), retry
                log.warning("ingest.signal_park_waiting", signal=name, error=str(exc)[:200])
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
        count_and_log(
            self._metrics.records_unsupported,
            log,
            "input.unsupported_signal",
            labels={"signal": name},
            tag=message.tag,
            mode=str(message.mode),
            payload_bytes=len(message.payload),
            chunk=message.chunk,
        )
        return 0

    async def accept(self, message: EventMessage, receipt: Receipt) -> int:
        """Make the message durable; returns the number of documents spooled."""
        return await self.store(self.render(message, receipt))

    async def store(self, fragments: dict[str, tuple[bytes, int]]) -> int:
        """Append rendered fragments to their tenants' spools; returns once all are fsynced.

        Callers render first (synchronously) and keep only the fragments, so decoded records
        never wait in memory for a spool: what waits is compact bytes, under a global budget.
        """
        if not fragments:
            return 0
        size = sum(len(fragment) for fragment, _count in fragments.values())
        await self._budget.acquire(size)
        try:
            await self._spools.wait_for_space()
            appends: list[Coroutine[Any, Any, object]] = []
            for tenant, (fragment, _count) in fragments.items():
                spool = await self._spools.get(tenant)
                if spool.bytes_used + len(fragment) > spool.max_bytes:
                    self._metrics.backpressure_waits.labels(tenant).inc()
                if self._divert_after_s > 0:
                    # Even with room now: space reserved by others can make it wait, and a
                    # wait that cannot be re-judged would stall the connection's later acks.
                    appends.append(self._append_or_divert(tenant, spool, fragment))
                else:
                    appends.append(spool.append([fragment]))
            await asyncio.gather(*appends)
        finally:
            self._budget.release(size)
        return sum(count for _fragment, count in fragments.values())

    async def _append_or_divert(self, tenant: str, spool: Spool, fragment: bytes) -> None:
        """Append, waiting for space as usual, unless the tenant is stuck: then park the
        fragment's documents in the DLQ, so the other tenants' records of the same chunk are
        not held up by a store that refuses this tenant (nothing is dropped either way)."""
        while True:
            stuck = (
                spool.bytes_used + len(fragment) > spool.max_bytes
                and spool.commit_idle_s >= self._divert_after_s
            )
            if stuck and await self._divert(tenant, fragment):
                return
            try:
                # Re-judged every few seconds while waiting: a tenant can become stuck meanwhile.
                # Cancelling a waiting append is safe; one cancelled after its space was granted
                # may still be written, and a record both spooled and parked is delivered once.
                await asyncio.wait_for(spool.append([fragment]), _DIVERT_CHECK_S)
                return
            except TimeoutError:
                continue

    async def _divert(self, tenant: str, fragment: bytes) -> bool:
        assert self._dlq is not None
        lines = fragment.split(b"\n")
        letters = []
        for action_line, source in zip(lines[0::2], lines[1::2], strict=False):
            if not action_line:
                continue
            action = orjson.loads(action_line)["create"]
            letters.append(
                DeadLetter(
                    tenant=tenant,
                    index=str(action["_index"]),
                    doc_id=str(action["_id"]),
                    status=507,
                    reason=(
                        f"tenant spool full and nothing delivered for {self._divert_after_s:.0f}"
                        " s: parked here so other tenants keep flowing; replay when its store"
                        " accepts again"
                    ),
                    source=source,
                )
            )
        try:
            await self._dlq.append(letters)
        except OutputError as exc:  # the DLQ is full too: wait for the spool after all
            log.warning("ingest.divert_failed", tenant=tenant, error=str(exc))
            return False
        self._metrics.records_diverted.labels(tenant).inc(len(letters))
        log.warning("ingest.diverted", tenant=tenant, documents=len(letters))
        return True


class ByteBudget:
    """At most ``limit`` bytes held at once across all connections, granted in FIFO order
    (one holder may exceed it alone, so an oversized batch cannot wait forever)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.limit

    async def acquire(self, size: int) -> None:
        if not self._waiters and self._fits(size):
            self.held += size
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((size, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(size)  # granted just as we were cancelled: give it back
            raise

    def release(self, size: int) -> None:
        self.held -= size
        while self._waiters:
            wanted, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if not self._fits(wanted):
                break
            self._waiters.popleft()
            self.held += wanted
            future.set_result(None)
