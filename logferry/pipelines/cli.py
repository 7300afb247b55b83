"""``logferry pipelines``: validate and render LogPipeline documents offline (CI, pre-merge),
with the same code the aggregator and the operator use.

::

    logferry pipelines validate DIR [--namespace NS] [--json]
    logferry pipelines render DIR [--namespace NS] [--out FILE]

Exit status: 0 all accepted, 1 any refused, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from logferry.common.commands import Subcommands, run_standalone
from logferry.pipelines.render import render
from logferry.pipelines.validate import (
    TenantLimits,
    Verdict,
    label_selector_warning,
    load_directory,
    validate_documents,
)


def register(commands: Subcommands, name: str, help_text: str) -> argparse.ArgumentParser:
    """Add ``pipelines validate|render`` to ``commands``."""
    parser = commands.add_parser(
        name,
        help=help_text,
        description="Validate and render tenant LogPipeline documents (schema, policy, dry run).",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (
        ("validate", "validate every pipeline document in DIR; exit 1 if any is refused"),
        ("render", "write the accepted pipelines as one normalized YAML stream"),
    ):
        command = sub.add_parser(action, help=text, description=text)
        command.add_argument("directory", type=Path, metavar="DIR", help="folder (or one file)")
        command.add_argument(
            "--namespace", help="refuse documents of any other namespace (a per-tenant folder)"
        )
        command.add_argument("--max-pipelines", type=int, default=TenantLimits.max_pipelines)
        command.add_argument("--max-filters", type=int, default=TenantLimits.max_filters)
        command.add_argument("--max-regex-chars", type=int, default=TenantLimits.max_regex_chars)
        command.add_argument(
            "--labels-not-shipped",
            action="store_true",
            help="the forwarders do not ship pod labels: warn about selector.labels",
        )
        if action == "validate":
            command.add_argument("--json", action="store_true", help="print verdicts as JSON")
        else:
            command.add_argument("--out", type=Path, help="write here (atomically), not stdout")
    parser.set_defaults(handler=run)
    return parser


def _report(verdicts: Sequence[Verdict], out: TextIO, *, accepted: bool) -> None:
    for verdict in sorted(verdicts, key=lambda v: (v.pipeline, v.source)):
        if verdict.ok:
            if accepted:
                print(f"ACCEPTED {verdict.pipeline} {verdict.spec_hash}", file=out)
            continue
        print(f"REJECTED {verdict.pipeline}", file=out)
        for issue in verdict.issues:
            where = f"{issue.path}: " if issue.path else ""
            print(f"  {verdict.source}: {where}{issue.reason} ({issue.layer})", file=out)


def _as_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "pipeline": verdict.pipeline,
        "source": verdict.source,
        "ok": verdict.ok,
        "specHash": verdict.spec_hash,
        "issues": [{"path": i.path, "reason": i.reason, "layer": i.layer} for i in verdict.issues],
    }


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pipelines_main(argv: Sequence[str]) -> int:
    """``logferry pipelines`` with ``argv``; the exit status."""
    return run_standalone(register, "pipelines", argv)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``pipelines`` command; the exit status."""
    if not args.directory.exists():
        print(f"logferry pipelines: {args.directory}: no such file or directory", file=sys.stderr)
        return 2
    limits = TenantLimits(args.max_pipelines, args.max_filters, args.max_regex_chars)
    verdicts = validate_documents(
        load_directory(args.directory), namespace=args.namespace, limits=limits
    )
    refused = any(not v.ok for v in verdicts)
    if args.labels_not_shipped:
        for verdict in verdicts:
            warning = label_selector_warning(verdict)
            if warning is not None:
                print(f"WARNING {verdict.pipeline}: {warning}", file=sys.stderr)
    if args.action == "validate":
        if args.json:
            print(json.dumps([_as_json(v) for v in verdicts], indent=2))
        else:
            _report(verdicts, sys.stdout, accepted=True)
            if not verdicts:
                print(f"no pipeline documents in {args.directory}")
        return 1 if refused else 0
    _report(verdicts, sys.stderr, accepted=False)
    text = render(verdicts)
    if args.out is not None:
        try:
            _write_atomically(args.out, text)
        except OSError as exc:
            print(f"logferry pipelines: cannot write {args.out}: {exc}", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(text)
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(pipelines_main(sys.argv[1:]))
