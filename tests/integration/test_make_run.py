"""`make run`'s script end to end, the way a newcomer runs it (with a duration instead of
Ctrl-C): the whole pipeline starts, logs land in OpenSearch, and its verify passes."""

from __future__ import annotations

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
