"""`make run`'s script end to end, the way a newcomer runs it (with a duration instead of
Ctrl-C): the whole pipeline starts, logs land in OpenSearch, its verify passes, and
``logferry status --once --json`` of the drained daemons shows every tenant and no backlog."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent.parent


def test_make_run_ships_logs_and_verifies_them(opensearch: Any, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "run_local.py"),
            "--duration",
            "6",
            "--rate",
            "1500",
            "--store",
            opensearch.url,
            "--workdir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Where the logs went:" in out
    assert f"{opensearch.url}  indices logs-demo-*" in out
    total = next(line for line in out.splitlines() if line.startswith("TOTAL"))
    _name, sources, expected, found, missing, duplicates, dlq = total.split()
    assert int(sources) == 6
    assert int(expected) == int(found) > 5000
    assert (missing, duplicates, dlq) == ("0", "0", "0")
    assert "OK:" in out
    # The live view, taken once everything was indexed: every daemon up, every tenant the
    # load wrote to, nothing owed anywhere.
    run = tmp_path / "run"
    view = json.loads((run / "status.json").read_text())
    manifest = json.loads((run / "node" / "manifest.json").read_text())
    kinds = sorted(d["kind"] for d in view["daemons"] if d["up"])
    assert kinds == ["aggregator", "aggregator", "forwarder"], view["daemons"]
    for daemon in view["daemons"]:
        figures = daemon["figures"]
        assert figures.get("backlog_chunks", 0) == figures.get("backlog_blocks", 0) == 0, daemon
    tenants = {row["tenant"]: row for row in view["tenants"]}
    assert set(tenants) == {entry["namespace"] for entry in manifest["files"]}
    assert all(row["backlog_chunks"] == 0 for row in tenants.values()), tenants
    assert "logferry status: " in out
