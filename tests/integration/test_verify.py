"""``logferry verify`` against a real OpenSearch node: documents shaped like the aggregator's
(logferry's index template, ``_id`` = ``_lf.id``) for sources that are complete, gappy,
duplicated, partly dead-lettered, declared by positions or a manifest, and in indices made by
dynamic mapping before the template existed; exact numbers through the Python API and the
exit code of the CLI run as a real process.

Each test writes its own indices (the node is shared by the session).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from devtools.opensearch_node import OpenSearchNode
from logferry.aggregator.dlq import DeadLetter, encode_letter
from logferry.common.records import record_id, source_id
from logferry.common.store_access import StoreAccess
from logferry.forwarder.positions import PositionStore, SourceState
from logferry.store.client import open_store
from logferry.tools.verify import VerifyOptions, verify
from tests.support.commands import run_module
from tests.support.seeded_store import (
    NODE,
    Store,
    accounting,
    checkpoint,
    document,
    joined,
    pod_log,
)

pytestmark = pytest.mark.integration


async def run_cli(*args: str) -> tuple[int, str, str]:
    return await run_module("logferry.tools.verify", *args)


async def test_verify_counts_gaps_duplicates_dlq_positions_and_manifest_exactly(
    store: Store, opensearch: OpenSearchNode, tmp_path: Path
) -> None:
    tag = f"vt{uuid.uuid4().hex[:8]}"
    index = f"logs-{tag}-2026.11.25"
    stamp = "2026-11-25T10:00:00.123456789Z"
    complete = source_id(NODE, 1, 10, 0)
    gappy = source_id(NODE, 1, 20, 0)
    doubled = source_id(NODE, 1, 30, 0)
    dead_lettered = source_id(NODE, 1, 40, 0)
    gone = source_id(NODE, 1, 50, 3)

    docs = [document(complete, s, tag, stamp) for s in range(2500)]
    # seqs 0..2999 without the block 1000..1999; the manifest says the file had 3100 lines
    docs += [document(gappy, s, tag, stamp) for s in range(3000) if not 1000 <= s < 2000]
    # seq 42 stored twice under two ids (a record read at two offsets: a real duplicate)
    docs += [document(doubled, s, tag, stamp) for s in range(100)]
    docs.append(document(doubled, 42, tag, stamp, offset=999_999))
    # 10..14 were refused by the store and sit in the DLQ; 20 is in the DLQ and the store
    # (replayed since): it counts once, as found
    docs += [document(dead_lettered, s, tag, stamp) for s in range(200) if not 10 <= s < 15]
    await store.index(index, docs)
    # The same source in another tenant's index is out of --namespace's scope.
    await store.index(f"logs-{tag}x-2026.11.25", [document(complete, 0, f"{tag}x", stamp)])

    dlq_dir = tmp_path / "dlq"
    dlq_dir.mkdir()
    letters = [
        DeadLetter(
            tag,
            index,
            record_id(dead_lettered, s * 100),
            400,
            "mapper_parsing_exception",
            orjson.dumps(document(dead_lettered, s, tag, stamp)),
        )
        for s in [10, 11, 12, 13, 14, 20]
    ]
    (dlq_dir / "dlq-00000000.jsonl").write_bytes(b"".join(encode_letter(x) for x in letters))

    positions = PositionStore(tmp_path / "positions")
    for inode, generation, next_seq in [(10, 0, 2500), (50, 3, 30)]:
        link = pod_log(tag, f"web-{inode}")
        positions.update(
            SourceState(
                NODE,
                1,
                inode,
                generation,
                "4:" + "0" * 32,
                link,
                offset=next_seq * 100,
                next_seq=next_seq,
                link=link,
            )
        )
    positions.save(force=True)
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(
        orjson.dumps(
            {
                "files": [
                    {
                        "path": pod_log(tag, "web-20"),
                        "device": 1,
                        "inode": 20,
                        "messages": 3100,
                        "rate": 5,
                    },
                    {"path": pod_log(tag, "web-10"), "device": 1, "inode": 10, "messages": 2500},
                ]
            }
        )
    )

    try:
        report = await verify(
            VerifyOptions(
                store=StoreAccess(urls=[opensearch.url]),
                index=f"logs-{tag}-*",
                dlq_dirs=(dlq_dir,),
                positions_file=tmp_path / "positions",
                manifest_file=manifest,
                node=NODE,
            )
        )
        rows = {row.source: row for row in report.sources}
        assert set(rows) == {complete, gappy, doubled, dead_lettered, gone}
        got = {
            src: (r.expected, r.found, r.documents, r.missing, r.duplicates, r.in_dlq)
            for src, r in rows.items()
        }
        assert got == {
            complete: (2500, 2500, 2500, 0, 0, 0),
            gappy: (3100, 2000, 2000, 1100, 0, 0),
            doubled: (100, 100, 101, 0, 1, 0),
            dead_lettered: (200, 195, 195, 0, 0, 5),
            gone: (30, 0, 0, 30, 0, 0),
        }
        assert [str(r) for r in rows[gappy].missing_ranges] == ["1000-1999", "3000-3099"]
        assert rows[gappy].expected_by == "manifest"
        assert rows[gone].namespace == tag  # from the position file's link name
        totals = report.totals
        assert (totals.sources, totals.expected, totals.found) == (5, 5930, 4795)
        assert (totals.missing, totals.duplicates, totals.in_dlq) == (1130, 1, 5)
        assert not report.ok

        code, out, err = await run_cli(
            "--url",
            opensearch.url,
            "--index",
            "logs-*",
            "--namespace",
            tag,
            "--dlq",
            str(dlq_dir),
            "--positions",
            str(tmp_path / "positions"),
            "--manifest",
            str(manifest),
            "--node",
            NODE,
            "--json",
        )
        assert code == 1, err
        doc = orjson.loads(out)
        assert doc["totals"] == {
            "sources": 5,
            "expected": 5930,
            "found": 4795,
            "documents": 4796,
            "missing": 1130,
            "duplicates": 1,
            "in_dlq": 5,
            "accounted": 0,
            "sources_lost": 0,
            "lost_at_source": 0,
        }
        assert list(doc["namespaces"]) == [tag]

        code, out, err = await run_cli("--url", opensearch.url, "--index", f"logs-{tag}-*")
        assert code == 1, err
        assert out.splitlines()[-1] == "FAILED: 1005 missing, 1 duplicates"  # 10..14 without --dlq
        assert "1000-1999" in out
    finally:
        await store.delete(f"logs-{tag}*")


async def test_low_cardinality_block_is_recounted_and_since_judges_from_the_window(
    store: Store, opensearch: OpenSearchNode
) -> None:
    tag = f"vh{uuid.uuid4().hex[:8]}"
    index = f"logs-{tag}-2026.11.25"
    src = source_id(NODE, 7, 7, 0)
    # Seqs 37000..37999: a block whose HyperLogLog cardinality reads 999 on this node (a hash
    # collision); seqs 0..9 a day earlier, before the window.
    docs = [document(src, s, tag, "2026-11-25T10:00:00Z") for s in range(37_000, 38_000)]
    docs += [document(src, s, tag, "2026-11-24T10:00:00Z") for s in range(10)]
    await store.index(index, docs)
    try:
        assert await store.raw_cardinality(index, src, 37_000) == 999, (
            "this block no longer collides: pick another so the recount stays tested"
        )
        report = await verify(
            VerifyOptions(
                store=StoreAccess(urls=[opensearch.url]),
                index=f"logs-{tag}-*",
                since=datetime(2026, 11, 25, tzinfo=UTC),
            )
        )
        (row,) = report.sources
        assert (row.first_seq, row.expected, row.found, row.duplicates, row.missing) == (
            37_000,
            1000,
            1000,
            0,
            0,
        )
        assert report.ok
        assert any("--since" in note for note in report.notes)

        code, out, err = await run_cli(
            "--url", opensearch.url, "--index", f"logs-{tag}-*", "--since", "2026-11-25T00:00Z"
        )
        assert code == 0, out + err
        assert out.splitlines()[-1].startswith("OK: 1000 records of 1 sources")

        # Without the window the run starts at 0: 10..36999 are missing, exactly.
        code, out, err = await run_cli("--url", opensearch.url, "--index", f"logs-{tag}-*")
        assert code == 1, err
        assert out.splitlines()[-1] == "FAILED: 36990 missing, 0 duplicates"
        assert "10-36999" in out
    finally:
        await store.delete(f"logs-{tag}*")


async def test_no_matching_index_is_an_empty_pass_and_a_dead_store_exits_2(
    opensearch: OpenSearchNode, tmp_path: Path
) -> None:
    report = await verify(
        VerifyOptions(
            store=StoreAccess(urls=[opensearch.url]), index=f"logs-none{uuid.uuid4().hex[:8]}-*"
        )
    )
    assert report.ok
    assert report.totals.sources == 0

    code, _out, err = await run_cli("--url", "http://127.0.0.1:9", "--index", "logs-*")
    assert code == 2
    assert err.startswith("logferry verify: store http://127.0.0.1:9:")
    assert "Traceback" not in err
    # A node that cannot be reached hands over to the next --url.
    empty = f"logs-none{uuid.uuid4().hex[:8]}-*"
    code, _out, err = await run_cli(
        "--url", "http://127.0.0.1:9", "--url", opensearch.url, "--index", empty
    )
    assert code == 0, err


# What dynamic mapping made of the aggregator's documents before logferry had a template.
DYNAMIC_TEXT = {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}
LEGACY_MAPPINGS = {
    "properties": {
        "_lf": {"properties": {"src": DYNAMIC_TEXT, "id": DYNAMIC_TEXT, "seq": {"type": "long"}}},
        "kubernetes": {"properties": {"namespace_name": DYNAMIC_TEXT}},
    }
}


async def test_verify_reads_legacy_and_templated_indices_together(
    store: Store, opensearch: OpenSearchNode
) -> None:
    tag = f"vl{uuid.uuid4().hex[:8]}"
    legacy, modern = f"logs-{tag}-2026.11.24", f"logs-{tag}-2026.11.25"
    async with open_store(StoreAccess(urls=[opensearch.url])) as client:
        await client.request("PUT", f"/{legacy}", {"mappings": LEGACY_MAPPINGS})
        mapping = await client.request("GET", f"/{legacy}/_mapping")
        assert mapping[legacy]["mappings"]["properties"]["_lf"]["properties"]["src"] == (
            DYNAMIC_TEXT
        )
    across = source_id(NODE, 2, 10, 0)  # seqs 0..599 before the upgrade, 600..999 after
    old_only, new_only = source_id(NODE, 2, 20, 0), source_id(NODE, 2, 30, 0)
    await store.index(
        legacy, [document(across, s, tag, "2026-11-24T10:00:00Z") for s in range(600)]
    )
    await store.index(
        legacy, [document(old_only, s, tag, "2026-11-24T10:00:00Z") for s in range(50)]
    )
    later = [document(across, s, tag, "2026-11-25T10:00:00Z") for s in range(600, 1000)]
    # seq 599 again after the upgrade, under another id (read twice at two offsets)
    later.append(document(across, 599, tag, "2026-11-25T10:00:00Z", offset=7_777_777))
    later += [document(new_only, s, tag, "2026-11-25T10:00:00Z") for s in range(70) if s != 33]
    await store.index(modern, later)
    try:
        report = await verify(
            VerifyOptions(store=StoreAccess(urls=[opensearch.url]), index=f"logs-{tag}-*")
        )
        got = {
            row.source: (row.found, row.documents, row.missing, row.duplicates)
            for row in report.sources
        }
        assert got == {
            across: (1000, 1001, 0, 1),
            old_only: (50, 50, 0, 0),
            new_only: (69, 69, 1, 0),
        }
        assert {row.namespace for row in report.sources} == {tag}

        code, out, err = await run_cli("--url", opensearch.url, "--namespace", tag)
        assert code == 1, err
        assert out.splitlines()[-1] == "FAILED: 1 missing, 1 duplicates"
    finally:
        await store.delete(f"logs-{tag}*")


async def test_verify_counts_ranges_and_accounting_records_exactly(
    store: Store, opensearch: OpenSearchNode
) -> None:
    tag = f"vr{uuid.uuid4().hex[:8]}"
    index, acct_index = f"logs-{tag}-2026.11.25", f"logs-{tag}.lf-accounting-2026.11.25"
    stamp = "2026-11-25T10:00:00Z"
    clean, overlapping, sampled, only_acct = (source_id(NODE, 3, n, 0) for n in (1, 2, 3, 4))
    docs = []
    # clean: singles 0..9, a trace 10..2509 (across three blocks), singles 2510..2999
    docs += [document(clean, s, tag, stamp) for s in range(10)]
    docs.append(joined(clean, 10, 2509, tag, stamp))
    docs += [document(clean, s, tag, stamp) for s in range(2510, 3000)]
    # overlapping: 0..99 joined, 50..149 joined (cut differently: 50 seqs twice), and a
    # single line 120 inside the second (once more), then 150..199 singles
    docs.append(joined(overlapping, 0, 99, tag, stamp))
    docs.append(joined(overlapping, 50, 149, tag, stamp))
    docs.append(document(overlapping, 120, tag, stamp))
    docs += [document(overlapping, s, tag, stamp) for s in range(150, 200)]
    # sampled: 1 in 100 kept; the other 99 of each hundred accounted, one hundred of them
    # twice (a resend cut elsewhere) and seq 0 both kept and accounted: never duplicates
    docs += [document(sampled, s, tag, stamp) for s in range(0, 5000, 100)]
    acct = [accounting(sampled, tag, stamp, *[(h + 1, h + 99) for h in range(0, 2500, 100)])]
    acct.append(accounting(sampled, tag, stamp, *[(h + 1, h + 99) for h in range(2500, 5000, 100)]))
    acct.append(accounting(sampled, tag, stamp, (0, 199)))
    # only_acct: every line discarded; 40..59 not accounted (lost)
    acct.append(accounting(only_acct, tag, stamp, (0, 39), (60, 99)))
    await store.index(index, docs)
    await store.index(acct_index, acct)
    try:
        report = await verify(
            VerifyOptions(store=StoreAccess(urls=[opensearch.url]), index=f"logs-{tag}-*")
        )
        got = {
            row.source: (
                row.expected,
                row.found,
                row.accounted,
                row.documents,
                row.missing,
                row.duplicates,
            )
            for row in report.sources
        }
        assert got == {
            clean: (3000, 3000, 0, 501, 0, 0),
            overlapping: (200, 200, 0, 53, 0, 51),
            sampled: (5000, 50, 4950, 50, 0, 0),
            only_acct: (100, 0, 80, 0, 20, 0),
        }
        rows = {row.source: row for row in report.sources}
        assert [str(r) for r in rows[only_acct].missing_ranges] == ["40-59"]
        assert rows[only_acct].namespace == tag
        assert not report.ok

        code, out, err = await run_cli("--url", opensearch.url, "--index", f"logs-{tag}-*")
        assert code == 1, err
        assert out.splitlines()[-1] == "FAILED: 20 missing, 51 duplicates"
    finally:
        await store.delete(f"logs-{tag}*")


async def test_accounting_and_checkpoints_outside_the_accounting_indices_prove_nothing(
    store: Store, opensearch: OpenSearchNode
) -> None:
    # A peer's record stored in the tenant's own index that claims to be proof: a forged
    # accounting record covering a lost seq, and a forged checkpoint raising the end.
    tag = f"vf{uuid.uuid4().hex[:8]}"
    index = f"logs-{tag}-2026.11.25"
    stamp = "2026-11-25T10:00:00Z"
    src = source_id(NODE, 5, 1, 0)
    await store.index(index, [document(src, seq, tag, stamp) for seq in range(100) if seq != 42])
    await store.index(
        index, [accounting(src, tag, stamp, (42, 42)), checkpoint(src, 200, tag, stamp)]
    )
    report = await verify(
        VerifyOptions(store=StoreAccess(urls=[opensearch.url]), index=f"logs-{tag}-*")
    )
    [row] = report.sources
    assert (row.expected, row.missing, row.accounted, row.expected_by) == (100, 1, 0, "store")
