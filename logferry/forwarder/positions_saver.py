"""Saving the position file without ever crashing on a full disk.

A save writes a new file beside the old one and renames it (``PositionStore.save``). When
the volume is full (ENOSPC, EDQUOT) the old file stays as it was, which is always safe:
positions only ever trail the spool, and an older position only means reading a little
again after a restart (record ids make that harmless). The store stays dirty, the save is
retried with backoff, and the stall is reported once (``logferry_disk_full{kind="positions"}``).

Tailing does not wait for the position file: the spool, not this file, is what makes a
record durable, and the spool pauses tailing by itself when its own volume is full.
"""

from __future__ import annotations

import asyncio
import time

from logferry.common.disk_full import DiskStalls, is_disk_full, stall_delay
from logferry.forwarder.positions import PositionStore

__all__ = ["PositionsSaver"]


class PositionsSaver:
    """Saves a :class:`PositionStore` from the event loop, through a worker thread."""

    def __init__(self, store: PositionStore, stalls: DiskStalls) -> None:
        self.store = store
        self._stalls = stalls
        self._attempts = 0
        self._retry_at = 0.0

    @property
    def stalled(self) -> bool:
        """The last save found the volume full."""
        return self._attempts > 0

    async def save(self, *, force: bool = False) -> bool:
        """Save if dirty (or ``force``), unless a stall's backoff says not yet (``force``
        tries anyway: the last save before exit). True if a file was written."""
        if not force and time.monotonic() < self._retry_at:
            return False
        try:
            wrote = await asyncio.to_thread(self.store.save, force=force)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self._attempts += 1
            self._retry_at = time.monotonic() + stall_delay(self._attempts)
            self._stalls.failed("positions", self.store.path, "file", exc)
            return False
        if wrote and self._attempts:
            self._attempts, self._retry_at = 0, 0.0
            self._stalls.succeeded("positions", self.store.path, "file")
        return wrote
