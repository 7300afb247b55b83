"""Spool throughput with real fsync: appenders x batch size, then read + commit.

Usage: ``python bench/bench_spool.py [--dir DIR] [--seconds S]``. Prints figures; asserts
nothing. Records are ~300 bytes (a typical msgpack'ed container log line with metadata).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time

from process_stats import report

from logferry.common.spool import Spool

RECORD_BYTES = 300


async def bench_append(directory: str, appenders: int, batch: int, seconds: float) -> None:
    spool = await Spool.open(directory, max_bytes=8 << 30, segment_max_bytes=64 << 20)
    records = [os.urandom(RECORD_BYTES) for _ in range(batch)]
    deadline = time.perf_counter() + seconds
    count = 0

    async def appender() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await spool.append(records)
            count += batch

    fsyncs = spool.fsyncs
    start = time.perf_counter()
    await asyncio.gather(*(appender() for _ in range(appenders)))
    elapsed = time.perf_counter() - start
    fsyncs = spool.fsyncs - fsyncs
    print(
        f"append  appenders={appenders:<3d} batch={batch:<4d} "
        f"{count / elapsed:>10,.0f} records/s {count * RECORD_BYTES / elapsed / 1e6:>7.1f} MB/s "
        f"{fsyncs / elapsed:>7,.0f} fsyncs/s {count / batch / max(fsyncs, 1):>6.1f} appends/fsync"
    )
    await spool.close()


async def bench_read_commit(directory: str, max_records: int) -> None:
    spool = await Spool.open(directory, max_bytes=8 << 30, segment_max_bytes=64 << 20)
    pending = spool.records_pending
    count, nbytes = 0, 0
    start = time.perf_counter()
    while b := await spool.read(max_records=max_records, max_bytes=4 << 20, timeout_s=0):
        count += len(b.records)
        nbytes += sum(map(len, b.records))
        spool.commit(b)
    elapsed = time.perf_counter() - start
    assert count == pending
    print(
        f"read+commit max_records={max_records:<5d} {count:>9,d} records "
        f"{count / elapsed:>10,.0f} records/s {nbytes / elapsed / 1e6:>7.1f} MB/s"
    )
    await spool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=None, help="parent directory (default: system tmp)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per append scenario")
    args = parser.parse_args()
    parent = tempfile.mkdtemp(prefix="bench-spool-", dir=args.dir)
    try:
        for batch in (1, 100):
            for appenders in (1, 8, 64):
                directory = os.path.join(parent, f"a{appenders}-b{batch}")
                await bench_append(directory, appenders, batch, args.seconds)
        for max_records in (100, 1000):
            await bench_read_commit(os.path.join(parent, "a64-b100"), max_records)
            # The first pass committed everything; refill for the second.
            if max_records == 100:
                await bench_append(os.path.join(parent, "a64-b100"), 64, 100, args.seconds)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
    report()
