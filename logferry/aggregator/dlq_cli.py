"""``logferry aggregator dlq list|replay``: inspect and re-drive the dead-letter queue.

``list`` prints the entries (time, tenant, index, id, status, reason) as a table or JSON lines.
``replay`` sends the selected entries to the store again with the output's own client:
delivered and already-present (409) entries are removed from the queue, entries refused again
stay with the new reason. It can run while the daemon runs (the queue's files are locked).

The store comes from ``--config aggregator.yaml`` (its ``output`` section, see
:func:`load_output_settings`) or from the store flags that ``logferry verify`` takes too
(``--url``, ``--username``, ``--password-file``, ``--api-key-file``, ``--tls-ca-file``,
``--insecure``; see :mod:`logferry.common.store_access`).
Exit status: 0 done, 1 some replayed entries are still in the queue, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict

from logferry.aggregator.dlq import DeadLetterQueue, DeadLetterSettings, DlqEntry
from logferry.aggregator.documents import Document, action_line
from logferry.aggregator.outputs import OutputSettings
from logferry.aggregator.outputs.bulk_client import BulkClient, BulkOutputSettings
from logferry.aggregator.outputs.bulk_delivery import BulkDelivery
from logferry.common.commands import Subcommands, run_standalone
from logferry.common.config import load_config
from logferry.common.errors import ConfigError, OutputError
from logferry.common.store_access import add_store_arguments, store_access_from_args

DEFAULT_REPLAY_ROUNDS = 5
_REASON_COLUMN_CHARS = 100


class _OutputSections(BaseModel):
    """The parts of aggregator.yaml the DLQ command needs; other sections are ignored here
    (the daemon validates the whole file)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    output: OutputSettings | None = None
    dlq: DeadLetterSettings | None = None


def load_output_settings(
    path: str | Path,
) -> tuple[BulkOutputSettings | None, DeadLetterSettings | None]:
    """The bulk output and DLQ sections of an aggregator config (``output:``, ``dlq:``).

    Raises ConfigError. The output is None unless it is a store (``file``/``null`` outputs
    have nothing to replay into).
    """
    sections = load_config(path, _OutputSections)
    output = sections.output if isinstance(sections.output, BulkOutputSettings) else None
    return output, sections.dlq


@dataclass(slots=True)
class ReplayReport:
    """What a replay did."""

    selected: int = 0
    delivered: int = 0
    duplicates: int = 0
    refused: int = 0
    unsettled: int = 0
    removed: int = 0


async def replay(
    dlq: DeadLetterQueue,
    settings: BulkOutputSettings,
    entries: Sequence[DlqEntry],
    *,
    max_rounds: int = DEFAULT_REPLAY_ROUNDS,
) -> ReplayReport:
    """Send ``entries`` again; remove the delivered ones, update the refused ones.

    A store that stays unreachable for ``max_rounds`` attempts leaves entries untouched.
    """
    report = ReplayReport(selected=len(entries))
    async with aiohttp.ClientSession() as session:
        client = BulkClient(settings, session)
        delivery = BulkDelivery(
            client, asyncio.Semaphore(settings.max_in_flight), max_rounds=max_rounds
        )
        page_size = settings.batch_max_records
        for start in range(0, len(entries), page_size):
            page = entries[start : start + page_size]
            documents = [Document(action_line(e.index, e.doc_id), e.source) for e in page]
            settlement = await delivery.deliver(documents)
            refused = {page[r.position].entry_id: (r.status, r.reason) for r in settlement.refused}
            stuck = {page[p].entry_id for p in settlement.unsettled}
            delivered = {e.entry_id for e in page} - set(refused) - stuck
            # Settled per page, so an interrupted replay keeps what it already achieved.
            report.removed += await asyncio.to_thread(dlq.settle_replayed, delivered, refused)
            report.delivered += settlement.delivered
            report.duplicates += settlement.duplicates
            report.refused += len(refused)
            report.unsettled += len(stuck)
    return report


def dlq_main(argv: Sequence[str], out: TextIO | None = None) -> int:
    """Run ``dlq list|replay`` with ``argv`` (the words after ``dlq``); return the exit status."""
    return run_standalone(
        register, "dlq", argv, parent="logferry aggregator", handler=lambda a: run(a, out=out)
    )


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run a parsed ``dlq`` command; the exit status."""
    out = out or sys.stdout
    try:
        bulk, dlq_settings = (None, None)
        if args.config is not None:
            bulk, dlq_settings = load_output_settings(args.config)
        directory = args.dlq_dir or (dlq_settings.directory if dlq_settings else None)
        if directory is None:
            raise ConfigError("give --dlq-dir, or --config with a dlq section")
        dlq = DeadLetterQueue(directory)
        scan = dlq.scan(tenant=args.tenant, reason_contains=args.reason_contains, limit=args.limit)
        if scan.damaged_lines:
            print(f"skipped {scan.damaged_lines} damaged lines", file=sys.stderr)
        if args.action == "list":
            _print_list(scan.entries, as_json=args.json, with_source=args.with_source, out=out)
            return 0
        settings = _replay_settings(args, bulk)
        # Entries without an index (a non-log signal's payload) have no document to replay.
        replayable = [entry for entry in scan.entries if entry.index]
        if len(replayable) < len(scan.entries):
            print(
                f"{len(scan.entries) - len(replayable)} entries have no index to replay into"
                " (non-log signals); they stay in the DLQ ('dlq list --with-source' shows them)",
                file=out,
            )
        report = asyncio.run(replay(dlq, settings, replayable, max_rounds=args.max_rounds))
    except (ConfigError, OutputError, OSError) as exc:
        print(f"logferry aggregator dlq: {exc}", file=sys.stderr)
        return 2
    print(
        f"replayed {report.selected} entries: {report.delivered} delivered "
        f"({report.duplicates} already present), {report.refused} refused again, "
        f"{report.unsettled} still failing; {report.removed} removed from the DLQ",
        file=out,
    )
    return 0 if report.refused == 0 and report.unsettled == 0 else 1


def _replay_settings(
    args: argparse.Namespace, from_config: BulkOutputSettings | None
) -> BulkOutputSettings:
    if args.url:
        access = store_access_from_args(args)
        return BulkOutputSettings(type="opensearch", **dict(access))
    if from_config is None:
        raise ConfigError("replay needs --url, or --config whose output is a store")
    return from_config


def _print_list(
    entries: Sequence[DlqEntry], *, as_json: bool, with_source: bool, out: TextIO
) -> None:
    if as_json:
        for entry in entries:
            summary = entry.summary()
            if with_source:
                try:
                    orjson.loads(entry.source)
                    summary["source"] = orjson.Fragment(entry.source)
                except orjson.JSONDecodeError:  # kept as text when it was not JSON
                    summary["source_text"] = entry.source.decode("utf-8", "replace")
            out.write(orjson.dumps(summary).decode() + "\n")
        return
    rows = [
        (e.time, e.tenant, e.index, e.doc_id, str(e.status), e.reason[:_REASON_COLUMN_CHARS])
        for e in entries
    ]
    header = ("TIME", "TENANT", "INDEX", "ID", "STATUS", "REASON")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        out.write("\n")
    out.write(f"{len(entries)} entries\n")


def register(commands: Subcommands, name: str, help_text: str) -> argparse.ArgumentParser:
    """Add ``dlq list|replay`` to ``commands`` (the aggregator's tools)."""
    parser = commands.add_parser(
        name, help=help_text, description="Inspect and re-drive the dead-letter queue."
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("list", "print entries"), ("replay", "send entries to the store again")):
        # No abbreviations: "--password S" must be refused, not read as --password-file S.
        sub = actions.add_parser(action, help=text, description=text, allow_abbrev=False)
        sub.add_argument("--dlq-dir", type=Path, help="the queue's directory")
        sub.add_argument("-c", "--config", type=Path, help="aggregator.yaml (output, dlq)")
        sub.add_argument("--tenant", help="only this tenant's entries")
        sub.add_argument("--reason-contains", help="only entries whose reason has this text")
        sub.add_argument("--limit", type=_positive, help="at most this many entries (oldest first)")
        if action == "list":
            sub.add_argument("--json", action="store_true", help="one JSON object a line")
            sub.add_argument("--with-source", action="store_true", help="include documents")
        else:
            add_store_arguments(sub, required=False)
            sub.add_argument(
                "--max-rounds",
                type=_positive,
                default=DEFAULT_REPLAY_ROUNDS,
                help="attempts per entry while the store fails",
            )
    parser.set_defaults(handler=run)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
