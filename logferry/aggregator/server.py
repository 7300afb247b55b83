"""The Forward Protocol v1 input: a TCP (optionally TLS) server that acks only durable chunks.

Per connection: optional HELO/PING/PONG handshake, then a read loop. Every read is decoded
into complete messages; the messages of one read are made durable together (their appends
share fsyncs with every other connection's) and then acked in order. The loop does not read
again until that is done, so a full spool stops the reads and TCP's window pushes back on the
sender (backpressure) — nothing is acked early and nothing is dropped. A peer that breaks the
protocol, idles past the read timeout or fails the handshake loses only its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

from logferry.aggregator.config import ForwardInputSettings
from logferry.aggregator.ingest import Ingest, Receipt
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.common.errors import HandshakeError, ProtocolError, SpoolClosedError
from logferry.common.faults import crash_point
from logferry.common.handshake import ServerHandshake, encode_helo, encode_pong
from logferry.common.logs import get_logger
from logferry.common.metrics import count_and_log
from logferry.common.protocol import EventMessage, Ping, ServerDecoder

log = get_logger(__name__)
READ_BYTES = 1 << 20
PIPELINE_DEPTH = 4


@dataclass(slots=True)
class _Connection:
    serial: int
    peer: str
    writer: asyncio.StreamWriter
    messages: int = 0
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class _Batch:
    durable: asyncio.Future[list[int]]
    acks: list[bytes]
    received: float


class ForwardServer:
    """Accepts Forward Protocol connections and feeds :class:`Ingest`."""

    def __init__(
        self,
        settings: ForwardInputSettings,
        ingest: Ingest,
        metrics: AggregatorMetrics,
        *,
        hostname: str | None = None,
    ) -> None:
        self.settings = settings
        self._ingest = ingest
        self._metrics = metrics
        self._hostname = hostname or socket.gethostname()
        self._server: asyncio.Server | None = None
        self._connections: dict[int, _Connection] = {}
        self._serial = 0
        self._stopping = False
        self._shared_key = _read_secret(settings.shared_key, settings.shared_key_file)
        self._users = {
            name: _read_secret(None, path) or "" for name, path in settings.users.items()
        }
        self._ssl = _server_ssl(settings)
        self.port = 0

    async def start(self) -> None:
        """Bind and start accepting."""
        self._server = await asyncio.start_server(
            self._handle,
            self.settings.listen_host,
            self.settings.listen_port,
            ssl=self._ssl,
            limit=READ_BYTES,
            backlog=1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "input.listening",
            host=self.settings.listen_host,
            port=self.port,
            tls=self._ssl is not None,
            handshake=self._shared_key is not None,
        )

    async def stop_accepting(self) -> None:
        """Close the listening socket; existing connections go on."""
        self._stopping = True
        if self._server is not None:
            self._server.close()

    async def drain(self, deadline_s: float) -> None:
        """Let every connection finish the messages it is making durable, ack them, and close.

        A connection with nothing in flight is closed at once; a sender resends anything it
        sent that was not acked.
        """
        conns = list(self._connections.values())
        for conn in conns:
            if conn.inflight == 0:
                conn.idle.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await asyncio.gather(*(conn.idle.wait() for conn in conns))
        cut = [conn for conn in conns if conn.inflight]
        for conn in conns:
            conn.writer.close()
        if cut:
            log.warning("input.drain_deadline", connections_cut=len(cut))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await asyncio.gather(*(conn.done.wait() for conn in conns))
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()

    @property
    def connection_count(self) -> int:
        """Open connections."""
        return len(self._connections)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        if self._stopping or len(self._connections) >= self.settings.max_connections:
            self._metrics.connections_total.labels("refused").inc()
            log.warning("input.connection_refused", peer=peer, open=len(self._connections))
            writer.close()
            return
        self._serial += 1
        conn = _Connection(self._serial, peer, writer)
        self._connections[conn.serial] = conn
        self._metrics.connections_total.labels("accepted").inc()
        self._metrics.connections.inc()
        try:
            await self._serve(conn, reader)
        except ProtocolError as exc:
            count_and_log(
                self._metrics.protocol_errors,
                log,
                "input.protocol_error",
                labels={"reason": exc.reason},
                peer=peer,
                mode=exc.mode or "-",
                shape=(exc.shape or "-")[:200],
                error=str(exc)[:300],
            )
        except TimeoutError:
            log.info("input.idle_timeout", peer=peer, timeout_s=self.settings.read_timeout_s)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log.info("input.connection_lost", peer=peer, error_type=type(exc).__name__)
        except SpoolClosedError:
            log.info("input.closed_during_shutdown", peer=peer)
        except Exception:
            log.exception("input.connection_failed", peer=peer)
        finally:
            self._connections.pop(conn.serial, None)
            self._metrics.connections.dec()
            conn.done.set()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        settings = self.settings
        decoder = ServerDecoder(
            max_message_bytes=settings.max_message_bytes,
            max_entries=settings.max_entries,
            max_decompressed_bytes=settings.max_message_bytes * 8,
        )
        first: list[EventMessage | Ping] = []
        if self._shared_key is not None:
            first = await self._handshake(conn, reader, decoder)
        # Reads are pipelined: while one batch of messages waits for its fsync, the next is
        # read and decoded, so group commit covers more. Acks still go out in order, and at
        # most PIPELINE_DEPTH batches wait per connection (then reading stops: backpressure).
        queue: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=PIPELINE_DEPTH)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._ack_in_order(conn, queue))
                group.create_task(self._read_loop(conn, reader, decoder, queue, first))
        except BaseExceptionGroup as group_error:
            # One cause closes the connection; report it as the handler expects.
            raise group_error.exceptions[0] from None

    async def _read_loop(
        self,
        conn: _Connection,
        reader: asyncio.StreamReader,
        decoder: ServerDecoder,
        queue: asyncio.Queue[_Batch | None],
        pending: list[EventMessage | Ping],
    ) -> None:
        received = time.monotonic()
        try:
            while True:
                if pending:
                    await self._submit(conn, pending, received, queue)
                    pending = []
                if self._stopping:
                    return
                try:
                    async with asyncio.timeout(self.settings.read_timeout_s):
                        data = await reader.read(READ_BYTES)
                except TimeoutError:
                    if conn.inflight:
                        continue  # the peer waits for our acks: that is not idling
                    raise
                if not data:
                    return
                received = time.monotonic()
                pending = decoder.feed(data)
        finally:
            await queue.put(None)

    async def _submit(
        self,
        conn: _Connection,
        messages: list[EventMessage | Ping],
        received: float,
        queue: asyncio.Queue[_Batch | None],
    ) -> None:
        """Start making one read's messages durable together; the acker acks them in order."""
        crash_point("after_receive")
        events: list[EventMessage] = []
        for message in messages:
            if isinstance(message, Ping):
                raise ProtocolError("PING outside the handshake")
            events.append(message)
        self._metrics.bytes_in.inc(sum(m.wire_bytes for m in events))
        # Render now, while the decoded records are at hand; only the compact fragments wait
        # for the spool, so memory in flight is bytes, not Python objects.
        stores = []
        for event in events:
            conn.messages += 1
            receipt = Receipt(self._ingest.instance, conn.serial, conn.messages)
            if event.signal:
                stores.append(self._ingest.park_signal(event, receipt))
            else:
                stores.append(self._ingest.store(self._ingest.render(event, receipt)))
        durable = asyncio.ensure_future(asyncio.gather(*stores))
        # If the connection dies first, nobody awaits this: keep its error from being "lost".
        durable.add_done_callback(_consume_error)
        acks = [ack for m in events if (ack := m.encode_ack()) is not None]
        del events
        messages.clear()  # the caller's list too: decoded records are garbage from here
        conn.inflight += 1
        conn.idle.clear()
        await queue.put(_Batch(durable, acks, received))

    async def _ack_in_order(self, conn: _Connection, queue: asyncio.Queue[_Batch | None]) -> None:
        while (batch := await queue.get()) is not None:
            try:
                await batch.durable
            finally:
                conn.inflight -= 1
            if batch.acks:
                crash_point("before_ack")  # durable, not acked: the sender must resend
                conn.writer.write(b"".join(batch.acks))
                await conn.writer.drain()
                crash_point("after_ack")
                self._metrics.acks.inc(len(batch.acks))
                self._metrics.ack_latency.observe(time.monotonic() - batch.received)
            if conn.inflight == 0:
                conn.idle.set()

    async def _handshake(
        self, conn: _Connection, reader: asyncio.StreamReader, decoder: ServerDecoder
    ) -> list[EventMessage | Ping]:
        assert self._shared_key is not None
        handshake = ServerHandshake(
            shared_key=self._shared_key, server_hostname=self._hostname, users=self._users
        )
        conn.writer.write(encode_helo(handshake.helo()))
        await conn.writer.drain()
        messages: list[EventMessage | Ping] = []
        async with asyncio.timeout(min(self.settings.read_timeout_s, 30.0)):
            while not messages:
                data = await reader.read(64 * 1024)
                if not data:
                    raise ConnectionResetError("closed during the handshake")
                messages = decoder.feed(data)
        first, rest = messages[0], messages[1:]
        if not isinstance(first, Ping):
            self._metrics.handshake_failures.labels("no_ping").inc()
            raise HandshakeError("expected PING after HELO")
        pong = handshake.answer_ping(first)
        conn.writer.write(encode_pong(pong))
        await conn.writer.drain()
        if not pong.auth_result:
            reason = "shared_key" if "shared_key" in pong.reason else "credentials"
            self._metrics.handshake_failures.labels(reason).inc()
            raise HandshakeError(f"handshake refused: {pong.reason}")
        log.info("input.authenticated", peer=conn.peer, client=first.client_hostname)
        return rest


def _consume_error(future: asyncio.Future[list[int]]) -> None:
    if not future.cancelled():
        future.exception()


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def _read_secret(inline: str | None, path: Path | None) -> str | None:
    if path is not None:
        return path.read_text(encoding="utf-8").strip()
    return inline


def _server_ssl(settings: ForwardInputSettings) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    return context
