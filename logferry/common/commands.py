"""Subcommands of the ``logferry`` command: each command module registers its own parser.

A command module has ``register(commands, name, help_text)``: it adds its parser to
``commands`` (the subparsers of ``logferry``, or of a daemon for the daemon's tools) and sets
``handler``, the function that runs it and returns the exit status. :mod:`logferry.cli`
imports only the module of the command being run. The same registration gives each module a
standalone parser (:func:`standalone_parser`) for its ``*_main(argv)`` entry used by tests.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from logferry.common.config import load_config
from logferry.common.errors import ConfigError
from logferry.common.lifecycle import Daemon, Reloadable, run_until_signalled
from logferry.common.logs import setup_logging

__all__ = [
    "Handler",
    "Register",
    "Subcommands",
    "register_daemon",
    "run_handler",
    "run_standalone",
    "standalone_parser",
]

Handler = Callable[[argparse.Namespace], int]
_Config = TypeVar("_Config", bound=BaseModel)


class Subcommands(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as registration needs it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


Register = Callable[[Subcommands, str, str], argparse.ArgumentParser]


def standalone_parser(
    register: Register, name: str, *, parent: str = "logferry"
) -> argparse.ArgumentParser:
    """The parser ``register`` builds for ``name``, alone under a ``parent`` program (so its
    usage reads ``logferry aggregator dlq ...`` as it does under the full command)."""
    top = argparse.ArgumentParser(prog=parent)
    return register(top.add_subparsers(), name, "")


def run_standalone(
    register: Register,
    name: str,
    argv: Sequence[str],
    *,
    parent: str = "logferry",
    handler: Handler | None = None,
) -> int:
    """Run ``name`` with ``argv`` through its own parser (``handler`` in place of the one it
    registers, say to print somewhere else); the exit status."""
    parser = standalone_parser(register, name, parent=parent)
    if handler is not None:
        parser.set_defaults(handler=handler)
    return run_handler(parser, argv)


def run_handler(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """Parse ``argv`` and run the handler it selects; argparse's own exits (0 after --help,
    2 on a usage error) become the returned status."""
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    handler: Handler = args.handler
    return handler(args)


def register_daemon(
    commands: Subcommands,
    name: str,
    help_text: str,
    *,
    description: str,
    model: type[_Config],
    build: Callable[[_Config, Path], Daemon],
) -> tuple[argparse.ArgumentParser, Subcommands]:
    """Add daemon ``name`` (``--config``, ``--check-config``) to ``commands``; its parser and
    the subcommands its tools register under it (``forwarder parked ...``). ``build`` gets
    the config and its file (to reload it on SIGHUP).

    ``--config`` is checked when the daemon starts, not by argparse, so that the tools parse
    without it.
    """
    parser = commands.add_parser(name, help=help_text, description=description)
    parser.add_argument("--config", "-c", type=Path, help=f"path to {name}.yaml (required)")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config file, print OK or the problems, and exit",
    )
    parser.set_defaults(handler=lambda args: _start_daemon(parser, args, model, build))
    return parser, parser.add_subparsers(dest=f"{name}_tool", metavar="TOOL")


def _start_daemon(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    model: type[_Config],
    build: Callable[[_Config, Path], Daemon],
) -> int:
    """Load and check the config, then run the daemon ``build`` makes until SIGTERM/SIGINT.

    A bad config is refused before anything starts (status 2), with the file, line and
    reason; so is one whose secret files ``build`` cannot read.
    """
    if args.config is None:
        parser.error("the following arguments are required: --config/-c")
    name = parser.prog.rsplit(" ", 1)[-1]
    try:
        config = load_config(args.config, model)
    except ConfigError as exc:
        print(f"logferry {name}: config refused: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{args.config}: OK")
        return 0
    log_settings = getattr(config, "log")  # noqa: B009 - both daemon models have it
    setup_logging(log_settings.level, log_settings.format)
    try:
        daemon = build(config, args.config)
    except ConfigError as exc:
        print(f"logferry {name}: config refused: {exc}", file=sys.stderr)
        return 2
    hangup = daemon.request_reload if isinstance(daemon, Reloadable) else None
    return run_until_signalled(daemon.run, hangup)
