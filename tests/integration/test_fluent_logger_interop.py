"""The real fluent-logger (PyPI) client sends to a small asyncio server built on ServerDecoder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fluent import sender as fluent_sender

from logferry.common.protocol import EventMessage, EventTime, Mode, ServerDecoder

pytestmark = pytest.mark.integration

RECORD: dict[str, Any] = {
    "log": "GET /checkout 200 12ms \u2713 caf\u00e9",
    "stream": "stdout",
    "kubernetes": {"namespace_name": "team-a", "pod_name": "web-1", "host": "node-1"},
    "_lf": {"id": "src-1:4096", "src": "src-1", "seq": 41},
    "status": 200,
    "latency_s": 0.012,
    "ok": True,
    "missing": None,
    "tags": ["a", "b", 3],
    "raw": b"\x00\xff",
}


@dataclass
class ForwardServer:
    """Accepts connections on 127.0.0.1 and collects decoded events."""

    port: int = 0
    received: list[EventMessage] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = ServerDecoder()
        try:
            while data := await reader.read(65536):
                for msg in decoder.feed(data):
                    assert isinstance(msg, EventMessage)
                    if (ack := msg.encode_ack()) is not None:
                        writer.write(ack)
                    async with self.changed:
                        self.received.append(msg)
                        self.changed.notify_all()
        except Exception as exc:  # recorded for the test to assert on
            self.errors.append(exc)
        finally:
            writer.close()
            await writer.wait_closed()

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[EventMessage]:
        """Wait (with a deadline) until ``count`` events arrived."""
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(lambda: len(self.received) >= count or bool(self.errors))
        assert not self.errors
        return self.received


@pytest.fixture
async def server() -> AsyncIterator[ForwardServer]:
    state = ForwardServer()
    srv = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield state
    await srv.wait_closed()


def send_all(port: int, nanosecond_precision: bool, events: list[tuple[str, Any]]) -> None:
    """Blocking: send events with the real FluentSender, then close it."""
    client = fluent_sender.FluentSender(
        "app", host="127.0.0.1", port=port, nanosecond_precision=nanosecond_precision
    )
    try:
        for label, timestamp in events:
            assert client.emit_with_time(label, timestamp, RECORD), client.last_error
    finally:
        client.close()


async def test_fluent_logger_nanosecond_events_arrive_exactly(server: ForwardServer) -> None:
    times_ns = [1_700_000_000_123_456_789, 1_700_000_001_000_000_001, 1_700_000_002_999_999_999]
    events = [
        (f"web{i}", fluent_sender.EventTime.from_unix_nano(ns)) for i, ns in enumerate(times_ns)
    ]
    await asyncio.to_thread(send_all, server.port, True, events)

    received = await server.wait_for(len(events))
    assert [m.tag for m in received] == ["app.web0", "app.web1", "app.web2"]
    for msg, ns in zip(received, times_ns, strict=True):
        assert msg.mode == Mode.MESSAGE
        ((time, record),) = msg.entries
        assert isinstance(time, EventTime)
        assert time.to_ns() == ns
        assert record == RECORD


async def test_fluent_logger_second_precision_events_arrive_exactly(server: ForwardServer) -> None:
    events = [("plain", 1_700_000_000), ("plain", 1_700_000_007)]
    await asyncio.to_thread(send_all, server.port, False, events)

    received = await server.wait_for(len(events))
    assert [(m.tag, m.entries) for m in received] == [
        ("app.plain", [(1_700_000_000, RECORD)]),
        ("app.plain", [(1_700_000_007, RECORD)]),
    ]


async def test_fluent_logger_float_time_becomes_event_time(server: ForwardServer) -> None:
    # With nanosecond_precision=True a float becomes fluent's EventTime (int(t % 1 * 1e9) ns);
    # without it the float goes on the wire as is and we round it to the nearest nanosecond.
    t = 1_700_000_000.25
    await asyncio.to_thread(send_all, server.port, True, [("f", t)])
    await asyncio.to_thread(send_all, server.port, False, [("f", t)])

    received = await server.wait_for(2)
    assert [m.entries[0][0] for m in received] == [EventTime(1_700_000_000, 250_000_000)] * 2


async def test_many_events_over_one_connection(server: ForwardServer) -> None:
    events = [(f"bulk{i % 3}", fluent_sender.EventTime.from_unix_nano(i)) for i in range(500)]
    await asyncio.to_thread(send_all, server.port, True, events)

    received = await server.wait_for(len(events))
    assert [m.entries[0][0] for m in received] == [EventTime.from_ns(i) for i in range(500)]
    assert all(m.entries[0][1] == RECORD for m in received)
