"""``logferry forwarder``: the per-node daemon, and its tool ``parked`` (see :mod:`.parked_cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from logferry.common.commands import Subcommands, register_daemon
from logferry.common.lifecycle import Daemon
from logferry.forwarder import parked_cli
from logferry.forwarder.config import ForwarderConfig

__all__ = ["CONFIG_MODEL", "register"]

CONFIG_MODEL = ForwarderConfig
DESCRIPTION = (
    "Tail container log files on this node, spool them durably and send them to aggregators "
    "with acknowledgements."
)


def register(commands: Subcommands, name: str, help_text: str) -> argparse.ArgumentParser:
    """Add ``forwarder`` (the daemon) and ``forwarder parked ...`` to ``commands``."""
    parser, tools = register_daemon(
        commands, name, help_text, description=DESCRIPTION, model=ForwarderConfig, build=_build
    )
    parked_cli.register(tools, "parked", "list or requeue the chunks the aggregators refused")
    return parser


def _build(config: ForwarderConfig, path: Path) -> Daemon:
    from logferry.forwarder.app import Forwarder

    # The shared key file is read here: an empty or unreadable one refuses the start.
    return Forwarder(config, config_path=path)
