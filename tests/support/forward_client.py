"""A minimal Forward Protocol client for tests, built on the project's codec."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable
from types import TracebackType

from logferry.common.protocol import Ack, ClientDecoder, Helo, Pong
from logferry.common.protocol.handshake import ClientHandshake, encode_ping


class ForwardClient:
    """Connects, optionally passes the handshake, sends raw messages and waits for acks."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        shared_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        local_host: str | None = None,
    ) -> None:
        """``local_host`` binds the client to another loopback address (127.0.0.2, ...), a
        different source for the server's per-source limits."""
        self.host, self.port = host, port
        self.local_addr = (local_host, 0) if local_host is not None else None
        self.ssl_context = ssl_context
        self.shared_key = shared_key
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = ClientDecoder()
        self._acks: list[str] = []
        self._inbox: list[object] = []
        self.pong: Pong | None = None

    async def __aenter__(self) -> ForwardClient:
        await self.connect()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.ssl_context, local_addr=self.local_addr
        )
        if self.shared_key is None:
            return
        try:
            helo = await self._next(Helo)
            assert isinstance(helo, Helo)
            handshake = ClientHandshake(shared_key=self.shared_key, client_hostname="test-client")
            self._writer.write(encode_ping(handshake.ping(helo)))
            await self._writer.drain()
            pong = await self._next(Pong)
            assert isinstance(pong, Pong)
            self.pong = pong
            handshake.verify_pong(pong)
        except BaseException:
            await self.close()
            raise

    async def _next(self, kind: type) -> object:
        """The next message of ``kind``; acks seen on the way are remembered."""
        assert self._reader is not None
        while True:
            while self._inbox:
                message = self._inbox.pop(0)
                if isinstance(message, kind):
                    return message
                if isinstance(message, Ack):
                    self._acks.append(message.chunk)
            data = await asyncio.wait_for(self._reader.read(65536), 30)
            if not data:
                raise ConnectionResetError("server closed the connection")
            self._inbox.extend(self._decoder.feed(data))

    async def send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def wait_ack(self, chunk: str, timeout_s: float = 30.0) -> None:
        """Wait for ``{"ack": chunk}``."""

        async def wait() -> None:
            while chunk not in self._acks:
                ack = await self._next(Ack)
                assert isinstance(ack, Ack)
                self._acks.append(ack.chunk)

        await asyncio.wait_for(wait(), timeout_s)

    async def send_windowed(
        self, chunks: Iterable[tuple[str, bytes]], window: int, timeout_s: float = 300.0
    ) -> None:
        """Send (chunk id, message) pairs in order, at most ``window`` unacknowledged, and
        wait for the last acks (as a forwarder paces itself)."""
        inflight: list[str] = []
        for chunk_id, payload in chunks:
            await self.send(payload)
            inflight.append(chunk_id)
            if len(inflight) >= window:
                await self.wait_ack(inflight.pop(0), timeout_s)
        for chunk_id in inflight:
            await self.wait_ack(chunk_id, timeout_s)

    async def read_eof(self, timeout_s: float = 10.0) -> bool:
        """True when the server closes the connection within ``timeout_s``."""
        assert self._reader is not None
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    data = await self._reader.read(65536)
                    if not data:
                        return True
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
            self._writer = None
