"""One /metrics for a pod of aggregator workers: every worker's samples, labelled ``worker``.

Each worker keeps its own registry (its counters are its own: no shared memory, no lock on
the hot path); the supervisor scrapes them over 127.0.0.1 when it is scraped, and serves the
union, one family per name as the exposition format requires. Dashboards sum over
``worker`` (``sum without (worker)``) where they summed over pods before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from logferry.common.metrics import render_openmetrics

_HEAD_LIMIT = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024


class _Families:
    """A collector that yields families already built (the merged ones)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_expositions(
    parts: Iterable[tuple[str | None, bytes]], *, openmetrics: bool = False
) -> bytes:
    """Merge Prometheus text expositions into one.

    ``parts`` are (worker label, text): samples of a part with a label get ``worker="<it>"``;
    a part with None (the supervisor's own registry) is kept as it is. The first part to
    name a family gives its help and type. The result is in Prometheus text, or OpenMetrics
    for ``openmetrics``.
    """
    merged: dict[str, Metric] = {}
    for worker, text in parts:
        for family in text_string_to_metric_families(text.decode("utf-8", "replace")):
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                labels = sample.labels if worker is None else {**sample.labels, "worker": worker}
                into.samples.append(
                    Sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar)
                )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(merged.values())))
    return render_openmetrics(registry) if openmetrics else generate_latest(registry)


async def http_get(port: int, path: str, timeout_s: float) -> tuple[int, bytes]:
    """GET ``path`` from a worker's status server on 127.0.0.1: (status, body).

    The status server answers one request per connection with ``Connection: close``, so
    the body is whatever follows the head until the peer closes.
    """
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _HEAD_LIMIT:
                raise ValueError("response head too large")
            chunks: list[bytes] = []
            total = 0
            while chunk := await reader.read(65536):
                total += len(chunk)
                if total > _MAX_BODY:
                    raise ValueError("response body too large")
                chunks.append(chunk)
        finally:
            writer.close()
    status = int(head.split(b" ", 2)[1])
    return status, b"".join(chunks)
