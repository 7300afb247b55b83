"""The forwarder daemon end to end: real files -> forwarder -> aggregator -> OpenSearch."""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.aggregator import MakeAggregator, input_port
from tests.support.blackhole import BlackHole
from tests.support.daemon import DaemonProcess
from tests.support.forwarder_daemon import forwarder_config
from tests.support.kubelet import CRI_TIME, container_log, cri_lines
from tests.support.net import wait_until
from tests.support.opensearch_client import StoreReader, wait_count

pytestmark = pytest.mark.integration


def docker_split_line(n: int, size: int) -> bytes:
    """One logical line of ``size`` bytes written as docker's 16 KB parts."""
    text = f"{n}:" + "d" * (size - len(str(n)) - 1)
    parts = [text[i : i + 16384] for i in range(0, len(text), 16384)]
    out = []
    for i, part in enumerate(parts):
        log = part + ("\n" if i == len(parts) - 1 else "")
        out.append(json.dumps({"log": log, "stream": "stderr", "time": CRI_TIME.format(n)}) + "\n")
    return "".join(out).encode()


MakeForwarder = Callable[[Path, int], DaemonProcess]


@pytest.fixture
def make_forwarder(tmp_path: Path, daemons: list[DaemonProcess]) -> MakeForwarder:
    """``make(logs, agg_port)``: the node's forwarder (not started) tailing ``logs/*.log``
    and sending to the aggregator on ``agg_port``; killed at the end if still running."""

    def make(logs: Path, agg_port: int) -> DaemonProcess:
        workdir = tmp_path / "fwd"
        daemon = DaemonProcess(
            "forwarder",
            workdir,
            forwarder_config(workdir, str(logs / "*.log"), [f"127.0.0.1:{agg_port}"]),
        )
        daemons.append(daemon)
        return daemon

    return make


async def test_files_arrive_once_with_contiguous_seqs_across_rotation(
    opensearch: Any,
    make_aggregator: MakeAggregator,
    make_forwarder: MakeForwarder,
    tmp_path: Path,
) -> None:
    ns = f"fwd-{uuid.uuid4().hex[:8]}"
    agg = make_aggregator(opensearch.url)
    await agg.start()
    node = tmp_path / "node"  # kubelet's layout: containers/*.log -> pods/<ns>_<pod>_<uid>/...
    logs = node / "containers"
    cri = container_log(node, ns, "web-1", body=cri_lines(0, 3000, "cri")).path
    docker_body = b"".join(docker_split_line(n, 40_000 if n % 10 == 0 else 200) for n in range(300))
    container_log(node, ns, "web-2", body=docker_body)
    fwd = make_forwarder(logs, input_port(agg))
    await fwd.start()
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{ns}-*", 3300, timeout_s=120)
    # kubelet-style rotation: rename, then the runtime writes a new 0.log behind the same link
    with cri.open("ab") as f:
        f.write(cri_lines(3000, 500, "cri"))
    os.rename(cri, cri.with_name("0.log.20261125"))
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
    assert await fwd.metric("logferry_partial_merges_total") == 30  # the 30 lines over 16 KB
    assert await fwd.metric("logferry_records_spooled_total") >= 4500
    assert await fwd.metric("logferry_sender_records_acked_total") >= 4500
    assert await fwd.stop() == 0
    assert await agg.stop() == 0


async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    opensearch: Any,
    make_aggregator: MakeAggregator,
    make_forwarder: MakeForwarder,
    tmp_path: Path,
) -> None:
    kills = 40 if os.environ.get("CHAOS_LONG") else 20
    ns = f"kill-{uuid.uuid4().hex[:8]}"
    agg = make_aggregator(opensearch.url)
    await agg.start()
    logs = tmp_path / "node" / "containers"
    files = [container_log(tmp_path / "node", ns, f"pod-{i}").path for i in range(3)]
    written = [0, 0, 0]
    rng = random.Random(7)

    async def write_some() -> None:
        for i, path in enumerate(files):
            count = rng.randint(50, 400)
            with path.open("ab") as f:
                f.write(cri_lines(written[i], count, f"f{i}"))
            written[i] += count

    fwd = make_forwarder(logs, input_port(agg))
    for _ in range(kills):
        await write_some()
        fwd.spawn()
        await asyncio.sleep(rng.uniform(0.05, 1.5))  # the fault's timing, not synchronisation
        await write_some()
        fwd.kill()
    await write_some()
    await fwd.start()
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{ns}-*", sum(written), timeout_s=180)
    assert await store.count(f"logs-{ns}-*") == sum(written)
    stats = await store.seq_stats(f"logs-{ns}-*")
    # per source: every seq from 0 to the last, each exactly once
    assert sorted(count for count, _lo, _hi, _doubled in stats.values()) == sorted(written)
    for count, lo, hi, doubled in stats.values():
        assert (lo, hi, doubled) == (0, count - 1, 0)
    assert await fwd.stop() == 0
    await agg.stop()


async def setup_one_file(
    tmp_path: Path,
    ns: str,
    make_aggregator: MakeAggregator,
    make_forwarder: MakeForwarder,
    opensearch: Any,
) -> tuple[DaemonProcess, DaemonProcess, Path, StoreReader]:
    agg = make_aggregator(opensearch.url)
    await agg.start()
    logs = tmp_path / "node" / "containers"
    path = container_log(tmp_path / "node", ns, "web-0", body=cri_lines(0, 1000, "one")).path
    fwd = make_forwarder(logs, input_port(agg))
    await fwd.start()
    store = StoreReader(opensearch.url)
    await wait_count(store, f"logs-{ns}-*", 1000, timeout_s=120)
    return agg, fwd, path, store


async def assert_sources(store: StoreReader, ns: str, expected: list[int]) -> None:
    await wait_count(store, f"logs-{ns}-*", sum(expected), timeout_s=120)
    assert await store.count(f"logs-{ns}-*") == sum(expected)
    stats = await store.seq_stats(f"logs-{ns}-*")
    assert sorted(count for count, *_rest in stats.values()) == sorted(expected)
    for count, lo, hi, doubled in stats.values():
        assert (lo, hi, doubled) == (0, count - 1, 0)


async def test_rotation_while_stopped_is_drained_from_the_saved_position(
    opensearch: Any,
    make_aggregator: MakeAggregator,
    make_forwarder: MakeForwarder,
    tmp_path: Path,
) -> None:
    ns = f"rot-{uuid.uuid4().hex[:8]}"
    agg, fwd, path, store = await setup_one_file(
        tmp_path, ns, make_aggregator, make_forwarder, opensearch
    )
    assert await fwd.stop() == 0
    with path.open("ab") as f:
        f.write(cri_lines(1000, 400, "one"))  # written after we stopped, then rotated away
    os.rename(path, path.with_name("0.log.20261125-000000"))
    path.write_bytes(cri_lines(0, 300, "two"))
    await fwd.start()
    await assert_sources(store, ns, [1400, 300])
    assert await fwd.stop() == 0
    await agg.stop()


async def test_a_file_born_and_rotated_while_stopped_is_read_whole(
    opensearch: Any,
    make_aggregator: MakeAggregator,
    make_forwarder: MakeForwarder,
    tmp_path: Path,
) -> None:
    # A fast writer rotates within a forwarder restart: the file in between was created and
    # rotated away while no forwarder ran, so no position knows it (a chaos run lost 4,378
    # lines this way). It is found beside its container's log and read whole.
    ns = f"born-{uuid.uuid4().hex[:8]}"
    agg, fwd, path, store = await setup_one_file(
        tmp_path, ns, make_aggregator, make_forwarder, opensearch
    )
    assert await fwd.stop() == 0
    with path.open("ab") as f:
        f.write(cri_lines(1000, 400, "one"))
    os.rename(path, path.with_name("0.log.20261125-000000"))
    path.write_bytes(cri_lines(0, 250, "two"))  # born while stopped...
    os.rename(path, path.with_name("0.log.20261125-000001"))  # ...and rotated away
    path.write_bytes(cri_lines(0, 300, "three"))
    await fwd.start()
    await assert_sources(store, ns, [1400, 250, 300])
    assert await fwd.metric("logferry_sources_found_rotated_total") == 1
    assert fwd.events("tail.rotated_unseen")
    assert await fwd.stop() == 0
    await agg.stop()


async def test_rename_rotation_every_few_megabytes_under_steady_writes(
    opensearch: Any,
    make_aggregator: MakeAggregator,
    make_forwarder: MakeForwarder,
    tmp_path: Path,
) -> None:
    ns = f"rr-{uuid.uuid4().hex[:8]}"
    agg, fwd, path, store = await setup_one_file(
        tmp_path, ns, make_aggregator, make_forwarder, opensearch
    )
    counts = [1000]  # lines per file generation; the first already holds 1000
    rotated: list[Path] = []
    filler = "r" * 150
    for generation in range(7):
        size = path.stat().st_size
        with path.open("ab") as f:
            while size < 2 * 1024 * 1024:
                n = counts[-1]
                batch = "".join(
                    f"{CRI_TIME.format(i)} stdout F g{generation} line {i} {filler}\n"
                    for i in range(n, n + 50)
                ).encode()
                f.write(batch)
                f.flush()
                size += len(batch)
                counts[-1] += 50
                await asyncio.sleep(0.01)  # paces the writer at about 1 MB/s; waits for nothing
        if generation == 6:
            break
        # kubelet: rename, a new 0.log behind the same link, the oldest rotated file deleted
        rotated.append(path.with_name(f"0.log.2026112{generation}"))
        os.rename(path, rotated[-1])
        path.write_bytes(b"")
        counts.append(0)
        if len(rotated) > 2:
            os.unlink(rotated.pop(0))
    await assert_sources(store, ns, counts)
    assert await fwd.metric("logferry_rotations_total") >= 6
    assert await fwd.metric("logferry_sources_lost_total") == 0
    assert await fwd.stop() == 0
    await agg.stop()


async def test_inode_reuse_while_stopped_is_read_as_a_new_source(
    opensearch: Any,
    make_aggregator: MakeAggregator,
    make_forwarder: MakeForwarder,
    tmp_path: Path,
) -> None:
    ns = f"ino-{uuid.uuid4().hex[:8]}"
    agg, fwd, path, store = await setup_one_file(
        tmp_path, ns, make_aggregator, make_forwarder, opensearch
    )
    assert await fwd.stop() == 0
    old = path.stat()
    os.unlink(path)
    # ext4 and tmpfs hand a freed inode number to the next file; hold on to any other one.
    for attempt in range(20):
        path.write_bytes(cri_lines(0, 1500, "two"))  # longer than the saved position
        if (path.stat().st_dev, path.stat().st_ino) == (old.st_dev, old.st_ino):
            break
        os.rename(path, path.with_name(f"held-{attempt}"))
    else:
        pytest.skip("this filesystem did not reuse the inode number")
    await fwd.start()
    # Same device and inode, other content: the head fingerprint makes it a new source read
    # from 0; resuming at the old offset would skip its first 1000 lines.
    await assert_sources(store, ns, [1000, 1500])
    assert await fwd.stop() == 0
    await agg.stop()


async def test_copytruncate_starts_a_new_generation(
    opensearch: Any,
    make_aggregator: MakeAggregator,
    make_forwarder: MakeForwarder,
    tmp_path: Path,
) -> None:
    ns = f"ct-{uuid.uuid4().hex[:8]}"
    agg, fwd, path, store = await setup_one_file(
        tmp_path, ns, make_aggregator, make_forwarder, opensearch
    )
    with path.open("r+b") as f:
        f.truncate(0)  # logrotate's copytruncate: the copy is not ours to read
    with path.open("ab") as f:
        f.write(cri_lines(0, 250, "after-truncate"))
    await assert_sources(store, ns, [1000, 250])
    assert await fwd.stop() == 0
    await agg.stop()


async def test_one_aggregator_killed_and_one_blackholed_everything_arrives_via_the_third(
    opensearch: Any,
    make_aggregator: MakeAggregator,
    make_forwarder: MakeForwarder,
    tmp_path: Path,
) -> None:
    ns = f"ha-{uuid.uuid4().hex[:8]}"
    first = make_aggregator(opensearch.url, name="agg-1")
    second = make_aggregator(opensearch.url, name="agg-2")
    await first.start()
    await second.start()

    hole = BlackHole()  # accepts and reads everything, acks nothing
    await hole.start()
    logs = tmp_path / "node" / "containers"
    path = container_log(tmp_path / "node", ns, "web-0").path
    ports = [input_port(a) for a in (first, second)]
    fwd = make_forwarder(logs, ports[0])
    fwd.config["sender"] = {
        "servers": [*(f"127.0.0.1:{p}" for p in ports), hole.address],
        "ack_timeout_s": 2,
        "batch_max_records": 200,
    }
    await fwd.start()
    written = 0
    for round_no in range(10):
        with path.open("ab") as f:
            f.write(cri_lines(written, 500, "ha"))
        written += 500
        if round_no == 3:
            first.kill()  # mid-stream
        await asyncio.sleep(0.2)  # the writer's pace, not synchronisation
    store = StoreReader(opensearch.url)
    await assert_sources(store, ns, [written])
    assert await fwd.metric("logferry_sender_chunks_retried_total") >= 1
    assert await fwd.stop() == 0
    await second.stop()
    await hole.stop()


async def test_spool_full_with_aggregators_down_pauses_tailing_then_everything_arrives(
    opensearch: Any,
    make_aggregator: MakeAggregator,
    make_forwarder: MakeForwarder,
    tmp_path: Path,
) -> None:
    ns = f"full-{uuid.uuid4().hex[:8]}"
    agg = make_aggregator(opensearch.url)
    port = input_port(agg)  # not started yet: nothing listens
    logs = tmp_path / "node" / "containers"
    path = container_log(tmp_path / "node", ns, "web-0").path
    # ~14 MB of lines that do not compress away (the spool holds compressed blocks): 2 MiB of
    # spool holds well under half of them.
    noise = os.urandom(50 * 100_000).hex()
    path.write_bytes(
        b"".join(
            f"{CRI_TIME.format(n)} stdout F {noise[n * 100 : n * 100 + 100]} line {n}\n".encode()
            for n in range(100_000)
        )
    )
    fwd = make_forwarder(logs, port)
    fwd.config["spool"] = {
        "directory": str(tmp_path / "fwd" / "spool"),
        "max_bytes": "2MiB",
        "segment_max_bytes": "1MiB",
    }
    await fwd.start()

    async def paused() -> bool:
        return (
            await fwd.metric("logferry_node_spool_bytes") >= 1024 * 1024
            and await fwd.metric("logferry_lag_bytes") > 0
        )

    await wait_until(paused, timeout_s=60, what="a full spool and a growing lag")
    lag = await fwd.metric("logferry_lag_bytes")
    assert lag > 5 * 1024 * 1024  # tailing waits instead of reading (and dropping) more
    await agg.start()
    store = StoreReader(opensearch.url)
    await assert_sources(store, ns, [100_000])
    assert await fwd.metric("logferry_lag_bytes") == 0
    assert await fwd.stop() == 0
    await agg.stop()
