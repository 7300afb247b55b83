"""Forward Protocol codec throughput: PackedForward and CompressedPackedForward, encode and decode.

Run: ``.venv/bin/python bench/bench_codec.py``. Prints a table; asserts nothing about time.
Records look like what the forwarder sends for a docker json-file line (about 180-byte ``log``).
"""

from __future__ import annotations

import argparse
import random
import string
import time
from collections.abc import Callable

from process_stats import report

from logferry.common.protocol import (
    Entry,
    EventTime,
    ServerDecoder,
    encode_compressed_packed_forward,
    encode_packed_forward,
    gzip_entries,
    pack_entries,
)


def make_entries(n: int, seed: int = 1) -> list[Entry]:
    """``n`` docker-style records with EventTime, kubernetes metadata and an _lf id map."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(500)]
    entries: list[Entry] = []
    base_ns = 1_700_000_000 * 1_000_000_000
    for i in range(n):
        line = f"2024-05-01T12:00:{i % 60:02d}.{i:06d}Z INFO request handled "
        while len(line) < 180:
            line += rng.choice(words) + " "
        pod = f"checkout-{rng.randint(0, 9)}f6d8c7b-{rng.randint(10000, 99999)}"
        record = {
            "log": line[:180],
            "stream": "stdout" if i % 5 else "stderr",
            "kubernetes": {
                "namespace_name": "team-payments",
                "pod_name": pod,
                "container_name": "checkout",
                "container_id": f"containerd://{rng.getrandbits(256):064x}",
                "host": "node-17.eu-west-1.compute.internal",
            },
            "_lf": {
                "id": f"{rng.getrandbits(96):024x}-{i * 181}",
                "src": "n17-2049-5512-0",
                "seq": i,
            },
        }
        entries.append((EventTime.from_ns(base_ns + i * 1_000_003), record))
    return entries


def rate(fn: Callable[[], object], min_time_s: float) -> float:
    """Best seconds per call over repeated runs lasting at least ``min_time_s`` in total."""
    fn()  # warm up
    best = float("inf")
    spent = 0.0
    runs = 0
    while spent < min_time_s or runs < 3:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        runs += 1
    return best


def bench_batch(n: int, min_time_s: float) -> list[str]:
    """Table rows for one batch size: encode and decode of both modes."""
    entries = make_entries(n)
    packed = pack_entries(entries)
    rows = []
    for name, compressed in (("PackedForward", False), ("CompressedPackedForward", True)):

        def encode(compressed: bool = compressed) -> bytes:
            # What the forwarder does per chunk: pack the entries once, then wrap (and gzip).
            data = pack_entries(entries)
            if compressed:
                return encode_compressed_packed_forward("k8s", data, n, chunk="c")
            return encode_packed_forward("k8s", data, n, chunk="c")

        wire = encode()

        def decode(wire: bytes = wire) -> None:
            (msg,) = ServerDecoder().feed(wire)
            assert len(msg.entries) == n

        for op, fn in (("encode", encode), ("decode", decode)):
            s = rate(fn, min_time_s)
            rows.append(
                f"{name:<24}{n:>6}{len(wire) / 1024:>9.0f}{op:>8}{n / s:>12,.0f}"
                f"{len(packed) / s / 1e6:>10.1f}{len(wire) / s / 1e6:>11.1f}"
            )
    return rows


def main() -> None:
    """Print records/s and MB/s for each batch size and mode."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--min-time-s", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    header = (
        f"{'mode':<24}{'batch':>6}{'wire KB':>9}{'op':>8}{'records/s':>12}"
        f"{'MB/s raw':>10}{'MB/s wire':>11}"
    )
    print(header)
    print("-" * len(header))
    for n in (1000, 4000, 8000):
        for row in bench_batch(n, args.min_time_s):
            print(row, flush=True)
    sample = make_entries(1000)
    packed = pack_entries(sample)
    print(
        f"\nraw = uncompressed entry stream ({len(packed) / 1000:.0f} B/record), gzip level 6 "
        f"ratio {len(packed) / len(gzip_entries(packed)):.1f}x; best of repeated runs, one core."
    )


if __name__ == "__main__":
    main()
    report()
