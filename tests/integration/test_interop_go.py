"""Interop with real third-party Go implementations of the Forward Protocol, both directions.

- github.com/IBM/fluent-forward-go (client) -> the aggregator subprocess -> OpenSearch, with
  acks, in every carrier mode the library offers;
- logferry's Sender -> the OpenTelemetry Collector's fluentforward receiver (server), with
  acks, then through a proxy that swallows acks so the sender must resend the same chunk id.

The Go peers live in tests/peers/go and are built once (see tests/support/go_peer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest

from logferry.common import protocol
from logferry.common.spool import Spool
from logferry.forwarder.entries import make_block
from logferry.forwarder.sender import Sender
from tests.support.ack_dropping_proxy import AckDroppingProxy
from tests.support.aggregator import MakeAggregator, input_port, unique_ns
from tests.support.go_peer import GoPeers, GoServer, build_go_peers, run_go_client
from tests.support.net import wait_until
from tests.support.opensearch_client import StoreReader, wait_count
from tests.support.records import Entry, container_entries
from tests.support.sender import drained, open_spool, running, settings

pytestmark = pytest.mark.integration

RECORDS = 1000
BATCH = 100

# Mirrors `texts` in tests/peers/go/client/main.go: the exact log lines the Go client sends.
GO_TEXTS = [
    "GET /checkout 200 12ms",
    'said "hello" \\ back',
    "tab\tseparated\tfields",
    "caf\u00e9 \u2713 \u65e5\u672c\u8a9e \U0001f680",
    '{"level":"warn","msg":"json inside a log line"}',
    "long-" * 300,
    "",
]


def go_log_line(i: int) -> str:
    """The ``log`` field of the Go client's record ``i``."""
    return f"go-peer line {i}: {GO_TEXTS[i % len(GO_TEXTS)]}"


def stored_time(stamp: str) -> tuple[int, int]:
    """``@timestamp`` as the aggregator writes it (``...T12:34:56.123456789Z``) -> (s, ns)."""
    whole, _dot, fraction = stamp.removesuffix("Z").partition(".")
    seconds = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return int(seconds), int(fraction.ljust(9, "0"))


@pytest.fixture(scope="session")
def go_peers() -> GoPeers:
    """The Go peer binaries, built once per source digest (cached across sessions)."""
    return build_go_peers()


@pytest.fixture
async def go_server(go_peers: GoPeers, tmp_path: Path) -> AsyncIterator[GoServer]:
    server = GoServer(go_peers, tmp_path / "go-server")
    await server.start()
    try:
        yield server
    finally:
        server.kill()


# --- fluent-forward-go client -> aggregator -> OpenSearch ------------------------------------


@pytest.mark.parametrize(
    "mode",
    [
        "message",  # [tag, int32 seconds, record, {chunk}]
        "message-ext",  # [tag, EventTime, record, {chunk}]
        "forward",  # [tag, [[EventTime, record]...], {size, chunk}]
        "packed",  # [tag, bin(entries), {size, chunk}]
        "packed-bytes",  # [tag, bin(entries), {chunk}]: no size option
        "compressed",  # [tag, bin(gzip), {size, chunk, compressed: "gzip"}]
        "compressed-bytes",  # [tag, bin(gzip), {chunk, compressed: "gzip"}]: no size option
    ],
)
async def test_go_client_records_land_once_in_opensearch(
    opensearch: Any, make_aggregator: MakeAggregator, go_peers: GoPeers, mode: str
) -> None:
    agg = make_aggregator(opensearch.url)
    await agg.start()
    ns = unique_ns(f"go-{mode}")
    started = time.time()
    run = await run_go_client(
        go_peers, input_port(agg), mode=mode, count=RECORDS, batch=BATCH, namespace=ns
    )
    finished = time.time()
    assert run.returncode == 0, f"{run.stderr}\naggregator log:\n{agg.tail()}"
    messages = RECORDS if mode.startswith("message") else RECORDS // BATCH
    assert run.summary == {"mode": mode, "records": RECORDS, "messages": messages, "resends": 0}

    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{ns}-*", RECORDS, timeout_s=30)
    hits = await store.search(f"logs-{ns}-*")
    assert len(hits) == RECORDS == await store.count(f"logs-{ns}-*")
    by_seq = {hit["_source"]["seq"]: hit["_source"] for hit in hits}
    assert sorted(by_seq) == list(range(RECORDS))  # each seq exactly once
    for seq, source in by_seq.items():  # every kind of text, character for character
        assert source["log"] == go_log_line(seq)
        assert source["stream"] == "stdout"
        assert source["kubernetes"] == {
            "namespace_name": ns,
            "pod_name": "go-0",
            "container_name": "app",
            "host": "go-peer",
        }
    # The event times the client stamped (int seconds in "message", EventTime otherwise).
    times = [stored_time(source["@timestamp"]) for source in by_seq.values()]
    assert all(int(started) <= seconds <= finished for seconds, _ns in times)
    if mode == "message":
        assert {nanos for _s, nanos in times} == {0}
    else:
        assert any(nanos for _s, nanos in times)
    # No _lf.id from this client: every id is derived from content and chunk position.
    assert all(hit["_id"].startswith("h") for hit in hits)

    assert await agg.metric("logferry_acks_total") == messages
    assert await agg.metric("logferry_records_in_total", tenant=ns) == RECORDS
    assert await agg.metric("logferry_protocol_errors_total") == 0
    assert await agg.metric("logferry_duplicates_total") == 0
    assert await agg.stop() == 0


async def test_go_client_resends_after_lost_acks_are_stored_once(
    opensearch: Any, make_aggregator: MakeAggregator, go_peers: GoPeers
) -> None:
    """fluent-forward-go resending an unacked message object keeps its chunk id and times, so
    the aggregator derives the same ids for its records and the store keeps one copy."""
    agg = make_aggregator(opensearch.url)
    await agg.start()
    proxy = AckDroppingProxy("127.0.0.1", input_port(agg))
    proxy.drop_every = 4  # acks 4, 8, 12 of 13: messages 4, 7 and 10 are sent twice
    await proxy.start()
    ns = unique_ns("go-resend")
    try:
        run = await run_go_client(
            go_peers,
            proxy.port,
            mode="compressed",
            count=RECORDS,
            batch=BATCH,
            namespace=ns,
            ack_timeout_s=1.0,
            extra_args=["-retries=2"],
        )
    finally:
        await proxy.stop()
    assert run.returncode == 0, f"{run.stderr}\naggregator log:\n{agg.tail()}"
    assert run.summary["resends"] == proxy.acks_dropped == 3
    assert len(set(proxy.dropped_chunks)) == 3

    async def resends_settled() -> bool:
        return await agg.metric("logferry_duplicates_total", tenant=ns) >= 3 * BATCH

    await wait_until(resends_settled, timeout_s=30, what="the resent records as duplicates")
    store = StoreReader(opensearch.url)
    hits = await store.search(f"logs-{ns}-*")
    assert sorted(hit["_source"]["seq"] for hit in hits) == list(range(RECORDS))
    assert await agg.metric("logferry_acks_total") == RECORDS // BATCH + 3
    assert await agg.metric("logferry_records_in_total", tenant=ns) == RECORDS + 3 * BATCH
    assert await agg.metric("logferry_duplicates_total", tenant=ns) == 3 * BATCH
    assert await agg.metric("logferry_protocol_errors_total") == 0
    assert await agg.stop() == 0


# --- logferry Sender -> OTel fluentforward receiver --------------------------------------------


async def fill_spool(spool: Spool, namespace: str, count: int) -> list[Entry]:
    """``count`` records in spool blocks of 50 entries, as the forwarder writes them."""
    entries = container_entries(namespace, count)
    blocks = [
        make_block(protocol.pack_entries(entries[i : i + 50]), len(entries[i : i + 50]))
        for i in range(0, count, 50)
    ]
    await spool.append(blocks)
    return entries


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    opened = await open_spool(tmp_path / "forwarder-spool")
    yield opened
    await opened.close()


async def received_ids(
    server: GoServer, expected: set[str], timeout_s: float = 10.0
) -> Counter[str]:
    """How often each ``_lf.id`` reached the Go server, once every one in ``expected`` has."""

    async def complete() -> bool:
        return expected <= {r["_lf"]["id"] for r in server.records()}

    await wait_until(complete, timeout_s=timeout_s, what="every record at the go server")
    return Counter(r["_lf"]["id"] for r in server.records())


async def test_sender_delivers_every_chunk_to_the_otel_receiver_with_acks(
    go_server: GoServer, spool: Spool
) -> None:
    entries = await fill_spool(spool, "tenant-go", RECORDS)
    sender = Sender(settings([go_server.address]), spool, node_name="node-go")
    async with running(sender):
        await drained(spool, timeout_s=30)  # committed only on acks: every chunk was acked
    assert sender.stats.records_acked == RECORDS
    assert sender.stats.acked[go_server.address] == RECORDS // BATCH
    assert sender.stats.retried.total() == 0

    wanted = {record["_lf"]["id"]: (when, record) for when, record in entries}
    counts = await received_ids(go_server, set(wanted))
    assert counts == Counter(dict.fromkeys(wanted, 1))  # no fault, no resend: exactly once
    for line in go_server.records():
        when, record = wanted[line.pop("_lf")["id"]]
        # What the receiver made of the record: the original fields, our tag, and the EventTime
        # to the nanosecond.
        assert line.pop("@time_ns") == when.to_ns()
        assert line.pop("fluent.tag") == "kube"
        assert line == {k: v for k, v in record.items() if k != "_lf"}
    assert {tuple(sorted(r["_lf"])) for r in go_server.records()} == {("id", "seq", "src")}
    assert await go_server.stop() == 0


class ObservedAckDroppingProxy(AckDroppingProxy):
    """The shared ack-dropping proxy, plus: swallow the first ``drop_first`` acks, and record
    every chunk the client sends (``sent_chunks`` in order, ``chunk_ids`` their ``_lf.id``s)."""

    def __init__(self, target_host: str, target_port: int, *, drop_first: int) -> None:
        super().__init__(target_host, target_port)
        self.drop_first = drop_first
        self.sent_chunks: list[str] = []
        self.chunk_ids: dict[str, list[str]] = {}

    def _should_drop(self) -> bool:
        if self.acks_seen < self.drop_first:
            self.acks_seen += 1
            return True
        return super()._should_drop()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The parent uses _pipe for client -> server only; look at each message on its way.
        unpacker = msgpack.Unpacker(raw=False)
        try:
            while data := await reader.read(65536):
                unpacker.feed(data)
                for message in unpacker:
                    self._observe(message)
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _observe(self, message: Any) -> None:
        # The sender only speaks CompressedPackedForward: [tag, bin(gzip), {..., chunk}].
        _tag, blob, options = message
        chunk = options["chunk"]
        self.sent_chunks.append(chunk)
        entries = msgpack.Unpacker(raw=False)
        entries.feed(gzip.decompress(blob))
        self.chunk_ids[chunk] = [record["_lf"]["id"] for _time, record in entries]


async def test_lost_acks_make_the_sender_resend_the_same_chunk_to_the_otel_receiver(
    go_server: GoServer, spool: Spool
) -> None:
    count = 500
    entries = await fill_spool(spool, "tenant-go-lost", count)
    proxy = ObservedAckDroppingProxy("127.0.0.1", go_server.port, drop_first=2)
    await proxy.start()
    try:
        sender = Sender(
            settings([f"127.0.0.1:{proxy.port}"], ack_timeout_s=1.0),
            spool,
            node_name="node-go",
        )
        async with running(sender):
            await drained(spool, timeout_s=30)
    finally:
        await proxy.stop()

    assert sender.stats.records_acked == count  # everything ended acked and committed
    chunks = count // BATCH
    assert proxy.acks_dropped == 2
    dropped = [chunk for chunk in proxy.dropped_chunks if isinstance(chunk, str)]
    assert dropped == proxy.dropped_chunks  # the receiver acks with the chunk id as str
    # The server acks one chunk at a time in arrival order: the first two sent lost their ack.
    assert dropped == proxy.sent_chunks[:2]
    sends = Counter(proxy.sent_chunks)
    assert len(sends) == chunks
    # Resent under the very same chunk id; the chunks that were acked were sent once.
    assert {chunk: n for chunk, n in sends.items() if n > 1} == dict.fromkeys(dropped, 2)
    assert sender.stats.retried.total() == 2

    # The receiver took in the dropped chunks twice (same _lf.ids: what dedup by id is for).
    counts = await received_ids(go_server, {r["_lf"]["id"] for _t, r in entries})
    expected: Counter[str] = Counter()
    for chunk, n in sends.items():
        for record_id in proxy.chunk_ids[chunk]:
            expected[record_id] += n
    assert counts == expected
    twice = {record_id for record_id, n in counts.items() if n == 2}
    assert twice == {i for chunk in dropped for i in proxy.chunk_ids[chunk]}
    assert len(twice) == 2 * BATCH
    assert await go_server.stop() == 0
