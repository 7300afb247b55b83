"""Fluentd Forward Protocol v1: the one package to import for the wire format.

Reference: https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1 ("the spec").

- :mod:`.types`: EventTime (ext type 0), Mode, EventMessage, HELO/PING/PONG/ack shapes;
- :mod:`.encode`: encoders for the four carrier modes and acks;
- :mod:`.decode`: the incremental, bounded ServerDecoder and ClientDecoder;
- :mod:`.entries`: entry streams (fast and reference decoders, slices, limits);
- :mod:`.handshake`: HELO/PING/PONG digests and verification (import it by its name).
"""

from __future__ import annotations

from logferry.common.protocol.decode import ClientDecoder, ServerDecoder
from logferry.common.protocol.encode import (
    encode_ack,
    encode_compressed_packed_forward,
    encode_forward,
    encode_message,
    encode_packed_forward,
    gzip_entries,
    pack_entries,
    packb,
)
from logferry.common.protocol.entries import decode_entries
from logferry.common.protocol.types import (
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_MAX_MESSAGE_BYTES,
    Ack,
    Entry,
    EventMessage,
    EventTime,
    Helo,
    Mode,
    Ping,
    Pong,
    Record,
    UnicodeErrors,
    ext_hook,
)

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Ack",
    "ClientDecoder",
    "Entry",
    "EventMessage",
    "EventTime",
    "Helo",
    "Mode",
    "Ping",
    "Pong",
    "Record",
    "ServerDecoder",
    "UnicodeErrors",
    "decode_entries",
    "encode_ack",
    "encode_compressed_packed_forward",
    "encode_forward",
    "encode_message",
    "encode_packed_forward",
    "ext_hook",
    "gzip_entries",
    "pack_entries",
    "packb",
]
