"""The forwarder daemon end to end: real files -> forwarder -> aggregator -> OpenSearch."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_aggregator import MakeAggregator, make_aggregator, wait_count
from tests.support.daemon import DaemonProcess
from tests.support.opensearch_client import StoreReader

pytestmark = pytest.mark.integration
__all__ = ["make_aggregator"]
TS = "2026-11-25T19:50:31.{:09d}Z"


def cri_lines(first: int, count: int, tag: str) -> bytes:
    return b"".join(
        f"{TS.format(n)} stdout F {tag} line {n}\n".encode() for n in range(first, first + count)
    )


def docker_split_line(n: int, size: int) -> bytes:
    """One logical line of ``size`` bytes written as docker's 16 KB parts."""
    text = f"{n}:" + "d" * (size - len(str(n)) - 1)
    parts = [text[i : i + 16384] for i in range(0, len(text), 16384)]
    out = []
    for i, part in enumerate(parts):
        log = part + ("\n" if i == len(parts) - 1 else "")
        out.append(json.dumps({"log": log, "stream": "stderr", "time": TS.format(n)}) + "\n")
    return "".join(out).encode()


def forwarder(tmp_path: Path, logs: Path, agg_port: int) -> DaemonProcess:
    workdir = tmp_path / "fwd"
    return DaemonProcess(
        "forwarder",
        workdir,
        {
            "node_name": "node-it",
            "spool": {
                "directory": str(workdir / "spool"),
                "max_bytes": "64MiB",
                "segment_max_bytes": "4MiB",
            },
            "source": {
                "path_glob": str(logs / "*.log"),
                "rescan_interval_s": 1,
                "poll_interval_s": 0.05,
            },
            "sender": {"servers": [f"127.0.0.1:{agg_port}"], "ack_timeout_s": 10},
        },
    )


async def test_files_arrive_once_with_contiguous_seqs_across_rotation(
    opensearch: Any, make_aggregator: MakeAggregator, tmp_path: Path
) -> None:
    ns = f"fwd-{uuid.uuid4().hex[:8]}"
    agg = make_aggregator(opensearch.url)
    await agg.start()
    logs = tmp_path / "containers"
    pods = tmp_path / "pods"
    logs.mkdir()
    pods.mkdir()
    cri = pods / "cri-0.log"
    docker = pods / "docker-0.log"
    cri.write_bytes(cri_lines(0, 3000, "cri"))
    docker.write_bytes(
        b"".join(docker_split_line(n, 40_000 if n % 10 == 0 else 200) for n in range(300))
    )
    os.symlink(cri, logs / f"web-1_{ns}_app-{'a' * 64}.log")
    os.symlink(docker, logs / f"web-2_{ns}_app-{'b' * 64}.log")
    fwd = forwarder(tmp_path, logs, int(agg.config["input"]["listen_port"]))
    await fwd.start()
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{ns}-*", 3300, timeout_s=120)
    # kubelet-style rotation: rename, then the runtime writes a new 0.log behind the same link
    with cri.open("ab") as f:
        f.write(cri_lines(3000, 500, "cri"))
    os.rename(cri, pods / "cri-0.log.20261125")
    cri.write_bytes(cri_lines(0, 700, "cri-new"))
    await wait_count(store, f"logs-{ns}-*", 4500, timeout_s=120)
    hits = await store.search(f"logs-{ns}-*", size=10_000)
    assert len(hits) == 4500
    by_source: dict[str, list[int]] = {}
    for hit in hits:
        lf = hit["_source"]["_lf"]
        by_source.setdefault(lf["src"], []).append(lf["seq"])
    assert sorted(len(v) for v in by_source.values()) == [300, 700, 3500]
    for seqs in by_source.values():
        assert sorted(seqs) == list(range(len(seqs)))  # contiguous from 0, no duplicates
    big = [h["_source"]["log"] for h in hits if h["_source"]["log"].startswith("0:")]
    assert big == ["0:" + "d" * (40_000 - 2)]  # a 40 KB line split by docker, merged back
    assert await fwd.stop() == 0
    assert await agg.stop() == 0
