"""Small network helpers for tests: free ports, and the one way tests wait on a condition."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Awaitable, Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout_s: float,
    what: str,
    poll_s: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``condition`` until it is true; fail with ``what`` after ``timeout_s``.

    ``condition`` may be a plain function (state in this process) or a coroutine function
    (a metric over HTTP, a store count). ``detail``, if given, is called at the timeout and
    its text added to the failure: what the test saw, e.g. a daemon's log tail.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = condition()
        if await outcome if inspect.isawaitable(outcome) else outcome:
            return
        if time.monotonic() > deadline:
            message = f"timed out after {timeout_s}s waiting for {what}"
            raise AssertionError(f"{message}\n{detail()}" if detail is not None else message)
        await asyncio.sleep(poll_s)
