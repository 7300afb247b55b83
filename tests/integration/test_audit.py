"""The auditor against a real OpenSearch node seeded by hand: closed windows judged by the
forwarders' checkpoints alone (no position file, no node), a joined record and a lost source
in them; then one document deleted and another stored twice, which the next pass finds, in
its tenant and its window, exactly; and the CLI's ``--once --json`` exit codes."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from devtools.opensearch_node import OpenSearchNode
from logferry.common.records import source_id
from logferry.common.store_access import StoreAccess
from logferry.tools.audit import AuditOptions, Auditor
from tests.support.commands import run_module
from tests.support.seeded_store import NODE, Store, checkpoint, document, joined

pytestmark = pytest.mark.integration

WINDOW_S = 60


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def sample(auditor: Auditor, name: str, **labels: str) -> float | None:
    return auditor.registry.get_sample_value(name, labels or None)


async def test_the_auditor_proves_closed_windows_and_finds_one_missing_and_one_duplicate(
    store: Store, opensearch: OpenSearchNode
) -> None:
    tag = f"au{uuid.uuid4().hex[:8]}"
    day = datetime.now(UTC).strftime("%Y.%m.%d")
    index, acct = f"logs-{tag}-{day}", f"logs-{tag}.lf-accounting-{day}"
    # Four whole windows, the last one closed a moment ago.
    now = time.time()
    base = (int(now) // WINDOW_S - 4) * WINDOW_S
    steady, rotated, lost = (source_id(NODE, 7, n, 0) for n in (1, 2, 3))
    records = [document(steady, seq, tag, stamp(base + 1)) for seq in range(3000)]
    records += [document(rotated, seq, tag, stamp(base + 1)) for seq in range(490)]
    records.append(joined(rotated, 490, 499, tag, stamp(base + 1)))  # one record, ten lines
    records += [document(lost, seq, tag, stamp(base + 1)) for seq in range(200)]
    await store.index(index, records)
    await store.index(
        acct,
        [
            checkpoint(steady, 1000, tag, stamp(base + 30)),
            checkpoint(steady, 2000, tag, stamp(base + 90)),
            checkpoint(steady, 3000, tag, stamp(base + 150)),
            checkpoint(rotated, 500, tag, stamp(base + 45), state="finished", reason="rotated"),
            checkpoint(
                lost, 200, tag, stamp(base + 70), state="lost", lost_lines=37, reason="gone"
            ),
        ],
    )
    options = AuditOptions(
        store=StoreAccess(urls=[opensearch.url]),
        index=f"logs-{tag}-*",
        window_s=WINDOW_S,
        grace_s=0,
        span_s=4 * WINDOW_S,
    )
    auditor = Auditor(options, listen_port=0)
    clock = base + 4 * WINDOW_S + 1

    first = await auditor.audit(now_s=clock)
    assert [(w.since_ms // 1000 - base) for w in first.windows] == [0, 60, 120, 180]
    assert first.ok
    assert first.totals() == {
        tag: {"missing": 0, "duplicates": 0, "records": 3700, "lost_at_source": {"gone": 37}}
    }
    # Each source's seqs are split at its checkpoints, never proven twice.
    per_window = [
        sorted((r.source, r.first_seq, r.expected) for r in w.rows) for w in first.windows
    ]
    assert per_window[0] == sorted([(steady, 0, 1000), (rotated, 0, 500)])
    assert per_window[1] == sorted([(steady, 1000, 1000), (lost, 0, 200)])
    assert per_window[2] == [(steady, 2000, 1000)]
    assert per_window[3] == []
    assert sample(auditor, "logferry_audit_missing_records", tenant=tag) == 0
    assert sample(auditor, "logferry_audit_duplicate_records", tenant=tag) == 0
    assert sample(auditor, "logferry_audit_lost_at_source_records", tenant=tag, reason="gone") == 37
    assert sample(auditor, "logferry_audit_proven_until_timestamp_seconds") == base + 240

    # One document deleted, another stored a second time (under another id).
    await store.delete_document(index, document(steady, 1500, tag, "")["_lf"]["id"])
    copy = document(steady, 2500, tag, stamp(base + 1))
    copy["_lf"]["id"] += "-copy"
    await store.index(index, [copy])

    second = await auditor.audit(now_s=clock)
    assert not second.ok
    assert second.totals()[tag] | {"lost_at_source": {}} == {
        "missing": 1,
        "duplicates": 1,
        "records": 3700,
        "lost_at_source": {},
    }
    [missing] = [r for r in second.windows[1].rows if r.missing]
    assert (missing.source, [str(r) for r in missing.missing_ranges]) == (
        steady,
        ["1 in 1000-1999"],
    )
    [doubled] = [r for r in second.windows[2].rows if r.duplicates]
    assert (doubled.source, doubled.duplicates) == (steady, 1)
    assert sample(auditor, "logferry_audit_missing_records", tenant=tag) == 1
    assert sample(auditor, "logferry_audit_duplicate_records", tenant=tag) == 1
    assert sample(auditor, "logferry_audit_passes_total", outcome="problems") == 1

    # The command, as a cron job or a person runs it: exit 1 with the problems in JSON.
    code, out, err = await run_module(
        "logferry.tools.audit",
        "--url", opensearch.url, "--index", f"logs-{tag}-*",
        "--window", "60s", "--grace", "0", "--span", "10m", "--once", "--json",
    )  # fmt: skip
    assert code == 1, out + err
    report = orjson.loads(out)
    assert report["tenants"][tag]["missing"] == 1
    assert report["tenants"][tag]["duplicates"] == 1
