"""``logferry status``: a live view of a running deployment, from its daemons' /metrics.

Each daemon is scraped, then scraped again ``--interval`` later: rates come from the two, the
rest from the second (:mod:`.status_view`). Daemons are named by URL (``--url``, repeatable)
or found behind a DNS name (``--dns name:port``: every address it resolves to, as the pods
behind a headless Service). The view refreshes in place until Ctrl-C; ``--once`` prints one
view and exits (``--json`` for scripts). Exit status 0, or 1 when a daemon did not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

import aiohttp

from logferry.common.commands import Subcommands, run_standalone
from logferry.common.scrape import endpoints, scrape
from logferry.tools.status_view import StatusView, status_view

_CLEAR = "\x1b[H\x1b[2J"


def register(commands: Subcommands, name: str, help_text: str) -> argparse.ArgumentParser:
    """Add ``status`` to ``commands``."""
    parser = commands.add_parser(
        name,
        help=help_text,
        description="A live view of a running deployment, from its daemons' /metrics: per "
        "daemon and per tenant, records in and out per second, backlog, spool and its "
        "capacity, oldest record, ack latency, retries, dead letters, pipeline state.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--url", action="append", default=[], help="a daemon's HTTP endpoint (repeatable)"
    )
    parser.add_argument(
        "--dns", action="append", default=[], metavar="NAME:PORT",
        help="every address NAME resolves to, on PORT (a headless Service; repeatable)",
    )  # fmt: skip
    parser.add_argument("--interval", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--once", action="store_true", help="print one view and exit")
    parser.add_argument("--json", action="store_true", help="print JSON (with --once)")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    parser.set_defaults(handler=run)
    return parser


async def observe(urls: list[str], interval_s: float, timeout_s: float) -> StatusView:
    """Scrape every daemon twice, ``interval_s`` apart, and compute the view."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        first = await asyncio.gather(*(scrape(session, url) for url in urls))
        await asyncio.sleep(interval_s)  # the interval the rates are measured over
        second = await asyncio.gather(*(scrape(session, url) for url in urls))
    return status_view(list(zip(first, second, strict=True)))


def _si(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def render(view: StatusView) -> str:
    """The view as a terminal table."""
    lines = [f"logferry status (rates over {view.interval_s:.1f}s)", ""]
    lines.append(f"{'daemon':<34} {'kind':<10} {'in/s':>8} {'out/s':>8} {'backlog':>8} "
                 f"{'spool':>8} {'cap':>8} {'oldest':>7} {'ack ms':>7} {'retry/s':>7}")  # fmt: skip
    for row in view.daemons:
        if not row.up:
            lines.append(f"{row.url:<34} DOWN       {row.error}")
            continue
        f = row.figures
        forwarder = row.kind == "forwarder"
        rate_in = f["lines_read_per_s"] if forwarder else f["records_in_per_s"]
        rate_out = f["records_acked_per_s"] if forwarder else f["records_out_per_s"]
        backlog = f["backlog_blocks"] if forwarder else f["backlog_chunks"]
        lines.append(
            f"{row.url:<34} {row.kind:<10} {_si(rate_in):>8} {_si(rate_out):>8} "
            f"{_si(backlog):>8} {_si(f['spool_bytes']) + 'B':>8} "
            f"{_si(f['spool_capacity_bytes']) + 'B':>8} {f.get('oldest_age_s', 0):>6.0f}s "
            f"{f['ack_latency_s'] * 1000:>7.1f} {f['retries_per_s']:>7.1f}"
        )
    lines += ["", f"{'tenant':<34} {'in/s':>8} {'out/s':>8} {'backlog':>8} {'spool':>8} "
              f"{'oldest':>7} {'DLQ':>6}  pipelines"]  # fmt: skip
    for t in view.tenants:
        state = t.pipelines + (" BYPASSED" if t.bypassed else "")
        lines.append(
            f"{t.tenant:<34} {_si(t.records_in_per_s):>8} {_si(t.records_out_per_s):>8} "
            f"{_si(t.backlog_chunks):>8} {_si(t.spool_bytes) + 'B':>8} {t.oldest_age_s:>6.0f}s "
            f"{_si(t.dead_lettered):>6}  {state}"
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """The command: 0, or 1 when a daemon did not answer, 2 for bad arguments."""
    try:
        urls = endpoints(args.url, args.dns)
    except (OSError, ValueError) as exc:
        print(f"logferry status: {exc}", file=sys.stderr)
        return 2
    if not urls:
        print("logferry status: give --url or --dns", file=sys.stderr)
        return 2
    if args.once:
        view = asyncio.run(observe(urls, args.interval, args.timeout))
        sys.stdout.write(json.dumps(view.as_json(), indent=2) + "\n" if args.json else render(view))
        return 0 if all(row.up for row in view.daemons) else 1
    try:
        while True:  # refreshed in place until Ctrl-C
            view = asyncio.run(observe(urls, args.interval, args.timeout))
            sys.stdout.write(_CLEAR + render(view))
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m logferry.tools.status``."""
    return run_standalone(register, "status", sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
