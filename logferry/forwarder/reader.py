"""One source's bytes in, numbered records and a safe checkpoint out.

The tail stage reads a file in large chunks and feeds them here. This module parses them
(``formats``), merges split lines (``partials``), and numbers the records: ``_lf.seq`` is the
record's rank **in file-offset order** from the start of the source, so numbering never
depends on how the file happened to be read (chunk sizes, interleaved stdout/stderr parts,
a crash in between).

Records complete out of offset order (an stderr line finishes while an stdout line is still
split), so a completed record waits until every record that starts before it is complete.

A :class:`Checkpoint` is what the caller persists as the source's position once the records
up to it are durable in the spool: an offset at a *cut* — a line boundary that no split line
spans — and the seq of the first record at or after it. Reading again from a checkpoint
reproduces exactly the same records with the same offsets and seqs (the guarantees 2,
3 and 4): records emitted past the checkpoint before a crash come out again identical, and
the store's create-if-absent drops the copies.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import msgspec

from logferry.forwarder.entries import Entry, kubernetes_raw, make_entry
from logferry.forwarder.fastpath import fast_entries
from logferry.forwarder.formats import Format, ParsedLine, detect_format, parse
from logferry.forwarder.partials import MergedRecord, PartialMerger

__all__ = ["Checkpoint", "ReadResult", "SourceReader"]

_NO_KUBERNETES = kubernetes_raw({})


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A position that is safe to persist: no split line spans ``offset``."""

    offset: int
    next_seq: int


@dataclass(slots=True)
class ReadResult:
    """What one feed produced."""

    records: list[Entry]
    """Complete records in offset order, numbered (``_lf.seq``) and ready to encode."""
    checkpoint: Checkpoint
    """Persist this once ``records`` (and everything emitted before) are durable."""
    lines: int = 0
    """Physical lines parsed."""


@dataclass(slots=True)
class SourceReader:
    """Feeds of consecutive bytes of one source -> records in offset order, numbered."""

    start: Checkpoint
    max_line_bytes: int
    fmt: Format | None = None
    source: str = ""
    """The source id every record's ``_lf`` carries."""
    kubernetes: msgspec.Raw = field(default_factory=lambda: _NO_KUBERNETES)
    """The file's ``kubernetes`` map, encoded once (``entries.kubernetes_raw``)."""
    fast: bool = True
    """Take plain lines through ``fastpath`` (False: the general path only, for tests)."""
    max_carry_bytes: int = 0
    """A line longer than this without a newline is cut into a malformed record (0: 4x the
    line cap plus 64 KiB), so a file without newlines cannot grow memory without bound."""
    _merger: PartialMerger = field(init=False)
    _carry: bytes = field(init=False, default=b"")
    _buf_offset: int = field(init=False)
    _last_time_ns: int = field(init=False, default=0)
    _pending: list[MergedRecord] = field(init=False, default_factory=list)
    _next_seq: int = field(init=False)
    _checkpoint: Checkpoint = field(init=False)
    _emitted: list[int] = field(init=False, default_factory=list)
    """Offsets of records emitted since the checkpoint (ascending)."""
    _open: set[str] = field(init=False, default_factory=set)
    _cut: int = field(init=False)

    def __post_init__(self) -> None:
        self._merger = PartialMerger(self.max_line_bytes)
        self._buf_offset = self.start.offset
        self._next_seq = self.start.next_seq
        self._checkpoint = self.start
        self._cut = self.start.offset
        if not self.max_carry_bytes:
            self.max_carry_bytes = 4 * self.max_line_bytes + 65536

    @property
    def read_offset(self) -> int:
        """File offset of the next byte to feed."""
        return self._buf_offset + len(self._carry)

    @property
    def checkpoint(self) -> Checkpoint:
        """The latest safe position (see the module docstring)."""
        return self._checkpoint

    @property
    def merger(self) -> PartialMerger:
        """The partial merger (its counters feed the metrics)."""
        return self._merger

    def feed(self, data: bytes) -> ReadResult:
        """Take the next ``data`` bytes of the file (starting at :attr:`read_offset`)."""
        buf = self._carry + data if self._carry else data
        if self.fmt is None:
            self.fmt = detect_format(buf)
            if self.fmt is None:
                if b"\n" in buf:
                    self.fmt = "docker"  # neither shape: docker parsing forwards lines raw
                else:
                    self._carry = buf
                    return ReadResult([], self._checkpoint)
        fast: list[Entry] = []
        if self.fast and self._idle():
            run = fast_entries(
                self.fmt,
                buf,
                self._buf_offset,
                self._next_seq,
                self._last_time_ns,
                self.max_line_bytes,
                self.source,
                self.kubernetes,
            )
            if run.entries:
                fast = run.entries
                self._buf_offset += run.consumed
                self._next_seq += len(fast)
                self._last_time_ns = run.last_time_ns
                self._cut = self._buf_offset
                self._checkpoint = Checkpoint(self._buf_offset, self._next_seq)
                buf = buf[run.consumed :]
        result = parse(self.fmt, buf, self._buf_offset, self._last_time_ns)
        lines = result.lines
        consumed = result.consumed
        self._last_time_ns = result.last_time_ns
        rest = buf[consumed:]
        while len(rest) > self.max_carry_bytes:
            lines = [*lines, self._oversize_line(rest, self._buf_offset + consumed)]
            consumed += self.max_carry_bytes
            rest = buf[consumed:]
        self._carry = rest
        self._buf_offset += consumed
        taken = self._take(lines, self._buf_offset)
        if fast:
            taken.records = fast + taken.records
            taken.lines += len(fast)
        return taken

    def _idle(self) -> bool:
        """No split line open, nothing waiting, the checkpoint at the read position: the state
        the fast path starts from and leaves behind."""
        return (
            not self._open
            and not self._pending
            and not self._emitted
            and self._merger.open_lines == 0
            and self._cut == self._buf_offset == self._checkpoint.offset
        )

    def finish(self) -> ReadResult:
        """The file ended for good (rotated away and drained, or deleted): emit open split
        lines and a trailing line without its newline as they are."""
        lines: list[ParsedLine] = []
        if self._carry:
            lines.append(self._oversize_line(self._carry, self._buf_offset))
            self._buf_offset += len(self._carry)
            self._carry = b""
        result = self._take(lines, self._buf_offset)
        flushed = self._merger.flush()
        self._open.clear()
        records = result.records + self._emit(flushed, barrier=None)
        self._advance_checkpoint(self._buf_offset)
        return ReadResult(records, self._checkpoint, result.lines)

    def _oversize_line(self, raw: bytes, offset: int) -> ParsedLine:
        text = raw[: self.max_carry_bytes]
        return ParsedLine(
            offset, offset + len(text), self._last_time_ns, "stdout", text, False, True
        )

    def _take(self, lines: list[ParsedLine], consumed_end: int) -> ReadResult:
        cut = self._cut
        open_streams = self._open
        for line in lines:
            if not line.malformed:
                if line.partial:
                    open_streams.add(line.stream)
                else:
                    open_streams.discard(line.stream)
            if not open_streams:
                cut = line.end_offset
        self._cut = cut
        completed = self._merger.feed(lines)
        barrier = self._merger.safe_offset(consumed_end)
        records = self._emit(completed, barrier)
        self._advance_checkpoint(cut)
        return ReadResult(records, self._checkpoint, len(lines))

    def _emit(self, completed: list[MergedRecord], barrier: int | None) -> list[Entry]:
        pending = self._pending
        pending.extend(completed)
        if not pending:
            return []
        pending.sort(key=_offset)
        if barrier is None:
            ready, self._pending = pending, []
        else:
            split = bisect.bisect_left(pending, barrier, key=_offset)
            ready, self._pending = pending[:split], pending[split:]
        out = []
        source, kubernetes = self.source, self.kubernetes
        for record in ready:
            out.append(make_entry(record, self._next_seq, source, kubernetes))
            self._emitted.append(record.offset)
            self._next_seq += 1
        return out

    def _advance_checkpoint(self, cut: int) -> None:
        if cut <= self._checkpoint.offset:
            return
        # Every record starting before the cut is complete (no stream is open there) and has
        # been emitted (the barrier is at or past the cut); those after it may be too.
        after = len(self._emitted) - bisect.bisect_left(self._emitted, cut)
        self._checkpoint = Checkpoint(cut, self._next_seq - after)
        del self._emitted[: len(self._emitted) - after]


def _offset(record: MergedRecord) -> int:
    return record.offset
