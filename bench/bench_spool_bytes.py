"""Aggregator spool bytes per raw log byte, with ``spool.compression`` none and deflate.

``logferry loadgen`` writes a node's container logs (bench_realistic's content: access logs,
JSON and Java services, docker and CRI, 4 namespaces), made into the forwarder's own
CompressedPackedForward chunks. Each chunk then goes through the aggregator's real ingest
(``Ingest.render`` and ``Ingest.store``: route, render the ``_bulk`` lines, compress, append
fsynced to real tenant spools); no output runs, so the spools keep everything. Per mode it
prints the raw log bytes (the records' ``log`` text), the spool bytes on disk, their ratio,
and CPU seconds per million records for ingest; then for the send side, the bulk output's
gzip request bodies built from the spool (groups of at most 5,000 documents, as the output
sends them): CPU seconds per million records and body bytes per raw byte. ``none`` is the
previous version's path: fragments stored as NDJSON, bodies gzipped at send time.
The modes alternate for ``--rounds`` rounds and each CPU figure is the round's lowest (the
first run pays for warming up; another process's burst is not this code's cost).

Run: ``.venv/bin/python bench/bench_spool_bytes.py [--lines 300000] [--rounds 3]``. Asserts
nothing about time; it does check that both modes spooled every record.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_multiline import write_logs  # noqa: E402
from bench_realistic import chunks_of  # noqa: E402
from process_stats import report  # noqa: E402

from logferry.aggregator.dlq import DeadLetterQueue  # noqa: E402
from logferry.aggregator.documents import (  # noqa: E402
    Compression,
    count_documents,
    fragment_size,
    gzip_body,
)
from logferry.aggregator.ingest import Ingest  # noqa: E402
from logferry.aggregator.metrics import AggregatorMetrics  # noqa: E402
from logferry.aggregator.render import Receipt  # noqa: E402
from logferry.aggregator.spools import AggregatorSpoolSettings, TenantSpools  # noqa: E402
from logferry.common.naming import IndexNamer  # noqa: E402
from logferry.common.protocol import EventMessage  # noqa: E402
from logferry.common.protocol.decode import ServerDecoder  # noqa: E402
from logferry.common.spool import Spool  # noqa: E402

REQUEST_DOCUMENTS = 5000  # the bulk output's batch_max_records default
BATCH_BYTES = 4 << 20  # its batch_max_bytes default


@dataclass
class Figures:
    """One mode's run."""

    records: int
    spool_bytes: int
    ingest_cpu_s: float
    send_cpu_s: float
    body_bytes: int


def decode(chunk: bytes) -> EventMessage:
    (message,) = ServerDecoder().feed(chunk)
    assert isinstance(message, EventMessage)
    return message


def raw_log_bytes(chunks: list[bytes]) -> tuple[int, int]:
    """(records, bytes of their ``log`` text) over every chunk."""
    records = size = 0
    for chunk in chunks:
        for entries in decode(chunk).slices():
            for _when, record in entries:
                log = record.get("log", b"")
                size += len(log.encode() if isinstance(log, str) else log)
                records += 1
    return records, size


def spool_settings(directory: Path, compression: Compression) -> AggregatorSpoolSettings:
    return AggregatorSpoolSettings(
        directory=directory,
        max_bytes=16 << 30,
        tenant_max_bytes=8 << 30,
        segment_max_bytes=64 << 20,
        compression=compression,
    )


async def ingest_all(chunks: list[bytes], spools: TenantSpools, work: Path) -> tuple[int, float]:
    """Every chunk through the real ingest into ``spools``: (documents spooled, CPU s)."""
    ingest = Ingest(
        spools,
        AggregatorMetrics(),
        namer=IndexNamer("logs"),
        default_tenant="_default",
        instance="bench",
        dlq=DeadLetterQueue(work / "dlq"),
    )
    documents = 0
    started = time.process_time()
    for number, chunk in enumerate(chunks):
        await ingest.admit()
        rendered = ingest.render(decode(chunk), Receipt("bench", 1, number))
        documents += await ingest.store(rendered)
    return documents, time.process_time() - started


async def send_all(spool: Spool, build: Callable[[list[bytes]], bytes]) -> tuple[float, int]:
    """Every request body of the spool's backlog, as the bulk output makes them: (CPU s,
    body bytes). Nothing is committed: a second pass reads the same backlog again."""
    cpu = 0.0
    body_bytes = 0
    while True:
        batch = await spool.read(
            max_records=50_000, max_bytes=BATCH_BYTES, timeout_s=0, size=fragment_size
        )
        if batch is None:
            return cpu, body_bytes
        started = time.process_time()
        for group in groups(batch.records):
            body_bytes += len(build(group))
        cpu += time.process_time() - started


def groups(fragments: list[bytes]) -> list[list[bytes]]:
    """Consecutive fragments, at most REQUEST_DOCUMENTS documents a group."""
    out: list[list[bytes]] = [[]]
    count = 0
    for fragment in fragments:
        n = count_documents(fragment)
        if out[-1] and count + n > REQUEST_DOCUMENTS:
            out.append([])
            count = 0
        out[-1].append(fragment)
        count += n
    return out


async def one_mode(
    chunks: list[bytes], work: Path, compression: Compression, build: Callable[..., bytes]
) -> Figures:
    spools = TenantSpools(spool_settings(work / compression, compression))
    await spools.start()
    try:
        records, ingest_cpu = await ingest_all(chunks, spools, work / compression)
        spool_bytes = spools.bytes_used
        send_cpu, body_bytes = 0.0, 0
        for spool in spools.spools.values():
            cpu, size = await send_all(spool, build)
            send_cpu += cpu
            body_bytes += size
    finally:
        await spools.close()
    on_disk = sum(p.stat().st_size for p in (work / compression).rglob("*") if p.is_file())
    assert on_disk >= spool_bytes, (on_disk, spool_bytes)
    return Figures(records, on_disk, ingest_cpu, send_cpu, body_bytes)


def best(kept: Figures | None, new: Figures) -> Figures:
    """The lower CPU figures of two runs of one mode (their bytes are the same)."""
    if kept is None:
        return new
    return Figures(
        new.records,
        new.spool_bytes,
        min(kept.ingest_cpu_s, new.ingest_cpu_s),
        min(kept.send_cpu_s, new.send_cpu_s),
        new.body_bytes,
    )


def row(name: str, figures: Figures, raw: int) -> str:
    per_m = 1e6 / figures.records
    return (
        f"{name:<8} spool {figures.spool_bytes / 1e6:8.1f} MB  spool/raw "
        f"{figures.spool_bytes / raw:5.2f}  ingest {figures.ingest_cpu_s * per_m:5.2f} CPU s/M  "
        f"send {figures.send_cpu_s * per_m:5.2f} CPU s/M  bodies/raw "
        f"{figures.body_bytes / raw:4.2f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    (REPO / ".cache").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lf-bench-spool-bytes-", dir=str(REPO / ".cache")))
    try:
        logs = work / "node"
        write_logs(logs, args.lines)
        files = sum(p.stat().st_size for p in (logs / "pods").rglob("*.log*"))
        chunks = chunks_of(logs)
        records, raw = raw_log_bytes(chunks)
        print(
            f"loadgen: {records:,} records in {len(chunks)} chunks; raw log bytes "
            f"{raw / 1e6:.1f} MB ({raw / records:.0f} B each), container files {files / 1e6:.1f} MB"
        )
        results: dict[str, Figures] = {}
        for _round in range(args.rounds):
            for compression in ("none", "deflate"):
                figures = await one_mode(chunks, work, compression, gzip_body)
                assert figures.records == records, (compression, figures.records, records)
                results[compression] = best(results.get(compression), figures)
                shutil.rmtree(work / compression, ignore_errors=True)
        for compression, figures in results.items():
            print(row(compression, figures, raw))
        none, deflated = results["none"], results["deflate"]
        cpu_ratio = (deflated.ingest_cpu_s + deflated.send_cpu_s) / (
            none.ingest_cpu_s + none.send_cpu_s
        )
        print(
            f"deflate/none: spool bytes {deflated.spool_bytes / none.spool_bytes:.2f}, "
            f"ingest+send CPU {cpu_ratio:.2f}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
    report()
