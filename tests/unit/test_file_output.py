"""The file output (NDJSON per index, rotation, fsync-then-commit, retry without repeats) and
the null output."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from logferry.aggregator.dlq import DeadLetterQueue
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs import (
    FileOutput,
    FileOutputSettings,
    NullOutput,
    NullOutputSettings,
    build_output,
)
from logferry.aggregator.outputs import file as file_module
from logferry.common.spool import SpoolBatch
from tests.support.output_drain import drain_until, fill, make_docs, open_spool, sample


def file_settings(directory: Path, **overrides: Any) -> FileOutputSettings:
    values: dict[str, Any] = {"type": "file", "directory": directory, "retry_initial_s": 0.01}
    values.update(overrides)
    return FileOutputSettings(**values)


def read_index(root: Path, index: str) -> list[list[dict[str, Any]]]:
    """Each file's documents, files in number order."""
    names = sorted(os.listdir(root / index), key=lambda name: int(name.split(".")[-2]))
    return [
        [orjson.loads(line) for line in (root / index / name).read_bytes().splitlines()]
        for name in names
    ]


async def test_documents_land_in_ndjson_files_per_index_in_order(tmp_path: Path) -> None:
    metrics = AggregatorMetrics()
    spool = await open_spool(tmp_path / "spool")
    await fill(spool, make_docs("logs-a-2026.11.25", 12) + make_docs("logs-a-2026.11.26", 3))
    output = build_output(
        file_settings(tmp_path / "out"), metrics, DeadLetterQueue(tmp_path / "dlq")
    )
    await output.start()
    await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
    await output.close()
    (day1,) = read_index(tmp_path / "out", "logs-a-2026.11.25")
    assert [doc["n"] for doc in day1] == list(range(12))
    assert os.listdir(tmp_path / "out" / "logs-a-2026.11.26") == ["logs-a-2026.11.26.0.ndjson"]
    assert sample(metrics, "logferry_records_out_total", tenant="a") == 15
    await spool.close()


async def test_files_rotate_by_size_and_a_restart_continues_the_numbering(tmp_path: Path) -> None:
    settings = file_settings(tmp_path / "out", rotate_bytes=4096)
    spool = await open_spool(tmp_path / "spool")
    await fill(spool, make_docs("logs-a", 600), per_fragment=50)
    output = FileOutput(settings, AggregatorMetrics(), DeadLetterQueue(tmp_path / "dlq"))
    await output.start()
    await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
    files = read_index(tmp_path / "out", "logs-a")
    assert len(files) >= 3
    for name in os.listdir(tmp_path / "out" / "logs-a"):  # a file ends where a line would overflow
        assert (tmp_path / "out" / "logs-a" / name).stat().st_size <= 4096
    await fill(spool, make_docs("logs-a", 10, start=600))
    restarted = FileOutput(settings, AggregatorMetrics(), DeadLetterQueue(tmp_path / "dlq"))
    await drain_until(restarted, "a", spool, lambda: spool.records_pending == 0)
    after = read_index(tmp_path / "out", "logs-a")
    assert after[: len(files) - 1] == files[:-1]  # earlier files untouched
    assert [doc["n"] for part in after for doc in part] == list(range(610))
    await spool.close()


async def test_a_failed_write_is_retried_without_repeating_lines_and_commits_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = file_module._append_durably
    calls: list[Path] = []

    def flaky(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 2:  # the second file of the batch: disk full once
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(file_module, "_append_durably", flaky)
    spool = await open_spool(tmp_path / "spool")
    await fill(spool, make_docs("logs-a", 5) + make_docs("logs-b", 5))
    commits: list[int] = []
    real_commit = spool.commit

    def commit(batch: SpoolBatch) -> None:
        commits.append(len(calls))
        real_commit(batch)

    spool.commit = commit  # type: ignore[method-assign]
    output = FileOutput(
        file_settings(tmp_path / "out"), AggregatorMetrics(), DeadLetterQueue(tmp_path / "dlq")
    )
    await output.start()
    await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
    assert commits == [3]
    assert [d["n"] for d in read_index(tmp_path / "out", "logs-a")[0]] == list(range(5))
    assert [d["n"] for d in read_index(tmp_path / "out", "logs-b")[0]] == list(range(5))
    await spool.close()


async def test_an_index_name_that_could_escape_the_directory_goes_to_the_dlq(
    tmp_path: Path,
) -> None:
    dlq = DeadLetterQueue(tmp_path / "dlq")
    spool = await open_spool(tmp_path / "spool")
    await fill(spool, make_docs("../etc", 1) + make_docs("logs-a", 2))
    output = FileOutput(file_settings(tmp_path / "out"), AggregatorMetrics(), dlq)
    await output.start()
    await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
    assert [(e.index, e.reason) for e in dlq.scan().entries] == [("../etc", "invalid_index_name")]
    assert os.listdir(tmp_path / "out") == ["logs-a"]
    await spool.close()


async def test_null_output_commits_and_counts_documents(tmp_path: Path) -> None:
    metrics = AggregatorMetrics()
    spool = await open_spool(tmp_path / "spool")
    await fill(spool, make_docs("logs-a", 25), per_fragment=10)
    output = NullOutput(NullOutputSettings(type="null"), metrics)
    await output.start()
    await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
    await output.close()
    assert sample(metrics, "logferry_records_out_total", tenant="a") == 25
    await spool.close()
