"""The chaos suite's fault-injecting proxies, over real sockets on 127.0.0.1.

AckDroppingProxy runs in front of a small asyncio stand-in for the aggregator, BulkFaultProxy
in front of a small aiohttp stand-in for OpenSearch, so these tests need no Java.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import orjson
import pytest
from aiohttp import web

from tests.support.ack_dropping_proxy import AckDroppingProxy
from tests.support.bulk_fault_proxy import BulkFaultProxy, filter_path, parse_bulk
from tests.support.net import free_port, wait_until

# --------------------------------------------------------------------------------------------
# AckDroppingProxy
# --------------------------------------------------------------------------------------------

# Like a Forward server's HELO: nonce and auth as bin, which a re-pack could alter.
HELO = msgpack.packb(
    ["HELO", {"nonce": b"\x00\xffnonce", "auth": b"", "keepalive": True}], use_bin_type=True
)


def ack(chunk: str) -> bytes:
    return bytes(msgpack.packb({"ack": chunk}, use_bin_type=True))


def message(chunk: str) -> bytes:
    return bytes(
        msgpack.packb(["app.log", [[1, {"log": chunk}]], {"chunk": chunk}], use_bin_type=True)
    )


class FakeAggregator:
    """Acks every ``[tag, entries, {"chunk": id}]`` it receives, ``burst`` acks per write.

    With ``auto_ack`` off it only records; a test then writes raw bytes through ``writers``.
    """

    def __init__(self, *, helo: bytes | None = None, burst: int = 1, auto_ack: bool = True) -> None:
        self.port = free_port()
        self.helo = helo
        self.burst = burst
        self.auto_ack = auto_ack
        self.chunks: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        if self.helo is not None:
            writer.write(self.helo)
        unpacker = msgpack.Unpacker(raw=False)
        pending: list[bytes] = []
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                unpacker.feed(data)
                for _tag, _entries, option in unpacker:
                    self.chunks.append(option["chunk"])
                    if self.auto_ack:
                        pending.append(ack(option["chunk"]))
                    if len(pending) >= self.burst:
                        # Several acks in one write: the proxy must split them itself.
                        writer.write(b"".join(pending))
                        pending.clear()
                await writer.drain()


class RawClient:
    """A Forward client reduced to bytes: sends messages, decodes whatever comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.unpacker = msgpack.Unpacker(raw=False)

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, *chunks: str) -> None:
        self.writer.write(b"".join(message(chunk) for chunk in chunks))
        await self.writer.drain()

    async def next_message(self, timeout_s: float = 5.0) -> Any:
        async with asyncio.timeout(timeout_s):
            while True:
                for item in self.unpacker:
                    return item
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionResetError("proxy closed the connection")
                self.unpacker.feed(data)

    async def acks(self, count: int) -> list[str]:
        return [(await self.next_message())["ack"] for _ in range(count)]

    async def assert_silent(self, timeout_s: float = 0.3) -> None:
        """Nothing more arrives (a negative check can only be bounded by a timeout)."""
        with pytest.raises(TimeoutError):
            await self.next_message(timeout_s)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def started(server: FakeAggregator) -> tuple[FakeAggregator, AckDroppingProxy]:
    await server.start()
    proxy = AckDroppingProxy("127.0.0.1", server.port)
    await proxy.start()
    return server, proxy


@pytest.fixture
async def ack_setup() -> AsyncIterator[tuple[FakeAggregator, AckDroppingProxy]]:
    server, proxy = await started(FakeAggregator(helo=HELO, burst=2))
    yield server, proxy
    await proxy.stop()
    await server.stop()


async def test_acks_and_helo_pass_unchanged_when_off(
    ack_setup: tuple[FakeAggregator, AckDroppingProxy],
) -> None:
    _server, proxy = ack_setup
    client = await RawClient.connect(proxy.port)
    # The handshake array reaches the client byte for byte, bin fields still bin.
    assert await asyncio.wait_for(client.reader.readexactly(len(HELO)), 5) == HELO
    await client.send("c0", "c1", "c2", "c3")
    assert await client.acks(4) == ["c0", "c1", "c2", "c3"]
    assert (proxy.connections, proxy.acks_seen, proxy.acks_dropped) == (1, 4, 0)
    await client.close()


async def test_drop_all_starves_the_client_until_it_resends(
    ack_setup: tuple[FakeAggregator, AckDroppingProxy],
) -> None:
    server, proxy = ack_setup
    server.burst = 1
    proxy.drop_all = True
    client = await RawClient.connect(proxy.port)
    assert (await client.next_message())[0] == "HELO"  # not an ack: never dropped
    await client.send("c0")

    async def swallowed() -> bool:
        return proxy.acks_dropped == 1

    await wait_until(swallowed, timeout_s=5, what="the ack to be swallowed")
    await client.assert_silent()
    # The client times out and resends the same chunk; now the ack gets through.
    proxy.drop_all = False
    await client.send("c0")
    assert await client.acks(1) == ["c0"]
    assert server.chunks == ["c0", "c0"]
    assert (proxy.acks_seen, proxy.acks_dropped, proxy.dropped_chunks) == (2, 1, ["c0"])
    await client.close()


async def test_drop_every_nth_ack(ack_setup: tuple[FakeAggregator, AckDroppingProxy]) -> None:
    _server, proxy = ack_setup
    proxy.drop_every = 3
    client = await RawClient.connect(proxy.port)
    assert (await client.next_message())[0] == "HELO"
    chunks = [f"c{n}" for n in range(12)]
    await client.send(*chunks)
    kept = [chunk for n, chunk in enumerate(chunks) if (n + 1) % 3]
    assert await client.acks(len(kept)) == kept

    async def all_seen() -> bool:
        return proxy.acks_seen == 12

    await wait_until(all_seen, timeout_s=5, what="all 12 acks to reach the proxy")
    await client.assert_silent()
    assert proxy.acks_dropped == 4
    assert proxy.dropped_chunks == ["c2", "c5", "c8", "c11"]
    await client.close()


async def test_acks_split_across_reads() -> None:
    server, proxy = await started(FakeAggregator(auto_ack=False))
    try:
        proxy.drop_every = 3
        client = await RawClient.connect(proxy.port)
        await client.send("probe")  # the stand-in learns of the connection through it

        async def connected() -> bool:
            return server.chunks == ["probe"]

        await wait_until(connected, timeout_s=5, what="the connection to reach the server")
        (upstream,) = server.writers
        first, second, third = ack("a1"), ack("a2"), ack("a3")
        # a2 and a3 each straddle two writes. The client seeing a1 proves the proxy read the
        # first write, so the second write necessarily arrives in a later read.
        upstream.write(first + second[:3])
        assert await client.acks(1) == ["a1"]
        upstream.write(second[3:] + third[:2])
        assert await client.acks(1) == ["a2"]

        async def second_seen() -> bool:
            return proxy.acks_seen == 2

        await wait_until(second_seen, timeout_s=5, what="a2 to be counted")
        upstream.write(third[2:])

        async def dropped() -> bool:
            return proxy.acks_dropped == 1

        await wait_until(dropped, timeout_s=5, what="a3, the third ack, to be dropped")
        await client.assert_silent()
        assert proxy.dropped_chunks == ["a3"]
        await client.close()
    finally:
        await proxy.stop()
        await server.stop()


async def test_each_connection_counts_and_policy_spans_connections(
    ack_setup: tuple[FakeAggregator, AckDroppingProxy],
) -> None:
    server, proxy = ack_setup
    server.burst = 1
    proxy.drop_every = 2
    first = await RawClient.connect(proxy.port)
    assert (await first.next_message())[0] == "HELO"
    await first.send("x0")
    assert await first.acks(1) == ["x0"]
    second = await RawClient.connect(proxy.port)
    assert (await second.next_message())[0] == "HELO"
    await second.send("y0", "y1")
    assert await second.acks(1) == ["y1"]  # y0 was the 2nd ack overall
    assert (proxy.connections, proxy.acks_seen, proxy.dropped_chunks) == (2, 3, ["y0"])
    await first.close()
    await second.close()


# --------------------------------------------------------------------------------------------
# BulkFaultProxy
# --------------------------------------------------------------------------------------------

# What the aggregator's bulk client asks for (logferry.aggregator.outputs.bulk_client).
AGGREGATOR_FILTER = "errors,items.*.status,items.*.error"


class FakeStore:
    """An OpenSearch stand-in: ``_bulk`` creates everything; other requests are echoed."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bulks: list[tuple[str, dict[str, str], bytes]] = []  # path_qs, headers, body
        self.requests: list[tuple[str, str]] = []  # method, path_qs
        self.encodings: list[str | None] = []  # Content-Encoding of each request
        self._runner: web.AppRunner | None = None
        self._seq_no = 0
        self.bulk_status = 200  # anything else fails every _bulk request as a whole

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, request.path_qs))
        self.encodings.append(request.headers.get("Content-Encoding"))
        if request.path.endswith("/_bulk"):
            self.bulks.append((request.path_qs, dict(request.headers), body))
            if self.bulk_status != 200:
                error = {"type": "es_rejected_execution_exception", "reason": "busy"}
                return web.json_response({"error": error}, status=self.bulk_status)
            return self._bulk(request.path, body)
        if request.path == "/missing":
            error = {"type": "index_not_found_exception", "reason": "no such index [missing]"}
            return web.json_response({"error": error, "status": 404}, status=404)
        echo = {"method": request.method, "path": request.raw_path, "body": body.decode()}
        return web.json_response(echo, status=200, headers={"X-Store": "fake"})

    def _bulk(self, path: str, body: bytes) -> web.Response:
        items = parse_bulk(body)
        assert items is not None, body
        index = path.strip("/").split("/")[0] if path.count("/") == 2 else None
        results = []
        for item in items:
            self._seq_no += 1
            results.append(
                {
                    item.action: {
                        "_index": item.meta.get("_index", index),
                        "_id": item.doc_id,
                        "_version": 1,
                        "result": "created",
                        "_shards": {"total": 1, "successful": 1, "failed": 0},
                        "_seq_no": self._seq_no,
                        "_primary_term": 1,
                        "status": 201,
                    }
                }
            )
        return web.json_response({"took": 3, "errors": False, "items": results})


def bulk_body(*docs: tuple[str, dict[str, Any]], index: str | None = "logs-a") -> bytes:
    lines = []
    for doc_id, source in docs:
        meta: dict[str, Any] = (
            {"_id": doc_id} if index is None else {"_index": index, "_id": doc_id}
        )
        lines += [orjson.dumps({"create": meta}), orjson.dumps(source)]
    return b"\n".join(lines) + b"\n"


def sent_ids(body: bytes) -> list[str]:
    items = parse_bulk(body)
    assert items is not None
    return [item.doc_id for item in items]


def statuses(response: dict[str, Any]) -> list[int]:
    return [entry["create"]["status"] for entry in response["items"]]


@pytest.fixture
async def bulk_setup() -> AsyncIterator[tuple[FakeStore, BulkFaultProxy]]:
    store = FakeStore()
    await store.start()
    proxy = BulkFaultProxy(store.url)
    await proxy.start()
    yield store, proxy
    await proxy.stop()
    await store.stop()


async def post_bulk(
    url: str, body: bytes, *, path: str = "/_bulk", gzipped: bool = False
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/x-ndjson"}
    if gzipped:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, data=body, headers=headers) as response,
    ):
        return response.status, orjson.loads(await response.read())


DOCS = [(f"d{n}", {"x": n}) for n in range(6)]


async def test_bulk_without_faults_is_relayed(
    bulk_setup: tuple[FakeStore, BulkFaultProxy],
) -> None:
    store, proxy = bulk_setup
    status, response = await post_bulk(proxy.url, bulk_body(*DOCS))
    assert status == 200
    assert response["errors"] is False
    assert [entry["create"]["_id"] for entry in response["items"]] == [d for d, _ in DOCS]
    assert statuses(response) == [201] * 6
    ((_path, _headers, body),) = store.bulks
    assert body == bulk_body(*DOCS)  # byte for byte
    assert (proxy.bulk_requests, proxy.items_seen, proxy.items_429, proxy.items_400) == (1, 6, 0, 0)


async def test_failed_items_stay_out_of_the_store_and_keep_their_place(
    bulk_setup: tuple[FakeStore, BulkFaultProxy],
) -> None:
    store, proxy = bulk_setup
    proxy.fail_429_every = 3  # d2 and d5
    proxy.fail_400_ids = {"d1"}
    proxy.fail_400 = lambda doc_id, source: source.get("x") == 4  # d4
    status, response = await post_bulk(proxy.url, bulk_body(*DOCS))
    assert status == 200
    assert response["errors"] is True
    assert [entry["create"]["_id"] for entry in response["items"]] == [d for d, _ in DOCS]
    assert statuses(response) == [201, 400, 429, 201, 400, 429]
    assert sent_ids(store.bulks[0][2]) == ["d0", "d3"]
    rejected = response["items"][1]["create"]
    assert rejected["_index"] == "logs-a"
    assert rejected["error"]["type"] == "mapper_parsing_exception"
    assert rejected["error"]["reason"].startswith("failed to parse field [x] of type [long]")
    busy = response["items"][2]["create"]
    assert busy["error"]["type"] == "es_rejected_execution_exception"
    assert "result" not in busy
    assert "_version" not in busy
    assert response["items"][0]["create"]["result"] == "created"  # the store's own answer
    assert (proxy.items_seen, proxy.items_429, proxy.items_400) == (6, 2, 2)
    assert proxy.failed_ids_400 == {"d1", "d4"}


async def test_429_counting_runs_across_requests(
    bulk_setup: tuple[FakeStore, BulkFaultProxy],
) -> None:
    _store, proxy = bulk_setup
    proxy.fail_429_every = 4
    _, first = await post_bulk(proxy.url, bulk_body(*DOCS[:3]))
    _, second = await post_bulk(proxy.url, bulk_body(*DOCS[3:]))
    assert statuses(first) == [201, 201, 201]
    assert statuses(second) == [429, 201, 201]
    assert proxy.bulk_requests == 2


async def test_gzip_body_is_decompressed_for_the_store(
    bulk_setup: tuple[FakeStore, BulkFaultProxy],
) -> None:
    store, proxy = bulk_setup
    proxy.fail_400_ids = {"d0"}
    status, response = await post_bulk(proxy.url, bulk_body(*DOCS[:3]), gzipped=True)
    assert status == 200
    assert statuses(response) == [400, 201, 201]
    ((_path, headers, body),) = store.bulks
    assert "Content-Encoding" not in headers
    assert body == bulk_body(*DOCS[1:3])
    assert proxy.failed_ids_400 == {"d0"}


async def test_all_items_failed_never_calls_the_store(
    bulk_setup: tuple[FakeStore, BulkFaultProxy],
) -> None:
    store, proxy = bulk_setup
    proxy.fail_400 = lambda doc_id, source: True
    status, response = await post_bulk(proxy.url, bulk_body(*DOCS[:2]))
    assert status == 200
    assert response["errors"] is True
    assert statuses(response) == [400, 400]
    assert isinstance(response["took"], int)
    assert store.requests == []


async def test_filter_path_shapes_the_merged_response(
    bulk_setup: tuple[FakeStore, BulkFaultProxy],
) -> None:
    store, proxy = bulk_setup
    proxy.fail_429_every = 2
    path = f"/logs-b/_bulk?filter_path={AGGREGATOR_FILTER}&refresh=wait_for"
    status, response = await post_bulk(
        proxy.url, bulk_body(*DOCS[:3], index=None), path=path, gzipped=True
    )
    assert status == 200
    # Exactly what the store returns for this filter: no took, no _index/_id/result.
    assert response == {
        "errors": True,
        "items": [
            {"create": {"status": 201}},
            {
                "create": {
                    "status": 429,
                    "error": {
                        "type": "es_rejected_execution_exception",
                        "reason": response["items"][1]["create"]["error"]["reason"],
                    },
                }
            },
            {"create": {"status": 201}},
        ],
    }
    # The store saw the index path and other parameters; the proxy needs its full answer.
    ((path_qs, _headers, body),) = store.bulks
    assert path_qs == "/logs-b/_bulk?refresh=wait_for"
    assert sent_ids(body) == ["d0", "d2"]


async def test_index_from_the_path_names_synthetic_errors(
    bulk_setup: tuple[FakeStore, BulkFaultProxy],
) -> None:
    _store, proxy = bulk_setup
    proxy.fail_400_ids = {"d1"}
    _, response = await post_bulk(proxy.url, bulk_body(*DOCS[:2], index=None), path="/logs-c/_bulk")
    assert response["items"][1] == {
        "create": {
            "_index": "logs-c",
            "_id": "d1",
            "status": 400,
            "error": response["items"][1]["create"]["error"],
        }
    }


async def test_other_requests_pass_through(bulk_setup: tuple[FakeStore, BulkFaultProxy]) -> None:
    store, proxy = bulk_setup
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/logs-a/_search?q=x%20y") as response:
            assert response.status == 200
            assert response.headers["X-Store"] == "fake"
            assert await response.json() == {
                "method": "GET",
                "path": "/logs-a/_search?q=x%20y",
                "body": "",
            }
        async with session.put(proxy.url + "/logs-a", json={"settings": {}}) as response:
            assert (await response.json())["body"] == '{"settings": {}}'
        async with session.get(proxy.url + "/missing") as response:
            assert response.status == 404
            assert (await response.json())["error"]["type"] == "index_not_found_exception"
    assert [method for method, _ in store.requests] == ["GET", "PUT", "GET"]
    assert proxy.bulk_requests == 0


async def test_down_answers_503_without_the_store(
    bulk_setup: tuple[FakeStore, BulkFaultProxy],
) -> None:
    store, proxy = bulk_setup
    proxy.down = True
    status, _ = await post_bulk(proxy.url, bulk_body(*DOCS[:1]))
    assert status == 503
    proxy.down = False
    status, _ = await post_bulk(proxy.url, bulk_body(*DOCS[:1]))
    assert status == 200
    assert len(store.bulks) == 1


async def test_whole_request_failure_is_relayed(
    bulk_setup: tuple[FakeStore, BulkFaultProxy],
) -> None:
    store, proxy = bulk_setup
    store.bulk_status = 429
    proxy.fail_400_ids = {"d0"}
    status, response = await post_bulk(proxy.url, bulk_body(*DOCS[:2]))
    # The client must see the store's own answer and resend everything, d0 included.
    assert status == 429
    assert response["error"]["reason"] == "busy"


async def test_gzip_on_other_requests_is_relayed_as_sent(
    bulk_setup: tuple[FakeStore, BulkFaultProxy],
) -> None:
    store, proxy = bulk_setup
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            proxy.url + "/logs-a/_doc/1", data=gzip.compress(b'{"a":1}'), headers=headers
        ) as response,
    ):
        assert (await response.json())["body"] == '{"a":1}'  # the stand-in decompressed it
    assert store.requests == [("POST", "/logs-a/_doc/1")]
    assert store.encodings == ["gzip"]


def test_parse_bulk_actions() -> None:
    body = (
        b'{"index":{"_index":"i","_id":"1"}}\n{"a":1}\n'
        b'{"delete":{"_index":"i","_id":"2"}}\n'
        b'{"update":{"_index":"i","_id":"3"}}\n{"doc":{"a":2}}\n'
    )
    items = parse_bulk(body)
    assert items is not None
    assert [(item.action, item.doc_id, len(item.lines)) for item in items] == [
        ("index", "1", 2),
        ("delete", "2", 1),
        ("update", "3", 2),
    ]
    assert items[2].source() == {"doc": {"a": 2}}
    assert parse_bulk(b'{"bogus":{}}\n{}\n') is None
    assert parse_bulk(b'{"create":{"_id":"1"}}\n') is None  # source line missing


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            AGGREGATOR_FILTER,
            {
                "errors": True,
                "items": [
                    {"create": {"status": 201}},
                    {"create": {"status": 400, "error": {"type": "m", "reason": "r"}}},
                    {"delete": {"status": 404}},
                ],
            },
        ),
        # Elements left empty disappear, as OpenSearch does (the array shrinks).
        ("items.*.error", {"items": [{"create": {"error": {"type": "m", "reason": "r"}}}]}),
        ("**.type", {"items": [{"create": {"error": {"type": "m"}}}]}),
        ("took,-items", {"took": 5}),
        (
            "-items.*._id,-took",
            {
                "errors": True,
                "items": [
                    {"create": {"_index": "i", "status": 201}},
                    {
                        "create": {
                            "_index": "i",
                            "status": 400,
                            "error": {"type": "m", "reason": "r"},
                        }
                    },
                    {"delete": {"_index": "i", "status": 404}},
                ],
            },
        ),
        ("nothing", {}),
    ],
)
def test_filter_path(spec: str, expected: dict[str, Any]) -> None:
    full = {
        "took": 5,
        "errors": True,
        "items": [
            {"create": {"_index": "i", "_id": "1", "status": 201}},
            {
                "create": {
                    "_index": "i",
                    "_id": "2",
                    "status": 400,
                    "error": {"type": "m", "reason": "r"},
                }
            },
            {"delete": {"_index": "i", "_id": "3", "status": 404}},
        ],
    }
    assert filter_path(full, spec) == expected
