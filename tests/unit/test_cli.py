"""The logferry command: help, config checks, the config reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from logferry.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_the_daemons(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "forwarder" in out
    assert "aggregator" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["forwarder"],
        ["forwarder", "parked", "requeue"],
        ["aggregator"],
        ["aggregator", "dlq", "replay"],
        ["verify"],
        ["loadgen"],
        ["pipelines", "validate"],
        ["config-reference"],
    ],
)
def test_each_command_module_registers_its_parser(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: logferry {' '.join(argv)} ")


def test_a_daemon_needs_its_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["forwarder"])
    assert info.value.code == 2
    assert "--config" in capsys.readouterr().err


def test_the_forwarder_loads_nothing_of_the_aggregator() -> None:
    probe = (
        "import sys; from logferry.cli import build_parser; build_parser('forwarder'); "
        "print(sorted(m for m in sys.modules if m.startswith(('logferry.aggregator', 'aiohttp'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["aggregator", "--config", str(REPO / "examples/aggregator.yaml"), "--check-config"])
        == 0
    )
    assert "OK" in capsys.readouterr().out


def test_bad_config_is_refused_before_anything_runs(tmp_path: Path) -> None:
    bad = tmp_path / "aggregator.yaml"
    bad.write_text("spool:\n  directory: /tmp/x\ninput:\n  listen_port: 70000\n")
    result = subprocess.run(
        [sys.executable, "-m", "logferry", "aggregator", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert (
        f"{bad}:4: input.listen_port: Input should be less than or equal to 65535" in result.stderr
    )


def test_config_reference_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-reference", "forwarder"]) == 0
    out = capsys.readouterr().out
    assert "| `spool.max_bytes` | `1073741824` |" in out
    assert "`node_name` | `(required)`" in out


def test_config_reference_page_is_current() -> None:
    from devtools.update_docs import DOCS, render

    text = DOCS.read_text()
    assert render(text) == text, "docs/configuration.md is stale: run `make docs`"
