"""Compressed spool fragments: flushed deflate pieces that join into one gzip body without
compressing again (CRC-32 combined, ISIZE modulo 2**32), fragments stored compressed by
ingest and read back by every output, and fragments written before compression still read
and delivered."""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import os
import random
import struct
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from logferry.aggregator import documents as documents_module
from logferry.aggregator.dlq import DeadLetterQueue
from logferry.aggregator.documents import (
    count_documents,
    fragment_ndjson,
    fragment_size,
    gzip_body,
    is_deflated,
    ndjson_body,
    pack_fragment,
    render_fragment,
    split_fragment,
)
from logferry.aggregator.ingest import Ingest
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs import (
    BulkOutput,
    BulkOutputSettings,
    FileOutput,
    FileOutputSettings,
    NullOutput,
    NullOutputSettings,
)
from logferry.aggregator.outputs.dead_letters import malformed_fragment
from logferry.aggregator.render import Receipt
from logferry.aggregator.spools import AggregatorSpoolSettings, TenantSpools
from logferry.common import deflate
from logferry.common.deflate import (
    DeflatePiece,
    crc32,
    crc32_combine,
    crc32_combine_py,
    deflate_flushed,
    gzip_from_pieces,
    gzip_trailer,
    inflate_flushed,
)
from logferry.common.naming import IndexNamer
from logferry.common.protocol import EventMessage, Mode
from logferry.common.spool import Spool, SpoolBatch
from tests.support.fake_bulk_store import fake_store
from tests.support.output_drain import drain_until, make_docs, open_spool, sample

T0 = 1764115199
GiB = 1 << 30


def piece(data: bytes) -> DeflatePiece:
    return DeflatePiece(deflate_flushed(data), crc32(data), len(data))


def realistic_ndjson(count: int, start: int = 0) -> bytes:
    return render_fragment(
        make_docs("logs-a-2026.11.25", count, start=start, pod="web-7d9f", level="info")
    )


# ---------------------------------------------------------------- CRC-32 combine


def _libz_combine() -> Any:
    name = ctypes.util.find_library("z")
    if name is None:
        pytest.skip("no libz to compare with")
    combine = ctypes.CDLL(name).crc32_combine
    combine.restype = ctypes.c_ulong
    combine.argtypes = [ctypes.c_ulong, ctypes.c_ulong, ctypes.c_long]
    return combine


def test_combine_gives_the_crc_of_the_concatenation() -> None:
    rng = random.Random(17)
    for _ in range(200):
        a = rng.randbytes(rng.randrange(0, 300))
        b = rng.randbytes(rng.randrange(0, 300))
        whole = crc32(a + b)
        assert crc32_combine_py(crc32(a), crc32(b), len(b)) == whole
        assert crc32_combine(crc32(a), crc32(b), len(b)) == whole


def test_combine_agrees_with_zlib_for_lengths_past_4_gib() -> None:
    libz_combine = _libz_combine()
    rng = random.Random(4)
    lengths = [0, 1, 2**32 - 1, 2**32, 2**32 + 5, 5 * GiB, 2**40 + 3, 2**50 - 1]
    lengths += [rng.getrandbits(48) for _ in range(50)]
    for length in lengths:
        a, b = rng.getrandbits(32), rng.getrandbits(32)
        expected = libz_combine(a, b, length)
        assert crc32_combine_py(a, b, length) == expected, length
        assert crc32_combine(a, b, length) == expected, length


def test_combine_over_a_run_of_more_than_4_gib_is_associative() -> None:
    # CRC-32 of 2**32 + 1024 zero bytes, by doubling a small run: no 4 GiB buffer needed.
    crc, size = crc32(bytes(1024)), 1024
    while size < 2**32:
        crc, size = crc32_combine_py(crc, crc, size), size * 2
    crc, size = crc32_combine_py(crc, crc32(bytes(1024)), 1024), size + 1024
    assert size == 2**32 + 1024
    head, tail = b"head", b"tail"
    left = crc32_combine_py(crc32_combine_py(crc32(head), crc, size), crc32(tail), len(tail))
    right = crc32_combine_py(crc32(head), crc32_combine_py(crc, crc32(tail), len(tail)), size + 4)
    assert left == right
    assert crc32_combine(crc32(head), crc, size) == crc32_combine_py(crc32(head), crc, size)


def test_combine_refuses_a_negative_length() -> None:
    with pytest.raises(ValueError, match="negative"):
        crc32_combine_py(1, 2, -1)


def test_isize_is_the_length_modulo_2_32() -> None:
    assert gzip_trailer(0xDEADBEEF, 2**32 + 5) == struct.pack("<II", 0xDEADBEEF, 5)
    assert gzip_trailer(1, 2**32 - 1) == struct.pack("<II", 1, 2**32 - 1)
    assert gzip_trailer(1, 3 * 2**32) == struct.pack("<II", 1, 0)


# ------------------------------------------------------------- gzip from pieces


def _both_ways(body: bytes) -> bytes:
    by_gzip = gzip.decompress(body)
    inflater = zlib.decompressobj(31)
    by_zlib = inflater.decompress(body) + inflater.flush()
    assert inflater.eof
    assert not inflater.unused_data
    assert by_gzip == by_zlib
    return by_gzip


def test_pieces_join_into_one_gzip_member_of_their_concatenation() -> None:
    rng = random.Random(9)
    datas = [realistic_ndjson(rng.randrange(1, 40), start=n * 100) for n in range(300)]
    datas += [b"", b"\n", b"x", rng.randbytes(70_000), b"", bytes(200_000)]
    rng.shuffle(datas)
    body = gzip_from_pieces(piece(data) for data in datas)
    assert _both_ways(body) == b"".join(datas)


def test_no_pieces_and_only_empty_pieces_are_an_empty_member() -> None:
    assert _both_ways(gzip_from_pieces([])) == b""
    assert _both_ways(gzip_from_pieces([piece(b""), piece(b"")])) == b""


def test_a_piece_inflates_only_to_exactly_its_bytes() -> None:
    data = realistic_ndjson(20)
    flushed = deflate_flushed(data)
    assert inflate_flushed(flushed, len(data)) == data
    for damaged in (flushed[:-4], flushed + b"\x00", flushed + deflate_flushed(b"x"), b"\xff"):
        with pytest.raises(ValueError, match="deflate data"):
            inflate_flushed(damaged, len(data))
    with pytest.raises(ValueError, match="more or less"):
        inflate_flushed(flushed, len(data) - 1)


def test_pieces_are_the_same_with_zlib_as_with_isal(monkeypatch: pytest.MonkeyPatch) -> None:
    data = realistic_ndjson(30)
    monkeypatch.setattr(deflate, "_impl", zlib)
    monkeypatch.setattr(deflate, "_impl_combine", None)
    by_zlib = piece(data)
    monkeypatch.undo()
    body = gzip_from_pieces([by_zlib, piece(data)])
    assert _both_ways(body) == data + data


# ------------------------------------------------------------------ fragments


def test_a_compressed_fragment_says_so_and_counts_without_inflating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ndjson = realistic_ndjson(50)
    fragment = pack_fragment(ndjson, 50, "deflate")
    assert fragment[:1] == b"\xf5"
    assert ndjson[:1] == b"{"
    assert is_deflated(fragment)
    assert not is_deflated(ndjson)
    assert len(fragment) < len(ndjson) / 3

    def no_inflating(*_: Any) -> bytes:
        raise AssertionError("inflated")

    monkeypatch.setattr(documents_module, "inflate_flushed", no_inflating)
    assert count_documents(fragment) == 50
    assert fragment_size(fragment) == len(ndjson)
    monkeypatch.undo()
    assert fragment_ndjson(fragment) == ndjson
    assert split_fragment(fragment) == split_fragment(ndjson)


def test_compression_none_stores_the_ndjson_as_it_is() -> None:
    ndjson = realistic_ndjson(5)
    assert pack_fragment(ndjson, 5, "none") is ndjson
    assert render_fragment(make_docs("logs-a", 3)) == fragment_ndjson(
        render_fragment(make_docs("logs-a", 3), "deflate")
    )


def test_an_old_uncompressed_fragment_reads_as_before() -> None:
    old = realistic_ndjson(7)
    assert fragment_ndjson(old) is old
    assert count_documents(old) == 7
    assert fragment_size(old) == len(old)
    assert [doc.doc_id for doc in split_fragment(old)] == [
        f"logs-a-2026.11.25-{n}" for n in range(7)
    ]


def test_a_damaged_compressed_fragment_is_refused_not_misread() -> None:
    ndjson = realistic_ndjson(10)
    fragment = bytearray(pack_fragment(ndjson, 10, "deflate"))
    wrong_count = bytes(fragment[:9]) + struct.pack("<I", 11) + bytes(fragment[13:])
    with pytest.raises(ValueError, match="documents it counts"):
        split_fragment(wrong_count)
    wrong_crc = bytes(fragment[:5]) + bytes(4) + bytes(fragment[9:])
    with pytest.raises(ValueError, match="CRC"):
        split_fragment(wrong_crc)
    with pytest.raises(ValueError, match="shorter than its header"):
        split_fragment(bytes(fragment[:8]))
    fragment[len(fragment) // 2] ^= 0xFF
    with pytest.raises(ValueError, match=r"deflate data|CRC"):
        split_fragment(bytes(fragment))


def test_a_malformed_fragment_letter_holds_its_ndjson() -> None:
    odd = b'{"create":{}}\n{"a":1}\n{"create":{}}\n'
    compressed = pack_fragment(odd, 1, "deflate")
    letter = malformed_fragment("a", compressed, AggregatorMetrics(), "odd line count")
    assert letter.source == odd
    assert letter.reason == "malformed_fragment: odd line count"


def test_bodies_of_old_and_compressed_fragments_mixed() -> None:
    ndjsons = [realistic_ndjson(n + 1, start=100 * n) for n in range(20)]
    fragments = [
        pack_fragment(nd, nd.count(b"\n") // 2, "deflate" if n % 3 else "none")
        for n, nd in enumerate(ndjsons)
    ]
    assert _both_ways(gzip_body(fragments)) == b"".join(ndjsons)
    assert _both_ways(gzip_body(ndjsons)) == b"".join(ndjsons)  # all old: one stream
    assert ndjson_body(fragments) == b"".join(ndjsons)
    assert ndjson_body(fragments[1:2]) == ndjsons[1]


# --------------------------------------------------------------------- ingest


def make_ingest(spool_dir: Path, compression: str) -> Ingest:
    settings = AggregatorSpoolSettings(directory=spool_dir, compression=compression)  # type: ignore[arg-type]
    return Ingest(
        TenantSpools(settings),
        AggregatorMetrics(),
        namer=IndexNamer("logs"),
        default_tenant="_default",
        instance="agg-0/1/x",
        clock=lambda: T0 + 60,
    )


def a_message(count: int) -> EventMessage:
    entries = [
        (T0, {"log": f"GET /items/{n} 200", "kubernetes": {"namespace_name": "a"}})
        for n in range(count)
    ]
    return EventMessage("tag", Mode.FORWARD, entries, {}, "c1", 0)


@pytest.mark.parametrize("compression", ["deflate", "none"])
def test_ingest_stores_fragments_as_the_spool_setting_says(
    tmp_path: Path, compression: str
) -> None:
    ingest = make_ingest(tmp_path, compression)
    rendered = ingest.render(a_message(100), Receipt("i", 1, 1))
    ingest.discard(rendered)
    (parts, count), *_ = rendered.fragments.values()
    assert count == 100
    assert all(is_deflated(part) == (compression == "deflate") for part in parts)
    assert sum(count_documents(part) for part in parts) == 100


def test_the_spool_setting_defaults_to_deflate(tmp_path: Path) -> None:
    assert AggregatorSpoolSettings(directory=tmp_path).compression == "deflate"
    with pytest.raises(ValueError, match="compression"):
        AggregatorSpoolSettings(directory=tmp_path, compression="zstd")  # type: ignore[arg-type]


async def test_a_stuck_tenants_compressed_fragment_is_parked_document_by_document(
    tmp_path: Path,
) -> None:
    dlq = DeadLetterQueue(tmp_path / "dlq")
    ingest = Ingest(
        None,  # type: ignore[arg-type]  # diverting never touches the spools
        AggregatorMetrics(),
        namer=IndexNamer("logs"),
        default_tenant="_default",
        instance="agg-0/1/x",
        dlq=dlq,
        divert_stuck_after_s=1.0,
        compression="deflate",
    )
    fragment = render_fragment(make_docs("logs-a", 4), "deflate")
    assert await ingest._divert("a", [fragment])
    entries = dlq.scan().entries
    assert [entry.doc_id for entry in entries] == [f"logs-a-{n}" for n in range(4)]


# -------------------------------------------------------------------- outputs


def bulk_settings(url: str, **overrides: Any) -> BulkOutputSettings:
    values: dict[str, Any] = {
        "type": "opensearch",
        "urls": [url],
        "retry_initial_s": 0.01,
        "retry_max_s": 0.05,
        "manage_templates": False,  # the fake store answers _bulk only
    }
    values.update(overrides)
    return BulkOutputSettings(**values)


async def mixed_spool(directory: Path, total: int) -> Spool:
    """Fragments of 10 documents: old ones (uncompressed) first, then compressed ones, as
    after an upgrade with a backlog."""
    spool = await open_spool(directory)
    docs = make_docs("logs-a", total)
    half = total // 2
    await spool.append([render_fragment(docs[i : i + 10]) for i in range(0, half, 10)])
    await spool.append(
        [render_fragment(docs[i : i + 10], "deflate") for i in range(half, total, 10)]
    )
    return spool


@pytest.mark.parametrize("gzip_on", [True, False])
async def test_old_and_compressed_fragments_are_delivered_once_each(
    tmp_path: Path, gzip_on: bool
) -> None:
    metrics = AggregatorMetrics()
    spool = await mixed_spool(tmp_path / "spool", 200)

    def respond(_: int, docs: list[Any]) -> Any:
        return [(201, "")] * len(docs)

    async with fake_store(respond) as store:
        output = BulkOutput(
            bulk_settings(store.url, gzip=gzip_on), metrics, DeadLetterQueue(tmp_path / "dlq")
        )
        await output.start()
        try:
            await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
        finally:
            await output.close()
    delivered = [doc_id for request in store.requests for doc_id in request]
    assert delivered == [f"logs-a-{n}" for n in range(200)]
    assert sample(metrics, "logferry_records_out_total", tenant="a") == 200
    await spool.close()


async def test_compressed_fragments_go_out_without_compressing_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = await open_spool(tmp_path / "spool")
    docs = make_docs("logs-a", 50)
    await spool.append([render_fragment(docs[i : i + 5], "deflate") for i in range(0, 50, 5)])
    expected_bytes = sum(len(action) + len(source) + 2 for action, source in docs)

    def no_compressing(*_: Any) -> bytes:
        raise AssertionError("compressed again")

    monkeypatch.setattr(documents_module, "deflate_flushed", no_compressing)
    metrics = AggregatorMetrics()
    async with fake_store(lambda _, d: [(201, "")] * len(d)) as store:
        output = BulkOutput(bulk_settings(store.url), metrics, DeadLetterQueue(tmp_path / "dlq"))
        await output.start()
        try:
            await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
        finally:
            await output.close()
    assert [doc_id for request in store.requests for doc_id in request] == [
        f"logs-a-{n}" for n in range(50)
    ]
    assert sample(metrics, "logferry_bytes_out_total", tenant="a") == expected_bytes
    await spool.close()


async def test_a_partial_failure_of_compressed_fragments_resends_and_dead_letters_by_document(
    tmp_path: Path,
) -> None:
    seen: set[str] = set()

    def respond(_: int, docs: list[Any]) -> Any:
        answer = []
        for action, source in docs:
            doc_id = action["create"]["_id"]
            if source["n"] % 7 == 0:
                answer.append((400, "mapper_parsing_exception"))
            elif source["n"] % 5 == 0 and doc_id not in seen:
                answer.append((429, "es_rejected_execution_exception"))
            else:
                answer.append((201, ""))
            seen.add(doc_id)
        return answer

    spool = await open_spool(tmp_path / "spool")
    docs = make_docs("logs-a", 40)
    await spool.append([render_fragment(docs[i : i + 8], "deflate") for i in range(0, 40, 8)])
    dlq = DeadLetterQueue(tmp_path / "dlq")
    metrics = AggregatorMetrics()
    async with fake_store(respond) as store:
        output = BulkOutput(bulk_settings(store.url), metrics, dlq)
        await output.start()
        try:
            await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
        finally:
            await output.close()
    refused = [n for n in range(40) if n % 7 == 0]
    retried = [f"logs-a-{n}" for n in range(40) if n % 5 == 0 and n % 7]
    assert store.requests[1] == retried  # only the held items, from the inflated fragments
    entries = dlq.scan().entries
    assert [entry.doc_id for entry in entries] == [f"logs-a-{n}" for n in refused]
    assert [orjson.loads(entry.source)["n"] for entry in entries] == refused
    assert sample(metrics, "logferry_records_out_total", tenant="a") == 40 - len(refused)
    await spool.close()


async def test_the_file_and_null_outputs_read_old_and_compressed_fragments(
    tmp_path: Path,
) -> None:
    metrics = AggregatorMetrics()
    spool = await mixed_spool(tmp_path / "spool", 60)
    output = FileOutput(
        FileOutputSettings(type="file", directory=tmp_path / "out"),
        metrics,
        DeadLetterQueue(tmp_path / "dlq"),
    )
    await output.start()
    await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
    (name,) = os.listdir(tmp_path / "out" / "logs-a")
    lines = (tmp_path / "out" / "logs-a" / name).read_bytes().splitlines()
    assert [orjson.loads(line)["n"] for line in lines] == list(range(60))
    await spool.close()

    counted = AggregatorMetrics()
    spool = await mixed_spool(tmp_path / "spool2", 60)
    null = NullOutput(NullOutputSettings(type="null"), counted)
    await drain_until(null, "a", spool, lambda: spool.records_pending == 0)
    assert sample(counted, "logferry_records_out_total", tenant="a") == 60
    ndjson_bytes = sum(len(a) + len(s) + 2 for a, s in make_docs("logs-a", 60))
    assert sample(counted, "logferry_bytes_out_total", tenant="a") == ndjson_bytes
    await spool.close()


async def test_a_batch_is_bounded_by_what_its_fragments_inflate_to(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "spool")
    docs = make_docs("logs-a", 40, filler="y" * 100)
    fragments = [render_fragment(docs[i : i + 4], "deflate") for i in range(0, 40, 4)]
    assert all(len(f) < 400 < fragment_size(f) < 1024 for f in fragments)
    await spool.append(fragments)
    sizes: list[int] = []
    real_commit = spool.commit

    def commit(batch: SpoolBatch) -> None:
        sizes.append(len(batch.records))
        real_commit(batch)

    spool.commit = commit  # type: ignore[method-assign]
    null = NullOutput(NullOutputSettings(type="null", batch_max_bytes=1024), AggregatorMetrics())
    await drain_until(null, "a", spool, lambda: spool.records_pending == 0)
    assert sizes == [1] * 10  # two would inflate past 1 KiB, though they are small on disk
    await spool.close()
