"""The position file on a full volume: the old file stays, the save is retried with backoff,
the stall is reported once, and nothing crashes."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from logferry.common.disk_full import DiskStalls
from logferry.forwarder import positions as positions_module
from logferry.forwarder.positions import PositionStore, SourceState
from logferry.forwarder.positions_saver import PositionsSaver


def state(offset: int) -> SourceState:
    return SourceState("n1", 1, 2, 0, "0:x", "/var/log/pods/a_b_c/d/0.log", offset, offset)


async def test_a_full_disk_keeps_the_old_position_file_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "positions"
    store = PositionStore(path)
    registry = CollectorRegistry()
    saver = PositionsSaver(store, DiskStalls(registry))
    store.update(state(100))
    assert await saver.save()
    before = path.read_bytes()
    real_pwrite = os.pwrite
    calls = 0

    def full(fd: int, data: bytes, *args: object) -> int:
        nonlocal calls
        calls += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    store.update(state(200))
    assert not await saver.save()  # no crash: the stall is reported instead
    assert saver.stalled
    assert path.read_bytes() == before  # the old file is intact ...
    assert not (tmp_path / "positions.tmp").exists()  # ... and no half-written copy holds space
    assert store.dirty
    assert not await saver.save()  # within the backoff: not even tried
    assert calls == 1
    assert await saver.save(force=True) is False  # the last save before exit tries anyway
    assert calls == 2
    assert registry.get_sample_value("logferry_disk_full", {"kind": "positions"}) == 1
    warnings = [r for r in caplog.records if r.getMessage() == "disk.full"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    monkeypatch.setattr(os, "pwrite", real_pwrite)  # space is back
    assert await saver.save(force=True)
    assert not saver.stalled
    assert registry.get_sample_value("logferry_disk_full", {"kind": "positions"}) == 0
    assert PositionStore(path).get(1, 2) == state(200)


def test_other_write_errors_still_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only a full volume is waited out; an I/O error is a real failure (the daemon restarts).
    def broken(path: str, data: bytes, **_kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(positions_module, "write_file_atomic", broken)
    store = PositionStore(tmp_path / "positions")
    store.update(state(1))
    with pytest.raises(OSError, match="Input/output"):
        store.save()
