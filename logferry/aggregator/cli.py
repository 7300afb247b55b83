"""``logferry aggregator``: the aggregator daemon, and its tool ``dlq`` (see :mod:`.dlq_cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from logferry.aggregator import dlq_cli
from logferry.aggregator.config import AggregatorConfig
from logferry.common.commands import Subcommands, register_daemon
from logferry.common.lifecycle import Daemon

__all__ = ["CONFIG_MODEL", "register"]

CONFIG_MODEL = AggregatorConfig
DESCRIPTION = (
    "Receive Forward Protocol v1 batches, apply tenant filters, spool them with fsync before "
    "acking, and bulk-write them to Elasticsearch/OpenSearch."
)


def register(commands: Subcommands, name: str, help_text: str) -> argparse.ArgumentParser:
    """Add ``aggregator`` (the daemon) and ``aggregator dlq ...`` to ``commands``."""
    parser, tools = register_daemon(
        commands, name, help_text, description=DESCRIPTION, model=AggregatorConfig, build=_build
    )
    dlq_cli.register(tools, "dlq", "list or replay the dead-letter queue")
    return parser


def _build(config: AggregatorConfig, path: Path) -> Daemon:
    from logferry.aggregator.app import Aggregator
    from logferry.aggregator.workers import (
        WorkerSlot,
        die_with_parent,
        worker_count,
        worker_spool_settings,
    )
    from logferry.common.logs import set_process_fields

    slot = WorkerSlot.from_env()
    if slot is not None:
        die_with_parent()
        set_process_fields(worker=slot.index)
        return Aggregator(config, slot, config_path=path)
    count = worker_count(config.workers)
    if count > 1:
        from logferry.aggregator.supervisor import Supervisor

        # Refused here, not in N crash-looping workers: secrets, and the budgets' split.
        Aggregator(config)
        worker_spool_settings(config.spool, WorkerSlot(0, count, -1, -1))
        # A worker is this same command line, told which worker it is by its environment.
        return Supervisor(config, count, [sys.executable, *sys.orig_argv[1:]], config_path=path)
    # Secret files are read here: an empty or unreadable one refuses the start.
    return Aggregator(config, config_path=path)
