"""Waiting on a stop: several events at once (a change or a stop, whichever comes first), or
any awaitable unless the stop comes first. Every "wait for X or stop" in the daemons is one
of these two."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["first_set", "unless_stopped"]

_T = TypeVar("_T")


async def first_set(
    events: tuple[asyncio.Event, ...], wait_s: float | None = None
) -> asyncio.Event | None:
    """The first of ``events`` that is set within ``wait_s`` seconds (forever if None), or
    None at the deadline."""
    for event in events:
        if event.is_set():
            return event
    waiters = {asyncio.ensure_future(event.wait()): event for event in events}
    try:
        done, _ = await asyncio.wait(waiters, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    return next((waiters[w] for w in done), None)


async def unless_stopped(work: Awaitable[_T], stop: asyncio.Event) -> asyncio.Future[_T]:
    """Run ``work`` until it finishes or ``stop`` is set; its future, cancelled if ``stop``
    came first (or if the caller was cancelled meanwhile)."""
    future = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({future, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (future, stopped):
            task.cancel()  # a no-op on the one that finished
        await asyncio.gather(future, stopped, return_exceptions=True)
    return future
