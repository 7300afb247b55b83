"""The one error hierarchy of logferry.

::

    LogferryError                      retriable=False unless stated
    ├── ConfigError                    refused at start: file, line, key path, reason
    ├── ProtocolError                  a peer broke the protocol: close that connection
    │   ├── MalformedMessageError      garbage bytes, wrong msgpack types, a bad gzip stream
    │   │                              (reason: malformed, bad_entry, bad_options, bad_gzip)
    │   ├── MessageTooLargeError       a message over the configured byte limit
    │   ├── TooManyEntriesError        an event stream over the configured entry-count limit
    │   └── HandshakeError             HELO/PING/PONG failed: wrong shared key, bad credentials
    ├── SpoolError                     the durable buffer
    │   ├── SpoolFullError             size cap reached (retriable: space frees on commit)
    │   ├── SpoolClosedError           used after close()
    │   └── SpoolCorruptError          a damaged frame (quarantined on open)
    └── OutputError                    a destination failed; ``retriable`` says if worth retrying

Third-party errors are translated at module boundaries with ``raise ... from exc``.
"""

from __future__ import annotations


class LogferryError(Exception):
    """Base of every error logferry raises on purpose."""

    retriable: bool = False


class ConfigError(LogferryError):
    """A configuration file is invalid. The message names the file, line, key path and reason."""

    def __init__(
        self, reason: str, *, file: str | None = None, line: int | None = None, path: str = ""
    ) -> None:
        self.reason = reason
        self.file = file
        self.line = line
        self.path = path
        where = file or "<config>"
        if line is not None:
            where = f"{where}:{line}"
        key = f" {path}:" if path else ""
        super().__init__(f"{where}:{key} {reason}")


class ProtocolError(LogferryError):
    """A Forward Protocol peer sent something we refuse. The connection must be closed.

    ``reason`` is the metric label (a small fixed set); ``mode`` the carrier mode being decoded
    and ``shape`` the offending value's msgpack type names (never its content), so one log
    line tells an operator which dialect a peer speaks.
    """

    reason: str = "protocol"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        mode: str | None = None,
        shape: str | None = None,
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.mode = mode
        self.shape = shape


class MalformedMessageError(ProtocolError):
    """Bytes that are not a valid Forward Protocol message (bad msgpack, wrong types, bad gzip)."""

    reason = "malformed"


class MessageTooLargeError(ProtocolError):
    """A single message (or its decompressed entries) is over the configured byte limit."""

    reason = "too_large"


class TooManyEntriesError(ProtocolError):
    """A message carries more entries than the configured limit."""

    reason = "too_many_entries"


class HandshakeError(ProtocolError):
    """The HELO/PING/PONG handshake failed (wrong shared key, bad user, unexpected message)."""

    reason = "handshake"


class SpoolError(LogferryError):
    """The durable spool failed."""


class SpoolFullError(SpoolError):
    """The spool is at its size cap. Retriable: space frees as the consumer commits."""

    retriable = True


class SpoolClosedError(SpoolError):
    """The spool was used after close()."""


class SpoolCorruptError(SpoolError):
    """A spool frame failed its length or CRC check."""


class OutputError(LogferryError):
    """A destination refused or failed a write."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable
