"""The ``logferry`` command: one entry point; each subcommand's module registers its parser
(see :mod:`logferry.common.commands`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module
from typing import TYPE_CHECKING

from logferry import __version__
from logferry.common.commands import Register, Subcommands
from logferry.common.config import iter_reference

if TYPE_CHECKING:
    from pydantic import BaseModel

DESCRIPTION = """\
logferry ships Kubernetes container logs without losing or duplicating an acknowledged line.

Each daemon reads one YAML file (--config). A bad file is refused before anything starts,
with the file, line, key path and reason. Example configs live in examples/.
"""

# Only the module of the command being run is imported: a forwarder on every node should not
# load the aggregator's modules (and their HTTP client) into its memory.
COMMANDS: dict[str, tuple[str, str]] = {
    "forwarder": (
        "logferry.forwarder.cli",
        "per-node daemon: tails container logs, spools to disk, sends to aggregators "
        "(and: forwarder parked list|requeue)",
    ),
    "aggregator": (
        "logferry.aggregator.cli",
        "receives Forward Protocol v1, filters per tenant, spools, bulk-writes to the store "
        "(and: aggregator dlq list|replay)",
    ),
    "verify": (
        "logferry.tools.verify",
        "proof of delivery: per source, seqs contiguous and stored once (exit 1 if not)",
    ),
    "audit": (
        "logferry.tools.audit",
        "continuous proof of delivery from the store alone: missing/duplicate records per "
        "tenant and closed window, served as metrics (--once too)",
    ),
    "loadgen": (
        "logferry.tools.loadgen",
        "write realistic container log files laid out like /var/log/containers",
    ),
    "pipelines": (
        "logferry.pipelines.cli",
        "validate|render tenant LogPipelines offline (the aggregator's own rules)",
    ),
    "status": (
        "logferry.tools.status",
        "live view of a running deployment from its daemons' /metrics (--once --json too)",
    ),
    "store": (
        "logferry.store.cli",
        "setup|retention|status of the store: index templates, ISM/ILM, retention, shards",
    ),
}
DAEMONS = ("aggregator", "forwarder")


def config_model(daemon: str) -> type[BaseModel]:
    """The config model class of ``daemon``."""
    model: type[BaseModel] = import_module(COMMANDS[daemon][0]).CONFIG_MODEL
    return model


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``logferry`` parser; only ``command``'s module is imported to register its parser,
    the others are listed by name and help."""
    parser = argparse.ArgumentParser(
        prog="logferry",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"logferry {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            register: Register = import_module(module).register
            register(commands, name, help_text)
        else:
            commands.add_parser(name, help=help_text)
    _register_reference(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``logferry`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    status: int = args.handler(args)
    return status


def _register_reference(commands: Subcommands) -> None:
    ref = commands.add_parser(
        "config-reference",
        help="print every config key of a daemon with its default and meaning",
        description="Print every config key of a daemon with its default and meaning "
        "(a Markdown table).",
    )
    ref.add_argument("daemon", choices=DAEMONS)
    ref.set_defaults(handler=lambda args: _print_reference(args.daemon))


def _print_reference(daemon: str) -> int:
    print("| key | default | meaning |")
    print("| --- | --- | --- |")
    for path, default, doc in iter_reference(config_model(daemon)):
        text = " ".join(doc.split()).replace("|", "\\|")
        print(f"| `{path}` | {f'`{default}`' if default else ''} | {text} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
