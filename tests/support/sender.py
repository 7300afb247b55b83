"""The forwarder's Sender run by a test: a node spool to feed it, settings with short
timeouts, running it in the background, and waiting for the spool to drain."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from logferry.common.spool import Spool
from logferry.forwarder.config import SenderSettings
from logferry.forwarder.sender import Sender
from tests.support.net import wait_until


async def open_spool(directory: Path) -> Spool:
    """A node spool as the forwarder opens it, large enough for any test's records."""
    return await Spool.open(
        directory,
        max_bytes=256 * 1024 * 1024,
        segment_max_bytes=4 * 1024 * 1024,
        commit_flush_interval_s=0.05,
    )


def settings(servers: list[str], **overrides: Any) -> SenderSettings:
    """Sender settings for tests: chunks of 100 records, timeouts and backoff of a test's
    scale rather than production's."""
    base: dict[str, Any] = {
        "servers": servers,
        "batch_max_records": 100,
        "ack_timeout_s": 5.0,
        "connect_timeout_s": 2.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
        "shutdown_deadline_s": 5.0,
    }
    return SenderSettings(**{**base, **overrides})


@contextlib.asynccontextmanager
async def running(sender: Sender) -> AsyncIterator[asyncio.Event]:
    """Run ``sender`` in the background; on exit stop it and require a clean return."""
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def drained(spool: Spool, *, timeout_s: float) -> None:
    """Wait until every record of ``spool`` is committed (the sender commits on acks)."""
    await wait_until(
        lambda: spool.records_pending == 0,
        timeout_s=timeout_s,
        what="the forwarder spool to drain",
    )
