"""12. The proof as a standing signal, live: loadgen with rotations, SIGKILLed forwarders,
two-worker aggregators, the real OpenSearch node and ``logferry audit`` running as a real
process beside them, reading nothing but the store.

- Every closed window: 0 missing, 0 duplicates, and the auditor proves every line verify
  counts (from the manifest, the files on disk and the position file).
- One stored document deleted and another stored a second time: within one audit interval
  the auditor reports exactly 1 missing and 1 duplicate for that tenant, in that window.
- A file rotated and compressed away while the forwarder was stopped, with lines it never
  read: reported lost at source, with its reason and its line count, never missing.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.chaos_harness import MakePipeline, Pipeline, assert_proven, scale
from tests.support.net import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

INTERVAL_S = 2
WINDOW_S = 5
GRACE_S = 8


class AuditProcess:
    """``logferry audit`` as a real process, with its metrics and its log."""

    def __init__(self, workdir: Path, url: str, pattern: str) -> None:
        self.port = free_port()
        self.log_path = workdir / "audit.log"
        workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "logferry", "audit",
                    "--url", url, "--index", pattern,
                    "--window", f"{WINDOW_S}s", "--grace", f"{GRACE_S}s",
                    "--span", "10m", "--interval", f"{INTERVAL_S}s",
                    "--listen-host", "127.0.0.1", "--listen-port", str(self.port),
                ],
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

    async def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.port}/metrics") as response,
        ):
            text = await response.text()
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    async def by_tenant(self, name: str) -> dict[str, float]:
        try:
            samples = await self.samples()
        except (aiohttp.ClientError, OSError):
            return {}
        return {
            dict(labels)["tenant"]: value
            for (sample, labels), value in samples.items()
            if sample == name and "tenant" in dict(labels)
        }

    def events(self, event: str) -> Iterator[dict[str, Any]]:
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == event:
                    yield entry

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def store_call(url: str, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{url}{path}", json=body) as response,
    ):
        assert response.status < 300, await response.text()
        return await response.json()


async def tamper(pipeline: Pipeline, tenant: str) -> None:
    """Delete one stored record of ``tenant`` and store a copy of another under a new id."""
    url = pipeline.store_url
    found = await store_call(
        url,
        "POST",
        f"/logs-{tenant}-*/_search",
        {"size": 2, "query": {"exists": {"field": "_lf.seq"}}, "sort": [{"_lf.seq": "desc"}]},
    )
    victim, original = found["hits"]["hits"]
    await store_call(url, "DELETE", f"/{victim['_index']}/_doc/{victim['_id']}?refresh=true")
    await store_call(
        url,
        "PUT",
        f"/{original['_index']}/_doc/{original['_id']}-copy?refresh=true",
        original["_source"],
    )


def rotate_away_unread(pipeline: Pipeline, extra_lines: int) -> tuple[str, Path]:
    """With the forwarder stopped: append lines to one container's log, then rotate it and
    compress it away as kubelet does (the plain file is gone); its namespace and the .gz."""
    logs = sorted((pipeline.logs / "pods").glob("*/*/0.log"))
    target = logs[0]
    last = target.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1] + b"\n"
    with target.open("ab") as out:
        out.write(last * extra_lines)
    # kubelet's order: rename, a new log, then the rotated file compressed and removed (the
    # new log is made while the old inode still exists, so it never takes its number).
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    rotated = target.with_name(f"0.log.{stamp}")
    os.rename(target, rotated)
    target.touch()
    packed_path = rotated.with_name(rotated.name + ".gz")
    with rotated.open("rb") as plain, gzip.open(packed_path, "wb") as packed:
        shutil.copyfileobj(plain, packed)
    rotated.unlink()
    namespace = target.parent.parent.name.split("_", 1)[0]
    return namespace, packed_path


async def test_12_the_auditor_proves_a_live_run_and_finds_tampering_and_losses(
    make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    pipeline = make_pipeline(forwarder={"checkpoints": {"interval_s": 1}})
    await pipeline.start()
    audit = AuditProcess(tmp_path / "audit", pipeline.store_url, pipeline.index_pattern)
    try:
        pipeline.start_loadgen(
            lines=scale(30_000, 200_000), rate=scale(4_000, 8_000), rotate_bytes="512KiB"
        )
        rng = random.Random()
        for _ in range(scale(3, 10)):
            await asyncio.sleep(rng.uniform(0.2, 1.0))  # a random moment to strike
            pipeline.forwarder.kill()
            await pipeline.forwarder.start()
        await pipeline.wait_loadgen()
        outcome = await pipeline.settle("12. auditor, live", timeout_s=90)
        if outcome.missing and pipeline.last_report is not None:
            from logferry.tools.verify import render_table

            print(render_table(pipeline.last_report))
        assert_proven(outcome)

        # Every window closed since: the auditor proved every line, none missing or twice.
        async def all_proven() -> bool:
            records = await audit.by_tenant("logferry_audit_records_proven")
            return sum(records.values()) == outcome.written

        await wait_until(all_proven, timeout_s=90, what="the auditor to prove every line")
        missing = await audit.by_tenant("logferry_audit_missing_records")
        doubled = await audit.by_tenant("logferry_audit_duplicate_records")
        assert len(missing) == 3, missing  # the three tenants of the load
        assert set(missing.values()) == set(doubled.values()) == {0.0}

        tenant = sorted(missing)[0]
        await tamper(pipeline, tenant)
        tampered_at = time.monotonic()

        async def found() -> bool:
            return (await audit.by_tenant("logferry_audit_missing_records")).get(tenant) == 1 and (
                await audit.by_tenant("logferry_audit_duplicate_records")
            ).get(tenant) == 1

        # One interval, plus the pass under way when the store changed, plus its proof.
        await wait_until(found, timeout_s=3 * INTERVAL_S + 20, what="the tampering found")
        assert time.monotonic() - tampered_at < 3 * INTERVAL_S + 20
        others = await audit.by_tenant("logferry_audit_missing_records")
        assert {t: v for t, v in others.items() if t != tenant} == dict.fromkeys(
            [t for t in others if t != tenant], 0.0
        )
        windows = {(e["tenant"], e["window_since"]) for e in audit.events("audit.discrepancy")}
        assert {t for t, _w in windows} == {tenant}

        # Lines never read: the forwarder stopped, the file rotated and compressed away.
        assert await pipeline.forwarder.stop() == 0
        lost_in, _gz = rotate_away_unread(pipeline, extra_lines=123)
        await pipeline.forwarder.start()

        async def reported_lost() -> bool:
            try:
                samples = await audit.samples()
            except (aiohttp.ClientError, OSError):
                return False
            key = (
                "logferry_audit_lost_at_source_records",
                (("reason", "gone_while_down"), ("tenant", lost_in)),
            )
            return samples.get(key) == 123

        await wait_until(reported_lost, timeout_s=90, what="the loss reported at source")
        still = await audit.by_tenant("logferry_audit_missing_records")
        assert still.get(lost_in, 0) == (1 if lost_in == tenant else 0)  # not counted missing
        await pipeline.stop()
    finally:
        audit.stop()
