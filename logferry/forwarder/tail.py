"""Tail one source: an open file descriptor, read in large chunks, into numbered records.

The descriptor stays open for the life of the source, so a file renamed away by rotation
(``0.log`` -> ``0.log.<timestamp>``) or deleted is still read to its end through it — the
backlog is drained whatever any timer says — and released only then. Reads are ``pread`` at
the reader's offset in chunks of ``read_bytes`` (one syscall per chunk, never per line).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum

from logferry.common.units import MiB
from logferry.forwarder.entries import encode_blocks, kubernetes_raw
from logferry.forwarder.metadata import ContainerMeta
from logferry.forwarder.positions import SourceState
from logferry.forwarder.reader import Checkpoint, SourceReader

__all__ = ["FileTail", "TailBatch", "TailStatus"]


class TailStatus(StrEnum):
    """What the last read found."""

    DATA = "data"
    """Records (or bytes towards them) were read."""
    IDLE = "idle"
    """At the end of the file for now."""
    TRUNCATED = "truncated"
    """The file is shorter than what was read: truncation or copytruncate. The caller starts a
    new generation of the source from offset 0."""


@dataclass(slots=True)
class TailBatch:
    """Spool blocks from one read, and the checkpoint to persist once they are durable."""

    entries: list[bytes]
    """Spool records: blocks of encoded entries (``entries.encode_blocks``)."""
    checkpoint: Checkpoint
    status: TailStatus
    bytes_read: int = 0
    lines: int = 0
    records: int = 0
    """Records in the blocks."""
    partial_merges: int = 0
    """Split lines merged into one record by this read."""
    truncated_lines: int = 0
    """Lines cut at the length cap by this read."""
    malformed_lines: int = 0
    """Lines not in the file's format (forwarded raw) in this read."""


@dataclass(slots=True)
class FileTail:
    """One open generation of one file."""

    state: SourceState
    meta: ContainerMeta
    fd: int
    max_line_bytes: int
    read_bytes: int = MiB
    block_records: int = 2000
    """Most records in one spool block (the sender's records-per-chunk cap)."""
    block_bytes: int = 4 << 20
    """Most uncompressed bytes in one spool block (the sender's bytes-per-chunk cap)."""
    _reader: SourceReader = field(init=False)
    _closed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._reader = SourceReader(
            Checkpoint(self.state.offset, self.state.next_seq),
            self.max_line_bytes,
            source=self.state.source_id,
            kubernetes=kubernetes_raw(self.meta.as_record()),
        )

    @classmethod
    def open(
        cls, path: str, state: SourceState, meta: ContainerMeta, *, max_line_bytes: int
    ) -> FileTail:
        """Open ``path`` read-only (the caller resolved ``state`` for this very file)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return cls(state, meta, fd, max_line_bytes)

    @property
    def read_offset(self) -> int:
        """Next byte to read."""
        return self._reader.read_offset

    @property
    def reader(self) -> SourceReader:
        """The reader (its merger's counters feed the metrics)."""
        return self._reader

    def size(self) -> int:
        """Current size of the open file (renamed or deleted files included)."""
        return os.fstat(self.fd).st_size

    def lag_bytes(self) -> int:
        """Bytes written but not read yet."""
        return max(0, self.size() - self.read_offset)

    def read(self, budget_bytes: int) -> TailBatch:
        """Read up to ``budget_bytes`` (whole chunks) and return what became records."""
        before = self._counts()
        offset = self.read_offset
        if self.size() < offset:
            return TailBatch([], self._reader.checkpoint, TailStatus.TRUNCATED)
        entries: list[bytes] = []
        checkpoint = None
        read = lines = records = 0
        while read < budget_bytes:
            data = os.pread(self.fd, self.read_bytes, self._reader.read_offset)
            if not data:
                break
            read += len(data)
            result = self._reader.feed(data)
            lines += result.lines
            records += len(result.records)
            entries += encode_blocks(result.records, self.block_records, self.block_bytes)
            checkpoint = result.checkpoint
            if len(data) < self.read_bytes:
                break
        if checkpoint is None:
            checkpoint = self._reader.checkpoint
        status = TailStatus.DATA if read else TailStatus.IDLE
        return self._counted(TailBatch(entries, checkpoint, status, read, lines, records), before)

    def finish(self) -> TailBatch:
        """The file will grow no more (rotated away and drained, or deleted): emit what is
        left, including split lines whose last part never came."""
        before = self._counts()
        result = self._reader.finish()
        blocks = encode_blocks(result.records, self.block_records, self.block_bytes)
        batch = TailBatch(
            blocks, result.checkpoint, TailStatus.IDLE, 0, result.lines, len(result.records)
        )
        return self._counted(batch, before)

    def _counts(self) -> tuple[int, int, int]:
        merger = self._reader.merger
        return merger.partial_merges, merger.truncated_lines, merger.malformed_lines

    def _counted(self, batch: TailBatch, before: tuple[int, int, int]) -> TailBatch:
        """``batch`` with what its read merged, cut and found malformed."""
        after = self._counts()
        batch.partial_merges = after[0] - before[0]
        batch.truncated_lines = after[1] - before[1]
        batch.malformed_lines = after[2] - before[2]
        return batch

    def close(self) -> None:
        """Release the descriptor. Safe to call twice."""
        if not self._closed:
            self._closed = True
            os.close(self.fd)
