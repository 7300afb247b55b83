"""A Forward "server" that accepts connections and reads everything, but never acks: what a
hung aggregator looks like to a sender."""

from __future__ import annotations

import asyncio
import contextlib


class BlackHole:
    """Listens on 127.0.0.1 (a free port, known once started); counts ``connections`` and
    ``bytes_read``. Use :meth:`start`/:meth:`stop` or ``async with``."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.bytes_read = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        """``host:port``, as a sender's ``servers`` list takes it."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._swallow, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and cut every open connection (``Server.close_clients`` is
        Python 3.13+)."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> BlackHole:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            with contextlib.suppress(OSError):  # a peer's reset, or our own abort at stop
                while data := await reader.read(1 << 16):
                    self.bytes_read += len(data)
        finally:
            self._writers.discard(writer)
            writer.close()
