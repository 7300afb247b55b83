"""Waiting on several asyncio events at once (a change or a stop, whichever comes first)."""

from __future__ import annotations

import asyncio

__all__ = ["first_set"]


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
