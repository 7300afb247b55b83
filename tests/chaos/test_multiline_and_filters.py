"""Proof that scales with multiline and filtering, through the real pipeline.

Loadgen writes Java services whose exceptions span many lines (and files rotating every
1 MiB, so traces also meet chunk boundaries and rotations); the forwarder joins them at
the source with the java preset and is SIGKILLed at random moments, many of them in the
middle of a trace; tenants sample 1 in 100 and drop levels at the aggregators. ``verify``
must find every line exactly once: stored alone, inside a joined record's range, or listed
by an accounting record.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from logferry.tools.verify import render_table
from tests.support.chaos_harness import MakePipeline, scale
from tests.support.log_pipelines import log_pipeline
from tests.support.opensearch_client import ANY_DOCUMENT, StoreReader

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

HEADER = "java.lang.IllegalStateException"


def pipelines_dir(tmp_path: Path, prefix: str) -> Path:
    directory = tmp_path / "pipelines"
    directory.mkdir()
    sampled = log_pipeline("sample", [{"type": "sample", "rate": 100}], namespace=f"{prefix}-a")
    levels = log_pipeline(
        "quiet",
        [
            {"type": "parse_json", "field": "log"},
            {"type": "drop_level", "levels": ["debug", "info"]},
        ],
        namespace=f"{prefix}-b",
        selector={"pods": ["search-*"]},
    )
    (directory / "pipelines.yaml").write_text(yaml.safe_dump_all([sampled, levels]))
    return directory


async def test_traces_joined_at_the_source_and_filtered_lines_accounted_verify_exactly(
    make_pipeline: MakePipeline, opensearch: Any, tmp_path: Path
) -> None:
    pipeline = make_pipeline(
        forwarder={"multiline": {"default": "java", "flush_timeout_s": 0.5}},
    )
    directory = pipelines_dir(tmp_path, pipeline.prefix)
    for aggregator in pipeline.aggregators:
        aggregator.config["pipelines"] = {"directory": str(directory), "rescan_interval_s": 1}
    await pipeline.start()
    lines = scale(40_000, 300_000)
    # Rotating every 1 MiB: the Java services' files rotate every few seconds, so traces meet
    # rotations, but no file is written and rotated away inside one forwarder restart.
    pipeline.start_loadgen(lines=lines, rate=scale(4_000, 10_000), rotate_bytes="1MiB")
    kills = scale(4, 15)
    rng = random.Random()
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(0.3, 1.5))  # a random moment to strike
        pipeline.forwarder.kill()
        await pipeline.forwarder.start()
    await pipeline.wait_loadgen()
    outcome = await pipeline.settle(f"multiline + filters, forwarder SIGKILL x{kills}")
    print(outcome.line())
    if pipeline.last_report is not None and not pipeline.last_report.ok:
        print(render_table(pipeline.last_report))
    assert (outcome.missing, outcome.duplicates) == (0, 0)
    assert outcome.written == lines
    report = pipeline.last_report
    assert report is not None

    store = StoreReader(pipeline.store_url)
    joined = await store.count(pipeline.index_pattern, {"exists": {"field": "_lf.seq_end"}})
    traces = await store.search_where(
        pipeline.index_pattern, {"match_phrase": {"log": HEADER}}, ["log", "_lf"]
    )
    assert joined > 20, "loadgen's Java services wrote traces"
    # Every trace is one record from its header to its last frame, unless a rotation cut it
    # (then its frames open the next file: a record of their own at seq 0 there).
    cut = [t for t in traces if "seq_end" not in t["_lf"]]
    # Frames without their header: the "... N more" line closes every trace.
    frames_only = {
        "bool": {
            "must": [{"match_phrase": {"log": "more seq"}}],
            "must_not": [{"match_phrase": {"log": HEADER}}],
        }
    }
    orphans = await store.search_where(pipeline.index_pattern, frames_only, ["_lf"])
    assert all(o["_lf"]["seq"] == 0 for o in orphans), orphans[:3]
    assert len(cut) <= len(orphans)
    assert all("\n\tat " in t["log"] for t in traces if "seq_end" in t["_lf"])

    # The sampling tenant: about one stored document in a hundred lines, plus a small
    # accounting overhead (one record per source and message).
    sampled = report.namespaces[f"{pipeline.prefix}-a"]
    stored = await store.count(f"logs-{pipeline.prefix}-a-*")
    accounting = await store.count(f"logs-{pipeline.prefix}-a.lf-accounting-*", ANY_DOCUMENT)
    assert sampled.accounted > 0.95 * sampled.expected
    assert stored == sampled.found
    ratio = (stored + accounting) / max(1, sampled.expected)
    print(
        f"[proof] sampled tenant: {sampled.expected} lines -> {stored} documents + "
        f"{accounting} accounting records ({ratio:.3f} per line; per-line markers: 1.000)"
    )
    assert ratio < 0.1
    quiet = report.namespaces[f"{pipeline.prefix}-b"]
    assert quiet.accounted > 0
    await pipeline.stop()
