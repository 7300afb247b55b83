"""``logferry audit``: the proof of delivery as a standing signal, from the store alone.

Every ``--interval`` it proves each closed window of the last ``--span`` (windows of
``--window``, aligned to the epoch, ending at least ``--grace`` ago so that normal delivery
delay is over) with :func:`~logferry.tools.audit_proof.prove_window`, and exports per tenant
the records missing and stored twice over those windows, the lines lost at source (by reason),
the end of the last window proven and how long the pass took. Each pass proves the whole span
again, so a document deleted or copied in a window already proven shows at the next pass.

Windows depend on the clock only through which are closed, and a proof only on what the
store holds: two auditors agree, and one restarted picks up where any left off. It needs read
access to the indices and nothing else (no node, no position file, no DLQ: a record the
aggregator dead-lettered is not in the store and counts as missing here; ``logferry verify
--dlq`` accounts for it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from logferry.common import metrics
from logferry.common.commands import Subcommands, run_handler, standalone_parser
from logferry.common.errors import ConfigError
from logferry.common.events import first_set
from logferry.common.lifecycle import run_until_signalled
from logferry.common.logs import get_logger, setup_logging
from logferry.common.status_http import StatusServer
from logferry.common.store_access import (
    StoreAccess,
    add_store_arguments,
    store_access_from_args,
)
from logferry.tools.audit_proof import WindowProof, prove_window
from logferry.tools.verify_options import VerifyError, VerifyOptions
from logferry.tools.verify_store import open_verify_store

__all__ = ["AuditMetrics", "AuditOptions", "AuditPass", "Auditor", "audit_main", "register"]

log = get_logger(__name__)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class AuditOptions:
    """What to audit, how often, and over which windows."""

    store: StoreAccess
    index: str = "logs-*"
    window_s: int = 300
    grace_s: int = 120
    span_s: int = 3600
    interval_s: float = 60.0
    request_timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class AuditPass:
    """One pass: every window proven, oldest first."""

    windows: tuple[WindowProof, ...]
    took_s: float

    @property
    def proven_until_ms(self) -> int:
        return self.windows[-1].until_ms if self.windows else 0

    def totals(self) -> dict[str, dict[str, Any]]:
        """Per tenant: missing, duplicates, records proven, lost at source by reason."""
        out: dict[str, dict[str, Any]] = {}
        for proof in self.windows:
            for row in proof.rows:
                tenant = out.setdefault(
                    row.namespace,
                    {"missing": 0, "duplicates": 0, "records": 0, "lost_at_source": {}},
                )
                tenant["missing"] += row.missing
                tenant["duplicates"] += row.duplicates
                tenant["records"] += row.expected
                if row.lost_reason:
                    lost = tenant["lost_at_source"]
                    lost[row.lost_reason] = lost.get(row.lost_reason, 0) + max(
                        row.lost_at_source, 0
                    )
        return out

    @property
    def ok(self) -> bool:
        return all(t["missing"] == 0 and t["duplicates"] == 0 for t in self.totals().values())

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "proven_until": _iso(self.proven_until_ms),
            "took_s": round(self.took_s, 3),
            "tenants": self.totals(),
            "windows": [
                {
                    "since": _iso(proof.since_ms),
                    "until": _iso(proof.until_ms),
                    "records": proof.records,
                    "problems": [row.as_json() for row in proof.rows if not row.ok],
                }
                for proof in self.windows
            ],
        }


class AuditMetrics:
    """What the auditor exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.missing = metrics.gauge(
            registry,
            "audit_missing_records",
            "Records missing from the store in the closed windows of the audited span "
            "(below a checkpoint's next_seq, not stored).",
            ("tenant",),
        )
        self.duplicates = metrics.gauge(
            registry,
            "audit_duplicate_records",
            "Records stored more than once in the closed windows of the audited span.",
            ("tenant",),
        )
        self.lost = metrics.gauge(
            registry,
            "audit_lost_at_source_records",
            "Lines a forwarder reported it never read (its file went away first), in the "
            "audited span, by reason; never counted as missing.",
            ("tenant", "reason"),
        )
        self.records = metrics.gauge(
            registry,
            "audit_records_proven",
            "Records the last pass proved (the seqs of every window of the span).",
            ("tenant",),
        )
        self.proven_until = metrics.gauge(
            registry,
            "audit_proven_until_timestamp_seconds",
            "End of the last window proven: everything checkpointed before it is judged.",
        )
        self.duration = metrics.gauge(
            registry, "audit_proof_duration_seconds", "How long the last pass took."
        )
        self.passes = metrics.counter(
            registry,
            "audit_passes",
            "Audit passes by outcome: ok, problems (missing or duplicate records), error "
            "(the store could not be read; the figures of the last pass stay).",
            ("outcome",),
        )
        for outcome in ("ok", "problems", "error"):
            self.passes.labels(outcome)

    def show(self, result: AuditPass) -> None:
        for gauge in (self.missing, self.duplicates, self.lost, self.records):
            gauge.clear()  # tenants whose windows aged out of the span leave no series
        for tenant, figures in result.totals().items():
            self.missing.labels(tenant).set(figures["missing"])
            self.duplicates.labels(tenant).set(figures["duplicates"])
            self.records.labels(tenant).set(figures["records"])
            for reason, lines in figures["lost_at_source"].items():
                self.lost.labels(tenant, reason).set(lines)
        if result.windows:
            self.proven_until.set(result.proven_until_ms / 1000)
        self.duration.set(result.took_s)
        self.passes.labels("ok" if result.ok else "problems").inc()


def closed_windows(now_s: float, options: AuditOptions) -> list[tuple[int, int]]:
    """The windows (ms) of the span that ended at least ``grace_s`` ago, oldest first."""
    window_ms = options.window_s * 1000
    end = int((now_s - options.grace_s) * 1000) // window_ms * window_ms
    start = end - (options.span_s * 1000) // window_ms * window_ms
    return [(t, t + window_ms) for t in range(start, end, window_ms)]


class Auditor:
    """Proves the span every ``interval_s`` until stopped; serves the figures."""

    def __init__(
        self,
        options: AuditOptions,
        *,
        listen_host: str = "0.0.0.0",
        listen_port: int = 2022,
    ) -> None:
        self.options = options
        self.registry = CollectorRegistry()
        metrics.standard(self.registry, "audit")
        self.metrics = AuditMetrics(self.registry)
        self.last: AuditPass | None = None
        self.status = StatusServer(
            listen_host,
            listen_port,
            self.registry,
            live=lambda: (True, "ok"),
            ready=lambda: (self.last is not None, "ok" if self.last else "no pass yet"),
        )

    async def run(self, stop: asyncio.Event) -> int:
        await self.status.start()
        log.info(
            "audit.started",
            http_port=self.status.port,
            window_s=self.options.window_s,
            grace_s=self.options.grace_s,
            span_s=self.options.span_s,
            interval_s=self.options.interval_s,
        )
        try:
            while not stop.is_set():
                with contextlib.suppress(VerifyError):
                    await self.audit()
                await first_set((stop,), self.options.interval_s)
        finally:
            await self.status.stop()
        return 0

    async def audit(self, now_s: float | None = None) -> AuditPass:
        """One pass; VerifyError (counted and logged) if the store cannot be read."""
        started = time.monotonic()
        windows = closed_windows(time.time() if now_s is None else now_s, self.options)
        verify_options = VerifyOptions(
            store=self.options.store,
            index=self.options.index,
            request_timeout_s=self.options.request_timeout_s,
        )
        try:
            async with open_verify_store(verify_options) as store:
                await store.refresh()
                proofs = [await prove_window(store, a, b) for a, b in windows]
        except VerifyError as exc:
            self.metrics.passes.labels("error").inc()
            log.warning("audit.failed", error=str(exc), kept="the figures of the last pass")
            raise
        result = AuditPass(tuple(proofs), time.monotonic() - started)
        self.metrics.show(result)
        self.last = result
        self._log(result)
        return result

    def _log(self, result: AuditPass) -> None:
        for proof in result.windows:
            for row in proof.rows:
                if row.ok:
                    continue
                log.warning(
                    "audit.discrepancy",
                    tenant=row.namespace,
                    source=row.source,
                    window_since=_iso(proof.since_ms),
                    window_until=_iso(proof.until_ms),
                    missing=row.missing,
                    duplicates=row.duplicates,
                    missing_ranges=[str(r) for r in row.missing_ranges],
                )
        totals = result.totals()
        log.info(
            "audit.pass",
            windows=len(result.windows),
            proven_until=_iso(result.proven_until_ms) if result.windows else None,
            tenants=len(totals),
            records=sum(t["records"] for t in totals.values()),
            missing=sum(t["missing"] for t in totals.values()),
            duplicates=sum(t["duplicates"] for t in totals.values()),
            took_s=round(result.took_s, 3),
        )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def parse_span(text: str) -> int:
    """``90s``, ``5m``, ``2h``, ``1d`` or plain seconds -> seconds (argparse type)."""
    value = text.strip()
    unit = value[-1:]
    try:
        seconds = int(value[:-1]) * _UNITS[unit] if unit in _UNITS else int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (90s, 5m, 2h, 1d)") from exc
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    return seconds


# ------------------------------------------------------------------------------------ CLI


def register(commands: Subcommands, name: str, help_text: str) -> argparse.ArgumentParser:
    """Add ``audit`` to ``commands``."""
    parser = commands.add_parser(
        name,
        help=help_text,
        description=(
            "Prove delivery continuously from the store alone: every interval, each closed "
            "window of the span is judged by the forwarders' checkpoints (missing, stored "
            "twice, lost at source), and the figures are served on /metrics. --once proves "
            "once and exits: 0 nothing missing or doubled, 1 otherwise, 2 on errors."
        ),
        allow_abbrev=False,
    )
    add_store_arguments(parser, required=True)
    parser.add_argument("--index", default="logs-*", metavar="PATTERN", help="default: logs-*")
    parser.add_argument("--window", type=parse_span, default=300, help="window length (5m)")
    parser.add_argument(
        "--grace", type=parse_span, default=120, help="how old a window must be (2m)"
    )
    parser.add_argument("--span", type=parse_span, default=3600, help="windows proven (1h)")
    parser.add_argument("--interval", type=parse_span, default=60, help="between passes (60s)")
    parser.add_argument("--listen-host", default="0.0.0.0", help="metrics address")
    parser.add_argument("--listen-port", type=int, default=2022, help="metrics port (2022)")
    parser.add_argument("--timeout", type=float, default=120.0, help="per request (s)")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("--json", action="store_true", help="with --once: a JSON report")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    parser.set_defaults(handler=run)
    return parser


def options_from_args(args: argparse.Namespace) -> AuditOptions:
    """Options from parsed arguments; VerifyError when they are inconsistent."""
    try:
        store = store_access_from_args(args)
    except ConfigError as exc:
        raise VerifyError(exc.reason) from exc
    if min(args.window, args.interval) <= 0:
        raise VerifyError("--window and --interval must be longer than 0")
    if args.span < args.window:
        raise VerifyError("--span must be at least one --window")
    return AuditOptions(
        store=store,
        index=args.index,
        window_s=args.window,
        grace_s=args.grace,
        span_s=args.span,
        interval_s=float(args.interval),
        request_timeout_s=args.timeout,
    )


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``audit``; the exit status."""
    try:
        options = options_from_args(args)
    except VerifyError as exc:
        print(f"logferry audit: {exc}", file=sys.stderr)
        return 2
    if args.once:
        auditor = Auditor(options)
        try:
            result = asyncio.run(auditor.audit())
        except VerifyError as exc:
            print(f"logferry audit: {exc}", file=sys.stderr)
            return 2
        if args.json:
            sys.stdout.write(orjson.dumps(result.as_json(), option=orjson.OPT_INDENT_2).decode())
            sys.stdout.write("\n")
        else:
            for tenant, figures in result.totals().items():
                print(
                    f"{tenant or '-'}: {figures['records']} records, {figures['missing']} "
                    f"missing, {figures['duplicates']} duplicates"
                )
            print("OK" if result.ok else "FAILED")
        return 0 if result.ok else 1
    setup_logging(args.log_level, "json")
    auditor = Auditor(options, listen_host=args.listen_host, listen_port=args.listen_port)
    return run_until_signalled(auditor.run)


def audit_main(argv: Sequence[str]) -> int:
    """``logferry audit`` with ``argv``."""
    return run_handler(standalone_parser(register, "audit"), argv)


if __name__ == "__main__":
    sys.exit(audit_main(sys.argv[1:]))
