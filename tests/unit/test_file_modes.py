"""Files that hold tenants' records are the daemon's alone: 0600 files in 0700 folders it
creates (spool segments and state files, quarantine, positions, parked chunks, the file
output's NDJSON). Folders that already exist are left as the operator made them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from logferry.aggregator.dlq import DeadLetterQueue
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs import FileOutputSettings, build_output
from logferry.common.spool import Spool
from logferry.forwarder.parking import Parking
from logferry.forwarder.positions import PositionStore, SourceState
from tests.support.output_drain import drain_until, fill, make_docs, open_spool


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_spool_files_are_0600_in_0700_folders(tmp_path: Path) -> None:
    os.umask(0o022)
    directory = tmp_path / "new" / "lib" / "spool"
    s = await Spool.open(directory, max_bytes=1 << 20, segment_max_bytes=64 << 10)
    await s.append([b"x" * 100])
    await s.close()
    for folder in (tmp_path / "new", tmp_path / "new" / "lib", directory):
        assert mode(folder) == 0o700, folder
    files = sorted(directory.iterdir())
    assert {p.name for p in files} >= {"lock", "committed"}
    assert any(p.suffix == ".seg" for p in files)
    for path in files:
        assert mode(path) == 0o600, path


async def test_quarantined_bytes_are_0600_too(tmp_path: Path) -> None:
    s = await Spool.open(tmp_path / "spool", max_bytes=1 << 20, segment_max_bytes=64 << 10)
    await s.append([b"a" * 100])
    await s.append([b"b" * 100])
    await s.close()
    (segment,) = (tmp_path / "spool").glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[60] ^= 0xFF  # inside the first frame
    segment.write_bytes(bytes(data))
    s = await Spool.open(tmp_path / "spool", max_bytes=1 << 20, segment_max_bytes=64 << 10)
    await s.close()
    quarantine = tmp_path / "spool" / "quarantine"
    assert mode(quarantine) == 0o700
    assert [mode(p) for p in quarantine.iterdir()] == [0o600]


async def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o750)
    os.chmod(directory, 0o750)
    s = await Spool.open(directory, max_bytes=1 << 20)
    await s.close()
    assert mode(directory) == 0o750
    assert mode(directory / "committed") == 0o600


def test_the_position_file_is_0600(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "state" / "positions")
    store.update(SourceState("n1", 1, 2, 0, "0:x", "/p", 0, 0))
    store.save()
    assert mode(tmp_path / "state") == 0o700
    assert mode(tmp_path / "state" / "positions") == 0o600


async def test_parked_chunks_are_0600_in_a_0700_folder(tmp_path: Path) -> None:
    parking = Parking(tmp_path / "parked")
    path = await parking.park({"chunk_id": "c1", "records": 0}, b"not a message", reason="test")
    assert mode(tmp_path / "parked") == 0o700
    assert mode(path) == 0o600


async def test_file_output_ndjson_is_0600_in_0700_folders(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "spool")
    await fill(spool, make_docs("logs-a-2026.11.25", 3))
    output = build_output(
        FileOutputSettings(type="file", directory=tmp_path / "out"),
        AggregatorMetrics(),
        DeadLetterQueue(tmp_path / "dlq"),
    )
    await output.start()
    await drain_until(output, "a", spool, lambda: spool.records_pending == 0)
    await output.close()
    await spool.close()
    assert mode(tmp_path / "out") == 0o700
    assert mode(tmp_path / "out" / "logs-a-2026.11.25") == 0o700
    (ndjson,) = (tmp_path / "out" / "logs-a-2026.11.25").iterdir()
    assert mode(ndjson) == 0o600
