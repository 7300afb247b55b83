"""Hostile input against a real aggregator: its peak memory, and an honest tenant's ack latency.

For each attack of tests/support/attacks.py (expansion bomb, many tiny objects, a poison
record, slow senders, a connection flood, bad handshakes, odd times and names, and bombs with
tiny objects at once), a fresh ``logferry aggregator`` (shared key, default limits, output to
a local OpenSearch node) is warmed up by an honest tenant sending 20-record chunks from another
source address; then the attack runs while the honest tenant keeps sending. Printed per case:
what the attack was met with, the aggregator's peak RSS above its RSS before the attack, and
the honest tenant's ack latency before (reference, same aggregator) and during the attack
(median and max). A first row, "none", is the honest tenant alone.

Run: ``.venv/bin/python bench/bench_adversarial.py``. Needs root (it resets the peak RSS
through /proc/<pid>/clear_refs). Asserts nothing about time.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from process_stats import report  # noqa: E402

from devtools.opensearch_node import OpenSearchNode  # noqa: E402
from logferry.common.units import MiB  # noqa: E402
from tests.support import attacks  # noqa: E402


async def idle(port: int) -> str:
    """No attack: the reference row."""
    return "-"


def ms(values: list[float], pick: str) -> str:
    if not values:
        return "-"
    value = statistics.median(values) if pick == "median" else max(values)
    return f"{value * 1000:.0f}"


async def main() -> None:
    cases = [attacks.Attack("none (honest tenant alone)", idle), *attacks.ATTACKS]
    cases.append(
        attacks.Attack(
            "bombs and tiny objects at once",
            lambda port: _together(
                attacks.attack_gzip_bomb(port),
                attacks.attack_gzip_bomb(port),
                attacks.attack_tiny_objects(port),
            ),
        )
    )
    rows = []
    with (
        OpenSearchNode(cluster_name="logferry-bench") as node,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for n, case in enumerate(cases):
            daemon = await attacks.start_aggregator(Path(tmp) / f"agg-{n}", node.url)
            try:
                measured = await attacks.measure(daemon, case)
            finally:
                await daemon.stop()
            warm = measured.honest.latencies_s[
                : len(measured.honest.latencies_s) - measured.acks_during
            ]
            rows.append(
                (
                    case.name,
                    measured.outcome,
                    f"{measured.growth / MiB:.0f}",
                    f"{measured.attack_s:.1f}",
                    ms(warm, "median"),
                    ms(measured.latencies_during_s, "median"),
                    ms(measured.latencies_during_s, "max"),
                )
            )
            print(" | ".join(rows[-1]), flush=True)
    header = (
        "attack",
        "met with",
        "peak RSS +MiB",
        "attack s",
        "ack ms before",
        "ack ms during (median)",
        "max",
    )
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    report()


async def _together(*runs: object) -> str:
    return ",".join(await asyncio.gather(*runs))  # type: ignore[arg-type]


if __name__ == "__main__":
    asyncio.run(main())
