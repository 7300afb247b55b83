"""A Forward Protocol TCP proxy for chaos tests that swallows acks on their way back.

It sits between a Forward client (the forwarder) and a server (the aggregator). Client to
server bytes pass untouched; the server's answers are decoded one msgpack object at a time
and each ack ``{"ack": "<chunk>"}`` is forwarded or swallowed by policy. A client that gets no
ack times out and resends the same chunk, which is what the scenario wants to provoke:
guarantee 3 says the resend must be deduplicated downstream.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgpack

from tests.support.tcp_proxy import TcpProxy


def _ack_chunk(message: Any) -> str | bytes | None:
    """The chunk id when ``message`` is an ack map, else None (HELO, PONG, anything else)."""
    if not isinstance(message, dict):
        return None
    for key in ("ack", b"ack"):  # a peer may send the key as str or as bin
        if key in message:
            chunk = message[key]
            return chunk if isinstance(chunk, str | bytes) else str(chunk)
    return None


class AckDroppingProxy(TcpProxy):
    """Proxies 127.0.0.1:<port> to a Forward server and drops acks by policy.

    Policy, read for every ack so a test can flip it at any time:

    - ``drop_all``: swallow every ack while True;
    - ``drop_every``: when > 0, swallow every n-th ack seen (counted over all connections).

    Counters: ``connections`` (accepted client connections), ``acks_seen``, ``acks_dropped``;
    ``dropped_chunks`` lists the chunk ids swallowed, in order.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self.drop_all = False
        self.drop_every = 0
        self.acks_seen = 0
        self.acks_dropped = 0
        self.dropped_chunks: list[str | bytes] = []

    def _should_drop(self) -> bool:
        """Count one ack and decide its fate."""
        self.acks_seen += 1
        if self.drop_all:
            return True
        return self.drop_every > 0 and self.acks_seen % self.drop_every == 0

    async def _downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Server to client: forward every object but the acks the policy swallows.

        An ack may arrive split over reads and several may share one read, so the stream goes
        through an Unpacker. Each forwarded object is written as the exact bytes the server
        sent (sliced with ``Unpacker.tell()``) rather than re-packed: HELO/PONG and ack ids
        then reach the client byte for byte, str or bin as the server chose.
        """
        unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
        pending = bytearray()  # bytes fed to the unpacker, not yet forwarded or dropped
        consumed = 0  # stream offset of pending[0]
        passthrough = False  # set when the stream stops being msgpack
        try:
            while data := await reader.read(65536):
                if passthrough:
                    writer.write(data)
                    await writer.drain()
                    continue
                pending += data
                unpacker.feed(data)
                out = bytearray()
                try:
                    for message in unpacker:
                        end = unpacker.tell()
                        raw = bytes(pending[: end - consumed])
                        del pending[: end - consumed]
                        consumed = end
                        chunk = _ack_chunk(message)
                        if chunk is not None and self._should_drop():
                            self.acks_dropped += 1
                            self.dropped_chunks.append(chunk)
                            continue
                        out += raw
                except (ValueError, msgpack.UnpackException):
                    # Not msgpack (or not ours to judge): relay the rest untouched so the
                    # client, not the proxy, decides what garbage means.
                    passthrough = True
                    out += pending
                    pending.clear()
                if out:
                    writer.write(bytes(out))
                    await writer.drain()
            if pending:
                # The server closed mid-object: hand the client the torn tail as it was.
                writer.write(bytes(pending))
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()
