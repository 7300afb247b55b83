"""The ``logferry`` command: one entry point, one subcommand per daemon or tool."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from logferry import __version__
from logferry.common.config import iter_reference, load_config
from logferry.common.errors import ConfigError
from logferry.common.lifecycle import run_until_signalled
from logferry.common.logs import setup_logging

if TYPE_CHECKING:
    from pydantic import BaseModel

DESCRIPTION = """\
logferry ships Kubernetes container logs without losing or duplicating an acknowledged line.

  forwarder    per-node daemon: tails /var/log/containers, spools to disk, sends to aggregators
  aggregator   receives Forward Protocol v1, filters per tenant, spools, bulk-writes to the store
  config-reference   prints every config key of a daemon with its default and meaning
  verify       proof of delivery: per source, seqs contiguous and stored once (exit 1 if not)
  loadgen      writes realistic container log files laid out like /var/log/containers
  pipelines    validate|render tenant LogPipelines offline (the aggregator's own rules)

Each daemon reads one YAML file (--config). A bad file is refused before anything starts,
with the file, line, key path and reason. Example configs live in examples/.
"""

# Config models are imported only for the daemon that runs: a forwarder on every node should
# not load the aggregator's modules (and their HTTP client) into its memory.
DAEMONS: dict[str, tuple[str, str]] = {
    "forwarder": (
        "logferry.forwarder.config:ForwarderConfig",
        "Tail container log files on this node, spool them durably and send them to "
        "aggregators with acknowledgements.",
    ),
    "aggregator": (
        "logferry.aggregator.config:AggregatorConfig",
        "Receive Forward Protocol v1 batches, apply tenant filters, spool them with fsync "
        "before acking, and bulk-write them to Elasticsearch/OpenSearch.",
    ),
}


def config_model(daemon: str) -> type[BaseModel]:
    """The config model class of ``daemon``."""
    module, _, name = DAEMONS[daemon][0].partition(":")
    model: type[BaseModel] = getattr(import_module(module), name)
    return model


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="logferry",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"logferry {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_model, help_text) in DAEMONS.items():
        daemon = sub.add_parser(name, help=help_text, description=help_text)
        daemon.add_argument("--config", "-c", type=Path, required=True, help=f"path to {name}.yaml")
        daemon.add_argument(
            "--check-config",
            action="store_true",
            help="validate the config file, print OK or the problems, and exit",
        )
    ref = sub.add_parser(
        "config-reference",
        help="print every config key of a daemon (Markdown table)",
        description="Print every config key of a daemon with its default and meaning.",
    )
    ref.add_argument("daemon", choices=sorted(DAEMONS))
    # Listed for --help; main() hands their arguments to their own parsers.
    sub.add_parser("verify", help="proof of delivery against the store (logferry verify -h)")
    sub.add_parser("loadgen", help="write realistic container log files (logferry loadgen -h)")
    sub.add_parser("pipelines", help="validate|render tenant LogPipelines offline (-h)")
    return parser


def _load(name: str, path: Path) -> BaseModel:
    return load_config(path, config_model(name))


def _run_daemon(name: str, args: argparse.Namespace) -> int:
    try:
        config = _load(name, args.config)
    except ConfigError as exc:
        print(f"logferry {name}: config refused: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{args.config}: OK")
        return 0
    log_settings = getattr(config, "log")  # noqa: B009 - both daemon models have it
    setup_logging(log_settings.level, log_settings.format)
    if name == "aggregator":
        from logferry.aggregator.app import Aggregator
        from logferry.aggregator.config import AggregatorConfig

        assert isinstance(config, AggregatorConfig)
        try:  # secret files are read here: an empty or unreadable one refuses the start
            aggregator = Aggregator(config)
        except ConfigError as exc:
            print(f"logferry {name}: config refused: {exc}", file=sys.stderr)
            return 2
        return run_until_signalled(aggregator.run)
    from logferry.forwarder.app import Forwarder
    from logferry.forwarder.config import ForwarderConfig

    assert isinstance(config, ForwarderConfig)
    try:  # the shared key file is read here: an empty or unreadable one refuses the start
        forwarder = Forwarder(config)
    except ConfigError as exc:
        print(f"logferry {name}: config refused: {exc}", file=sys.stderr)
        return 2
    return run_until_signalled(forwarder.run)


def _print_reference(daemon: str) -> int:
    model = config_model(daemon)
    print("| key | default | meaning |")
    print("| --- | --- | --- |")
    for path, default, doc in iter_reference(model):
        text = " ".join(doc.split()).replace("|", "\\|")
        print(f"| `{path}` | {f'`{default}`' if default else ''} | {text} |")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``logferry`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["aggregator", "dlq"]:
        from logferry.aggregator.dlq_cli import dlq_main

        return dlq_main(argv[2:])
    if argv[:2] == ["forwarder", "parked"]:
        from logferry.forwarder.parked_cli import parked_main

        return parked_main(argv[2:])
    if argv[:1] == ["loadgen"]:
        from logferry.tools.loadgen import loadgen_main

        return loadgen_main(argv[1:])
    if argv[:1] == ["pipelines"]:
        from logferry.pipelines.cli import pipelines_main

        return pipelines_main(argv[1:])
    if argv[:1] == ["verify"]:
        from logferry.tools.verify import verify_main

        return verify_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command in DAEMONS:
        return _run_daemon(args.command, args)
    if args.command == "config-reference":
        return _print_reference(args.daemon)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
