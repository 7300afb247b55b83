"""Reading daemons' /metrics from outside: finding them, scraping them, parsing the samples.

Shared by ``logferry status`` (a person looking) and the operator (which waits for the
aggregators to confirm the pipelines they loaded). A daemon is named by URL, or found behind
a DNS name as ``name:port``: every address the name resolves to is one daemon, as the pods
behind a headless Service are.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


@dataclass(frozen=True, slots=True)
class Scrape:
    """One daemon's /metrics at one moment (``samples`` empty when it did not answer)."""

    url: str
    at_s: float
    samples: Samples
    error: str | None = None


def parse_samples(text: str) -> Samples:
    """Prometheus text -> {(sample name, labels): value}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def split_host_port(spec: str) -> tuple[str, int]:
    """``name:port`` -> (name, port); ValueError when either part is missing or bad."""
    host, _, port = spec.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{spec!r} is not NAME:PORT")
    return host, int(port)


def dns_endpoints(spec: str) -> list[str]:
    """One ``http://address:port`` per address ``name`` of ``name:port`` resolves to, sorted.

    Blocking (``getaddrinfo``): from an event loop, run it in a thread. Raises OSError when
    the name does not resolve, ValueError when ``spec`` is not ``name:port``.
    """
    host, port = split_host_port(spec)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = []
    for address in sorted({str(info[4][0]) for info in infos}):
        shown = f"[{address}]" if ":" in address else address
        found.append(f"http://{shown}:{port}")
    return found


def endpoints(urls: Sequence[str], names: Sequence[str]) -> list[str]:
    """The URLs given, and one per address of each ``name:port``."""
    found = [url.rstrip("/") for url in urls]
    for spec in names:
        found.extend(dns_endpoints(spec))
    return found


async def scrape(session: aiohttp.ClientSession, url: str) -> Scrape:
    """One daemon's samples now (an error instead when it does not answer)."""
    try:
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
            if response.status != 200:
                return Scrape(url, time.monotonic(), {}, f"HTTP {response.status}")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Scrape(url, time.monotonic(), {}, f"{type(exc).__name__}: {exc}")
    try:
        samples = parse_samples(text)
    except ValueError as exc:  # something else answers on that port
        return Scrape(url, time.monotonic(), {}, f"not Prometheus text: {exc}")
    return Scrape(url, time.monotonic(), samples)
