"""Entries are forward entries with the record identity of DESIGN.md; blocks carry them through
the spool and join into a PackedForward stream without re-encoding."""

from __future__ import annotations

import gzip

import pytest

from logferry.common.protocol import EventTime, decode_entries
from logferry.common.records import record_id
from logferry.forwarder.entries import (
    block_count,
    block_gzip,
    block_raw_size,
    block_stream,
    encode_blocks,
    kubernetes_raw,
    make_entry,
)
from logferry.forwarder.partials import MergedRecord

KUBE = kubernetes_raw({"namespace_name": "ns", "pod_name": "web-1"})


def record(offset: int, log: str = "boom", **flags: bool) -> MergedRecord:
    return MergedRecord(
        offset,
        offset + 10,
        1764100231_123456789,
        "stderr",
        log,
        flags.get("truncated", False),
        flags.get("partial_at_eof", False),
        flags.get("malformed", False),
        1,
    )


def test_entry_is_a_forward_entry_with_identity() -> None:
    entry = make_entry(record(4096, truncated=True), 17, "src0", KUBE)
    (block,) = encode_blocks([entry], per_block=10, max_bytes=1 << 20)
    ((when, body),) = decode_entries(block_stream(block))
    assert when == EventTime(1764100231, 123456789)
    assert body == {
        "log": "boom",
        "stream": "stderr",
        "kubernetes": {"namespace_name": "ns", "pod_name": "web-1"},
        "_lf": {"id": record_id("src0", 4096), "src": "src0", "seq": 17, "truncated": True},
    }
    assert (entry.seq, entry.offset, entry.time_ns) == (17, 4096, 1764100231_123456789)


def test_flags_appear_only_when_set() -> None:
    plain = make_entry(record(0), 0, "s", KUBE)
    flagged = make_entry(record(0, malformed=True, partial_at_eof=True), 0, "s", KUBE)
    (plain_block, flagged_block) = encode_blocks([plain, flagged], 1, 1 << 20)
    ((_t, plain_body),) = decode_entries(block_stream(plain_block))
    ((_t, flagged_body),) = decode_entries(block_stream(flagged_block))
    assert set(plain_body["_lf"]) == {"id", "src", "seq"}
    assert flagged_body["_lf"]["malformed"] is True
    assert flagged_body["_lf"]["partial_at_eof"] is True


@pytest.mark.parametrize(
    ("count", "per_block"), [(0, 5), (1, 5), (15, 100), (16, 100), (70_000, 100_000), (12, 5)]
)
def test_blocks_split_count_and_concatenate_into_one_gzip_stream(
    count: int, per_block: int
) -> None:
    entries = [make_entry(record(n * 10, f"line {n}"), n, "src", KUBE) for n in range(count)]
    blocks = encode_blocks(entries, per_block, 1 << 30)
    assert [block_count(b) for b in blocks] == [
        min(per_block, count - i) for i in range(0, count, per_block)
    ]
    # What the sender does: concatenate the gzip members; what a receiver does: gunzip them all.
    members = b"".join(block_gzip(b) for b in blocks)
    stream = gzip.decompress(members) if count else b""
    assert sum(block_raw_size(b) for b in blocks) == len(stream)
    decoded = decode_entries(stream) if count else []
    assert [body["_lf"]["seq"] for _t, body in decoded] == list(range(count))
    assert [body["log"] for _t, body in decoded] == [f"line {n}" for n in range(count)]


def test_blocks_stay_under_the_byte_cap_unless_one_entry_is_larger() -> None:
    sizes = [10, 10, 5000, 10, 10, 10, 10]
    entries = [make_entry(record(n, "x" * size), n, "s", KUBE) for n, size in enumerate(sizes)]
    blocks = encode_blocks(entries, per_block=100, max_bytes=1000)
    assert sum(block_count(b) for b in blocks) == len(entries)
    for block in blocks:
        assert block_raw_size(block) <= 1000 or block_count(block) == 1
    logs = [body["log"] for b in blocks for _t, body in decode_entries(block_stream(b))]
    assert logs == ["x" * size for size in sizes]
