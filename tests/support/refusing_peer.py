"""A Forward Protocol server that refuses chunks the way an aggregator does on a protocol
error: it closes the connection (or resets it) instead of acking.

Modes: ``poison`` acks every chunk except those whose entries contain ``marker``;
``refuse_all`` closes on every chunk (an aggregator broken for everyone); ``silent_poison``
acks every chunk except the marked ones, which it leaves unanswered (an ack timeout, not a
refusal); ``ack_all``. No handshake (the sender under test runs without a shared key).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import zlib
from collections import Counter
from typing import Literal

import msgpack

Mode = Literal["poison", "refuse_all", "silent_poison", "ack_all"]


def _gunzip_all(data: bytes) -> bytes:
    out = []
    while data:
        inflater = zlib.decompressobj(31)
        out.append(inflater.decompress(data))
        data = inflater.unused_data
    return b"".join(out)


class RefusingPeer:
    """Start with :meth:`start`; ``port``; counters of what it saw."""

    def __init__(
        self, mode: Mode = "poison", *, marker: bytes = b"POISON", reset: bool = False
    ) -> None:
        self.mode: Mode = mode
        self.marker = marker
        self.reset = reset
        """Close with an RST (SO_LINGER 0) instead of a FIN."""
        self.received: Counter[str] = Counter()
        """Chunk id -> times received."""
        self.acked: set[str] = set()
        self.refused: Counter[str] = Counter()
        self.acked_entries: list[bytes] = []
        """Decompressed entry streams of acked chunks, in ack order."""
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=64 << 20)
        try:
            while data := await reader.read(65536):
                unpacker.feed(data)
                for message in unpacker:
                    if not self._answer(message, writer):
                        self._close(writer)
                        return
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, message: list[object], writer: asyncio.StreamWriter) -> bool:
        """Ack ``message`` (True) or refuse it (False: the caller closes the connection)."""
        options = message[2]
        assert isinstance(options, dict)
        chunk = str(options["chunk"])
        self.received[chunk] += 1
        entries = _gunzip_all(message[1]) if isinstance(message[1], bytes) else b""
        marked = self.marker in entries
        if self.mode == "refuse_all" or (self.mode == "poison" and marked):
            self.refused[chunk] += 1
            return False
        if self.mode == "silent_poison" and marked:
            return True
        self.acked.add(chunk)
        self.acked_entries.append(entries)
        writer.write(msgpack.packb({"ack": chunk}))
        return True

    def _close(self, writer: asyncio.StreamWriter) -> None:
        if self.reset:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
