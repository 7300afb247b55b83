"""The whole path on realistic content, in one run: forwarder and aggregator CPU per line, and
the aggregator against its floor.

``logferry loadgen`` writes a node's container logs (access logs, JSON and Java services, a
share of long lines that docker splits, docker and CRI files, advancing timestamps, 4
namespaces). A real forwarder ships them to a real aggregator (null output); both processes'
CPU seconds and peak RSS are read from /proc when every line is acked. Then, in this
process, the **floor**: the same files made into the same CompressedPackedForward chunks
(the forwarder's own reader and block encoder), and for each chunk only what the aggregator
cannot avoid: decode it, render its documents, one write and one fdatasync. Prints CPU
seconds per million lines for the three, the ratios aggregator/forwarder and
aggregator/floor (what a figure means on any machine), and peak RSS.

``--profile`` also samples the aggregator with py-spy (``.venv/bin/pip install py-spy``)
while it runs, and prints its top frames by own and by cumulative time, and own time by
stage (decode, rendering, id derivation, per-tenant work, spool, event loop and other).

Run: ``.venv/bin/python bench/bench_realistic.py [--lines 400000] [--profile]``. Asserts
nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_multiline import ship, write_logs  # noqa: E402
from process_stats import report  # noqa: E402

from logferry.aggregator.render import Receipt, Renderer, TimeWindow  # noqa: E402
from logferry.common.naming import IndexNamer  # noqa: E402
from logferry.common.protocol import encode_compressed_packed_forward  # noqa: E402
from logferry.common.protocol.decode import ServerDecoder  # noqa: E402
from logferry.forwarder.entries import block_count, block_gzip  # noqa: E402
from logferry.forwarder.metadata import parse_pod_path  # noqa: E402
from logferry.forwarder.positions import SourceState  # noqa: E402
from logferry.forwarder.tail import FileTail  # noqa: E402
from tests.support.daemon import DaemonProcess  # noqa: E402

CHUNK_RECORDS = 2000
PROFILE_RATE_HZ = 250
STAGES: list[tuple[str, re.Pattern[str]]] = [
    # First match wins; matched against "function (file)" of the frame.
    ("id derivation", re.compile(r"derived_record_id|_derived_id|record_id|source_id")),
    ("decode path", re.compile(r"common/protocol/|server\.py|msgpack|msgspec/.*decode")),
    ("rendering", re.compile(r"aggregator/render\.py|aggregator/documents\.py|iso_time")),
    # The spool's fragments are deflated and framed here; the worker threads run its
    # writes, fdatasyncs and reads (py-spy counts a thread inside a syscall as busy).
    ("spool framing/fsync", re.compile(
        r"common/spool/|common/files\.py|common/deflate\.py|concurrent/futures/|threading")),
    ("per-tenant work", re.compile(
        r"aggregator/ingest\.py|routing\.py|spools\.py|pipelines/|metrics|prometheus")),
    ("event loop/other", re.compile(r".")),
]  # fmt: skip


def payloads_of(logs: Path) -> list[tuple[bytes, int]]:
    """The files as the forwarder would send them (its reader, its blocks, grouped up to
    ``CHUNK_RECORDS``): each chunk's gzipped entries and its record count."""
    payloads: list[tuple[bytes, int]] = []
    for path in sorted((logs / "pods").rglob("*.log")):
        meta = parse_pod_path(str(path), "bench")
        assert meta is not None
        st = path.stat()
        state = SourceState("bench", st.st_dev, st.st_ino, 0, "", str(path), 0, 0)
        tail = FileTail(state, meta, os.open(path, os.O_RDONLY), 1 << 20)
        blocks: list[bytes] = []
        while True:
            batch = tail.read(8 << 20)
            blocks += batch.entries
            if not batch.bytes_read:
                break
        blocks += tail.finish().entries
        tail.close()
        group: list[bytes] = []
        count = 0
        for block in [*blocks, None]:
            if block is not None and count + block_count(block) <= CHUNK_RECORDS:
                group.append(block)
                count += block_count(block)
                continue
            if group:
                payloads.append((b"".join(block_gzip(b) for b in group), count))
            group, count = ([block], block_count(block)) if block is not None else ([], 0)
    return payloads


def chunk(payload: tuple[bytes, int], chunk_id: str) -> bytes:
    """One CompressedPackedForward message of ``payload`` with chunk id ``chunk_id``."""
    gzipped, count = payload
    return encode_compressed_packed_forward("kube", b"", count, chunk=chunk_id, gzipped=gzipped)


def chunks_of(logs: Path) -> list[bytes]:
    """The files as the forwarder would send them: its reader, its blocks, its chunks."""
    return [chunk(payload, f"c{n}") for n, payload in enumerate(payloads_of(logs))]


def floor(chunks: list[bytes], out: Path) -> tuple[float, int]:
    """Decode, render and write (one write and one fdatasync per chunk): CPU s, records."""
    renderer = Renderer(IndexNamer("logs"), TimeWindow(7 * 86400, 86400))
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    records = 0
    started = time.process_time()
    for number, chunk in enumerate(chunks):
        decoder = ServerDecoder()
        (message,) = decoder.feed(chunk)
        receipt = Receipt("bench", 1, number)
        received_s = int(time.time())
        bodies: list[bytes] = []
        position = 0
        for entries in message.slices():  # type: ignore[union-attr]
            by_tenant: dict[str, list[tuple[int, Any, dict[str, Any]]]] = {}
            for n, (when, record) in enumerate(entries):
                tenant = record["kubernetes"]["namespace_name"]
                by_tenant.setdefault(tenant, []).append((position + n, when, record))
            position += len(entries)
            for tenant, group in by_tenant.items():
                done = renderer.render(tenant, group, message, receipt, received_s)  # type: ignore[arg-type]
                bodies.append(done.lines)
                records += done.documents
        os.write(fd, b"".join(bodies))
        os.fdatasync(fd)
    cpu = time.process_time() - started
    os.close(fd)
    return cpu, records


@contextlib.contextmanager
def sampling_aggregators(out: Path) -> Iterator[list[Path]]:
    """py-spy records every aggregator started inside the block (the raw, collapsed stacks
    of each go to a file under ``out``, listed in the yielded list once it stopped)."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    start = DaemonProcess.start
    recorders: list[subprocess.Popen[bytes]] = []
    files: list[Path] = []

    async def started(self: DaemonProcess, *, timeout_s: float = 60.0) -> None:
        await start(self, timeout_s=timeout_s)
        if self.kind != "aggregator" or self.proc is None:
            return
        path = out / f"aggregator-{self.proc.pid}.txt"
        recorders.append(_record(spy, self.proc.pid, path))
        files.append(path)

    DaemonProcess.start = started  # type: ignore[method-assign]
    try:
        yield files
    finally:
        DaemonProcess.start = start  # type: ignore[method-assign]
        for recorder in recorders:  # each ends when its aggregator does
            try:
                recorder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.terminate()


def _record(spy: Path, pid: int, path: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` until it exits, without pausing it (--nonblocking)."""
    command = [str(spy), "record", "--pid", str(pid), "--format", "raw", "--function"]
    command += ["--rate", str(PROFILE_RATE_HZ), "--nonblocking", "--output", str(path)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _frame_name(frame: str) -> str:
    """``function (path:line)`` -> ``function (path relative to the repo or site-packages)``."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    for marker in ("/site-packages/", str(REPO) + "/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


def print_profile(files: list[Path], top: int = 15) -> None:
    """Top frames of the collapsed stacks in ``files`` by own and cumulative samples."""
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    for path in files:
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_frame_name(frame) for frame in stack.split(";")[1:]]  # [0]: the thread
            if not frames:
                continue
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                cumulative[frame] += count
    if not total:
        print("profile: no samples")
        return
    print(f"profile: {total:,} samples at {PROFILE_RATE_HZ} Hz of the aggregator, busy time only")
    # Frames under which nearly everything runs (the daemon, the loop, a connection's task)
    # say nothing about where the time goes: the cumulative list starts below them.
    shallow = {frame for frame, count in cumulative.items() if count > 0.7 * total}
    for title, counts in (("own", own), ("cumulative", cumulative)):
        print(f"  top {top} by {title} time:")
        listed = [item for item in counts.most_common() if counts is own or item[0] not in shallow]
        for frame, count in listed[:top]:
            print(f"    {100 * count / total:5.1f}%  {frame}")
    print(f"  (above every cumulative frame: {', '.join(sorted(shallow))})")
    stages: Counter[str] = Counter()
    for frame, count in own.items():
        stages[next(name for name, pattern in STAGES if pattern.search(frame))] += count
    print("  own time by stage:")
    for name, count in stages.most_common():
        print(f"    {100 * count / total:5.1f}%  {name}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=400_000)
    parser.add_argument(
        "--profile", action="store_true", help="sample the aggregator with py-spy (see above)"
    )
    args = parser.parse_args()
    (REPO / ".cache").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lf-bench-real-", dir=str(REPO / ".cache")))
    try:
        logs = work / "node"
        write_logs(logs, args.lines)
        size = sum(p.stat().st_size for p in (logs / "pods").rglob("*.log*"))
        print(f"loadgen: {args.lines:,} lines, {size / args.lines:.0f} bytes each on average")
        sampling = sampling_aggregators(work) if args.profile else contextlib.nullcontext([])
        with sampling as profiles:
            run = await ship(work, logs, args.lines, {})
        chunks = chunks_of(logs)
        floor_cpu, floor_records = floor(chunks, work / "floor.ndjson")
        per_m = 1e6 / args.lines
        fwd, agg, low = run["cpu_s"] * per_m, run["agg_cpu_s"] * per_m, floor_cpu * per_m
        print(f"forwarder : {fwd:.2f} CPU s per million lines, peak RSS {run['rss_mb']:.0f} MB")
        print(f"aggregator: {agg:.2f} CPU s per million lines, peak RSS {run['agg_rss_mb']:.0f} MB")
        print(
            f"floor     : {low:.2f} CPU s per million lines (decode + render + one write and "
            f"fdatasync per chunk of {CHUNK_RECORDS}; {len(chunks)} chunks, "
            f"{floor_records:,} documents)"
        )
        print(f"aggregator/forwarder: {agg / fwd:.2f}   aggregator/floor: {agg / low:.2f}")
        if args.profile:
            print_profile([path for path in profiles if path.exists()])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
    report()
