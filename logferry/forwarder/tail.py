"""Tail one source: an open file descriptor, read in large chunks, into numbered records.

The descriptor stays open for the life of the source, so a file renamed away by rotation
(``0.log`` -> ``0.log.<timestamp>``) or deleted is still read to its end through it — the
backlog is drained whatever any timer says — and released only then. Reads are ``pread`` at
the reader's offset in chunks of ``read_bytes`` (one syscall per chunk, never per line).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from enum import StrEnum

from logferry.common.units import MiB
from logferry.forwarder.entries import Entry, encode_blocks, kubernetes_raw
from logferry.forwarder.formats import Format
from logferry.forwarder.metadata import ContainerMeta
from logferry.forwarder.multiline import Joiner, MultilineRule
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
    joined_lines: int = 0
    """Lines a multiline rule folded into the line before them in this read."""
    split_groups: int = 0
    """Joined records cut at the multiline caps in this read."""


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
    multiline: MultilineRule | None = None
    """Join continuation lines (stack traces) with this rule; None: every line on its own."""
    fmt: Format | None = None
    """The file's format; None: detected from its first line (docker or CRI)."""
    multiline_timeout_s: float = 1.0
    multiline_max_lines: int = 500
    multiline_max_bytes: int = 256 * 1024
    _reader: SourceReader = field(init=False)
    _joiner: Joiner | None = field(init=False, default=None)
    _finished_lines: int = field(init=False, default=0)
    _closed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._reader = SourceReader(
            Checkpoint(self.state.offset, self.state.next_seq),
            self.max_line_bytes,
            fmt=self.fmt,
            source=self.state.source_id,
            kubernetes=kubernetes_raw(self.meta.as_record()),
        )
        if self.multiline is not None:
            self._joiner = self._joiner_for(self.multiline)

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

    def set_multiline(self, rule: MultilineRule) -> bool:
        """Join lines with ``rule`` from the start of the source; False (and no change) once
        anything was read: the joins of one file never change half-way through."""
        if self.read_offset != self.state.offset or self._joiner is not None:
            return False
        self.multiline = rule
        self._joiner = self._joiner_for(rule)
        return True

    def _joiner_for(self, rule: MultilineRule) -> Joiner:
        """A joiner from the source's start; a rule's own ``max_lines`` (a tenant pipeline's)
        may only lower the forwarder's."""
        max_lines = min(self.multiline_max_lines, rule.max_lines or self.multiline_max_lines)
        return Joiner(
            rule,
            flush_timeout_ns=int(self.multiline_timeout_s * 1e9),
            max_lines=max_lines,
            max_bytes=self.multiline_max_bytes,
            start=self._reader.checkpoint,
        )

    def set_kubernetes(self, record: dict[str, object]) -> None:
        """The ``kubernetes`` map of the records read from now on (pod metadata arrived)."""
        self._reader.kubernetes = kubernetes_raw(record)  # type: ignore[arg-type]

    @property
    def joiner(self) -> Joiner | None:
        """The multiline joiner, if the source has a rule (its counters feed the metrics)."""
        return self._joiner

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
        joiner = self._joiner
        if self.size() < offset:
            # What a multiline group holds was read from the old content: it goes out.
            held: list[Entry] = []
            last = self._reader.checkpoint
            if joiner is not None:
                held, last = joiner.finish(last)
            kept = encode_blocks(held, self.block_records, self.block_bytes)
            batch = TailBatch(kept, last, TailStatus.TRUNCATED, records=len(held))
            return self._counted(batch, before)
        blocks: list[bytes] = []
        checkpoint: Checkpoint | None = None
        read = lines = records = 0
        while read < budget_bytes:
            data = os.pread(self.fd, self.read_bytes, self._reader.read_offset)
            if not data:
                break
            read += len(data)
            result = self._reader.feed(data)
            lines += result.lines
            out, checkpoint = result.records, result.checkpoint
            if joiner is not None:
                out, checkpoint = joiner.feed(out, checkpoint)
            records += len(out)
            blocks += encode_blocks(out, self.block_records, self.block_bytes)
            if len(data) < self.read_bytes:
                break
        if joiner is not None and not read:
            out, checkpoint = joiner.flush_idle(time.time_ns(), self._reader.checkpoint)
            records += len(out)
            blocks += encode_blocks(out, self.block_records, self.block_bytes)
        if checkpoint is None:
            checkpoint = self._reader.checkpoint
        status = TailStatus.DATA if read else TailStatus.IDLE
        return self._counted(TailBatch(blocks, checkpoint, status, read, lines, records), before)

    def finish(self) -> TailBatch:
        """The file will grow no more (rotated away and drained, or deleted): emit what is
        left, including split lines whose last part never came."""
        before = self._counts()
        entries, checkpoint = self._joined_finish()
        blocks = encode_blocks(entries, self.block_records, self.block_bytes)
        lines = self._finished_lines
        batch = TailBatch(blocks, checkpoint, TailStatus.IDLE, 0, lines, len(entries))
        return self._counted(batch, before)

    def _joined_finish(self) -> tuple[list[Entry], Checkpoint]:
        result = self._reader.finish()
        self._finished_lines = result.lines
        if self._joiner is None:
            return result.records, result.checkpoint
        out, _ = self._joiner.feed(result.records, result.checkpoint)
        rest, checkpoint = self._joiner.finish(result.checkpoint)
        return out + rest, checkpoint

    def _counts(self) -> tuple[int, int, int, int, int]:
        merger, joiner = self._reader.merger, self._joiner
        joined, split = (joiner.joined_lines, joiner.split_groups) if joiner else (0, 0)
        return (
            merger.partial_merges,
            merger.truncated_lines,
            merger.malformed_lines,
            joined,
            split,
        )

    def _counted(self, batch: TailBatch, before: tuple[int, int, int, int, int]) -> TailBatch:
        """``batch`` with what its read merged, cut, found malformed and joined."""
        after = self._counts()
        batch.partial_merges = after[0] - before[0]
        batch.truncated_lines = after[1] - before[1]
        batch.malformed_lines = after[2] - before[2]
        batch.joined_lines = after[3] - before[3]
        batch.split_groups = after[4] - before[4]
        return batch

    def close(self) -> None:
        """Release the descriptor. Safe to call twice."""
        if not self._closed:
            self._closed = True
            os.close(self.fd)
