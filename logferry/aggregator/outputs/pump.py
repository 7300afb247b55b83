"""The drain loop every output shares: read batches, hand each to a handler, stop cleanly.

:func:`drain` is how the aggregator runs any :class:`~.base.Output` on a tenant's spool:
:func:`pump` with the output's batch limits, concurrency and shared slots, and its
``settle`` as the handler. A handler settles one batch (delivers it, dead-letters what the
destination refused for good) and commits it; it retries inside. The pump keeps up to
``concurrency`` batches of one tenant in hand, so memory stays bounded (``concurrency *
max_bytes``, counting fragments as their uncompressed size whatever the spool stores). On
stop it reads nothing new, gives the handlers ``deadline_s`` to finish, then
cancels the rest: their batches stay uncommitted in the spool and go out after the next start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from logferry.aggregator.documents import fragment_size
from logferry.aggregator.outputs.base import Output
from logferry.common.errors import SpoolClosedError
from logferry.common.events import unless_stopped
from logferry.common.logs import get_logger
from logferry.common.spool import Spool, SpoolBatch

log = get_logger(__name__)

BatchHandler = Callable[[SpoolBatch], Coroutine[Any, Any, None]]


_SLOT_READ_TIMEOUT_S = 1.0
"""How long a pump holding a shared slot waits for its read before giving the slot back."""


async def drain(
    output: Output, tenant: str, spool: Spool, stop: asyncio.Event, deadline_s: float
) -> None:
    """Settle ``tenant``'s spool through ``output`` until ``stop`` is set (see the module
    docstring and the Output contract); a failing ``settle`` propagates from here."""

    async def settle(batch: SpoolBatch) -> None:
        await output.settle(tenant, spool, batch)

    await pump(
        tenant,
        spool,
        stop,
        deadline_s,
        max_records=output.batch_max_records,
        max_bytes=output.batch_max_bytes,
        concurrency=lambda: output.concurrency(tenant),
        handle=settle,
        slots=output.slots,
        size=fragment_size,  # a batch's memory is what its fragments inflate to
    )


async def read_or_stop(
    spool: Spool,
    stop: asyncio.Event,
    *,
    max_records: int,
    max_bytes: int,
    timeout_s: float | None = None,
    size: Callable[[bytes], int] | None = None,
) -> SpoolBatch | None:
    """The next batch, or None once ``stop`` is set (or the spool closed, or ``timeout_s``
    passed) first; ``size`` as :meth:`Spool.read` takes it."""
    if stop.is_set():
        return None
    # A read cancelled after taking a batch only leaves it uncommitted: it is read again
    # after a restart (resends are harmless), never lost.
    read = await unless_stopped(
        spool.read(max_records=max_records, max_bytes=max_bytes, timeout_s=timeout_s, size=size),
        stop,
    )
    if read.cancelled():
        return None
    try:
        return read.result()
    except SpoolClosedError:
        return None


async def pump(
    tenant: str,
    spool: Spool,
    stop: asyncio.Event,
    deadline_s: float,
    *,
    max_records: int,
    max_bytes: int,
    concurrency: int | Callable[[], int],
    handle: BatchHandler,
    slots: asyncio.Semaphore | None = None,
    size: Callable[[bytes], int] | None = None,
) -> None:
    """Feed ``spool``'s batches to ``handle`` until ``stop``; see the module docstring.

    ``slots``, shared by every tenant's pump, caps the batches held in memory by the whole
    output, so memory does not grow with the number of tenants (a tenant holds a slot from
    reading a batch until it is settled). ``concurrency`` may be a callable, asked before
    each read (an output in backoff keeps one batch in hand instead of several). A handler
    that raises takes the pump down: the others are cancelled and the error propagates to the
    task that owns the drain, which logs it loudly. ``size`` weighs a record against
    ``max_bytes`` (its length if None).
    """
    tasks: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if slots is not None:
            slots.release()
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]

    try:
        while not stop.is_set() and not failures:
            limit = concurrency() if callable(concurrency) else concurrency
            if len(tasks) >= max(1, limit):
                await _first_of(tasks, stop)
                continue
            if slots is not None:
                # An idle tenant must not sit on a shared slot while it waits for records:
                # with more idle tenants than slots, the busy ones would wait for ever.
                if not await _unread_or_stop(spool, stop):
                    if not stop.is_set():
                        break  # the spool closed under us: nothing more to drain
                    continue
                if not await _acquire_or_stop(slots, stop):
                    continue
            batch = await read_or_stop(
                spool,
                stop,
                max_records=max_records,
                max_bytes=max_bytes,
                timeout_s=None if slots is None else _SLOT_READ_TIMEOUT_S,
                size=size,
            )
            if batch is None and slots is not None:
                slots.release()
            if batch is None:
                if spool.closing:  # nothing more to drain
                    break
                continue
            task = asyncio.create_task(handle(batch), name=f"output-{tenant}-{batch.first_seq}")
            tasks.add(task)
            task.add_done_callback(done)
        if tasks and not failures:
            _, pending = await asyncio.wait(set(tasks), timeout=max(0.0, deadline_s))
            if pending:
                log.warning("output.deadline_reached", tenant=tenant, batches_left=len(pending))
    finally:
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    if failures:
        raise failures[0]


async def _unread_or_stop(spool: Spool, stop: asyncio.Event) -> bool:
    """Wait until ``spool`` has a record to read (True) or ``stop`` / closing (False)."""
    unread = await unless_stopped(spool.wait_unread(), stop)
    return not unread.cancelled() and unread.exception() is None


async def _first_of(tasks: set[asyncio.Task[None]], stop: asyncio.Event) -> None:
    """Wait until one of ``tasks`` finishes or ``stop`` is set."""
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({*tasks, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        await asyncio.gather(stopped, return_exceptions=True)


async def _acquire_or_stop(slots: asyncio.Semaphore, stop: asyncio.Event) -> bool:
    """Take a slot; False if ``stop`` came first (nothing held then)."""
    acquire = await unless_stopped(slots.acquire(), stop)
    if acquire.cancelled():
        return False
    if stop.is_set():
        slots.release()
        return False
    return True
