"""The Forward Protocol v1 input: a TCP (optionally TLS) server that acks only durable chunks.

Per connection: the TLS handshake and the HELO/PING/PONG handshake (when configured) within
``handshake_timeout_s``, reading nothing bigger than a PING until then; then a read loop.
Every read is cut into complete messages; each is decoded and rendered on its own (so one
message at a time is ever inflated in the whole process), after waiting for room in the
in-flight budget. Each goes on to the spool as soon as it is rendered (its appends share
fsyncs with every other connection's); the messages of one read are acked in order once all
are durable. The loop does not read again until a read's messages are on their way, so a full
spool or budget stops the reads and TCP's window pushes back on the sender (backpressure):
nothing is acked early and nothing is dropped.

Memory is bounded whatever peers send: a connection reads a little at a time until a message
turns out larger than one read; then it takes a *slot*, room for one whole message in
``buffer_budget_bytes`` (one source address at most a quarter of it), before reading the
rest, and gives it back when the message is complete. An incomplete message must complete
within ``message_timeout_s``; one source holds at most ``max_connections_per_source``
connections. A peer that breaks the
protocol, idles past the read timeout or fails a handshake loses only its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from logferry.aggregator.config import ForwardInputSettings
from logferry.aggregator.ingest import Ingest, Receipt
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.common.budget import ByteBudget
from logferry.common.errors import (
    HandshakeError,
    ProtocolError,
    SpoolClosedError,
)
from logferry.common.faults import crash_point
from logferry.common.logs import get_logger
from logferry.common.metrics import count_and_log
from logferry.common.protocol import Ping, ServerDecoder
from logferry.common.protocol.decode import HANDSHAKE_MAX_BYTES
from logferry.common.protocol.handshake import ServerHandshake, encode_helo, encode_pong
from logferry.common.secrets import read_secret
from logferry.common.units import MiB

log = get_logger(__name__)
READ_BYTES = MiB
UNSLOTTED_READ_BYTES = 64 * 1024
"""What a connection reads while it holds no slot: a message that fits completes at once;
one that does not waits for a slot before the rest is read."""
STREAM_LIMIT = 256 * 1024
"""asyncio's own read-ahead per connection (it pauses the socket at twice this)."""
PIPELINE_DEPTH = 4


class SlowMessageError(ProtocolError):
    """A message did not complete within ``message_timeout_s``."""

    reason = "message_timeout"


@dataclass(slots=True)
class _Connection:
    serial: int
    peer: str
    source: str
    writer: asyncio.StreamWriter
    messages: int = 0
    inflight: int = 0
    slot: bool = False
    """This connection holds room for one whole message in the buffer budget."""
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
        self._per_source: Counter[str] = Counter()
        self._serial = 0
        self._stopping = False
        credentials = InputCredentials.load(settings)
        self._shared_key = credentials.shared_key
        self._users = credentials.users
        # The listener's TLS context hands each new connection the context in force, so a
        # certificate reloaded later is served without reopening the port.
        self._tls = credentials.tls
        self._ssl = credentials.tls
        if self._ssl is not None:
            self._ssl.sni_callback = self._context_in_force
        self._buffers = ByteBudget(settings.buffer_budget_bytes)
        self._source_budgets: dict[str, ByteBudget] = {}
        self.port = 0

    def apply(self, settings: ForwardInputSettings, credentials: InputCredentials) -> None:
        """Put reloaded settings in force for new connections and new messages (keys,
        users, certificate, limits); open connections keep their handshake."""
        self.settings = settings
        self._shared_key = credentials.shared_key
        self._users = credentials.users
        if self._ssl is not None and credentials.tls is not None:
            self._tls = credentials.tls

    def _context_in_force(
        self, connection: ssl.SSLObject, _name: str | None, _context: ssl.SSLContext
    ) -> None:
        # Called for every handshake (with or without SNI): switch to the current context.
        if self._tls is not None and connection.context is not self._tls:
            connection.context = self._tls

    async def start(self, sock: socket.socket | None = None) -> None:
        """Bind and start accepting (on ``sock`` when given: a worker's own socket on the
        port its supervisor holds)."""
        where: dict[str, Any] = (
            {"sock": sock}
            if sock is not None
            else {"host": self.settings.listen_host, "port": self.settings.listen_port}
        )
        self._server = await asyncio.start_server(
            self._handle,
            **where,
            ssl=self._ssl,
            ssl_handshake_timeout=self.settings.handshake_timeout_s if self._ssl else None,
            limit=STREAM_LIMIT,
            backlog=1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "input.listening",
            host=self.settings.listen_host,
            port=self.port,
            tls=self._ssl is not None,
            client_certificates=self.settings.tls_client_ca_file is not None,
            handshake=self._shared_key is not None,
        )
        if not self.settings.authenticates:
            log.warning(
                "input.unauthenticated",
                why="input.allow_unauthenticated is set: anyone who reaches the port can "
                "write any tenant's logs",
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

    def _refuse(self, writer: asyncio.StreamWriter, peer: str, status: str) -> None:
        count_and_log(
            self._metrics.connections_total,
            log,
            "input.connection_refused",
            labels={"status": status},
            peer=peer,
            open=len(self._connections),
        )
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer, source = _peer(writer)
        if self._stopping or len(self._connections) >= self.settings.max_connections:
            self._refuse(writer, peer, "refused")
            return
        if self._per_source[source] >= self.settings.max_connections_per_source:
            self._refuse(writer, peer, "refused_source")
            return
        self._serial += 1
        conn = _Connection(self._serial, peer, source, writer)
        self._connections[conn.serial] = conn
        self._per_source[source] += 1
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
            self._per_source[source] -= 1
            if self._per_source[source] <= 0:
                del self._per_source[source]
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
            max_decompressed_bytes=settings.max_decompressed_bytes,
            max_record_bytes=settings.max_record_bytes,
        )
        first: list[bytes] = []
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
        pending: list[bytes],
    ) -> None:
        received = time.monotonic()
        partial_since: float | None = None
        try:
            while True:
                if pending:
                    await self._submit(conn, decoder, pending, received, queue)
                    pending = []
                if decoder.buffered:
                    # An incomplete message: a slot of the buffer budget before reading the
                    # rest (a connection without one reads little at a time).
                    if not conn.slot:
                        await self._take_slot(conn)
                elif conn.slot:
                    self._release_slot(conn)
                if self._stopping:
                    return
                data = await self._read(conn, reader, decoder, partial_since)
                if not data:
                    return
                received = time.monotonic()
                pending = decoder.frames(data)
                if decoder.buffered == 0:
                    partial_since = None
                elif partial_since is None or pending:
                    partial_since = received  # a new incomplete message began in this read
        finally:
            if conn.slot:
                self._release_slot(conn)
            await queue.put(None)

    async def _take_slot(self, conn: _Connection) -> None:
        """Hold room for one whole message: first within the source's share, then the
        budget's (both FIFO), so one address cannot take every slot."""
        size = self.settings.max_message_bytes
        share = self._source_budgets.get(conn.source)
        if share is None:
            share = self._source_budgets[conn.source] = ByteBudget(
                max(size, self.settings.buffer_budget_bytes // 4)
            )
        await share.acquire(size)
        try:
            await self._buffers.acquire(size)
        except BaseException:
            share.release(size)
            raise
        conn.slot = True
        self._metrics.input_buffered_bytes.set(self._buffers.held)

    def _release_slot(self, conn: _Connection) -> None:
        size = self.settings.max_message_bytes
        self._buffers.release(size)
        share = self._source_budgets.get(conn.source)
        if share is not None:
            share.release(size)
            if share.held == 0 and conn.source not in self._per_source:
                del self._source_budgets[conn.source]
        conn.slot = False
        self._metrics.input_buffered_bytes.set(self._buffers.held)

    async def _read(
        self,
        conn: _Connection,
        reader: asyncio.StreamReader,
        decoder: ServerDecoder,
        partial_since: float | None,
    ) -> bytes:
        """One read within the timeouts; b"" at end of stream."""
        settings = self.settings
        size = READ_BYTES if conn.slot else UNSLOTTED_READ_BYTES
        while True:
            timeout = settings.read_timeout_s
            if partial_since is not None:
                left = partial_since + settings.message_timeout_s - time.monotonic()
                if left <= 0:
                    raise SlowMessageError(
                        f"a message incomplete after {settings.message_timeout_s}s "
                        f"({decoder.buffered} bytes)"
                    )
                timeout = min(timeout, left)
            try:
                async with asyncio.timeout(timeout):
                    return await reader.read(size)
            except TimeoutError:
                if partial_since is not None:
                    continue  # the message deadline decides, above
                if conn.inflight:
                    continue  # the peer waits for our acks: that is not idling
                raise

    async def _submit(
        self,
        conn: _Connection,
        decoder: ServerDecoder,
        frames: list[bytes],
        received: float,
        queue: asyncio.Queue[_Batch | None],
    ) -> None:
        """Decode and render one read's messages, one at a time, each starting on its way to
        the spool at once; the acker acks them in order once all are durable."""
        crash_point("after_receive")
        stores: list[asyncio.Future[int]] = []
        acks: list[bytes] = []
        for index, frame in enumerate(frames):
            # Nothing this connection rendered waits for the budget with it: every message
            # before is already being stored, so its bytes come back without any other
            # admit. (Rendered messages held back until the whole read was rendered would
            # let every connection sit on part of the budget waiting for the rest.)
            await self._ingest.admit()  # room in the in-flight budget, before inflating
            message = decoder.decode(frame)
            frames[index] = b""  # the raw bytes are garbage once decoded
            if message is None:
                continue  # heartbeat
            if isinstance(message, Ping):
                raise ProtocolError("PING outside the handshake")
            self._metrics.bytes_in.inc(message.wire_bytes)
            conn.messages += 1
            receipt = Receipt(self._ingest.instance, conn.serial, conn.messages)
            # Rendered now, without an await since admit(): the decoded records die here,
            # only compact bytes wait for the spool.
            store = asyncio.ensure_future(self._ingest.store(self._ingest.render(message, receipt)))
            # If the connection dies first, nobody awaits this (the sender resends what was
            # not acked): keep its error from being "lost".
            store.add_done_callback(_consume_error)
            stores.append(store)
            if (ack := message.encode_ack()) is not None:
                acks.append(ack)
            del message
        durable = asyncio.ensure_future(asyncio.gather(*stores))
        # If the connection dies first, nobody awaits this: keep its error from being "lost".
        durable.add_done_callback(_consume_error)
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
    ) -> list[bytes]:
        """HELO, then a PING of at most HANDSHAKE_MAX_BYTES within the handshake timeout;
        returns the messages the peer sent after its PING in the same reads."""
        assert self._shared_key is not None
        handshake = ServerHandshake(
            shared_key=self._shared_key, server_hostname=self._hostname, users=self._users
        )
        conn.writer.write(encode_helo(handshake.helo()))
        await conn.writer.drain()
        frames: list[bytes] = []
        decoder.limit_messages(HANDSHAKE_MAX_BYTES)
        try:
            async with asyncio.timeout(self.settings.handshake_timeout_s):
                while not frames:
                    data = await reader.read(HANDSHAKE_MAX_BYTES)
                    if not data:
                        raise ConnectionResetError("closed during the handshake")
                    frames = decoder.frames(data)
            first = decoder.decode(frames[0])
            if not isinstance(first, Ping):
                raise HandshakeError("expected PING after HELO")
        except TimeoutError:
            self._metrics.handshake_failures.labels("timeout").inc()
            raise HandshakeError(
                f"no PING within {self.settings.handshake_timeout_s}s of HELO"
            ) from None
        except ProtocolError:
            self._metrics.handshake_failures.labels("no_ping").inc()
            raise
        finally:
            decoder.limit_messages(None)
        pong = handshake.answer_ping(first)
        conn.writer.write(encode_pong(pong))
        await conn.writer.drain()
        if not pong.auth_result:
            reason = "shared_key" if "shared_key" in pong.reason else "credentials"
            self._metrics.handshake_failures.labels(reason).inc()
            raise HandshakeError(f"handshake refused: {pong.reason}")
        log.info("input.authenticated", peer=conn.peer, client=first.client_hostname)
        return frames[1:]


def _consume_error(future: asyncio.Future[list[int]] | asyncio.Future[int]) -> None:
    if not future.cancelled():
        future.exception()


def _peer(writer: asyncio.StreamWriter) -> tuple[str, str]:
    """``host:port`` of the peer, and its address alone (the per-source key)."""
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}", str(address[0])
    return str(address), str(address)


@dataclass(frozen=True)
class InputCredentials:
    """What the input reads from files: the shared key, the users' passwords, the TLS
    context (certificate, key, client CA)."""

    shared_key: str | None
    users: dict[str, str]
    tls: ssl.SSLContext | None

    @classmethod
    def load(cls, settings: ForwardInputSettings) -> InputCredentials:
        """Read them now; ConfigError (a key file), OSError or ssl.SSLError (TLS files)."""
        shared_key = read_secret(
            settings.shared_key, settings.shared_key_file, "input.shared_key_file", "shared key"
        )
        users = {
            name: read_secret(None, path, f"input.users.{name}", f"password of user {name!r}") or ""
            for name, path in settings.users.items()
        }
        return cls(shared_key, users, _server_ssl(settings))


def _server_ssl(settings: ForwardInputSettings) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    if settings.tls_client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(settings.tls_client_ca_file))
    return context
