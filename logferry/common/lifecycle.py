"""Process lifecycle: SIGTERM/SIGINT set an event (a second one forces the exit); SIGHUP asks
for a config reload."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, Protocol, runtime_checkable

from logferry.common.logs import get_logger

log = get_logger(__name__)
FORCED_EXIT_CODE = 130


class Daemon(Protocol):
    """A daemon: runs until ``stop`` is set, then returns its exit status."""

    async def run(self, stop: asyncio.Event) -> int: ...


@runtime_checkable
class Reloadable(Protocol):
    """A daemon that re-reads its config on SIGHUP."""

    def request_reload(self) -> None: ...


def tune_gc() -> None:
    """Make the cyclic garbage collector run far less often.

    A daemon decodes millions of small, acyclic objects (records) a second; with the default
    thresholds the collector runs every 700 allocations and rescans them. Reference counting
    frees records; the collector only has to find the rare cycles (tasks, exceptions), so a
    high first threshold costs little memory. Objects alive at start are frozen out of scans.
    """
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def run_until_signalled(
    main: Callable[[asyncio.Event], Awaitable[int]], hangup: Callable[[], None] | None = None
) -> NoReturn:
    """Run ``main(stop)`` in a fresh event loop; SIGTERM/SIGINT set ``stop``; SIGHUP calls
    ``hangup`` (a daemon without one logs that it ignores it: SIGHUP's default is to exit).

    A second signal exits at once: the operator asked twice, and the spools are crash-safe, so
    nothing acknowledged is lost by not waiting.
    """

    async def runner() -> int:
        tune_gc()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        received: list[int] = []

        def on_signal(signum: int) -> None:
            received.append(signum)
            if len(received) > 1:
                log.warning("signal.forced_exit", signal=signal.Signals(signum).name)
                os._exit(FORCED_EXIT_CODE)
            log.info("signal.received", signal=signal.Signals(signum).name)
            stop.set()

        def on_hangup() -> None:
            log.info("signal.received", signal="SIGHUP", action="reload config")
            if hangup is None:
                log.warning("signal.ignored", signal="SIGHUP", why="this process has no reload")
            else:
                hangup()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        try:
            return await main(stop)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)

    try:
        code = asyncio.run(runner())
    except Exception:
        log.exception("daemon.crashed")
        code = 1
    # Leave now, whatever threads a library left behind (a watchdog observer, an executor
    # worker blocked in I/O): a daemon that failed must exit so its supervisor restarts it,
    # and everything that matters (spool, positions) was closed or is crash-safe anyway.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
