"""Fluent Bit's default wire format into a real aggregator and OpenSearch, against plain entries.

Builds N records as Fluent Bit's ``tail`` + docker parser + kubernetes filter would send them
(varied loadgen content: access, JSON and Java lines, some 2-40 KB, across 8 namespaces x 4
containers, with timestamps advancing a millisecond a line), packed the way Fluent Bit's
``out_forward`` does with ``compress gzip`` and ``require_ack_response``: CompressedPackedForward
messages of 2,000 ``[[EventTime, {}], record]`` entries, options in a 32-bit map header with
``fluent_signal: 0`` (tests/support/fluentbit_wire.py). The reference, in the same run: the very
same records as plain ``[EventTime, record]`` entries (what Fluentd and logferry's forwarder
send).

For each shape a fresh ``logferry aggregator`` (``output: opensearch``) on a fresh index prefix
is fed by 4 concurrent senders (each waits for acks, at most 4 messages in flight), timed from
the first send until ``logferry_records_out_total`` reaches N, then a refresh + ``_count`` must
find exactly N documents. Prints records/s, the aggregator's CPU seconds per million records and
its peak RSS for each shape, and the ratio Fluent Bit shape / plain shape. Rounds alternate
which shape goes first.

Run: ``.venv/bin/python bench/bench_fluentbit_ingest.py [--records 1000000] [--rounds 1]``.
Asserts nothing about time; fails if a record is missing or stored twice.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from process_stats import proc_cpu_s, proc_peak_rss_mb, report  # noqa: E402

from devtools.opensearch_node import OpenSearchNode  # noqa: E402
from logferry.tools.loadgen_content import Clock, Messages  # noqa: E402
from tests.support import fluentbit_wire as wire  # noqa: E402
from tests.support.aggregator import aggregator_config  # noqa: E402
from tests.support.daemon import DaemonProcess  # noqa: E402
from tests.support.forward_client import ForwardClient  # noqa: E402

SENDERS = 4
WINDOW = 4
ENTRIES_PER_MESSAGE = 2000
NAMESPACES = 8
CONTAINERS_PER_NAMESPACE = 4
KINDS = ("access", "json", "java")
T0_NS = (time.time_ns() // 3_600_000_000_000 - 2) * 3_600_000_000_000  # two hours ago
POLL_S = 0.1


@dataclass
class Shapes:
    """The same records in both shapes: per sender, (chunk id, message) lists."""

    records: int
    fluentbit: list[list[tuple[str, bytes]]]
    plain: list[list[tuple[str, bytes]]]
    raw_bytes: int


def build(records: int) -> Shapes:
    """Varied records of many containers, cut into messages of both shapes."""
    streams = []
    for n in range(NAMESPACES):
        for c in range(CONTAINERS_PER_NAMESPACE):
            kind = KINDS[(n * CONTAINERS_PER_NAMESPACE + c) % len(KINDS)]
            streams.append((f"fbbench-ns{n}", f"pod-{n}-{c}", Messages(kind, n * 100 + c, 2000)))
    fb_entries: list[bytes] = []
    plain_entries: list[bytes] = []
    raw = 0
    for i in range(records):
        namespace, pod, messages = streams[i % len(streams)]
        time_ns = T0_NS + i * 1_000_000 // len(streams)
        stream, text = messages.next(Clock.at(time_ns))
        record = {
            "log": text + "\n",
            "stream": stream,
            "kubernetes": {
                "pod_name": pod,
                "namespace_name": namespace,
                "container_name": "app",
                "host": "node-bench",
            },
        }
        seconds, nanoseconds = divmod(time_ns, 1_000_000_000)
        fb_entries.append(wire.entry(seconds, nanoseconds, record))
        plain_entries.append(wire.legacy_entry(seconds, nanoseconds, record))
        raw += len(text) + 1
    return Shapes(records, _messages(fb_entries), _messages(plain_entries), raw)


def _messages(entries: list[bytes]) -> list[list[tuple[str, bytes]]]:
    """Messages of ENTRIES_PER_MESSAGE entries, dealt round-robin to the senders."""
    out: list[list[tuple[str, bytes]]] = [[] for _ in range(SENDERS)]
    for m, start in enumerate(range(0, len(entries), ENTRIES_PER_MESSAGE)):
        batch = entries[start : start + ENTRIES_PER_MESSAGE]
        data = b"".join(batch)
        message = wire.compressed_message("kube.var.log.containers", batch)
        out[m % SENDERS].append((wire.chunk_id(data), message))
    return out


async def sender(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Send in order, at most WINDOW unacknowledged."""
    async with ForwardClient("127.0.0.1", port) as client:
        inflight: list[str] = []
        for chunk, data in messages:
            await client.send(data)
            inflight.append(chunk)
            if len(inflight) >= WINDOW:
                await client.wait_ack(inflight.pop(0), timeout_s=300)
        for chunk in inflight:
            await client.wait_ack(chunk, timeout_s=300)


@dataclass
class Run:
    seconds: float
    cpu_s: float
    peak_rss_mb: float
    counted: int


async def store_call(url: str, method: str, path: str) -> object:
    async with aiohttp.ClientSession() as session, session.request(method, url + path) as resp:
        return orjson.loads(await resp.read())


async def count_and_delete(url: str, prefix: str) -> int:
    await store_call(url, "POST", f"/{prefix}-*/_refresh?allow_no_indices=true")
    payload = await store_call(url, "GET", f"/{prefix}-*/_count?allow_no_indices=true")
    rows = await store_call(url, "GET", f"/_cat/indices/{prefix}-*?format=json&h=index")
    for row in rows if isinstance(rows, list) else []:
        await store_call(url, "DELETE", f"/{row['index']}")
    return int(payload.get("count", 0)) if isinstance(payload, dict) else 0


async def run_shape(
    url: str, messages: list[list[tuple[str, bytes]]], records: int, prefix: str, workdir: Path
) -> Run:
    daemon = DaemonProcess(
        "aggregator",
        workdir,
        aggregator_config(
            workdir,
            url,
            spool={"max_bytes": "4GiB", "tenant_max_bytes": "1GiB", "segment_max_bytes": "64MiB"},
            routing={"index_prefix": prefix},
            log={"level": "warning", "format": "json"},
        ),
    )
    await daemon.start()
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        port = int(daemon.config["input"]["listen_port"])
        cpu0 = proc_cpu_s(pid)
        t0 = time.perf_counter()
        senders = asyncio.gather(*(sender(port, chunk_list) for chunk_list in messages))
        while await daemon.metric("logferry_records_out_total") < records:
            if senders.done():
                senders.result()  # a failed sender fails the run
            await asyncio.sleep(POLL_S)
        seconds = time.perf_counter() - t0
        cpu_s = proc_cpu_s(pid) - cpu0
        await senders
        peak = proc_peak_rss_mb(pid)
        errors = await daemon.metric("logferry_protocol_errors_total")
        if errors:
            raise RuntimeError(f"{errors:.0f} protocol errors\n{daemon.tail()}")
    finally:
        await daemon.stop()
    return Run(seconds, cpu_s, peak, await count_and_delete(url, prefix))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    t0 = time.perf_counter()
    shapes = build(args.records)
    fb_bytes = sum(len(m) for s in shapes.fluentbit for _, m in s)
    print(
        f"workload: {shapes.records:,d} records, {shapes.raw_bytes / 1e6:.0f} MB of log text, "
        f"{fb_bytes / 1e6:.0f} MB gzipped on the wire, {ENTRIES_PER_MESSAGE} entries a message "
        f"(built in {time.perf_counter() - t0:.0f}s)"
    )
    ratios: list[float] = []
    with (
        OpenSearchNode(cluster_name="logferry-bench") as node,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for round_no in range(1, args.rounds + 1):
            order = ["fluentbit", "plain"] if round_no % 2 else ["plain", "fluentbit"]
            runs: dict[str, Run] = {}
            for shape in order:
                messages = shapes.fluentbit if shape == "fluentbit" else shapes.plain
                workdir = Path(tmp) / f"{shape}-{round_no}"
                runs[shape] = run = await run_shape(
                    node.url, messages, shapes.records, f"fbbench-{shape}", workdir
                )
                ok = "exact" if run.counted == shapes.records else "MISMATCH"
                print(
                    f"round {round_no} {shape:9s}: {shapes.records:,d} records stored in "
                    f"{run.seconds:6.1f}s = {shapes.records / run.seconds:8,.0f} records/s; "
                    f"aggregator {run.cpu_s / shapes.records * 1e6:5.2f} CPU s per million, "
                    f"peak RSS {run.peak_rss_mb:.0f} MB; _count {run.counted:,d} ({ok})"
                )
                if run.counted != shapes.records:
                    raise SystemExit(f"{shape}: {run.counted} documents for {shapes.records}")
            ratio = runs["fluentbit"].cpu_s / runs["plain"].cpu_s
            ratios.append(ratio)
            print(f"round {round_no} CPU ratio Fluent Bit shape / plain shape: {ratio:.2f}")
    print(f"median CPU ratio Fluent Bit shape / plain shape: {statistics.median(ratios):.2f}")
    report()


if __name__ == "__main__":
    asyncio.run(main())
