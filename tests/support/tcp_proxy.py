"""A TCP proxy on 127.0.0.1 that tests switch off and on, to make a real server unreachable;
the base of proxies that also meddle with what the server answers."""

from __future__ import annotations

import asyncio
import contextlib

from tests.support.net import free_port


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target. While ``down``, connections are cut at once.

    ``connections`` counts the client connections accepted. A subclass changes what flows
    from the server back to the client by overriding :meth:`_downstream`.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.up = True
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    @classmethod
    def in_front_of(cls, url: str) -> TcpProxy:
        """A proxy to the HTTP server at ``url`` (``http://host:port``), e.g. the store."""
        host, port = url.removeprefix("http://").rsplit(":", 1)
        return cls(host, int(port))

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
        self.connections += 1
        if not self.up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            # Like an unreachable server: the client sees its connection cut.
            writer.transport.abort()
            return
        self._links.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer),
            self._downstream(up_reader, writer),
            return_exceptions=True,
        )
        self._links.discard(writer)
        self._links.discard(up_writer)

    async def _downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Server to client: passed through as it is, unless a subclass says otherwise."""
        await self._pipe(reader, writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()
