"""The forwarder daemon built in this process (no subprocess), for unit tests that need the
whole of it (its registry, its discovery, its open path) but no real aggregator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from logferry.common.config import parse_config
from logferry.forwarder.app import Forwarder
from logferry.forwarder.config import ForwarderConfig
from tests.support.kubelet import glob_of


def forwarder_in(root: Path) -> Forwarder:
    """A forwarder for the kubelet layout under ``root`` (:mod:`tests.support.kubelet`), with
    its spool in ``root/spool`` and so its positions in ``root/positions``; its status server
    on a free port; its one aggregator unreachable (nothing listens on port 1)."""
    config = parse_config(
        f"""
node_name: n1
spool: {{directory: {root / "spool"}}}
source: {{path_glob: {glob_of(root)}}}
sender: {{servers: ["127.0.0.1:1"]}}
http: {{listen_host: 127.0.0.1, listen_port: 0}}
""",
        ForwarderConfig,
    )
    return Forwarder(config)


@contextlib.asynccontextmanager
async def forwarder_running(forwarder: Forwarder) -> AsyncIterator[None]:
    """Run ``forwarder`` for the block; then stop it and require a clean exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop))
    try:
        yield
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
