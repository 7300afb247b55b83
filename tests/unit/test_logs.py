"""Structured logs: one event per line, fields as keys, exceptions with their type."""

from __future__ import annotations

import json

import pytest

from logferry.common.logs import get_logger, setup_logging


def test_json_lines_carry_event_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "json")
    log = get_logger("logferry.test")
    log.info("chunk.acked", endpoint="10.0.0.1:24224", chunk="abc", records=3)
    log.debug("hidden")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "chunk.acked"
    assert event["level"] == "info"
    assert event["records"] == 3
    assert event["endpoint"] == "10.0.0.1:24224"
    assert event["ts"].endswith("Z")


def test_logfmt_quotes_values_that_need_it(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("debug", "logfmt")
    get_logger("logferry.test").warning("spool.full", reason='no space "left"', tenant="a")
    line = capsys.readouterr().err.strip()
    assert "event=spool.full" in line
    assert 'reason="no space \\"left\\""' in line
    assert "tenant=a" in line


def test_exception_records_type_and_message(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "json")
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        get_logger("logferry.test").exception("spool.write_failed", segment=3)
    event = json.loads(capsys.readouterr().err.strip().splitlines()[0])
    assert event["error_type"] == "OSError"
    assert "No space left" in event["error"]
    assert event["segment"] == 3
