"""`make run` at the foundation stage: push real container-style records through the parts
that exist today and show where they went.

1. starts (or reuses) the local OpenSearch node (scripts/opensearch start);
2. builds docker-style records for a few namespaces and pods, encodes them as Forward
   Protocol CompressedPackedForward chunks and decodes them again with the server decoder;
3. appends them to a durable spool under ./run/spool (group commit, fsync);
4. reads the spool back in batches and bulk-writes each record to OpenSearch with `create` and
   its deterministic `_id`, committing a batch only once the store confirmed every item;
5. prints the indices, counts and a curl command to look at the logs.

The daemons that do this continuously (forwarder, aggregator) replace this script as they land.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import orjson

from logferry.common import protocol
from logferry.common.protocol import EventMessage, EventTime, ServerDecoder
from logferry.common.records import record_id, source_id
from logferry.common.spool import Spool

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "run"
NAMESPACES = ("payments", "checkout", "search")
RECORDS_PER_POD = 2000
CHUNK_RECORDS = 1000


def start_opensearch() -> str:
    """The local node's URL (started if it is not running)."""
    out = subprocess.run(
        [str(REPO / "scripts" / "opensearch"), "start"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def make_records() -> list[tuple[EventTime, dict[str, Any]]]:
    """Records shaped like the forwarder's: a log line, kubernetes metadata, _lf identity."""
    entries = []
    now = time.time()
    for ns in NAMESPACES:
        for pod_index in range(2):
            pod = f"{ns}-api-7d9f{pod_index}-x2k4"
            src = source_id("local-node", 2049, hash((ns, pod)) & 0xFFFFFF, 0)
            offset = 0
            for seq in range(RECORDS_PER_POD):
                line = f"{time.strftime('%H:%M:%S')} INFO request {seq} handled path=/api/v1/{ns}"
                entries.append(
                    (
                        EventTime.from_float(now + seq / 1000),
                        {
                            "log": line,
                            "stream": "stdout" if seq % 7 else "stderr",
                            "kubernetes": {
                                "namespace_name": ns,
                                "pod_name": pod,
                                "container_name": "api",
                                "container_id": f"containerd://{src}",
                                "host": "local-node",
                            },
                            "_lf": {"id": record_id(src, offset), "src": src, "seq": seq},
                        },
                    )
                )
                offset += len(line) + 60
    return entries


def through_the_wire(entries: list[tuple[EventTime, dict[str, Any]]]) -> list[EventMessage]:
    """Encode as CompressedPackedForward chunks, then decode them as a server would."""
    decoder = ServerDecoder()
    messages: list[EventMessage] = []
    for start in range(0, len(entries), CHUNK_RECORDS):
        batch = entries[start : start + CHUNK_RECORDS]
        wire = protocol.encode_compressed_packed_forward(
            "kube.var.log.containers",
            protocol.pack_entries(batch),
            len(batch),
            chunk=f"demo-{start}",
        )
        for message in decoder.feed(wire):
            assert isinstance(message, EventMessage)
            messages.append(message)
    return messages


def to_document(time_value: Any, record: dict[str, Any]) -> tuple[str, str, bytes]:
    """(index, _id, JSON source) for a record, as the aggregator's bulk output will do."""
    when = EventTime.from_time(time_value)
    ns = record["kubernetes"]["namespace_name"]
    day = time.strftime("%Y.%m.%d", time.gmtime(when.seconds))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when.seconds))
    record["@timestamp"] = f"{stamp}.{when.nanoseconds:09d}Z"
    return f"logs-{ns}-{day}", record["_lf"]["id"], orjson.dumps(record)


async def spool_and_ship(messages: list[EventMessage], url: str) -> dict[str, int]:
    spool_dir = RUN / "spool"
    shutil.rmtree(spool_dir, ignore_errors=True)
    spool = await Spool.open(str(spool_dir), max_bytes=256 * 1024 * 1024)
    counts: dict[str, int] = {}
    try:
        # Concurrent appends, as concurrent connections would make: they share fsyncs.
        await asyncio.gather(
            *(
                spool.append([msgpack.packb([t, r], use_bin_type=True) for t, r in m.entries])
                for m in messages
            )
        )
        print(f"  spooled {spool.records_pending} records durably ({spool.fsyncs} fsyncs)")
        async with aiohttp.ClientSession() as session:
            while spool.records_pending:
                batch = await spool.read(max_records=2000, max_bytes=4 << 20, timeout_s=1.0)
                if batch is None:
                    break
                lines = []
                for raw in batch.records:
                    t, record = msgpack.unpackb(raw, raw=False, ext_hook=protocol.ext_hook)
                    index, doc_id, source = to_document(t, record)
                    counts[index] = counts.get(index, 0) + 1
                    lines.append(orjson.dumps({"create": {"_index": index, "_id": doc_id}}))
                    lines.append(source)
                body = b"\n".join(lines) + b"\n"
                async with session.post(
                    f"{url}/_bulk",
                    data=body,
                    headers={"Content-Type": "application/x-ndjson"},
                ) as response:
                    result = await response.json()
                failed = [
                    item
                    for item in result["items"]
                    if item["create"]["status"] not in (200, 201, 409)
                ]
                if failed:
                    raise SystemExit(f"the store refused {len(failed)} records: {failed[0]}")
                spool.commit(batch)
            async with session.post(f"{url}/logs-*/_refresh") as response:
                await response.read()
    finally:
        await spool.close()
    return counts


def main() -> int:
    print("logferry make run (foundation stage)")
    print("- starting the local OpenSearch node (scripts/opensearch start) ...")
    url = start_opensearch()
    print(f"  OpenSearch is up at {url}")
    entries = make_records()
    print(f"- built {len(entries)} container log records ({len(NAMESPACES)} namespaces, 6 pods)")
    messages = through_the_wire(entries)
    print(f"- encoded and decoded {len(messages)} CompressedPackedForward chunks")
    print("- spooling them under ./run/spool and bulk-writing them to OpenSearch ...")
    counts = asyncio.run(spool_and_ship(messages, url))
    print("- done. Your logs are in OpenSearch:")
    for index, count in sorted(counts.items()):
        print(f"    {index:40s} {count:6d} documents")
    print("\nLook at them:")
    print(f"  curl -s '{url}/_cat/indices/logs-*?v'")
    print(f"  curl -s '{url}/logs-payments-*/_search?size=3&pretty'")
    print("Stop the node with: scripts/opensearch stop")
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
