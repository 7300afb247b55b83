"""A file a fast writer creates and rotates away between two of the forwarder's scans (it is
never under the container's link when the forwarder looks) is found beside the log and read
whole: every line of every generation arrives, once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.aggregator import MakeAggregator, input_address
from tests.support.daemon import DaemonProcess
from tests.support.file_store import assert_exactly_once, ids
from tests.support.forwarder_daemon import forwarder_config
from tests.support.kubelet import container_log, cri_lines, glob_of
from tests.support.net import wait_until

pytestmark = pytest.mark.integration


async def test_a_generation_born_and_rotated_between_scans_is_read(
    make_aggregator: MakeAggregator, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    output = tmp_path / "output"
    agg = make_aggregator(None, output={"type": "file", "directory": str(output)})
    await agg.start()
    logs = tmp_path / "logs"
    log = container_log(logs, "team-fast", "pod-1", body=cri_lines(0, 100, "first"))
    workdir = tmp_path / "fwd"
    fwd = DaemonProcess(
        "forwarder",
        workdir,
        # Scans only when asked: a rotation noticed by the tail, or a new link.
        forwarder_config(
            workdir, glob_of(logs), [input_address(agg)], source={"rescan_interval_s": 3600}
        ),
    )
    daemons.append(fwd)
    await fwd.start()
    await wait_until(lambda: len(ids(output)) == 100, timeout_s=60, what="the first file")

    # Two rotations back to back: the middle generation is never under the link at a scan.
    os.rename(log.path, log.path.with_name("0.log.20261130-000001"))
    log.path.write_bytes(cri_lines(0, 50, "middle"))
    os.rename(log.path, log.path.with_name("0.log.20261130-000002"))
    log.path.write_bytes(cri_lines(0, 10, "last"))

    await wait_until(
        lambda: len(ids(output)) == 160, timeout_s=60, what="all three generations", detail=fwd.tail
    )
    assert_exactly_once(output, [100, 50, 10])
    assert fwd.events("tail.rotated_unseen") or len(fwd.events("tail.opened")) == 3
    assert await fwd.stop() == 0
