"""Driving an aggregator output by hand: documents as rendered, a small real spool filled with
them, draining it into an output until a condition holds, and reading the metrics it moved."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from logferry.aggregator.documents import action_line, render_fragment
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs.base import Output
from logferry.aggregator.outputs.pump import drain
from logferry.common.spool import Spool
from tests.support.net import wait_until

DEADLINE_S = 30.0
DRAIN_POLL_S = 0.01
"""How often :func:`drain_until` looks at its condition: the drain stops soon after it holds."""


def make_docs(
    index: str, count: int, *, start: int = 0, **fields: Any
) -> list[tuple[bytes, bytes]]:
    """(action, source) pairs with ids ``<index>-<n>`` and a ``n`` field."""
    return [
        (action_line(index, f"{index}-{n}"), orjson.dumps({"log": f"line {n}", "n": n, **fields}))
        for n in range(start, start + count)
    ]


async def open_spool(directory: Path) -> Spool:
    """A small real spool."""
    return await Spool.open(directory, max_bytes=64 << 20, segment_max_bytes=1 << 20)


async def fill(spool: Spool, docs: list[tuple[bytes, bytes]], per_fragment: int = 10) -> int:
    """Append ``docs`` as fragments of ``per_fragment`` documents; return the fragment count."""
    fragments = [
        render_fragment(docs[i : i + per_fragment]) for i in range(0, len(docs), per_fragment)
    ]
    await spool.append(fragments)
    return len(fragments)


async def drain_until(
    output: Output,
    tenant: str,
    spool: Spool,
    condition: Callable[[], bool],
    *,
    deadline_s: float = 5.0,
    timeout_s: float = DEADLINE_S,
) -> None:
    """Drain ``spool`` into ``output`` until ``condition`` holds, then stop and wait."""
    stop = asyncio.Event()
    task = asyncio.create_task(drain(output, tenant, spool, stop, deadline_s))
    try:
        await wait_until(
            lambda: condition() or task.done(),
            timeout_s=timeout_s,
            what="the drain's condition (or the drain to end)",
            poll_s=DRAIN_POLL_S,
        )
    finally:
        stop.set()
        await task


def sample(metrics: AggregatorMetrics, name: str, **labels: str) -> float:
    """The value of one sample of ``metrics`` (0 if it was never set)."""
    return metrics.registry.get_sample_value(name, labels or None) or 0.0
