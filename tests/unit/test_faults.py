"""Crash points kill the process exactly at the configured pass, and are inert otherwise."""

from __future__ import annotations

import signal
import subprocess
import sys

SCRIPT = """
from logferry.common.faults import crash_point
for n in range(1, 6):
    crash_point("other")
    crash_point("step")
    print(n, flush=True)
"""


def run(env_value: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if env_value is not None:
        env["LOGFERRY_CRASH_AT"] = env_value
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_nth_pass_of_the_named_point_is_a_sigkill() -> None:
    result = run("step:3")
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.split() == ["1", "2"]


def test_without_a_count_the_first_pass_kills() -> None:
    result = run("step")
    assert result.returncode == -signal.SIGKILL
    assert result.stdout == ""


def test_unset_or_another_point_does_nothing() -> None:
    for value in (None, "", "elsewhere:1"):
        result = run(value)
        assert result.returncode == 0
        assert result.stdout.split() == ["1", "2", "3", "4", "5"]
