"""Checkpoint records (issue 19): their id and shape, how they count on the wire, when the book
says they are due, and, through a forwarder in this process (real files, a real spool), that
one never claims a seq that is not durable in the spool ahead of it."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest

from logferry.common.config import parse_config
from logferry.forwarder.app import Forwarder
from logferry.forwarder.checkpoints import (
    CheckpointBook,
    CheckpointState,
    Mark,
    checkpoint_entry,
    checkpoint_id,
)
from logferry.forwarder.config import ForwarderConfig, SenderSettings
from logferry.forwarder.entries import (
    block_count,
    block_records,
    block_stream,
    encode_blocks,
    kubernetes_raw,
    make_block,
)
from logferry.forwarder.parking import decode_payload
from logferry.forwarder.sender import Sender
from tests.support.forwarder_app import forwarder_running
from tests.support.kubelet import container_log, cri_lines, glob_of
from tests.support.net import wait_until
from tests.support.spool_damage import frames, segments

SRC = "0123456789abcdef0123"
KUBERNETES = {
    "namespace_name": "team-a",
    "pod_name": "web-1",
    "container_name": "app",
    "container_id": "c" * 64,
    "host": "n1",
}


def mark(state: CheckpointState = CheckpointState.OPEN, next_seq: int = 7, **kw: Any) -> Mark:
    return Mark(SRC, next_seq, state, "team-a", kubernetes_raw(KUBERNETES), **kw)


def unpack(block: bytes) -> list[list[Any]]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(block_stream(block))
    return list(unpacker)


# -- the record ---------------------------------------------------------------------------


def test_the_id_is_the_contracts_hash_stable_and_changed_by_every_field() -> None:
    digest = hashlib.blake2b(f"{SRC}|7|lost|12".encode(), digest_size=12).hexdigest()
    assert checkpoint_id(SRC, 7, "lost", 12) == f"ckpt-{digest}"
    assert checkpoint_id(SRC, 7, "lost", 12) == checkpoint_id(SRC, 7, "lost", 12)
    base = checkpoint_id(SRC, 7, "open", None)
    variants = [
        checkpoint_id("f" * 20, 7, "open", None),
        checkpoint_id(SRC, 8, "open", None),
        checkpoint_id(SRC, 7, "finished", None),
        checkpoint_id(SRC, 7, "lost", -1),
        checkpoint_id(SRC, 7, "lost", 3),
    ]
    assert len({base, *variants}) == 1 + len(variants)
    assert base == checkpoint_id(SRC, 7, "open", 0)  # no lost lines stand as 0 in the key


@pytest.mark.parametrize(
    ("given", "lf_rest"),
    [
        pytest.param(mark(), {}, id="open"),
        pytest.param(
            mark(CheckpointState.FINISHED, reason="rotated"), {"reason": "rotated"}, id="finished"
        ),
        pytest.param(
            mark(CheckpointState.LOST, reason="gone_while_down", lost_lines=-1),
            {"lost_lines": -1, "reason": "gone_while_down"},
            id="lost",
        ),
        # an open checkpoint says no reason and no lost lines, whatever it was built with
        pytest.param(mark(reason="shutdown", lost_lines=4), {}, id="open-strips"),
    ],
)
def test_a_checkpoint_entry_decodes_to_exactly_the_contract(
    given: Mark, lf_rest: dict[str, Any]
) -> None:
    before = time.time_ns()
    (block,) = encode_blocks([checkpoint_entry(given, "n1", time.time_ns())], 100, 1 << 20)
    ((stamp, record),) = unpack(block)
    assert isinstance(stamp, msgpack.ExtType)
    assert stamp.code == 0  # EventTime
    seconds = int.from_bytes(stamp.data[:4], "big")
    assert before // 10**9 <= seconds <= time.time_ns() // 10**9
    lost = lf_rest.get("lost_lines")
    expected_lf = {
        "kind": "checkpoint",
        "id": checkpoint_id(SRC, 7, given.state.value, lost),
        "src": SRC,
        "next_seq": 7,
        "state": given.state.value,
        **lf_rest,
        "node": "n1",
    }
    assert record == {"kubernetes": KUBERNETES, "_lf": expected_lf}
    assert list(record) == ["kubernetes", "_lf"]
    assert list(record["_lf"]) == list(expected_lf)  # the contract's order


def test_a_checkpoint_block_counts_on_the_wire_and_not_as_records() -> None:
    entries = [checkpoint_entry(mark(next_seq=n), "n1", time.time_ns()) for n in range(3)]
    (checkpoints,) = encode_blocks(entries, 100, 1 << 20, checkpoints=True)
    logs = make_block(msgpack.packb([0, {"log": "x"}]) * 5, 5)
    assert (block_count(checkpoints), block_records(checkpoints)) == (3, 0)
    assert (block_count(logs), block_records(logs)) == (5, 5)
    sender = Sender(SenderSettings(servers=["127.0.0.1:1"]), object(), node_name="n1")  # type: ignore[arg-type]

    class Batch:
        first_seq = 0
        records = [logs, checkpoints]

    chunk = sender._encode(Batch())  # type: ignore[arg-type]
    _tag, stream, size = decode_payload(chunk.payload)
    assert size == chunk.entries == 8  # the option ``size``: every entry sent
    assert chunk.records == 5  # what records_acked counts
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(stream)
    assert len(list(unpacker)) == 8


# -- when they are due --------------------------------------------------------------------


def open_marks(**seqs: int) -> list[Mark]:
    return [Mark(src, n, CheckpointState.OPEN, "ns", kubernetes_raw({})) for src, n in seqs.items()]


def test_an_interval_emits_one_per_advanced_source_and_none_for_idle_ones() -> None:
    book = CheckpointBook(60, now=1000.0)
    tailed = {"a": 5, "b": 0, "c": 9}
    assert book.collect(1059.0, lambda: open_marks(**tailed)) == []  # not due yet
    first = book.collect(1060.0, lambda: open_marks(**tailed))
    # a source never checkpointed and at 0 gets none
    assert [(m.src, m.next_seq) for m in first] == [("a", 5), ("c", 9)]
    book.written(first)
    assert book.collect(1061.0, lambda: open_marks(**tailed)) == []  # the next interval only
    tailed["a"] = 8
    second = book.collect(1121.0, lambda: open_marks(**tailed))
    assert [(m.src, m.next_seq) for m in second] == [("a", 8)]  # c is idle: nothing
    # not written (the spool was full): said again at the next interval, never in between
    assert book.collect(1122.0, lambda: open_marks(**tailed)) == []
    assert [m.src for m in book.collect(1181.0, lambda: open_marks(**tailed))] == ["a"]
    # shutdown: every source that advanced, due or not
    assert [m.src for m in book.collect(1182.0, lambda: open_marks(**tailed), final=True)] == ["a"]


def test_an_ended_source_is_said_once_and_kept_until_written() -> None:
    book = CheckpointBook(60, now=0.0)
    finished = Mark("a", 4, CheckpointState.FINISHED, "ns", kubernetes_raw({}), reason="rotated")
    book.ended(finished)
    assert book.collect(1.0, list) == [finished]
    assert book.collect(2.0, list) == [finished]  # the spool did not take it: again
    book.written([finished])
    assert book.collect(3.0, list) == []
    assert book.last("a") is None


def test_an_excluded_source_never_gets_one_and_zero_turns_them_off() -> None:
    book = CheckpointBook(1, now=0.0)
    book.exclude("a")
    assert [m.src for m in book.collect(5.0, lambda: open_marks(a=3, b=2))] == ["b"]
    book.ended(Mark("a", 3, CheckpointState.FINISHED, "ns", kubernetes_raw({}), reason="rotated"))
    assert book.collect(5.0, list) == []
    off = CheckpointBook(0, now=0.0)
    off.ended(Mark("a", 3, CheckpointState.LOST, "ns", kubernetes_raw({}), lost_lines=-1))
    assert off.collect(1e9, lambda: open_marks(a=3), final=True) == []


# -- through a forwarder ------------------------------------------------------------------


def spooled(spool: Path) -> list[tuple[bool, dict[str, Any]]]:
    """(flagged as checkpoints, record) of every entry in the spool, in spool order."""
    out: list[tuple[bool, dict[str, Any]]] = []
    if not spool.is_dir():
        return out  # not opened yet
    for segment in segments(spool):
        for _offset, _size, blocks in frames(segment):
            for block in blocks:
                flagged = block_records(block) == 0
                out += [(flagged, record) for _time, record in unpack(block)]
    return out


def checkpoints_in(spool: Path) -> list[dict[str, Any]]:
    return [r["_lf"] for _f, r in spooled(spool) if r["_lf"].get("kind") == "checkpoint"]


def forwarder_with(root: Path, extra: str) -> Forwarder:
    config = parse_config(
        f"""
node_name: n1
spool: {{directory: {root / "spool"}}}
source: {{path_glob: {glob_of(root)}, poll_interval_s: 0.05}}
sender: {{servers: ["127.0.0.1:1"], shutdown_deadline_s: 0}}
http: {{listen_host: 127.0.0.1, listen_port: 0}}
{extra}
""",
        ForwarderConfig,
    )
    return Forwarder(config)


def counter(forwarder: Forwarder, name: str, **labels: str) -> float:
    return forwarder.registry.get_sample_value(name, labels) or 0.0


async def checkpoint_at(spool: Path, next_seq: int) -> None:
    await wait_until(
        lambda: any(c["next_seq"] == next_seq for c in checkpoints_in(spool)),
        timeout_s=20,
        what=f"a checkpoint at {next_seq}",
    )


async def test_interval_checkpoints_follow_their_records_and_skip_idle_sources(
    tmp_path: Path,
) -> None:
    busy = container_log(tmp_path, "team-a", "busy", body=cri_lines(0, 40, "busy"))
    container_log(tmp_path, "team-b", "idle", body=cri_lines(0, 3, "idle"))
    forwarder = forwarder_with(tmp_path, "checkpoints: {interval_s: 0.2}")
    spool = tmp_path / "spool"
    written = 40
    async with forwarder_running(forwarder):
        for _round in range(3):
            await checkpoint_at(spool, written)
            with busy.path.open("ab") as f:
                f.write(cri_lines(written, 25, "busy"))
            written += 25
        await checkpoint_at(spool, written)
    entries = spooled(spool)
    seen: dict[str, int] = {}
    said: dict[str, list[int]] = {}
    for flagged, record in entries:
        lf = record["_lf"]
        if lf.get("kind") != "checkpoint":
            assert not flagged
            assert lf["seq"] == seen.get(lf["src"], 0)  # no record spooled twice here
            seen[lf["src"]] = lf["seq"] + 1
            continue
        assert flagged
        # every seq below next_seq is in the spool ahead of it: never more (here, exactly)
        assert lf["next_seq"] == seen.get(lf["src"], 0)
        assert lf["state"] == "open"
        assert "seq" not in lf
        said.setdefault(lf["src"], []).append(lf["next_seq"])
    idle, busy_said = sorted(said.values(), key=len)
    assert idle == [3]  # said once, then idle: never again (nor at shutdown)
    assert busy_said == sorted(set(busy_said))  # only when it advanced
    assert {40, 65, 90, 115} <= set(busy_said)
    assert busy_said[-1] == 115
    assert counter(forwarder, "logferry_checkpoints_total", tenant="team-a") == len(busy_said)
    assert counter(forwarder, "logferry_checkpoints_total", tenant="team-b") == 1
    assert counter(forwarder, "logferry_records_spooled_total") == 118
    assert counter(forwarder, "logferry_lines_read_total", tenant="team-a") == 115


def cri_at(text: str, at_s: float) -> bytes:
    stamp = datetime.fromtimestamp(at_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return f"{stamp}000Z stdout F {text}\n".encode()


async def test_a_multiline_group_still_held_is_not_covered(tmp_path: Path) -> None:
    # Lines stamped an hour ago: the joiner lets the last one go at the first idle read.
    old = time.time() - 3600
    log = container_log(
        tmp_path, "team-a", "java", body=cri_at("INFO one", old) + cri_at("INFO two", old)
    )
    forwarder = forwarder_with(
        tmp_path,
        "checkpoints: {interval_s: 0.1}\nmultiline: {default: java, flush_timeout_s: 60}",
    )
    spool = tmp_path / "spool"
    async with forwarder_running(forwarder):
        await checkpoint_at(spool, 2)
        # A trace now: its group (seqs 3 and 4) stays open in the joiner for a minute, past
        # the shutdown; the line before it (seq 2) is spooled in the same read.
        now = time.time()
        lines = ["INFO three", "ERROR boom", "java.lang.IllegalStateException: x"]
        with log.path.open("ab") as f:
            f.write(b"".join(cri_at(text, now) for text in lines))
        await wait_until(
            lambda: counter(forwarder, "logferry_records_spooled_total") == 3,
            timeout_s=20,
            what="INFO three spooled",
        )
    logs = [r["log"] for _f, r in spooled(spool) if "kind" not in r["_lf"]]
    assert logs == ["INFO one", "INFO two", "INFO three"]
    assert counter(forwarder, "logferry_lines_read_total", tenant="team-a") == 5
    # Neither an interval nor the shutdown claimed the group's seqs (the reader had them
    # numbered): next_seq never went past the position, which stays before the group.
    assert [c["next_seq"] for c in checkpoints_in(spool)] == [2]
    (state,) = forwarder.positions.all()
    assert state.next_seq == 2


async def test_a_rotated_file_gets_its_finished_checkpoint_at_its_last_seq(
    tmp_path: Path,
) -> None:
    log = container_log(tmp_path, "team-a", "web", body=cri_lines(0, 30, "one"))
    forwarder = forwarder_with(tmp_path, "checkpoints: {interval_s: 3600}")
    spool = tmp_path / "spool"
    async with forwarder_running(forwarder):
        await wait_until(
            lambda: counter(forwarder, "logferry_records_spooled_total") == 30,
            timeout_s=20,
            what="the first lines spooled",
        )
        with log.path.open("ab") as f:
            f.write(cri_lines(30, 12, "one"))
        log.path.rename(log.path.with_name("0.log.20261125-000000"))
        log.path.write_bytes(cri_lines(0, 5, "two"))
        await wait_until(
            lambda: any(c["state"] == "finished" for c in checkpoints_in(spool)),
            timeout_s=30,
            what="the finished checkpoint",
        )
    entries = [r["_lf"] for _f, r in spooled(spool)]
    (finished,) = [lf for lf in entries if lf.get("state") == "finished"]
    assert (finished["next_seq"], finished["reason"]) == (42, "rotated")
    assert "lost_lines" not in finished
    ahead = entries[: entries.index(finished)]
    assert sorted(lf["seq"] for lf in ahead if lf["src"] == finished["src"]) == list(range(42))


async def test_a_deleted_file_gets_its_finished_checkpoint_as_deleted(tmp_path: Path) -> None:
    log = container_log(tmp_path, "team-a", "web", body=cri_lines(0, 20, "one"))
    forwarder = forwarder_with(tmp_path, "checkpoints: {interval_s: 3600}")
    spool = tmp_path / "spool"
    async with forwarder_running(forwarder):
        await wait_until(
            lambda: counter(forwarder, "logferry_records_spooled_total") == 20,
            timeout_s=20,
            what="the lines spooled",
        )
        log.path.unlink()  # the pod is gone: its log with it
        log.link.unlink()
        await wait_until(
            lambda: any(c["state"] == "finished" for c in checkpoints_in(spool)),
            timeout_s=30,
            what="the finished checkpoint",
        )
    (finished,) = checkpoints_in(spool)  # and no shutdown checkpoint for a finished source
    assert (finished["next_seq"], finished["state"], finished["reason"]) == (
        20,
        "finished",
        "deleted",
    )
