"""Aggregator into one local OpenSearch node, against a plain bulk loader in the same run.

Starts one real OpenSearch node (``devtools/opensearch_node.py``), builds a workload of N
docker-style records (4 sources, one namespace each, CompressedPackedForward chunks of 1,000
records with contiguous ids), then per round:

1. **loader**: a plain aiohttp script posts pre-built, pre-gzipped ``_bulk`` bodies (``create``
   with the deterministic ``_id``, 5,000 documents each, gzip level 1 like the aggregator, 4
   requests in flight) holding exactly the JSON the aggregator renders for the same chunks
   (made by the aggregator's own ``Ingest.render``). Timed from the first request to the last
   response.
2. **aggregator**: the real ``logferry aggregator`` subprocess (``output: opensearch`` with the
   default batch settings, ``max_in_flight: 4``) fed the same chunks by 4 concurrent Forward
   Protocol senders (each waits for acks, at most ``--window`` chunks in flight). Timed from the
   first send until its ``logferry_records_out_total`` reaches N (polled on ``/metrics`` every
   0.1 s, so no refresh per poll); then one refresh + ``_count`` confirms every document.

Both write to fresh indices (prefixes ``bench-loader`` / ``bench-agg``) that are deleted after
each run, so neither run pays for the other's merges; a full loader pass warms the JVM first,
and rounds alternate which run goes first. Prints docs/s of each, the ratio aggregator/loader
per round and their median (the target is >= 90%), the aggregator's CPU seconds per million
records and its peak RSS. The node is stopped at the end, also on failure. The machine's
cores are shared by the node, the aggregator and this process.

Run: ``.venv/bin/python bench/bench_aggregator_opensearch.py [--records 500000] [--rounds 3]``.
Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from process_stats import proc_cpu_s, proc_peak_rss_mb, report  # noqa: E402

from devtools.opensearch_node import OpenSearchNode  # noqa: E402
from logferry.aggregator.ingest import Ingest, Receipt  # noqa: E402
from logferry.aggregator.metrics import AggregatorMetrics  # noqa: E402
from logferry.aggregator.spools import AggregatorSpoolSettings, TenantSpools  # noqa: E402
from logferry.common.naming import IndexNamer  # noqa: E402
from logferry.common.protocol import EventMessage, ServerDecoder  # noqa: E402
from logferry.common.records import source_id  # noqa: E402
from tests.support.aggregator import aggregator_config  # noqa: E402
from tests.support.daemon import DaemonProcess  # noqa: E402
from tests.support.forward_client import ForwardClient  # noqa: E402
from tests.support.records import compressed_chunk, container_entries  # noqa: E402

SENDERS = 4
CHUNK_RECORDS = 1000
BATCH_DOCS = 5000
"""Documents per loader request: the aggregator's default ``batch_max_records``."""
IN_FLIGHT = 4
"""Loader requests in flight: the aggregator's ``max_in_flight``."""
LOADER_PREFIX = "bench-loader"
AGG_PREFIX = "bench-agg"
POLL_S = 0.1


@dataclass
class Workload:
    """What both runs send: Forward chunks per sender, and the same documents as bulk bodies."""

    records: int
    chunks: list[list[tuple[str, bytes]]]
    """Per sender: (chunk id, CompressedPackedForward message)."""
    bodies: list[bytes] = field(default_factory=list)
    """gzipped ``_bulk`` bodies of BATCH_DOCS documents, tenants interleaved."""
    body_docs: list[int] = field(default_factory=list)
    raw_bytes: int = 0


def build_workload(records: int, workdir: Path) -> Workload:
    """Chunks of unique records for each sender, and the loader's bodies rendered from them."""
    chunks_per_sender = max(1, -(-records // (SENDERS * CHUNK_RECORDS)))
    # The aggregator's own rendering, so the loader sends byte-identical JSON (index prefix
    # aside). render() never touches the spools.
    ingest = Ingest(
        TenantSpools(AggregatorSpoolSettings(directory=workdir / "unused-spool")),
        AggregatorMetrics(),
        namer=IndexNamer(LOADER_PREFIX),
        default_tenant="_default",
        instance="bench-loader",
    )
    workload = Workload(records=chunks_per_sender * SENDERS * CHUNK_RECORDS, chunks=[])
    per_sender_bodies: list[list[tuple[bytes, int]]] = []
    for s in range(SENDERS):
        src = source_id("node-bench", 1, 1000 + s, 0)
        namespace = f"lf-bench-{s}"
        sender_chunks: list[tuple[str, bytes]] = []
        bodies: list[tuple[bytes, int]] = []
        pending: list[bytes] = []
        pending_docs = 0
        decoder = ServerDecoder()
        for c in range(chunks_per_sender):
            entries = container_entries(
                namespace, CHUNK_RECORDS, pod=f"pod-{s}", start_seq=c * CHUNK_RECORDS, src=src
            )
            chunk_id = f"s{s}-c{c}"
            payload = compressed_chunk(entries, chunk_id)
            sender_chunks.append((chunk_id, payload))
            (message,) = decoder.feed(payload)
            assert isinstance(message, EventMessage)
            rendered = ingest.render(message, Receipt("bench", s, c))
            for parts, count in rendered.fragments.values():
                pending.extend(parts)
                pending_docs += count
                workload.raw_bytes += sum(len(part) for part in parts)
            if pending_docs >= BATCH_DOCS or c == chunks_per_sender - 1:
                bodies.append((gzip.compress(b"".join(pending), 1), pending_docs))
                pending, pending_docs = [], 0
        workload.chunks.append(sender_chunks)
        per_sender_bodies.append(bodies)
    # Round-robin across tenants, as the aggregator's per-tenant pumps interleave.
    for i in range(max(len(b) for b in per_sender_bodies)):
        for bodies in per_sender_bodies:
            if i < len(bodies):
                workload.bodies.append(bodies[i][0])
                workload.body_docs.append(bodies[i][1])
    return workload


class Store:
    """The few OpenSearch calls the benchmark needs."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def call(self, method: str, path: str) -> Any:
        async with self.session.request(method, f"{self.url}{path}") as response:
            return orjson.loads(await response.read())

    async def count(self, prefix: str) -> int:
        """Documents in ``prefix-*`` after a refresh."""
        await self.call("POST", f"/{prefix}-*/_refresh?allow_no_indices=true")
        payload = await self.call("GET", f"/{prefix}-*/_count?allow_no_indices=true")
        return int(payload.get("count", 0))

    async def delete(self, prefix: str) -> list[str]:
        """Delete every index named ``prefix-*`` (by name: no wildcard delete needed)."""
        rows = await self.call("GET", f"/_cat/indices/{prefix}-*?format=json&h=index")
        names = [row["index"] for row in rows] if isinstance(rows, list) else []
        for name in names:
            await self.call("DELETE", f"/{name}")
        return names


async def post_body(
    session: aiohttp.ClientSession, url: str, body: bytes, stats: dict[str, int]
) -> None:
    """One ``_bulk`` request; resent whole on 429/5xx or retriable items (409s settle those)."""
    headers = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    for attempt in range(20):
        async with session.post(f"{url}/_bulk", data=body, headers=headers) as response:
            payload = await response.read()
            status = response.status
        stats["requests"] += 1
        if status in (429, 502, 503, 504):
            stats["retries"] += 1
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
            continue
        if status != 200:
            raise RuntimeError(f"_bulk returned {status}: {payload[:300]!r}")
        result = orjson.loads(payload)
        if not result.get("errors"):
            return
        failed = [
            item["create"]
            for item in result["items"]
            if item["create"].get("status", 200) >= 300 and item["create"]["status"] != 409
        ]
        if not failed:
            return
        if any(f["status"] != 429 and f["status"] < 500 for f in failed):
            raise RuntimeError(f"loader: documents refused: {failed[0]}")
        stats["retries"] += 1
        await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
    raise RuntimeError("loader: gave up after 20 attempts")


async def run_loader(url: str, bodies: list[bytes]) -> tuple[float, dict[str, int]]:
    """Post ``bodies`` with IN_FLIGHT workers; returns (seconds, request stats)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    stats = {"requests": 0, "retries": 0}
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT * 2)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while not queue.empty():
                await post_body(session, url, queue.get_nowait(), stats)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        return time.perf_counter() - t0, stats


async def sender(port: int, chunks: list[tuple[str, bytes]], window: int) -> None:
    """Send ``chunks`` in order, at most ``window`` unacknowledged."""
    async with ForwardClient("127.0.0.1", port) as client:
        await client.send_windowed(chunks, window)


@dataclass
class AggregatorRun:
    """Figures of one aggregator run."""

    delivered_s: float
    ingested_s: float
    delivered_when_ingested: float
    """Records the store had confirmed when the last ack arrived."""
    cpu_s: float
    peak_rss_mb: float
    bulk_requests: float
    retries: float
    counted: int


async def run_aggregator(
    url: str, workload: Workload, window: int, workdir: Path, timeout_s: float
) -> AggregatorRun:
    """Feed the workload through a fresh aggregator until the store confirmed every record."""
    daemon = DaemonProcess(
        "aggregator",
        workdir,
        aggregator_config(
            workdir,
            url,
            spool={"max_bytes": "4GiB", "tenant_max_bytes": "1GiB", "segment_max_bytes": "64MiB"},
            routing={"index_prefix": AGG_PREFIX},
            output={"max_in_flight": IN_FLIGHT},
            log={"level": "warning", "format": "json"},
        ),
    )
    await daemon.start()
    senders: asyncio.Future[list[None]] | None = None
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        if PIN["client"] is not None:
            pin(pid, PIN["client"])
        port = int(daemon.config["input"]["listen_port"])
        cpu0 = proc_cpu_s(pid)
        t0 = time.perf_counter()
        senders = asyncio.gather(*(sender(port, chunks, window) for chunks in workload.chunks))
        ingested_s = 0.0
        out_when_ingested = float(workload.records)
        deadline = t0 + timeout_s
        while True:
            out = await daemon.metric("logferry_records_out_total")
            if ingested_s == 0.0 and senders.done():
                senders.result()  # a sender that failed fails the run
                ingested_s = time.perf_counter() - t0
                out_when_ingested = out
            if out >= workload.records:
                delivered_s = time.perf_counter() - t0
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"aggregator delivered {out:.0f} of {workload.records} in {timeout_s}s\n"
                    f"{daemon.tail()}"
                )
            await asyncio.sleep(POLL_S)
        cpu_s = proc_cpu_s(pid) - cpu0
        await senders
        if ingested_s == 0.0:
            ingested_s = delivered_s
        requests = await daemon.metric("logferry_bulk_requests_total", status="200")
        retries = await daemon.metric("logferry_output_retries_total")
        peak = proc_peak_rss_mb(pid)
        async with aiohttp.ClientSession() as session:
            counted = await Store(url, session).count(AGG_PREFIX)
        return AggregatorRun(
            delivered_s, ingested_s, out_when_ingested, cpu_s, peak, requests, retries, counted
        )
    finally:
        if senders is not None and not senders.done():
            senders.cancel()
            await asyncio.gather(senders, return_exceptions=True)
        await daemon.stop()


async def loader_round(
    url: str, store: Store, workload: Workload, round_no: int, node_pid: int
) -> float:
    """One loader run into fresh indices; returns docs/s."""
    n = workload.records
    node_cpu0 = proc_cpu_s(node_pid)
    seconds, stats = await run_loader(url, workload.bodies)
    node_cpu = proc_cpu_s(node_pid) - node_cpu0
    counted = await store.count(LOADER_PREFIX)
    await store.delete(LOADER_PREFIX)
    print(
        f"round {round_no} loader:     {n:,d} docs in {seconds:6.2f}s = {n / seconds:9,.0f} "
        f"docs/s  ({stats['requests']} requests, {stats['retries']} retried; "
        f"_count {counted:,d}{'' if counted == n else ' MISMATCH'})\n"
        f"round {round_no} loader:     OpenSearch CPU {node_cpu:.1f}s = "
        f"{node_cpu / n * 1e6:.1f} CPU s per million",
        flush=True,
    )
    return n / seconds


async def aggregator_round(
    url: str,
    store: Store,
    workload: Workload,
    round_no: int,
    node_pid: int,
    args: argparse.Namespace,
    work: Path,
) -> float:
    """One aggregator run into fresh indices; returns docs/s."""
    n = workload.records
    node_cpu0 = proc_cpu_s(node_pid)
    agg = await run_aggregator(url, workload, args.window, work, args.timeout_s)
    node_cpu = proc_cpu_s(node_pid) - node_cpu0
    after = agg.delivered_s - agg.ingested_s
    await store.delete(AGG_PREFIX)
    print(
        f"round {round_no} aggregator: {n:,d} docs in {agg.delivered_s:6.2f}s = "
        f"{n / agg.delivered_s:9,.0f} docs/s  (all acked after {agg.ingested_s:.2f}s with "
        f"{agg.delivered_when_ingested:,.0f} delivered, the rest at "
        f"{(n - agg.delivered_when_ingested) / after if after > 0 else 0:,.0f} docs/s; "
        f"{agg.bulk_requests:.0f} bulk requests = {n / max(agg.bulk_requests, 1):,.0f} docs "
        f"each, {agg.retries:.0f} records retried; _count {agg.counted:,d}"
        f"{'' if agg.counted == n else ' MISMATCH'})\n"
        f"round {round_no} aggregator CPU {agg.cpu_s:.2f}s = {agg.cpu_s / n * 1e6:.2f} CPU s "
        f"per million, peak RSS {agg.peak_rss_mb:.0f} MB; OpenSearch CPU {node_cpu:.1f}s = "
        f"{node_cpu / n * 1e6:.1f} CPU s per million",
        flush=True,
    )
    return n / agg.delivered_s


async def bench(url: str, node_pid: int, args: argparse.Namespace, workdir: Path) -> None:
    t_build = time.perf_counter()
    workload = build_workload(args.records, workdir)
    n = workload.records
    print(
        f"workload: {n:,d} records in {sum(len(c) for c in workload.chunks)} chunks of "
        f"{CHUNK_RECORDS} from {SENDERS} senders; loader: {len(workload.bodies)} bodies of "
        f"<= {BATCH_DOCS} docs, {workload.raw_bytes / n:.0f} bytes/doc rendered, "
        f"{sum(map(len, workload.bodies)) / workload.raw_bytes * 100:.0f}% after gzip -1 "
        f"(built in {time.perf_counter() - t_build:.1f}s)",
        flush=True,
    )
    async with aiohttp.ClientSession() as session:
        store = Store(url, session)
        await store.delete(LOADER_PREFIX)
        await store.delete(AGG_PREFIX)
        ratios: list[float] = []
        try:
            # The JVM's JIT needs a full pass before its indexing rate settles.
            seconds, _ = await run_loader(url, workload.bodies)
            print(f"warm-up (loader, discarded): {n:,d} docs in {seconds:.1f}s", flush=True)
            await store.delete(LOADER_PREFIX)
            for round_no in range(1, args.rounds + 1):
                work = workdir / f"agg-{round_no}"
                # Alternate which goes first, so neither always meets a fresher node.
                if round_no % 2:
                    loader = await loader_round(url, store, workload, round_no, node_pid)
                    agg = await aggregator_round(
                        url, store, workload, round_no, node_pid, args, work
                    )
                else:
                    agg = await aggregator_round(
                        url, store, workload, round_no, node_pid, args, work
                    )
                    loader = await loader_round(url, store, workload, round_no, node_pid)
                ratios.append(agg / loader)
                print(f"round {round_no} ratio aggregator/loader: {agg / loader:.1%}", flush=True)
        finally:
            await store.delete(LOADER_PREFIX)
            await store.delete(AGG_PREFIX)
    if len(ratios) > 1:
        print(
            f"ratio aggregator/loader over {len(ratios)} rounds: median "
            f"{statistics.median(ratios):.1%}, min {min(ratios):.1%}, max {max(ratios):.1%}"
        )


PIN: dict[str, int | None] = {"client": None, "store": None}


def pin(pid: int, cpu: int) -> None:
    """Move every thread of ``pid`` to ``cpu`` (taskset -a: a JVM has many threads)."""
    subprocess.run(["taskset", "-a", "-cp", str(cpu), str(pid)], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=500_000, help="documents per run")
    parser.add_argument("--rounds", type=int, default=3, help="loader + aggregator pairs")
    parser.add_argument("--window", type=int, default=4, help="chunks in flight per sender")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="give up on a run")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin OpenSearch to CPU 1 and the clients (loader or aggregator, and this "
        "script) to CPU 0; pinning stands in for the store having a machine of its own",
    )
    args = parser.parse_args()
    if not args.no_pin and (os.cpu_count() or 1) >= 2:
        PIN.update(client=0, store=1)
        os.sched_setaffinity(0, {0})
    (REPO / ".cache").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="lf-bench-os-", dir=str(REPO / ".cache")))
    node = OpenSearchNode()
    try:
        node.start()
        print(f"opensearch: {node.url}, healthy after {node.startup_s:.1f}s")
        assert node.pid is not None
        if PIN["store"] is not None:
            pin(node.pid, PIN["store"])
            print("pinned: OpenSearch on CPU 1; loader, aggregator and senders on CPU 0")
        asyncio.run(bench(node.url, node.pid, args, workdir))
    finally:
        node.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
    report()
