"""The dead-letter queue: durable append, listing with filters, rotation, removal after
replay, crash safety (torn lines), its size cap, file locking, and the ``dlq`` command."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
from pathlib import Path

import orjson
import pytest

from logferry.aggregator.dlq import (
    LOCK_FILE,
    DeadLetter,
    DeadLetterQueue,
    DeadLetterQueueFullError,
    DeadLetterSettings,
)
from logferry.aggregator.dlq_cli import dlq_main, load_output_settings
from logferry.aggregator.outputs.bulk_client import BulkOutputSettings


def letter(
    n: int, tenant: str = "team-a", reason: str = "mapper_parsing_exception: x"
) -> DeadLetter:
    source = orjson.dumps({"log": f"line {n}", "user": "alice"})
    return DeadLetter(tenant, f"logs-{tenant}-2026.11.25", f"id-{n}", 400, reason, source)


def queue_files(directory: Path, tenant: str = "team-a") -> list[str]:
    """The queue files of ``tenant`` (each tenant has its own folder)."""
    folder = directory / tenant
    if not folder.is_dir():
        return []
    return sorted(name for name in os.listdir(folder) if name.endswith(".jsonl"))


async def test_append_then_scan_round_trips_every_field(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path)
    await dlq.append([letter(1), letter(2, tenant="team-b")])
    entries = dlq.scan().entries
    assert [(e.tenant, e.index, e.doc_id, e.status) for e in entries] == [
        ("team-a", "logs-team-a-2026.11.25", "id-1", 400),
        ("team-b", "logs-team-b-2026.11.25", "id-2", 400),
    ]
    assert orjson.loads(entries[0].source) == {"log": "line 1", "user": "alice"}
    assert entries[0].reason == "mapper_parsing_exception: x"
    assert entries[0].time.endswith("Z")
    assert entries[0].entry_id != entries[1].entry_id


def test_scan_filters_by_tenant_reason_and_limit(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path)
    dlq.append_sync([letter(n, tenant="team-a") for n in range(3)])
    dlq.append_sync([letter(9, tenant="team-b", reason="illegal_argument_exception: too big")])
    assert len(dlq.scan(tenant="team-a").entries) == 3
    assert [e.doc_id for e in dlq.scan(reason_contains="ILLEGAL").entries] == ["id-9"]
    assert [e.doc_id for e in dlq.scan(limit=2).entries] == ["id-0", "id-1"]


def test_files_rotate_by_size_and_keep_order(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path, rotate_bytes=4096)
    for n in range(60):
        dlq.append_sync([letter(n)])
    assert len(queue_files(tmp_path)) >= 3
    assert all((tmp_path / "team-a" / f).stat().st_size < 4096 + 300 for f in queue_files(tmp_path))
    assert [e.doc_id for e in dlq.scan().entries] == [f"id-{n}" for n in range(60)]


def test_settle_removes_delivered_updates_refused_and_deletes_emptied_files(
    tmp_path: Path,
) -> None:
    dlq = DeadLetterQueue(tmp_path, rotate_bytes=4096)
    for n in range(40):
        dlq.append_sync([letter(n)])
    files_before = queue_files(tmp_path)
    entries = dlq.scan().entries
    first_file = {e.entry_id for e in entries if e.file == files_before[0]}
    refused = {entries[-1].entry_id: (400, "strict_dynamic_mapping_exception: new")}
    removed = dlq.settle_replayed(first_file | {entries[-2].entry_id}, refused)
    assert removed == len(first_file) + 1
    assert files_before[0] not in queue_files(tmp_path)
    left = dlq.scan().entries
    assert len(left) == 40 - removed
    assert left[-1].reason == "strict_dynamic_mapping_exception: new"
    assert entries[-2].entry_id not in {e.entry_id for e in left}
    assert not [n for n in os.listdir(tmp_path / "team-a") if n.endswith(".tmp")]


def test_a_torn_last_line_is_skipped_and_reported_by_the_scan_and_the_next_append_reads_fine(
    tmp_path: Path,
) -> None:
    dlq = DeadLetterQueue(tmp_path)
    dlq.append_sync([letter(1), letter(2)])
    path = tmp_path / "team-a" / queue_files(tmp_path)[0]
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 25])  # a crash mid-write of the second line
    scan = dlq.scan()
    assert ([e.doc_id for e in scan.entries], scan.damaged_lines) == (["id-1"], 1)
    dlq.append_sync([letter(3)])
    scan = dlq.scan()
    assert ([e.doc_id for e in scan.entries], scan.damaged_lines) == (["id-1", "id-3"], 1)
    with path.open("ab") as file:
        file.write(b"not json at all\n")
    assert dlq.scan().damaged_lines == 2
    # a rewrite drops the damaged lines (they were counted) and keeps every good entry
    dlq.settle_replayed({dlq.scan().entries[0].entry_id}, {})
    scan = dlq.scan()
    assert ([e.doc_id for e in scan.entries], scan.damaged_lines) == (["id-3"], 0)


def test_a_source_that_is_not_json_is_kept_as_text(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path)
    bad = DeadLetter("team-a", "", "", 0, "malformed_fragment", b"\xffnot json")
    dlq.append_sync([bad])
    (entry,) = dlq.scan().entries
    assert entry.source == "\ufffdnot json".encode()


def test_a_full_queue_refuses_appends_retriably(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path, rotate_bytes=4096, max_bytes=4096)
    for n in range(100):
        if dlq.bytes_used + 400 > 4096:
            break
        dlq.append_sync([letter(n)])
    with pytest.raises(DeadLetterQueueFullError) as caught:
        dlq.append_sync([letter(100)] * 2)
    assert caught.value.retriable
    assert dlq.bytes_used <= 4096


async def test_an_append_waits_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path)
    dlq.append_sync([letter(0)])
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as `dlq replay` does while it rewrites a file
    try:
        append = asyncio.create_task(dlq.append([letter(1)]))
        done, _ = await asyncio.wait({append}, timeout=0.3)
        assert not done
    finally:
        os.close(fd)
    await asyncio.wait_for(append, timeout=10)
    assert len(dlq.scan().entries) == 2


def test_settings_refuse_rotation_above_the_cap(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rotate_bytes"):
        DeadLetterSettings.model_validate(
            {"directory": tmp_path, "rotate_bytes": "2MiB", "max_bytes": "1MiB"}
        )


def test_list_prints_a_table_and_json_with_filters(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path)
    dlq.append_sync([letter(1), letter(2, tenant="team-b")])
    out = io.StringIO()
    assert dlq_main(["list", "--dlq-dir", str(tmp_path)], out=out) == 0
    table = out.getvalue().splitlines()
    assert table[0].split() == ["TIME", "TENANT", "INDEX", "ID", "STATUS", "REASON"]
    assert "id-1" in table[1]
    assert "mapper_parsing_exception" in table[1]
    assert table[-1] == "2 entries"
    out = io.StringIO()
    argv = ["list", "--dlq-dir", str(tmp_path), "--json", "--tenant", "team-b", "--with-source"]
    assert dlq_main(argv, out=out) == 0
    (line,) = out.getvalue().splitlines()
    obj = orjson.loads(line)
    assert (obj["tenant"], obj["id"], obj["status"]) == ("team-b", "id-2", 400)
    assert obj["source"] == {"log": "line 2", "user": "alice"}


def test_replay_without_a_store_is_a_usage_error(tmp_path: Path) -> None:
    assert dlq_main(["replay", "--dlq-dir", str(tmp_path)], out=io.StringIO()) == 2


def test_output_settings_load_from_an_aggregator_config(tmp_path: Path) -> None:
    config = tmp_path / "aggregator.yaml"
    config.write_text(
        "spool: {directory: /var/spool}\n"
        "output: {type: opensearch, urls: ['http://es:9200'], batch_max_records: 100}\n"
        f"dlq: {{directory: {tmp_path / 'dlq'}}}\n"
    )
    output, dlq = load_output_settings(config)
    assert isinstance(output, BulkOutputSettings)
    assert output.batch_max_records == 100
    assert dlq is not None
    assert dlq.directory == tmp_path / "dlq"


def test_one_tenant_cannot_fill_the_queue_for_the_others(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path, rotate_bytes=4096, max_bytes=64 * 1024, tenant_max_bytes=4096)
    for n in range(100):
        if dlq.bytes_used + 400 > 4096:
            break
        dlq.append_sync([letter(n, tenant="team-a")])
    with pytest.raises(DeadLetterQueueFullError, match="team-a's share"):
        dlq.append_sync([letter(100, tenant="team-a")] * 2)
    dlq.append_sync([letter(1, tenant="team-b")])  # the others still fit
    assert [e.doc_id for e in dlq.scan(tenant="team-b").entries] == ["id-1"]
    assert sum(f.stat().st_size for f in (tmp_path / "team-a").iterdir()) <= 4096


def test_queue_files_are_private(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path / "dlq")
    dlq.append_sync([letter(1)])
    assert (tmp_path / "dlq").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "dlq" / "team-a").stat().st_mode & 0o777 == 0o700
    (name,) = queue_files(tmp_path / "dlq")
    assert (tmp_path / "dlq" / "team-a" / name).stat().st_mode & 0o777 == 0o600


def test_files_of_older_versions_in_the_top_folder_are_still_read(tmp_path: Path) -> None:
    DeadLetterQueue(tmp_path).append_sync([letter(1)])
    (tmp_path / "team-a" / "dlq-00000000.jsonl").rename(tmp_path / "dlq-00000000.jsonl")
    assert [e.doc_id for e in DeadLetterQueue(tmp_path).scan().entries] == ["id-1"]
