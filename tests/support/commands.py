"""Running a ``logferry`` command module as a real process, for tests of its exit status and
output."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT_S = 120.0


async def run_module(module: str, *args: str) -> tuple[int, str, str]:
    """``python -m module args...`` from the repository root: (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
