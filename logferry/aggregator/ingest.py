"""Ingest: a decoded message in, durable tenant fragments out.

For every entry: find its tenant, run that tenant's filters, give it its deterministic id and
its index inside the tenant's prefix, and render it as a ``_bulk`` action + source line. The
documents of one message for one tenant become one spool record (a fragment); the call returns
only when every fragment of the message is fsynced, which is when the server may ack.

A forwarder's checkpoint records (``_lf.kind: checkpoint``) skip the filters: the proof of
delivery rests on them, so no tenant's pipeline may drop or rewrite one. They go to the
tenant's accounting index, beside the accounting records.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson

from logferry.aggregator.allowance import CpuAllowance
from logferry.aggregator.dlq import DeadLetter, DeadLetterQueue, DeadLetterQueueFullError
from logferry.aggregator.documents import Compression, pack_fragment, split_fragment
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.pipeline_watch import PipelineRegistry
from logferry.aggregator.render import (
    Failure,
    Receipt,
    Renderer,
    TimeWindow,
    unrenderable_document,
)
from logferry.aggregator.routing import TenantResolver
from logferry.aggregator.spools import TenantSpools
from logferry.common.backoff import backoff_delay
from logferry.common.budget import ByteBudget
from logferry.common.errors import OutputError
from logferry.common.logs import get_logger
from logferry.common.metrics import count_and_log
from logferry.common.naming import IndexNamer
from logferry.common.protocol import EventMessage
from logferry.common.protocol.entries import UnreadableRecord
from logferry.common.spool import Spool
from logferry.common.units import MiB
from logferry.pipelines.accounting import (
    ACCOUNTING_SUFFIX,
    CHECKPOINT_ID_PREFIX,
    CHECKPOINT_KIND,
    CHECKPOINT_STATES,
    WIRE_KIND_FIELD,
)
from logferry.pipelines.compiled import TenantPipelines

__all__ = ["ByteBudget", "Ingest", "Receipt", "Rendered"]

log = get_logger(__name__)
_DIVERT_CHECK_S = 2.0
"""How often a fragment waiting for a full tenant spool re-checks whether the tenant is stuck."""
# Every n-th message leaves one record per tenant as a sample for pipeline dry runs.
_SAMPLE_EVERY = 50
_SAMPLES_PER_TENANT = 20
_SAMPLE_TENANTS = 10_000
INFLIGHT_MAX_BYTES = 32 * MiB
"""Default in-flight budget: what every connection together holds between decoding a message
and its fragments being durable (rendered bytes and the spool's copy of them)."""
_HELD_COPIES = 2
"""A rendered message is held twice until durable: as rendered, and as the spool frame (or
DLQ entry) encoded from it while that waits for its fsync."""
_CHECKPOINT_KEYS = frozenset({"kubernetes", "_lf"})
"""All a checkpoint record holds as it comes from the forwarder."""
_LONG_MAX = 2**63 - 1
"""The largest value a ``long`` field of the index template holds."""

Triple = tuple[int, Any, dict[str, Any]]
"""An entry on its way to rendering: (position in the message, event time, record)."""


@dataclass(slots=True)
class Rendered:
    """A message made ready to spool: per tenant its fragments (spool records of ``_bulk``
    lines) and document count, and the letters to park in the DLQ."""

    fragments: dict[str, tuple[list[bytes], int]] = field(default_factory=dict)
    letters: list[DeadLetter] = field(default_factory=list)
    signal: str | None = None
    """The name of the non-log signal parked, if the message was one."""
    size: int = 0
    """Bytes held under the in-flight budget until stored or discarded."""

    @property
    def documents(self) -> int:
        return sum(count for _parts, count in self.fragments.values())


_PARK_RETRY_FIRST_S = 0.5
_PARK_RETRY_MAX_S = 5.0


class Ingest:
    r"""Turns messages into durable tenant fragments; shared by every connection.

    The server calls :meth:`admit` (waits for room in the in-flight budget), decodes one
    message and :meth:`render`\ s it without an ``await`` in between, then :meth:`store`\ s
    it (or :meth:`discard`\ s it if its connection fails first). So decoded records never wait
    in memory: what waits is rendered bytes, under one budget for every connection.

    Fragments are stored as ``compression`` says; by default as the spools' own setting
    (``spool.compression``).
    """

    def __init__(
        self,
        spools: TenantSpools,
        metrics: AggregatorMetrics,
        *,
        namer: IndexNamer,
        default_tenant: str,
        instance: str,
        inflight_max_bytes: int = INFLIGHT_MAX_BYTES,
        pipelines: PipelineRegistry | None = None,
        pipeline_budget_s: float = 0.5,
        account_discarded: bool = True,
        dlq: DeadLetterQueue | None = None,
        divert_stuck_after_s: float = 0.0,
        window: TimeWindow | None = None,
        resolver: TenantResolver | None = None,
        allowance: CpuAllowance | None = None,
        on_bypass: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.time,
        compression: Compression | None = None,
    ) -> None:
        self._spools = spools
        self._compression = _compression_of(spools, compression)
        self._metrics = metrics
        self._namer = namer
        self._pipelines = pipelines
        self._pipeline_budget_s = pipeline_budget_s
        self._account = account_discarded
        self._dlq = dlq
        self._divert_after_s = divert_stuck_after_s if dlq is not None else 0.0
        self._recent: dict[str, deque[dict[str, Any]]] = {}
        self._sample_tick = 0
        self.instance = instance
        self._default_tenant = default_tenant
        self._tenant_of = resolver or TenantResolver(default_tenant)
        self._renderer = Renderer(namer, window or TimeWindow())
        self._allowance = allowance
        self._on_bypass = on_bypass
        self._clock = clock
        self._budget = ByteBudget(inflight_max_bytes)
        self.inflight_peak_bytes = 0
        """The most the in-flight budget ever held (at most its limit plus one message)."""
        self._refusals_logged: set[str] = set()

    # ------------------------------------------------------------------ budget

    async def admit(self) -> None:
        """Wait until the in-flight budget has room for one more message."""
        await self._budget.admit()

    @property
    def inflight_bytes(self) -> int:
        """Bytes held under the in-flight budget now."""
        return self._budget.held

    @property
    def inflight_max_bytes(self) -> int:
        """The in-flight budget's limit."""
        return self._budget.limit

    def discard(self, rendered: Rendered) -> None:
        """Give back the budget of a message that will not be stored (its sender resends)."""
        self._budget.release(rendered.size)

    # --------------------------------------------------------------- rendering

    def render(self, message: EventMessage, receipt: Receipt) -> Rendered:
        """Route, filter and render a message (a slice of entries at a time)."""
        if message.signal:
            rendered = self._render_signal(message, receipt)
        else:
            rendered = self._render_entries(message, receipt)
        made = sum(len(p) for parts, _n in rendered.fragments.values() for p in parts)
        made += sum(len(letter.source) for letter in rendered.letters)
        rendered.size = _HELD_COPIES * made
        self._budget.take(rendered.size)
        self.inflight_peak_bytes = max(self.inflight_peak_bytes, self._budget.held)
        return rendered

    def _render_entries(self, message: EventMessage, receipt: Receipt) -> Rendered:
        rendered = Rendered()
        received_s = int(self._clock())
        # One snapshot per message: a pipeline change applies between messages, never inside.
        in_force = self._pipelines.snapshot() if self._pipelines is not None else None
        self._sample_tick += 1
        keep_sample = self._pipelines is not None and self._sample_tick % _SAMPLE_EVERY == 0
        position = 0
        refused: dict[tuple[str, str], int] = {}
        for entries in message.slices():
            marks: dict[str, list[Triple]] = {}
            by_tenant = self._group(entries, position, rendered, received_s, marks, refused)
            position += len(entries)
            for tenant, group in by_tenant.items():
                self._metrics.records_in.labels(tenant).inc(len(group))
                if keep_sample:
                    self._keep_sample(tenant, group[0][2])
                suffixes: list[str | None] | None = None
                compiled = in_force.get(tenant) if in_force else None
                if compiled is not None and group:
                    group, suffixes = self._run_pipelines(tenant, compiled, group)
                checkpoints = marks.pop(tenant, None)
                if checkpoints is not None:
                    # Joined after the pipelines: a filter never sees (so never drops) one.
                    suffixes = (suffixes or [None] * len(group)) + [ACCOUNTING_SUFFIX] * len(
                        checkpoints
                    )
                    group = group + checkpoints
                if group:
                    self._render_group(
                        tenant, group, suffixes, message, receipt, received_s, rendered
                    )
            for tenant, checkpoints in marks.items():  # tenants with nothing else in the slice
                suffixes = [ACCOUNTING_SUFFIX] * len(checkpoints)
                self._render_group(
                    tenant, checkpoints, suffixes, message, receipt, received_s, rendered
                )
        for (tenant, reason), count in refused.items():
            count_and_log(
                self._metrics.records_kind_refused,
                log,
                "ingest.lf_kind_refused",
                amount=count,
                labels={"tenant": tenant, "reason": reason},
                why="only logferry writes documents with _lf.kind: stored as log records, the "
                f"kind kept in _lf.{WIRE_KIND_FIELD}",
            )
        return rendered

    def _render_group(
        self,
        tenant: str,
        group: list[Triple],
        suffixes: list[str | None] | None,
        message: EventMessage,
        receipt: Receipt,
        received_s: int,
        rendered: Rendered,
    ) -> None:
        done = self._renderer.render(tenant, group, message, receipt, received_s, suffixes)
        if done.documents:
            parts, count = rendered.fragments.get(tenant, ([], 0))
            parts.append(pack_fragment(done.lines, done.documents, self._compression))
            rendered.fragments[tenant] = (parts, count + done.documents)
        if done.adjusted:
            count_and_log(
                self._metrics.records_time_adjusted,
                log,
                "ingest.time_outside_window",
                amount=done.adjusted,
                labels={"tenant": tenant},
                level="info",
            )
        for failure in done.failures:
            rendered.letters.append(self._failure_letter(tenant, failure, received_s))

    def _group(
        self,
        entries: list[Any],
        offset: int,
        rendered: Rendered,
        received_s: int,
        marks: dict[str, list[Triple]],
        refused: dict[tuple[str, str], int],
    ) -> dict[str, list[Triple]]:
        """Log records by tenant as (position, time, record); checkpoints by tenant into
        ``marks``; unreadable records become letters; a refused ``_lf.kind`` is counted by
        (tenant, reason) in ``refused``."""
        by_tenant: dict[str, list[Triple]] = {}
        tenant_of = self._tenant_of
        default = self._default_tenant
        for position, (when, record) in enumerate(entries, offset):
            tenant = tenant_of(record)
            if record.__class__ is UnreadableRecord:
                rendered.letters.append(self._unreadable_letter(tenant, record, received_s))
                continue
            lf = record.get("_lf")
            # Log records (and peers' records without _lf) pay only this lookup and test.
            if lf.__class__ is dict and "kind" in lf:
                problem = _checkpoint_problem(record, lf)
                if problem is None:
                    if tenant == default:
                        self._flag_rerouted(record, count=False)
                    marks.setdefault(tenant, []).append((position, when, record))
                    self._metrics.checkpoints_received.labels(tenant).inc()
                    continue
                record["_lf"] = _kind_set_aside(lf)
                key = (tenant, problem)
                refused[key] = refused.get(key, 0) + 1
            if tenant == default:
                self._flag_rerouted(record)
            group = by_tenant.get(tenant)
            if group is None:
                group = by_tenant[tenant] = []
            group.append((position, when, record))
        return by_tenant

    def _flag_rerouted(self, record: dict[str, Any], *, count: bool = True) -> None:
        refusal = self._tenant_of.refusal(record)
        if refusal is None:
            return
        namespace, reason = refusal
        record["rerouted"] = {"from": namespace, "reason": reason}
        if count:  # records only: checkpoints have a counter of their own
            self._metrics.records_rerouted.labels(reason=reason).inc()
        if namespace not in self._refusals_logged and len(self._refusals_logged) < 10_000:
            self._refusals_logged.add(namespace)  # one warning per refused namespace
            log.warning(
                "ingest.tenant_refused",
                reason=reason,
                namespace=namespace,
                to=self._default_tenant,
                tenants=self._tenant_of.tenants,
            )

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
    ) -> tuple[list[tuple[int, Any, dict[str, Any]]], list[str | None] | None]:
        """The tenant's LogPipelines over its records: kept records with their index suffix.

        A tenant past its CPU allowance is bypassed: its records go on unfiltered."""
        allowance = self._allowance
        if allowance is not None and not allowance.allows(tenant):
            self._bypass(tenant, len(group), True)
            return group, None
        if allowance is not None:
            self._bypass(tenant, 0, False)
        started = time.thread_time()
        processed = compiled.process(
            [record for _p, _w, record in group],
            self._pipeline_budget_s,
            account=self._account,
        )
        if allowance is not None:
            allowance.spend(tenant, time.thread_time() - started)
        metrics = self._metrics
        if processed.dropped:
            metrics.records_filtered.labels(tenant).inc(processed.dropped)
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
        for at, record in processed.accounting:
            # Dated like the first line it lists: verify's time window finds them together.
            position, when, _line = group[at]
            kept.append((position, when, record))
            suffixes.append(ACCOUNTING_SUFFIX)
        if processed.accounting:
            metrics.accounting_records.labels(tenant).inc(len(processed.accounting))
        return kept, suffixes

    def _bypass(self, tenant: str, records: int, bypassed: bool) -> None:
        assert self._allowance is not None
        if records:
            self._metrics.pipeline_bypassed_records.labels(tenant).inc(records)
        if not self._allowance.transition(tenant, bypassed):
            return
        self._metrics.pipeline_bypassed.labels(tenant).set(1 if bypassed else 0)
        if self._on_bypass is not None:
            self._on_bypass(tenant, bypassed)
        if bypassed:
            log.warning(
                "pipeline.bypassed",
                tenant=tenant,
                allowance_s_per_s=self._allowance.rate_s_per_s,
                why="the tenant's pipelines used more CPU than its allowance: records pass "
                "unfiltered until it is back under",
            )
        else:
            log.warning("pipeline.bypass_ended", tenant=tenant)

    def bypassed_tenants(self) -> list[str]:
        """Tenants whose pipelines are bypassed for exceeding their CPU allowance."""
        return self._allowance.bypassed() if self._allowance is not None else []

    # ------------------------------------------------------- records to park

    def _unreadable_letter(
        self, tenant: str, record: UnreadableRecord, received_s: int
    ) -> DeadLetter:
        doc_id = ""
        lf = record.get("_lf")
        if lf.__class__ is dict and lf.get("id").__class__ is str:
            doc_id = lf["id"]
        source = unrenderable_document(record, record.reason, record.raw, received_s)
        index = self._namer.index(tenant, received_s)
        return self._letter(tenant, index, doc_id, record.reason, source, "too_deep")

    def _failure_letter(self, tenant: str, failure: Failure, received_s: int) -> DeadLetter:
        source = unrenderable_document(failure.record, failure.reason, None, received_s)
        return self._letter(
            tenant, failure.index, failure.doc_id, failure.reason, source, "encode_error"
        )

    def _letter(
        self, tenant: str, index: str, doc_id: str, reason: str, source: bytes, kind: str
    ) -> DeadLetter:
        self._metrics.records_unrenderable.labels(tenant=tenant, reason=kind).inc()
        return DeadLetter(
            tenant=tenant,
            index=index,
            doc_id=doc_id or f"unrenderable:{self.instance}:{time.time_ns()}",
            status=422,
            reason=f"unrenderable: {reason}",
            source=source,
        )

    def _render_signal(self, message: EventMessage, receipt: Receipt) -> Rendered:
        """A non-log signal (metrics, traces, ...): its payload, as sent, becomes a letter."""
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
        return Rendered(letters=[letter], signal=name)

    # ----------------------------------------------------------------- storing

    async def store(self, rendered: Rendered) -> int:
        """Make a rendered message durable (spools fsynced, letters in the DLQ); returns the
        number of documents spooled. Its budget is given back either way."""
        try:
            if rendered.letters:
                await self._park(rendered)
            if rendered.fragments:
                await self._spool(rendered.fragments)
        finally:
            self._budget.release(rendered.size)
        return rendered.documents

    async def _spool(self, fragments: dict[str, tuple[list[bytes], int]]) -> None:
        await self._spools.wait_for_space()
        appends: list[Coroutine[Any, Any, object]] = []
        for tenant, (parts, _count) in fragments.items():
            spool = await self._spools.get(tenant)
            size = sum(len(part) for part in parts)
            if spool.bytes_used + size > spool.max_bytes:
                self._metrics.backpressure_waits.labels(tenant).inc()
            if self._divert_after_s > 0:
                # Even with room now: space reserved by others can make it wait, and a
                # wait that cannot be re-judged would stall the connection's later acks.
                appends.append(self._append_or_divert(tenant, spool, parts, size))
            else:
                appends.append(spool.append(parts))
        await asyncio.gather(*appends)

    async def _park(self, rendered: Rendered) -> None:
        """Letters into the DLQ, each tenant's within its share. A tenant whose share is full
        keeps its unrenderable records as documents in its own index instead (neither lost
        nor holding up the chunk's other tenants); a non-log signal waits for room."""
        assert self._dlq is not None, "the aggregator always has a DLQ"
        by_tenant: dict[str, list[DeadLetter]] = {}
        for letter in rendered.letters:
            by_tenant.setdefault(letter.tenant, []).append(letter)
        for tenant, letters in by_tenant.items():
            attempt = 0
            while True:
                try:
                    await self._dlq.append(letters)
                    break
                except DeadLetterQueueFullError as exc:
                    if rendered.signal is None:
                        self._keep_in_index(rendered, tenant, letters, str(exc))
                        break
                    log.warning("ingest.signal_park_waiting", error=str(exc)[:200])
                except OutputError as exc:  # the disk failed: hold the ack (backpressure)
                    log.warning("ingest.park_waiting", tenant=tenant, error=str(exc)[:200])
                # The DLQ is a local file, not a server many clients share: no jitter.
                await asyncio.sleep(
                    backoff_delay(attempt, _PARK_RETRY_FIRST_S, _PARK_RETRY_MAX_S, jitter="none")
                )
                attempt += 1
        unrenderable = len(rendered.letters) if rendered.signal is None else 0
        if unrenderable:
            log.warning(
                "ingest.unrenderable",
                records=unrenderable,
                first_tenant=rendered.letters[0].tenant,
                first_reason=rendered.letters[0].reason[:200],
            )

    def _keep_in_index(
        self, rendered: Rendered, tenant: str, letters: list[DeadLetter], why: str
    ) -> None:
        lines = b"".join(
            orjson.dumps({"create": {"_index": letter.index, "_id": letter.doc_id}})
            + b"\n"
            + letter.source
            + b"\n"
            for letter in letters
        )
        parts, count = rendered.fragments.get(tenant, ([], 0))
        parts.append(pack_fragment(lines, len(letters), self._compression))
        rendered.fragments[tenant] = (parts, count + len(letters))
        count_and_log(
            self._metrics.records_unrenderable_kept,
            log,
            "ingest.unrenderable_kept_in_index",
            amount=len(letters),
            labels={"tenant": tenant},
            why=why[:200],
        )

    async def _append_or_divert(
        self, tenant: str, spool: Spool, parts: list[bytes], size: int
    ) -> None:
        """Append, waiting for space as usual, unless the tenant is stuck: then park the
        fragment's documents in the DLQ, so the other tenants' records of the same chunk are
        not held up by a store that refuses this tenant (nothing is dropped either way)."""
        while True:
            stuck = (
                spool.bytes_used + size > spool.max_bytes
                and spool.commit_idle_s >= self._divert_after_s
            )
            if stuck and await self._divert(tenant, parts):
                return
            try:
                # Re-judged every few seconds while waiting: a tenant can become stuck meanwhile.
                # Cancelling a waiting append is safe; one cancelled after its space was granted
                # may still be written, and a record both spooled and parked is delivered once.
                await asyncio.wait_for(spool.append(parts), _DIVERT_CHECK_S)
                return
            except TimeoutError:
                continue

    async def _divert(self, tenant: str, parts: list[bytes]) -> bool:
        assert self._dlq is not None
        letters = []
        for part in parts:
            for document in split_fragment(part):  # rendered here: always line pairs
                action = orjson.loads(document.action)["create"]
                letters.append(
                    DeadLetter(
                        tenant=tenant,
                        index=str(action["_index"]),
                        doc_id=str(action["_id"]),
                        status=507,
                        reason=(
                            "tenant spool full and nothing delivered for "
                            f"{self._divert_after_s:.0f} s: parked here so other tenants keep "
                            "flowing; replay when its store accepts again"
                        ),
                        source=document.source,
                    )
                )
        try:
            await self._dlq.append(letters)
        except OutputError as exc:  # the DLQ is full too: wait for the spool after all
            log.warning("ingest.divert_failed", tenant=tenant, error=str(exc))
            return False
        count_and_log(
            self._metrics.records_diverted,
            log,
            "ingest.diverted",
            amount=len(letters),
            labels={"tenant": tenant},
        )
        return True


def _checkpoint_problem(record: dict[str, Any], lf: dict[str, Any]) -> str | None:
    """None if ``record``, whose ``_lf`` has a ``kind``, is a well-formed checkpoint, else the
    reason it is not taken as logferry's own: ``reserved_kind`` or ``malformed_checkpoint``.

    Accounting records are the aggregator's own (verify reads their ranges as discarded
    lines): one from a peer could hide a loss, so no kind but checkpoint is taken from the
    wire. A checkpoint must have the fields the auditor reads, with the types the index
    template gives them (a misfit would only be refused by the store, later, as a whole), and
    nothing else at the top: the store reads a key ``"_lf.next_seq"`` as the field
    ``_lf.next_seq``, so an extra key could change what the checkpoint says."""
    if lf["kind"] != CHECKPOINT_KIND:
        return "reserved_kind"
    if not record.keys() <= _CHECKPOINT_KEYS:
        return "malformed_checkpoint"
    doc_id, src, next_seq, state = lf.get("id"), lf.get("src"), lf.get("next_seq"), lf.get("state")
    lost_lines, reason, node = lf.get("lost_lines", -1), lf.get("reason", ""), lf.get("node", "")
    well_formed = (
        doc_id.__class__ is str
        and doc_id.startswith(CHECKPOINT_ID_PREFIX)
        and len(doc_id) <= 512  # longer ids are replaced by derived ones when rendered
        and src.__class__ is str
        and bool(src)
        and next_seq.__class__ is int
        and 0 <= next_seq <= _LONG_MAX
        and state.__class__ is str
        and state in CHECKPOINT_STATES
        and lost_lines.__class__ is int
        and -1 <= lost_lines <= _LONG_MAX
        and reason.__class__ is str
        and node.__class__ is str
    )
    return None if well_formed else "malformed_checkpoint"


def _kind_set_aside(lf: dict[str, Any]) -> dict[str, Any]:
    """``lf`` without ``kind``, which it keeps as text under :data:`WIRE_KIND_FIELD`: nothing
    that reads ``_lf.kind`` (verify, the auditor) takes the record for logferry's own."""
    kept = {key: value for key, value in lf.items() if key != "kind"}
    kind = lf["kind"]
    kept[WIRE_KIND_FIELD] = kind if kind.__class__ is str else repr(kind)[:256]
    return kept


def _compression_of(spools: TenantSpools | None, chosen: Compression | None) -> Compression:
    """The fragments' storage: as chosen, else the spools' setting (tests render without
    spools: then compressed, the default)."""
    if chosen is not None:
        return chosen
    return spools.settings.compression if spools is not None else "deflate"
