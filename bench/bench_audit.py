"""How long the auditor's proof of a window takes on the local OpenSearch node.

Seeds a fresh index set through logferry's template with ``--records`` records shaped like the
aggregator's (log lines of varied length, advancing timestamps, ``--sources`` sources of
several tenants, one joined record in 500) and the forwarders' checkpoint records (one per
source per simulated minute, every window's seqs split at them), then proves:

- **audit**: one window holding every record, as ``logferry audit`` proves it
  (:func:`~logferry.tools.audit_proof.prove_window`: a range per source, blocks, recounts,
  joined records);
- **verify**: the same records by ``logferry verify`` over the whole index (the reference,
  measured in the same run: the proof that needed the node's position file before);
- **windows**: the span as the auditor's pass proves it, ``--windows`` windows.

Prints seconds, records proven per second, the ratio audit/verify, checkpoint documents per
million lines, and both processes' figures (OpenSearch's CPU seconds from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import random
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from process_stats import proc_cpu_s, report  # noqa: E402

from devtools.opensearch_node import OpenSearchNode  # noqa: E402
from logferry.common.records import record_id, source_id  # noqa: E402
from logferry.common.store_access import StoreAccess  # noqa: E402
from logferry.store.client import open_store  # noqa: E402
from logferry.store.lifecycle import templates_for  # noqa: E402
from logferry.store.settings import IndexSettings  # noqa: E402
from logferry.store.templates import ensure_templates  # noqa: E402
from logferry.tools.audit_proof import prove_window  # noqa: E402
from logferry.tools.verify import VerifyOptions, verify  # noqa: E402
from logferry.tools.verify_store import open_verify_store  # noqa: E402

NODE = "bench-node"
TENANTS = 8
MINUTE_MS = 60_000
WORDS = ["GET", "POST", "/api/v1/orders", "/healthz", "user=42", "status=200", "took=13ms"]


def pick_sources(count: int) -> list[tuple[str, str]]:
    return [(source_id(NODE, 9, n, 0), f"auditbench-{n % TENANTS}") for n in range(count)]


def line(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24)))


def documents(
    sources: list[tuple[str, str]],
    per_source: int,
    start_ms: int,
    minutes: int,
    marks: list[tuple[str, dict[str, Any]]],
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(index, doc) of the records, made as they are sent (ten million do not fit in
    memory at once); the checkpoints (one per source per minute) are added to ``marks``."""
    rng = random.Random(7)
    per_minute = max(1, per_source // minutes)
    for src, tenant in sources:
        index = f"logs-{tenant}-2026.11.30"
        seq = 0
        while seq < per_source:
            stamp = start_ms + seq * 37
            lf: dict[str, Any] = {"id": record_id(src, seq * 120), "src": src, "seq": seq}
            width = 1
            if seq % 500 == 499 and seq + 3 < per_source:
                width = 4  # a joined record: a stack trace of four lines
                lf["seq_end"] = seq + 3
            yield (
                index,
                {
                    "@timestamp": stamp,
                    "log": line(rng),
                    "stream": "stdout",
                    "kubernetes": {"namespace_name": tenant, "pod_name": "p", "host": NODE},
                    "_lf": lf,
                },
            )
            seq += width
            boundary = seq // per_minute > (seq - width) // per_minute or seq >= per_source
            if boundary:
                minute = min(minutes - 1, (seq - 1) // per_minute)
                mark = {
                    "kind": "checkpoint",
                    "id": f"ckpt-{src}-{seq}",
                    "src": src,
                    "next_seq": seq,
                    "state": "open",
                    "node": NODE,
                }
                marks.append(
                    (
                        f"logs-{tenant}.lf-accounting-2026.11.30",
                        {
                            "@timestamp": start_ms + minute * MINUTE_MS + 30_000,
                            "kubernetes": {"namespace_name": tenant},
                            "_lf": mark,
                        },
                    )
                )


async def bulk(url: str, docs: Iterable[tuple[str, dict[str, Any]]]) -> int:
    """Send ``docs`` in requests of 20,000; how many were sent."""
    sent = 0
    it = iter(docs)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        while True:
            lines = []
            for index, doc in itertools.islice(it, 20_000):
                lines.append(orjson.dumps({"create": {"_index": index, "_id": doc["_lf"]["id"]}}))
                lines.append(orjson.dumps(doc))
            if not lines:
                return sent
            sent += len(lines) // 2
            body = b"\n".join(lines) + b"\n"
            async with session.post(
                f"{url}/_bulk",
                data=io.BytesIO(body),
                headers={"Content-Type": "application/x-ndjson"},
            ) as response:
                payload = await response.json()
            if payload.get("errors"):
                raise SystemExit(f"bulk errors: {str(payload)[:500]}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--sources", type=int, default=200)
    parser.add_argument("--windows", type=int, default=12, help="windows of the span pass")
    args = parser.parse_args()
    per_source = args.records // args.sources
    minutes = args.windows
    start_ms = (int(time.time() * 1000) // MINUTE_MS - minutes - 5) * MINUTE_MS
    sources = pick_sources(args.sources)
    lines = per_source * len(sources)
    marks: list[tuple[str, dict[str, Any]]] = []
    with OpenSearchNode(cluster_name="logferry-bench-audit") as node:
        assert node.pid is not None
        pid = node.pid
        async with open_store(StoreAccess(urls=[node.url])) as client:
            await ensure_templates(client, templates_for("logs", IndexSettings(replicas=0)))
        loaded = time.perf_counter()
        records = await bulk(node.url, documents(sources, per_source, start_ms, minutes, marks))
        await bulk(node.url, marks)
        print(
            f"workload: {lines:,d} lines in {records:,d} records of {len(sources)} sources "
            f"({TENANTS} tenants), {len(marks):,d} checkpoints = "
            f"{len(marks) / lines * 1e6:,.0f} checkpoint documents per million lines; "
            f"seeded in {time.perf_counter() - loaded:.0f}s"
        )
        options = VerifyOptions(store=StoreAccess(urls=[node.url]), index="logs-auditbench-*")
        async with open_verify_store(options) as store:
            await store.refresh()
            figures: dict[str, float] = {}
            for name in ("audit", "verify", "windows", "audit", "verify", "windows"):
                cpu = proc_cpu_s(pid)
                began = time.perf_counter()
                if name == "audit":
                    proof = await prove_window(store, start_ms, start_ms + minutes * MINUTE_MS)
                    proven = sum(r.expected for r in proof.rows)
                    bad = sum(r.missing + r.duplicates for r in proof.rows)
                elif name == "windows":
                    proven = bad = 0
                    for w in range(minutes):
                        since = start_ms + w * MINUTE_MS
                        proof = await prove_window(store, since, since + MINUTE_MS)
                        proven += sum(r.expected for r in proof.rows)
                        bad += sum(r.missing + r.duplicates for r in proof.rows)
                else:
                    report_ = await verify(options)
                    proven = report_.totals.expected
                    bad = report_.totals.missing + report_.totals.duplicates
                took = time.perf_counter() - began
                figures[name] = took  # the second round's figure stands (caches warm)
                print(
                    f"{name:8s}: {proven:,d} lines proven in {took:6.2f}s = "
                    f"{proven / took:10,.0f} lines/s, OpenSearch "
                    f"{proc_cpu_s(pid) - cpu:5.1f} CPU s, problems {bad}"
                )
                if proven != lines or bad:
                    raise SystemExit("the proof is wrong: see the line above")
        ratio = figures["audit"] / figures["verify"]
        print(f"ratio audit / verify (one window, the same records): {ratio:.2f}")
        print(f"ratio {minutes} windows / one window: {figures['windows'] / figures['audit']:.2f}")
    report()


if __name__ == "__main__":
    asyncio.run(main())
