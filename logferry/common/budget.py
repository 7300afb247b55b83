"""A byte budget shared by many tasks: memory in flight stays bounded however many peers.

Two ways to hold bytes:

- :meth:`ByteBudget.acquire` waits (FIFO) until ``size`` fits, for a size known in advance;
  one holder may go past the limit alone, so an oversized request cannot wait for ever;
- :meth:`ByteBudget.admit` then :meth:`ByteBudget.take`, for work whose size is known only
  once done (decoding a message): ``admit`` waits until the budget has room at all, the work
  runs without an ``await``, then ``take`` counts what it made. Between one ``admit`` and its
  ``take`` nothing else runs, so the budget is exceeded by at most one piece of work.
"""

from __future__ import annotations

import asyncio
from collections import deque


class ByteBudget:
    """At most ``limit`` bytes held at once (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._turn = False
        """An admitted waiter has not run yet: nothing else is granted until it has."""

    def _fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.limit

    async def acquire(self, size: int) -> None:
        """Hold ``size`` bytes, waiting in FIFO order until they fit."""
        if not self._waiters and not self._turn and self._fits(size):
            self.held += size
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((size, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(size)  # granted just as we were cancelled: give it back
            raise

    async def admit(self) -> None:
        """Wait (FIFO) until the budget has room; then do the work and :meth:`take` its size
        without awaiting in between."""
        await self.acquire(0)

    def take(self, size: int) -> None:
        """Count ``size`` bytes made by admitted work (it may go past the limit)."""
        self.held += size

    def release(self, size: int) -> None:
        """Give back ``size`` bytes and wake the waiters that now fit."""
        self.held -= size
        if not self._turn:
            self._grant()

    def _grant(self) -> None:
        while self._waiters:
            wanted, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if not self._fits(wanted):
                break
            self._waiters.popleft()
            self.held += wanted
            future.set_result(None)
            if wanted == 0:
                # An admitted waiter's size is known only once it has run and taken it:
                # admitting every waiter (or newcomer) the room fits *now* would let each of
                # them go past the limit. The next is judged after this one's step (its
                # wake-up was scheduled first), which ends with its take or with nothing.
                self._turn = True
                asyncio.get_running_loop().call_soon(self._end_turn)
                return

    def _end_turn(self) -> None:
        self._turn = False
        self._grant()
