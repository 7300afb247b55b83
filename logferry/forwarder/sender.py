"""The sender: spool batches -> CompressedPackedForward chunks -> aggregators -> ack -> commit.

Each spool record is a block of entries already compressed (``entries``), so a chunk body is
the concatenation of a batch's gzip members, and ``batch_max_records`` limits the entries in a
chunk (blocks weighed by their entry counts). Invariants:

- a batch is committed to the spool only after an aggregator acked its chunk (guarantee 2);
- a chunk that fails (connect, handshake, write, connection lost, no ack within
  ``ack_timeout_s``) is sent again, with the *same* chunk id, to another endpoint if there is
  one; it is never dropped, only retried (forever, with per-endpoint backoff);
- at most ``max_chunks_in_hand`` batches are held in memory (guarantee 6): the backlog stays
  in the spool;
- a *poison* chunk cannot hold the node for ever: a chunk whose connection an aggregator
  closes (or resets) after it was sent and before its ack is suspect, and from then on is
  sent alone; each such refusal while it was the only chunk unacked there, by an endpoint
  that had acked other chunks since its last failure (*proven*), counts, and after
  ``park_after_refusals`` of them it is parked on the node (:mod:`.parking`) and committed.
  Ack timeouts and connect failures never count, and an outage of every aggregator parks
  nothing (no endpoint is proven then).

On stop: no new batches are read, chunks in hand get ``shutdown_deadline_s`` to be acked,
the rest is cancelled and stays in the spool (resent after the restart; ids make it harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import ssl
from collections import Counter as Tally
from dataclasses import dataclass, field

from logferry.common.errors import HandshakeError, ProtocolError
from logferry.common.events import first_set
from logferry.common.logs import get_logger
from logferry.common.protocol import (
    Ack,
    ClientDecoder,
    Helo,
    Pong,
    encode_compressed_packed_forward,
)
from logferry.common.protocol.handshake import ClientHandshake, encode_ping
from logferry.common.spool import Spool, SpoolBatch
from logferry.forwarder.config import SenderSettings, parse_host_port
from logferry.forwarder.endpoints import (
    Backoff,
    Endpoint,
    EndpointSet,
    Resolver,
    getaddrinfo_resolver,
    refresh_dns_forever,
)
from logferry.forwarder.entries import block_count, block_gzip, block_raw_size, block_records
from logferry.forwarder.metrics import ForwarderMetrics
from logferry.forwarder.parking import Parking

__all__ = ["Chunk", "PeerClosedError", "Sender", "SenderStats", "chunk_id", "client_ssl_context"]

log = get_logger(__name__)

_READ_POLL_S = 0.25  # how long a spool read waits before the stop flag is looked at again
_SEND_ERRORS = (OSError, TimeoutError, ProtocolError, ssl.SSLError)


class PeerClosedError(ConnectionResetError):
    """The aggregator closed or reset the connection while chunks waited for their acks."""

    def __init__(self, message: str, *, unacked: int = 0) -> None:
        super().__init__(message)
        self.unacked = unacked
        """Chunks written on the connection and not acked when it closed."""


def chunk_id(node_name: str, first_seq: int, count: int) -> str:
    """The deterministic chunk id of a batch: the same batch always gets the same id."""
    key = f"{node_name}\0{first_seq}\0{count}".encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def client_ssl_context(settings: SenderSettings) -> ssl.SSLContext | None:
    """The TLS context for the endpoints, or None without ``tls``."""
    if not settings.tls:
        return None
    cafile = str(settings.tls_ca_file) if settings.tls_ca_file is not None else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(slots=True)
class Chunk:
    """A spool batch on its way: encoded once, resent byte for byte under the same id."""

    batch: SpoolBatch
    chunk_id: str
    payload: bytes
    records: int
    """Log records in the chunk: its entries less its checkpoint records."""
    entries: int = 0
    """Entries in the chunk (its blocks' counts summed): the ``size`` it is sent with."""
    suspect: bool = False
    """An aggregator closed the connection on it once: it is sent alone from now on."""
    refusals: int = 0
    """Refusals that count towards parking (alone, by a proven endpoint)."""
    refused_by: list[str] = field(default_factory=list)
    last_refusal: str = ""


class SenderStats:
    """Counters by endpoint (``host:port``), kept on the object and counted in the
    forwarder's metrics (``logferry_sender_*``) as they happen."""

    def __init__(self, metrics: ForwarderMetrics | None = None) -> None:
        self.sent: Tally[str] = Tally()
        """Chunks written to an endpoint (resends included)."""
        self.acked: Tally[str] = Tally()
        """Chunks acknowledged, by the endpoint that acked."""
        self.retried: Tally[str] = Tally()
        """Chunk attempts that failed on an endpoint and were sent again elsewhere."""
        self.records_acked = 0
        """Records in acked chunks, over all endpoints."""
        self.records_acked_by: Tally[str] = Tally()
        """Records in acked chunks, by the endpoint that acked."""
        self.ack_latency_max_s = 0.0
        self.endpoints_up = 0
        self._metrics = metrics if metrics is not None else ForwarderMetrics()

    def chunk_sent(self, endpoint: str) -> None:
        self.sent[endpoint] += 1
        self._metrics.chunks_sent.labels(endpoint).inc()

    def chunk_acked(self, endpoint: str, records: int, latency_s: float) -> None:
        self.acked[endpoint] += 1
        self.records_acked += records
        self.records_acked_by[endpoint] += records
        self.ack_latency_max_s = max(self.ack_latency_max_s, latency_s)
        self._metrics.chunks_acked.labels(endpoint).inc()
        self._metrics.records_acked.inc(records)
        self._metrics.ack_latency.labels(endpoint).observe(latency_s)

    def chunk_retried(self, endpoint: str) -> None:
        self.retried[endpoint] += 1
        self._metrics.chunks_retried.labels(endpoint).inc()

    def set_endpoints_up(self, count: int) -> None:
        self.endpoints_up = count
        self._metrics.endpoints_up.set(count)


@dataclass(eq=False)
class _Connection:
    """One open connection to an endpoint; a reader task settles ack futures by chunk id."""

    endpoint: Endpoint
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: ClientDecoder
    pending: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    closed: bool = False
    close_error: BaseException | None = None
    """Why it closed: a :class:`PeerClosedError` when the peer did it, else our reason."""
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._read_loop(), name=f"sender-read-{self.endpoint.name}")

    def send(self, chunk: Chunk) -> asyncio.Future[None]:
        """Write the chunk; the future resolves on its ack, fails if the connection does."""
        if self.closed:
            raise ConnectionResetError(f"connection to {self.endpoint.name} is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self.pending[chunk.chunk_id] = future
        self.writer.write(chunk.payload)
        return future

    async def _read_loop(self) -> None:
        error: BaseException = PeerClosedError(f"{self.endpoint.name} closed the connection")
        try:
            while data := await self.reader.read(65536):
                for message in self.decoder.feed(data):
                    if not isinstance(message, Ack):
                        raise ProtocolError(f"unexpected {type(message).__name__} after handshake")
                    future = self.pending.pop(message.chunk, None)
                    if future is not None and not future.done():
                        future.set_result(None)
        except ConnectionError as exc:  # reset by the peer
            error = PeerClosedError(f"{self.endpoint.name} reset the connection: {exc}")
            error.__cause__ = exc
        except (*_SEND_ERRORS, asyncio.IncompleteReadError) as exc:
            error = exc
        finally:
            self.abort(error)

    @property
    def peer_closed(self) -> PeerClosedError | None:
        """How the peer closed the connection, if it was the peer."""
        error = self.close_error
        return error if isinstance(error, PeerClosedError) else None

    def abort(self, error: BaseException) -> None:
        """Close now; every chunk waiting for an ack here fails with ``error``."""
        if not self.closed:
            self.closed = True
            self.close_error = error
            if isinstance(error, PeerClosedError):
                error.unacked = len(self.pending)
            self.writer.close()
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    async def wait_closed(self) -> None:
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        with contextlib.suppress(*_SEND_ERRORS):
            await self.writer.wait_closed()


def _retrieve(future: asyncio.Future[None]) -> None:
    # A failed ack future nobody awaits any more (its chunk task was cancelled) is not an error.
    if not future.cancelled():
        future.exception()


class Sender:
    """Sends the spool's batches to the aggregators and commits each one on its ack.

    ``resolver`` and ``rng`` are for tests (a fake DNS, a seeded jitter).
    """

    def __init__(
        self,
        settings: SenderSettings,
        spool: Spool,
        *,
        node_name: str,
        metrics: ForwarderMetrics | None = None,
        resolver: Resolver = getaddrinfo_resolver,
        rng: random.Random | None = None,
        shared_key: str | None = None,
        parking: Parking | None = None,
    ) -> None:
        """``shared_key``: the key as read at start (default: read from ``settings`` now);
        ``parking``: where poison chunks go (None: they are retried for ever)."""
        if not settings.servers and settings.dns_name is None:
            raise ValueError("the sender needs sender.servers and/or sender.dns_name")
        self.settings = settings
        self._shared_key = shared_key if shared_key is not None else settings.read_shared_key()
        self._parking = parking
        self.spool = spool
        self.node_name = node_name
        self.stats = SenderStats(metrics)
        self.endpoints = EndpointSet(
            [parse_host_port(s) for s in settings.servers],
            window=settings.max_in_flight_per_endpoint,
            backoff=Backoff(
                settings.backoff_initial_s, settings.backoff_max_s, rng or random.Random()
            ),
        )
        self.endpoints.on_removed = self._endpoint_removed
        self._resolver = resolver
        self._ssl = client_ssl_context(settings)
        self._connections: dict[Endpoint, _Connection] = {}
        self._connect_locks: dict[Endpoint, asyncio.Lock] = {}
        self._closing: list[_Connection] = []
        self._in_hand: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()
        self._halt = asyncio.Event()
        self._dns_changed = asyncio.Event()
        self.stats.set_endpoints_up(self.endpoints.up_count)

    @property
    def chunks_in_hand(self) -> int:
        """Batches read from the spool and not yet acked (at most ``max_chunks_in_hand``)."""
        return len(self._in_hand)

    async def run(self, stop: asyncio.Event) -> None:
        """Send until ``stop`` is set, then wait up to ``shutdown_deadline_s`` for acks."""
        log.info(
            "sender.start",
            servers=",".join(self.settings.servers),
            dns_name=self.settings.dns_name or "",
            tls=self._ssl is not None,
            handshake=self._shared_key is not None,
        )
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(
                    refresh_dns_forever(
                        self.endpoints,
                        self._resolver,
                        self._dns_target,
                        self._halt,
                        self._dns_changed,
                    )
                )
                await self._read_loop(stop, group)
                await self._drain()
                self._halt.set()
        finally:
            self._halt.set()
            await self._close_connections()

    def apply(
        self, settings: SenderSettings, shared_key: str | None, context: ssl.SSLContext | None
    ) -> None:
        """Put reloaded settings in force: new connections use the new key and TLS context
        (open ones, already authenticated, go on), endpoints no longer listed are dropped
        (their chunks go elsewhere), and DNS is resolved again under its new name."""
        self.settings = settings
        self._shared_key = shared_key
        self._ssl = context
        self.endpoints.set_static([parse_host_port(s) for s in settings.servers])
        self._dns_changed.set()

    def _dns_target(self) -> tuple[str | None, int, float]:
        settings = self.settings
        return settings.dns_name, settings.dns_port, settings.dns_refresh_interval_s

    async def _read_loop(self, stop: asyncio.Event, group: asyncio.TaskGroup) -> None:
        while not stop.is_set():
            settings = self.settings
            if len(self._in_hand) >= settings.max_chunks_in_hand:
                self._slot_free.clear()
                await first_set((self._slot_free, stop))
                continue
            batch = await self.spool.read(
                max_records=settings.batch_max_records,
                max_bytes=settings.batch_max_bytes,
                timeout_s=_READ_POLL_S,
                weigh=block_count,
                size=block_raw_size,
            )
            if batch is None:
                continue
            chunk = self._encode(batch)
            task = group.create_task(self._deliver(chunk), name=f"chunk-{chunk.chunk_id}")
            self._in_hand.add(task)
            task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._in_hand.discard(task)
        self._slot_free.set()

    def _encode(self, batch: SpoolBatch) -> Chunk:
        cid = chunk_id(self.node_name, batch.first_seq, len(batch.records))
        # ``size`` counts every entry (an aggregator may check it); the record metrics leave
        # checkpoint records out.
        entries = sum(block_count(block) for block in batch.records)
        records = sum(block_records(block) for block in batch.records)
        gzipped = b"".join(block_gzip(block) for block in batch.records)
        payload = encode_compressed_packed_forward(
            self.settings.tag, b"", entries, chunk=cid, gzipped=gzipped
        )
        return Chunk(batch, cid, payload, records, entries=entries)

    async def _drain(self) -> None:
        """Give chunks in hand ``shutdown_deadline_s`` to be acked; cancel the rest."""
        pending = set(self._in_hand)
        if pending:
            log.info("sender.draining", chunks=len(pending))
            _done, pending = await asyncio.wait(pending, timeout=self.settings.shutdown_deadline_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("sender.stopped_unacked", chunks=len(pending))
        log.info("sender.stopped", endpoints_up=self.endpoints.up_count)

    async def _deliver(self, chunk: Chunk) -> None:
        """Send ``chunk`` until an endpoint acks it, then commit its batch (or park it, see
        the module docstring, and commit it then)."""
        loop = asyncio.get_running_loop()
        avoid: Endpoint | None = None
        while True:
            if chunk.suspect:  # alone, so that a refusal is its own and costs no one else
                endpoint, proven = await self.endpoints.acquire_alone()
                alone = True
            else:
                endpoint = await self.endpoints.acquire(avoid=avoid)
                proven, alone = endpoint.proven, False
            connection: _Connection | None = None
            written = False
            try:
                connection = await self._connection(endpoint)
                started = loop.time()
                future = connection.send(chunk)
                written = True
                self.stats.chunk_sent(endpoint.name)
                async with asyncio.timeout(self.settings.ack_timeout_s):
                    await connection.writer.drain()
                    await future
            except _SEND_ERRORS as exc:
                self.endpoints.release(endpoint, alone=alone)
                refusal = _refusal(connection, exc) if written else None
                self._failed(endpoint, connection, chunk, exc)
                if refusal is not None and await self._refused(chunk, endpoint, refusal, proven):
                    return
                avoid = endpoint
                continue
            self.endpoints.release(endpoint, alone=alone)
            if self.endpoints.mark_up(endpoint):
                log.info("sender.endpoint_up", endpoint=endpoint.name)
            self.stats.set_endpoints_up(self.endpoints.up_count)
            self.stats.chunk_acked(endpoint.name, chunk.records, loop.time() - started)
            self.spool.commit(chunk.batch)
            return

    async def _refused(
        self, chunk: Chunk, endpoint: Endpoint, refusal: PeerClosedError, proven: bool
    ) -> bool:
        """An aggregator closed the connection on ``chunk``; True if it is now parked (and
        committed). Counts only when nothing else was unacked there and the endpoint had
        proven it works: a closing aggregator, a crash or an outage is not the chunk's doing."""
        chunk.suspect = True  # from now on it goes alone, so the next refusal is unambiguous
        if refusal.unacked != 1 or not proven:
            return False
        chunk.refusals += 1
        chunk.refused_by.append(endpoint.name)
        chunk.last_refusal = str(refusal)
        log.info(
            "sender.chunk_refused",
            chunk=chunk.chunk_id,
            endpoint=endpoint.name,
            refusals=chunk.refusals,
            park_after=self.settings.park_after_refusals,
        )
        limit = self.settings.park_after_refusals
        if self._parking is None or limit == 0 or chunk.refusals < limit:
            return False
        batch = chunk.batch
        await self._parking.park(
            {
                "chunk_id": chunk.chunk_id,
                "node": self.node_name,
                "tag": self.settings.tag,
                "spool_first_seq": batch.first_seq,
                "spool_end_seq": batch.end_seq,
                "blocks": len(batch.records),
                "records": chunk.entries,  # as decoding the payload counts them
                "refusals": chunk.refusals,
                "endpoints": chunk.refused_by,
                "detail": chunk.last_refusal,
            },
            chunk.payload,
            reason="peer_closed",
        )
        self.spool.commit(batch)
        return True

    def _failed(
        self, endpoint: Endpoint, connection: _Connection | None, chunk: Chunk, exc: BaseException
    ) -> None:
        """Count the failed attempt; the first failure seen on a connection marks the endpoint
        down and closes it (its other chunks then fail over without counting it again)."""
        self.stats.chunk_retried(endpoint.name)
        current = self._connections.get(endpoint)
        if connection is None or connection is current:
            delay = self.endpoints.mark_down(endpoint)
            self.stats.set_endpoints_up(self.endpoints.up_count)
            if current is not None:
                self._drop_connection(endpoint, exc)
            log.warning(
                "sender.endpoint_down",
                endpoint=endpoint.name,
                chunk=chunk.chunk_id,
                error=type(exc).__name__,
                detail=str(exc),
                failures=endpoint.failures,
                retry_in_s=round(delay, 3),
            )
        else:
            log.info(
                "sender.chunk_retry",
                endpoint=endpoint.name,
                chunk=chunk.chunk_id,
                error=type(exc).__name__,
            )

    async def _connection(self, endpoint: Endpoint) -> _Connection:
        """The endpoint's open connection, connecting (and shaking hands) if needed."""
        lock = self._connect_locks.setdefault(endpoint, asyncio.Lock())
        async with lock:
            connection = self._connections.get(endpoint)
            if connection is not None and not connection.closed:
                return connection
            if connection is not None:
                self._drop_connection(endpoint, ConnectionResetError("closed"))
            async with asyncio.timeout(self.settings.connect_timeout_s):
                connection = await self._open(endpoint)
            self._connections[endpoint] = connection
            connection.start()
            log.info("sender.connected", endpoint=endpoint.name)
            return connection

    async def _open(self, endpoint: Endpoint) -> _Connection:
        server_hostname = None
        if self._ssl is not None:
            server_hostname = self.settings.tls_server_name or endpoint.host
        reader, writer = await asyncio.open_connection(
            endpoint.host, endpoint.port, ssl=self._ssl, server_hostname=server_hostname
        )
        _enable_tcp_keepalive(writer)
        decoder = ClientDecoder()
        try:
            if self._shared_key is not None:
                await self._handshake(reader, writer, decoder, self._shared_key)
        except BaseException:
            writer.close()
            raise
        return _Connection(endpoint, reader, writer, decoder)

    async def _handshake(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: ClientDecoder,
        shared_key: str,
    ) -> None:
        handshake = ClientHandshake(shared_key=shared_key, client_hostname=self.node_name)
        helo = await _next_message(reader, decoder)
        if not isinstance(helo, Helo):
            raise HandshakeError(f"expected HELO, got {type(helo).__name__}")
        writer.write(encode_ping(handshake.ping(helo)))
        await writer.drain()
        pong = await _next_message(reader, decoder)
        if not isinstance(pong, Pong):
            raise HandshakeError(f"expected PONG, got {type(pong).__name__}")
        handshake.verify_pong(pong)

    def _drop_connection(self, endpoint: Endpoint, error: BaseException) -> None:
        connection = self._connections.pop(endpoint, None)
        if connection is not None:
            connection.abort(error)
            self._closing.append(connection)

    def _endpoint_removed(self, endpoint: Endpoint) -> None:
        self._drop_connection(
            endpoint, ConnectionResetError(f"{endpoint.name} is no longer an endpoint")
        )
        self._connect_locks.pop(endpoint, None)

    async def _close_connections(self) -> None:
        for endpoint in list(self._connections):
            self._drop_connection(endpoint, ConnectionResetError("sender stopped"))
        closing, self._closing = self._closing, []
        await asyncio.gather(*(c.wait_closed() for c in closing))


def _refusal(connection: _Connection | None, exc: BaseException) -> PeerClosedError | None:
    """The peer's closing of ``connection`` that failed a written chunk with ``exc``, if it
    was the peer: a reset seen while writing counts too, an ack timeout never does."""
    if connection is None:
        return None
    if isinstance(exc, PeerClosedError):
        return exc
    if not isinstance(exc, ConnectionError):
        return None
    if connection.closed:  # closed before the write noticed: by the peer, or by us
        return connection.peer_closed
    # The write saw the reset before the read loop did: the chunk is still pending here.
    return PeerClosedError(str(exc), unacked=len(connection.pending))


async def _next_message(reader: asyncio.StreamReader, decoder: ClientDecoder) -> object:
    """The next complete server message during the handshake (nothing else is pending then)."""
    while True:
        data = await reader.read(65536)
        if not data:
            raise ConnectionResetError("server closed the connection during the handshake")
        messages = decoder.feed(data)
        if messages:
            if len(messages) > 1:
                raise HandshakeError("server sent more than one handshake message at once")
            return messages[0]


def _enable_tcp_keepalive(writer: asyncio.StreamWriter) -> None:
    """Let the kernel notice a peer that vanished (node gone) on an idle connection."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
