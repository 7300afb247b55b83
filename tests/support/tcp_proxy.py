"""A TCP proxy on 127.0.0.1 that tests switch off and on, to make a real server unreachable."""

from __future__ import annotations

import asyncio
import contextlib

from tests.support.net import free_port


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target. While ``down``, connections are cut at once."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.up = True
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def set_down(self) -> None:
        """Cut every open link and refuse new ones until :meth:`set_up`."""
        self.up = False
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    def set_up(self) -> None:
        self.up = True

    async def stop(self) -> None:
        self.set_down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        self._links.discard(writer)
        self._links.discard(up_writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()
