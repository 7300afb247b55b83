"""What a hostile tenant sends an aggregator, and an honest tenant that must not notice.

Shared by tests/adversarial (which assert on it) and bench/bench_adversarial.py (which prints
it). Each attack runs against a real aggregator process while :class:`HonestTenant` keeps
sending small chunks of its own from another source address and records how long each ack
took; afterwards the honest tenant's records must all be in the store, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from logferry.common.errors import HandshakeError
from logferry.common.protocol import (
    EventTime,
    encode_compressed_packed_forward,
    encode_packed_forward,
    pack_entries,
)
from logferry.common.units import MiB
from tests.support.aggregator import input_port
from tests.support.daemon import DaemonProcess, process_tree
from tests.support.forward_client import ForwardClient
from tests.support.net import free_port, wait_until
from tests.support.records import compressed_chunk, container_entries

SHARED_KEY = "adversarial-test-key"
HONEST_SOURCE = "127.0.0.2"
"""The honest tenant connects from here; attackers from 127.0.0.1 (Linux routes 127/8 to lo)."""


def aggregator_config(workdir: Path, store_url: str, **input_overrides: Any) -> dict[str, Any]:
    """An aggregator with its defaults for everything an attacker can reach, a shared key,
    and short timeouts so a test does not wait minutes for a slow peer to be cut."""
    return {
        "input": {
            "listen_host": "127.0.0.1",
            "listen_port": free_port(),
            "shared_key": SHARED_KEY,
            "message_timeout_s": 5,
            "handshake_timeout_s": 2,
            **input_overrides,
        },
        "spool": {
            "directory": str(workdir / "spool"),
            "max_bytes": "512MiB",
            "tenant_max_bytes": "128MiB",
            "segment_max_bytes": "8MiB",
        },
        "dlq": {"directory": str(workdir / "dlq")},
        "output": {"type": "opensearch", "urls": [store_url], "retry_max_s": 1.0},
        "shutdown_deadline_s": 10,
    }


def rss_bytes(pid: int) -> tuple[int, int]:
    """(current, peak) resident set size of ``pid``."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak_rss(pid: int) -> None:
    """Start measuring the peak RSS afresh (Linux: write 5 to clear_refs; needs root)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class HonestTenant:
    """Sends one small chunk of its own namespace at a time, from another source address, and
    times the acks, until stopped."""

    port: int
    namespace: str = field(default_factory=lambda: f"honest-{uuid.uuid4().hex[:8]}")
    sent: int = 0
    latencies_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            entries = container_entries(self.namespace, 20, start_seq=seq, src=self.namespace)
            chunk = f"{self.namespace}-{seq}"
            began = time.monotonic()
            try:
                async with ForwardClient(
                    "127.0.0.1", self.port, shared_key=SHARED_KEY, local_host=HONEST_SOURCE
                ) as client:
                    await client.send(compressed_chunk(entries, chunk))
                    await client.wait_ack(chunk, timeout_s=30)
            except (OSError, TimeoutError, AssertionError) as exc:
                self.failures.append(f"{chunk}: {type(exc).__name__}: {exc}")
                continue
            self.latencies_s.append(time.monotonic() - began)
            seq += len(entries)
            self.sent = seq
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.1)

    @property
    def max_latency_s(self) -> float:
        return max(self.latencies_s, default=0.0)


# -- attacks ---------------------------------------------------------------------------------


async def _authenticated(port: int) -> ForwardClient:
    client = ForwardClient("127.0.0.1", port, shared_key=SHARED_KEY)
    await client.connect()
    return client


def gzip_bomb(inflated_bytes: int) -> bytes:
    """A CompressedPackedForward message whose gzip inflates to ``inflated_bytes``: one
    record with a huge ``log`` string, compressed piece by piece (never held whole here)."""
    header = b"\x92" + msgpack.packb(EventTime(1_764_000_000, 0)) + b"\x81\xa3log"
    text_len = inflated_bytes - len(header) - 5
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [deflate.compress(header + b"\xdb" + text_len.to_bytes(4, "big"))]
    piece = b"a" * MiB
    left = text_len
    while left > 0:
        parts.append(deflate.compress(piece[: min(left, len(piece))]))
        left -= len(piece)
    parts.append(deflate.flush())
    return encode_compressed_packed_forward("evil", b"", 1, chunk="bomb", gzipped=b"".join(parts))


async def attack_gzip_bomb(port: int) -> str:
    """398 KiB on the wire that inflate to 400 MiB."""
    bomb = await asyncio.to_thread(gzip_bomb, 400 * MiB)  # seconds of CPU: not on our loop
    client = await _authenticated(port)
    try:
        await client.send(bomb)
        return "closed" if await client.read_eof(30) else "open"
    finally:
        await client.close()


def tiny_objects_message(entries: int, entry_bytes: int, *, compressed: bool) -> bytes:
    """Entries made of one-byte empty maps: each byte a Python dict if decoded at once."""
    empties = b"\xdc" + (entry_bytes).to_bytes(2, "big") + b"\x80" * entry_bytes
    entry = b"\x92" + msgpack.packb(EventTime(1_764_000_000, 0)) + b"\x81\xa1e" + empties
    packed = entry * entries
    if compressed:
        return encode_compressed_packed_forward("evil", packed, entries, chunk="tiny")
    return encode_packed_forward("evil", packed, entries, chunk="tiny")


async def attack_tiny_objects(port: int) -> str:
    """An 8 MiB message of empty maps, then 16 MiB of them gzipped: 24 million in all."""
    plain = await asyncio.to_thread(tiny_objects_message, 120, 65_000, compressed=False)
    packed = await asyncio.to_thread(tiny_objects_message, 250, 65_000, compressed=True)
    client = await _authenticated(port)
    try:
        await client.send(plain)
        await client.wait_ack("tiny", timeout_s=60)
        await client.send(packed)
        await client.wait_ack("tiny", timeout_s=60)
        return "acked"
    finally:
        await client.close()


def deep_record(depth: int) -> dict[str, Any]:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"d": value}
    return {"kubernetes": {"namespace_name": "deep-tenant"}, "payload": value}


async def attack_poison_record(port: int, namespace: str) -> str:
    """A chunk of 100 good records with one nested 600 levels in the middle."""
    entries = container_entries(namespace, 100, src=namespace)
    poisoned = [*entries[:50], (EventTime(int(time.time()), 0), deep_record(600)), *entries[50:]]
    packed = pack_entries(poisoned)
    client = await _authenticated(port)
    try:
        await client.send(encode_packed_forward("mixed", packed, len(poisoned), chunk="poison"))
        await client.wait_ack("poison", timeout_s=30)
        return "acked"
    finally:
        await client.close()


async def attack_slow_senders(port: int, connections: int = 40) -> str:
    """Many connections that begin an 8 MiB message and send it at a crawl."""
    head = encode_packed_forward("slow", b"\x00" * (7 * MiB), 1, chunk="slow")[: 200 * 1024]
    clients: list[ForwardClient] = []
    try:
        for _ in range(connections):
            client = await _authenticated(port)
            clients.append(client)
            await client.send(head[: 100 * 1024])
        closed = 0
        for _ in range(20):
            await asyncio.sleep(0.5)  # the attack's own pace, not a wait for a condition
            for client in clients:
                with contextlib.suppress(OSError):
                    await client.send(b"\x00" * 64)
        for client in clients:
            closed += await client.read_eof(10)
        return f"{closed} of {connections} closed"
    finally:
        for client in clients:
            await client.close()


async def attack_many_connections(port: int, connections: int = 200) -> str:
    """More connections from one address than it may hold."""
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(connections):
            opened.append(await asyncio.open_connection("127.0.0.1", port))

        async def first_bytes(reader: asyncio.StreamReader) -> bytes:
            try:
                return await asyncio.wait_for(reader.read(4096), 5)
            except (ConnectionError, TimeoutError):
                return b""

        # A refused connection is closed at once; an accepted one gets its HELO.
        answers = await asyncio.gather(*(first_bytes(reader) for reader, _w in opened))
        refused = sum(1 for answer in answers if answer == b"")
        return f"{refused} of {connections} refused"
    finally:
        for _reader, writer in opened:
            writer.close()


async def attack_bad_handshakes(port: int) -> str:
    """Garbage instead of a PING, a PING too large, silence, and a wrong key."""
    outcomes = []
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.read(4096)  # HELO
    writer.write(os.urandom(8192))
    outcomes.append("garbage:" + ("closed" if await reader.read(4096) == b"" else "open"))
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.read(4096)
    writer.write(b"\x96\xa4PING" + b"\xdb" + (5 * MiB).to_bytes(4, "big") + b"x" * 8192)
    outcomes.append("oversized:" + ("closed" if await reader.read(4096) == b"" else "open"))
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.read(4096)
    began = time.monotonic()
    silent = await asyncio.wait_for(reader.read(4096), 30)
    outcomes.append(
        f"silent:{'closed' if silent == b'' else 'open'}:{time.monotonic() - began:.1f}s"
    )
    writer.close()
    wrong = ForwardClient("127.0.0.1", port, shared_key="not-the-key")
    try:
        await wrong.connect()
        outcomes.append("wrong key:accepted")
    except HandshakeError:
        digest = wrong.pong.shared_key_hexdigest if wrong.pong is not None else "?"
        outcomes.append(f"wrong key:refused:digest={digest or 'none'}")
    return ", ".join(outcomes)


async def attack_times_and_names(port: int) -> str:
    """Event times of 1970 and 2100, and namespaces that only look like one."""
    now = int(time.time())
    records = [
        (0, {"log": "1970", "kubernetes": {"namespace_name": "time-tenant"}}),
        (4_102_444_800, {"log": "2100", "kubernetes": {"namespace_name": "time-tenant"}}),
        (now, {"log": "nl", "kubernetes": {"namespace_name": "team-a\n"}}),
        (now, {"log": "dots", "kubernetes": {"namespace_name": "../etc"}}),
        (now, {"log": "long", "kubernetes": {"namespace_name": "a" * 64}}),
        (now, {"log": "upper", "kubernetes": {"namespace_name": "Team"}}),
    ]
    client = await _authenticated(port)
    try:
        await client.send(encode_packed_forward("odd", pack_entries(records), 6, chunk="odd"))
        await client.wait_ack("odd", timeout_s=30)
        return "acked"
    finally:
        await client.close()


@dataclass(frozen=True)
class Attack:
    """One hostile case: how to run it against an aggregator's port."""

    name: str
    run: Callable[[int], Awaitable[str]]


ATTACKS = [
    Attack("expansion bomb (398 KiB -> 400 MiB)", attack_gzip_bomb),
    Attack("many tiny objects (8 MiB + 16 MiB of empty maps)", attack_tiny_objects),
    Attack(
        "poison record nested 600 deep in a mixed chunk",
        lambda p: attack_poison_record(p, "poisoned"),
    ),
    Attack("40 slow senders of 8 MiB messages", attack_slow_senders),
    Attack("200 connections from one address", attack_many_connections),
    Attack("bad handshakes", attack_bad_handshakes),
    Attack("out-of-window times and odd namespaces", attack_times_and_names),
]


@dataclass
class Measured:
    """What an attack did to the aggregator and to the honest tenant beside it."""

    outcome: str
    attack_s: float
    rss_before: int
    rss_peak: int
    honest: HonestTenant
    acks_during: int
    latencies_during_s: list[float]

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_before


async def measure(daemon: DaemonProcess, attack: Attack) -> Measured:
    """Warm the aggregator up with an honest tenant, reset its peak RSS, run ``attack`` while
    the honest tenant goes on, and wait for a few honest acks after it."""
    assert daemon.proc is not None
    pids = process_tree(daemon.proc.pid)  # the supervisor and its workers
    port = input_port(daemon)
    honest = HonestTenant(port)
    honest.start()
    await wait_until(
        lambda: honest.sent >= 100,
        timeout_s=60,
        what="the honest tenant to warm up",
        detail=lambda: f"its failures: {honest.failures}",
    )
    before = sum(rss_bytes(pid)[0] for pid in pids)
    for pid in pids:
        reset_peak_rss(pid)
    began = time.monotonic()
    acks_before = len(honest.latencies_s)
    outcome = await attack.run(port)
    attack_s = time.monotonic() - began
    during = honest.latencies_s[acks_before:]
    await wait_until(
        lambda: len(honest.latencies_s) >= acks_before + len(during) + 5,
        timeout_s=60,
        what="honest acks after the attack",
        detail=lambda: f"the honest tenant's failures: {honest.failures}",
    )
    await honest.stop()
    # The pod's peak is at most the sum of its processes' peaks: the bound that is asserted.
    peak = sum(rss_bytes(pid)[1] for pid in pids)
    return Measured(outcome, attack_s, before, peak, honest, len(during), list(during))


async def start_aggregator(workdir: Path, store_url: str, **input_overrides: Any) -> DaemonProcess:
    daemon = DaemonProcess(
        "aggregator", workdir, aggregator_config(workdir, store_url, **input_overrides)
    )
    await daemon.start()
    return daemon
