"""The sender's aggregator endpoints: membership (static + DNS), health, backoff, selection.

No I/O here except the resolver call, so selection and backoff are unit-testable with a fake
clock. An endpoint is *up* (window of ``max_in_flight`` chunks), or *down* until its backoff
expires; then it is *probing*: one chunk at a time until an ack brings it back up (so a
blackhole costs one chunk per backoff period, not a whole window).

An endpoint is *proven* once it acked a chunk since its last failure. A chunk suspected of
making aggregators close the connection is sent *alone* (:meth:`EndpointSet.acquire_alone`):
with nothing else in flight on its endpoint, so that when the connection closes again there
is no doubt which chunk it was, and no other chunk has to be sent again because of it.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from logferry.common.backoff import backoff_delay
from logferry.common.events import first_set
from logferry.common.logs import get_logger

__all__ = [
    "Backoff",
    "Endpoint",
    "EndpointSet",
    "Resolver",
    "getaddrinfo_resolver",
    "refresh_dns_forever",
    "refresh_dns_once",
]

log = get_logger(__name__)

Resolver = Callable[[str, int], Awaitable[list[tuple[str, int]]]]
"""``(name, port) -> [(address, port), ...]``: every address of a name."""


async def getaddrinfo_resolver(name: str, port: int) -> list[tuple[str, int]]:
    """All TCP addresses of ``name`` through the loop's resolver, deduplicated, in order."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    out: list[tuple[str, int]] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = (str(sockaddr[0]), int(sockaddr[1]))
        if address not in out:
            out.append(address)
    return out


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with equal jitter: ``delay(n)`` in ``[d/2, d]``, ``d =
    min(max_s, initial_s * 2**(n-1))``, so retries spread out but never come immediately."""

    initial_s: float
    max_s: float
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (``failures >= 1``)."""
        return backoff_delay(failures - 1, self.initial_s, self.max_s, jitter="equal", rng=self.rng)


class Endpoint:
    """One aggregator address and its health. ``name`` (``host:port``) is the metric label."""

    def __init__(self, host: str, port: int, *, from_dns: bool = False) -> None:
        self.host = host
        self.port = port
        self.from_dns = from_dns
        self.name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.in_flight = 0
        self.failures = 0
        """Consecutive failures; 0 means up."""
        self.retry_at = 0.0
        """Monotonic time before which a down endpoint is not tried."""
        self.removed = False
        """Dropped from DNS: finishes what it has, gets nothing new."""
        self.proven = False
        """Acked a chunk since its last failure (it works, so a refusal is about the chunk)."""
        self.reserved = False
        """Held for a chunk that must go alone: gets no other chunk meanwhile."""

    @property
    def up(self) -> bool:
        """Healthy: last attempt succeeded (or none was made yet)."""
        return self.failures == 0

    def capacity(self, window: int) -> int:
        """How many chunks it may hold in flight now: the window when up, one when probing."""
        return window if self.up else 1

    def __repr__(self) -> str:
        return f"Endpoint({self.name}, failures={self.failures}, in_flight={self.in_flight})"


class EndpointSet:
    """The endpoints chunks may go to, and the choice among them.

    Selection: among endpoints that are not removed, not in backoff and under their window,
    the one with the fewest chunks in flight; ties go round robin. :meth:`acquire` waits until
    one is available and counts the chunk against it; :meth:`release` settles it.
    """

    def __init__(
        self,
        static: Iterable[tuple[str, int]],
        *,
        window: int,
        backoff: Backoff,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window
        self._backoff = backoff
        self._clock = clock
        self._endpoints: list[Endpoint] = [Endpoint(h, p) for h, p in dict.fromkeys(static)]
        self._rr = 0
        self._changed = asyncio.Event()
        self.on_removed: Callable[[Endpoint], None] | None = None
        """Called when DNS or a reload drops an endpoint (the sender closes its connection)."""

    @property
    def endpoints(self) -> list[Endpoint]:
        """Current members (static first, then DNS addresses)."""
        return list(self._endpoints)

    @property
    def up_count(self) -> int:
        """Members that are healthy."""
        return sum(1 for e in self._endpoints if e.up)

    def pick(self, *, avoid: Endpoint | None = None) -> Endpoint | None:
        """The endpoint for the next chunk, or None if none can take one now.

        ``avoid`` (where the chunk just failed) is used only if nothing else is available.
        """
        now = self._clock()
        ready = [
            e
            for e in self._endpoints
            if not e.removed
            and not e.reserved
            and e.retry_at <= now
            and e.in_flight < e.capacity(self._window)
        ]
        if len(ready) > 1 and avoid is not None:
            ready = [e for e in ready if e is not avoid] or ready
        if not ready:
            return None
        # Healthy endpoints before probes; then fewest in flight; then round robin.
        n = len(self._endpoints)
        best = min(
            ready,
            key=lambda e: (
                not e.up,
                e.in_flight,
                (self._endpoints.index(e) - self._rr) % n,
            ),
        )
        self._rr = (self._endpoints.index(best) + 1) % n
        return best

    async def acquire(self, *, avoid: Endpoint | None = None) -> Endpoint:
        """Wait for an endpoint that can take a chunk and count the chunk against it."""
        while True:
            self._changed.clear()
            endpoint = self.pick(avoid=avoid)
            if endpoint is not None:
                endpoint.in_flight += 1
                return endpoint
            try:
                async with asyncio.timeout(self._next_retry_in()):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def acquire_alone(self) -> tuple[Endpoint, bool]:
        """Take an endpoint for one chunk with nothing else in flight there until it is
        released (``release(endpoint, alone=True)``); True with it if the endpoint is proven.

        A proven endpoint is reserved while its window drains (so the wait is short). With
        none proven, an idle endpoint is taken as it comes, never reserved ahead: the chunk
        must not hold back the other chunks that could prove an endpoint works.
        """
        held: Endpoint | None = None
        try:
            while True:
                self._changed.clear()
                if held is not None and (held.removed or not held.proven):
                    held.reserved, held = False, None
                    self._changed.set()
                if held is None:
                    free = [
                        e for e in self._endpoints if e.proven and not e.removed and not e.reserved
                    ]
                    if free:
                        held = min(free, key=lambda e: e.in_flight)
                        held.reserved = True
                if held is not None and held.in_flight == 0:
                    held.in_flight = 1
                    return held, True
                if held is None:
                    idle = self._idle()
                    if idle is not None:
                        idle.in_flight, idle.reserved = 1, True
                        return idle, False
                try:
                    async with asyncio.timeout(self._next_retry_in()):
                        await self._changed.wait()
                except TimeoutError:
                    pass
        except BaseException:
            if held is not None:
                held.reserved = False
                self._changed.set()
            raise

    def _idle(self) -> Endpoint | None:
        """An endpoint that could take a chunk now and has none in flight."""
        now = self._clock()
        for endpoint in self._endpoints:
            usable = not endpoint.removed and not endpoint.reserved and endpoint.retry_at <= now
            if usable and endpoint.in_flight == 0:
                return endpoint
        return None

    def _next_retry_in(self) -> float | None:
        now = self._clock()
        waits = [e.retry_at - now for e in self._endpoints if not e.removed and e.retry_at > now]
        return max(min(waits), 0.0) + 0.001 if waits else None

    def release(self, endpoint: Endpoint, *, alone: bool = False) -> None:
        """A chunk counted by :meth:`acquire` (or :meth:`acquire_alone`, ``alone``) is
        settled (acked or failed)."""
        endpoint.in_flight -= 1
        if alone:
            endpoint.reserved = False
        self._changed.set()

    def mark_up(self, endpoint: Endpoint) -> bool:
        """An ack came back; True if the endpoint was down before."""
        was_down = not endpoint.up
        endpoint.failures = 0
        endpoint.retry_at = 0.0
        endpoint.proven = True
        self._changed.set()
        return was_down

    def mark_down(self, endpoint: Endpoint) -> float:
        """A connect, handshake, write or ack failed; returns the backoff delay in seconds."""
        endpoint.proven = False
        endpoint.failures += 1
        delay = self._backoff.delay(endpoint.failures)
        endpoint.retry_at = self._clock() + delay
        self._changed.set()
        return delay

    def set_static(self, addresses: Iterable[tuple[str, int]]) -> None:
        """Replace the static members (``sender.servers`` reloaded); members still listed keep
        their state, the others are removed as DNS removes its own."""
        wanted = dict.fromkeys(addresses)
        static: list[Endpoint] = []
        for endpoint in self._endpoints:
            if endpoint.from_dns:
                continue
            if (endpoint.host, endpoint.port) in wanted:
                static.append(endpoint)
            else:
                self._remove(endpoint)
        present = {(e.host, e.port) for e in static}
        for host, port in wanted:
            if (host, port) not in present:
                static.append(Endpoint(host, port))
                log.info("sender.endpoint_added", endpoint=static[-1].name)
        dns = [e for e in self._endpoints if e.from_dns and (e.host, e.port) not in wanted]
        for endpoint in self._endpoints:
            if endpoint.from_dns and (endpoint.host, endpoint.port) in wanted:
                self._remove(endpoint)  # now a static member: one endpoint per address
        self._endpoints = static + dns
        self._rr %= max(len(self._endpoints), 1)
        self._changed.set()

    def _remove(self, endpoint: Endpoint) -> None:
        endpoint.removed = True
        log.info("sender.endpoint_removed", endpoint=endpoint.name)
        if self.on_removed is not None:
            self.on_removed(endpoint)

    def set_dns_addresses(self, addresses: Iterable[tuple[str, int]]) -> None:
        """Replace the DNS members with ``addresses``; members still present keep their state."""
        wanted = dict.fromkeys(addresses)
        static = {(e.host, e.port) for e in self._endpoints if not e.from_dns}
        kept: list[Endpoint] = []
        for endpoint in self._endpoints:
            key = (endpoint.host, endpoint.port)
            if not endpoint.from_dns or key in wanted:
                kept.append(endpoint)
            else:
                self._remove(endpoint)
        present = {(e.host, e.port) for e in kept}
        for host, port in wanted:
            if (host, port) not in present and (host, port) not in static:
                kept.append(Endpoint(host, port, from_dns=True))
                log.info("sender.endpoint_added", endpoint=kept[-1].name)
        self._endpoints = kept
        self._rr %= max(len(kept), 1)
        self._changed.set()


DnsTarget = Callable[[], tuple[str | None, int, float]]
"""The DNS name to resolve (None: none), its port, and the refresh interval, as configured now."""


async def refresh_dns_forever(
    endpoints: EndpointSet,
    resolver: Resolver,
    target: DnsTarget,
    stop: asyncio.Event,
    changed: asyncio.Event,
) -> None:
    """Resolve ``target``'s name now, every interval, and at once when ``changed`` is set
    (a reload named another one), until ``stop``; keep the last good list. Without a name,
    the DNS members are dropped."""
    while not stop.is_set():
        changed.clear()
        name, port, interval_s = target()
        if name is None:
            if any(e.from_dns for e in endpoints.endpoints):
                endpoints.set_dns_addresses([])
            await first_set((stop, changed))
            continue
        await refresh_dns_once(endpoints, resolver, name, port)
        await first_set((stop, changed), interval_s)


async def refresh_dns_once(
    endpoints: EndpointSet, resolver: Resolver, name: str, port: int
) -> bool:
    """One resolution; False (and the members unchanged) if it failed or found nothing."""
    try:
        addresses = await resolver(name, port)
    except OSError as exc:
        log.warning("sender.dns_failed", name=name, error=type(exc).__name__, detail=str(exc))
        return False
    if not addresses:
        log.warning("sender.dns_empty", name=name)
        return False
    endpoints.set_dns_addresses(addresses)
    return True
