"""``logferry forwarder parked list|requeue --config forwarder.yaml``: chunks the aggregators
kept refusing (see :mod:`.parking`).

``list`` prints each parked chunk (time, reason, records, namespaces, chunk id) as a table,
or JSON lines with ``--json``. ``requeue`` appends the records of the selected chunks (or
``--all``) to the node spool again and removes each file once its records are durable there;
the next forwarder start sends them (under a new chunk id; record ids are unchanged, so a
store that has some of them keeps one copy). It refuses to run while a forwarder holds the
spool (the spool's own lock): stop the forwarder, requeue, start it.

Exit status: 0 done, 1 some chunk could not be requeued (damaged file, spool full), 2 usage
or config error, or the spool is in use.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import orjson

from logferry.common.commands import Subcommands, run_standalone
from logferry.common.config import load_config
from logferry.common.errors import ConfigError, SpoolError, SpoolFullError
from logferry.common.files import fsync_dir
from logferry.common.spool import Spool
from logferry.forwarder.config import ForwarderConfig
from logferry.forwarder.entries import make_block
from logferry.forwarder.parking import ParkedChunk, decode_payload, list_parked, read_parked

__all__ = ["parked_main", "register", "run"]


def register(commands: Subcommands, name: str, help_text: str) -> argparse.ArgumentParser:
    """Add ``parked list|requeue`` to ``commands`` (the forwarder's tools)."""
    parser = commands.add_parser(
        name,
        help=help_text,
        description="List the chunks the aggregators kept refusing, or put them back into "
        "the node spool (with the forwarder stopped).",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action_name, text in (
        ("list", "print the parked chunks"),
        ("requeue", "append parked chunks to the spool again (forwarder stopped)"),
    ):
        action = sub.add_parser(action_name, help=text, description=text)
        action.add_argument("--config", "-c", type=Path, required=True, help="forwarder.yaml")
        if action_name == "list":
            action.add_argument("--json", action="store_true", help="one JSON object a line")
        else:
            which = action.add_mutually_exclusive_group(required=True)
            which.add_argument("--all", action="store_true", help="every parked chunk")
            which.add_argument("files", nargs="*", default=[], help="parked files (names)")
    parser.set_defaults(handler=run)
    return parser


def parked_main(argv: Sequence[str], *, out: TextIO | None = None) -> int:
    """``logferry forwarder parked`` with ``argv`` (the words after ``parked``)."""
    return run_standalone(
        register, "parked", argv, parent="logferry forwarder", handler=lambda a: run(a, out=out)
    )


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run a parsed ``parked`` command; the exit status."""
    out = out or sys.stdout
    try:
        config = load_config(args.config, ForwarderConfig)
    except ConfigError as exc:
        print(f"logferry forwarder parked: config refused: {exc}", file=sys.stderr)
        return 2
    directory = config.parked_path
    if args.action == "list":
        return _list(directory, out, as_json=args.json)
    paths = list_parked(directory) if args.all else [_named(directory, f) for f in args.files]
    return asyncio.run(_requeue(config, paths, out))


def _named(directory: Path, name: str) -> Path:
    # A bare name is looked up in the parked folder; a path is taken as it is.
    path = Path(name)
    return path if path.parent != Path() else directory / name


def _namespaces(chunk: ParkedChunk) -> list[str]:
    sources = chunk.header.get("sources") or {}
    return sorted({str(s.get("namespace")) for s in sources.values()})


def _row(chunk: ParkedChunk) -> dict[str, object]:
    header = chunk.header
    return {
        "file": chunk.path.name,
        "parked_at": header.get("parked_at"),
        "reason": header.get("reason"),
        "records": header.get("records"),
        "namespaces": _namespaces(chunk),
        "sources": len(header.get("sources") or {}),
        "chunk_id": header.get("chunk_id"),
        "refusals": header.get("refusals"),
        "detail": header.get("detail"),
    }


def _list(directory: Path, out: TextIO, *, as_json: bool) -> int:
    paths = list_parked(directory)
    damaged = 0
    if not as_json:
        print(f"{'parked at':<21} {'records':>8}  {'reason':<12} namespaces / file", file=out)
    for path in paths:
        try:
            chunk = read_parked(path)
        except (OSError, ValueError) as exc:
            damaged += 1
            if as_json:
                out.write(orjson.dumps({"file": path.name, "damaged": str(exc)}).decode() + "\n")
            else:
                print(f"{'?':<21} {'?':>8}  {'DAMAGED':<12} {path.name}: {exc}", file=out)
            continue
        row = _row(chunk)
        if as_json:
            out.write(orjson.dumps(row).decode() + "\n")
        else:
            print(
                f"{row['parked_at']!s:<21} {row['records']!s:>8}  {row['reason']!s:<12} "
                f"{','.join(_namespaces(chunk))} / {path.name}",
                file=out,
            )
    if not as_json:
        print(f"{len(paths)} parked chunk(s) in {directory}", file=out)
    return 1 if damaged else 0


async def _requeue(config: ForwarderConfig, paths: list[Path], out: TextIO) -> int:
    try:
        spool = await Spool.open(
            config.spool.directory,
            max_bytes=config.spool.max_bytes,
            segment_max_bytes=config.spool.segment_max_bytes,
        )
    except SpoolError as exc:
        print(
            f"logferry forwarder parked: refused: {exc}. A forwarder must not run on this "
            "spool while chunks are requeued: stop it, requeue, then start it.",
            file=sys.stderr,
        )
        return 2
    status = 0
    try:
        for path in paths:
            try:
                chunk = read_parked(path)
                _tag, stream, count = decode_payload(chunk.payload)
            except (OSError, ValueError) as exc:
                print(f"{path.name}: not requeued: {exc}", file=out)
                status = 1
                continue
            try:
                await spool.append([make_block(stream, count)], block=False)
            except SpoolFullError:
                print(
                    f"{path.name}: not requeued: the spool is full; start the forwarder, let "
                    "it drain, and requeue the rest",
                    file=out,
                )
                return 1
            # The records are durable in the spool: only now does the file go.
            os.unlink(path)
            fsync_dir(path.parent)
            print(f"{path.name}: requeued {count} records", file=out)
    finally:
        await spool.close()
    return status
