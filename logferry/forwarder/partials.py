"""Merge partial lines (docker 16 KB splits, CRI ``P`` tags) into whole log records.

One ``PartialMerger`` per file. Parts are merged per stream, because a runtime writes
stdout and stderr parts interleaved. A merged record is identified by the offset of its
first part's first byte, so reading the same line twice yields the same record id; and
``safe_offset`` tells the caller how far its position may move: never past the first
byte of a line that is still open, so a crash re-reads that line from its first part.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from logferry.forwarder.formats import ParsedLine, Stream

__all__ = ["MergedRecord", "PartialMerger"]


class MergedRecord(NamedTuple):
    """One log record: a full line, or the parts of a split line joined."""

    offset: int
    """File offset of the first byte of the line's first part (the record identity)."""
    end_offset: int
    """File offset just past the line's last part."""
    time_ns: int
    """Runtime timestamp of the first part, nanoseconds since the epoch."""
    stream: Stream
    log: str
    """The text, parts joined, trailing newline removed, decoded UTF-8 (errors replaced)."""
    truncated: bool
    """The line exceeded ``max_line_bytes``; ``log`` holds its first bytes only."""
    partial_at_eof: bool
    """Emitted by ``flush``: the file ended (rotated/deleted) before the last part."""
    malformed: bool
    """The line did not have the file format's shape; ``log`` is the raw line."""
    parts: int
    """How many physical lines made this record."""


@dataclass(slots=True)
class _OpenLine:
    """A split line whose last part has not been read yet."""

    offset: int
    time_ns: int
    end_offset: int
    chunks: list[bytes] = field(default_factory=list)
    kept: int = 0
    discarded: int = 0
    parts: int = 0


def _cut(data: bytes, limit: int) -> bytes:
    """``data`` cut to at most ``limit`` bytes, backing off to a UTF-8 character start."""
    cut = limit
    # A continuation byte (0b10xxxxxx) at the cut means a character straddles it.
    while cut > 0 and limit - cut < 3 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return data[:cut]


class PartialMerger:
    """Joins the parts of split lines of one file, per stream, with a size cap.

    A line longer than ``max_line_bytes`` is cut (``truncated=True``) and the rest of its
    parts is discarded but counted; the line itself is never dropped, and memory per
    open line stays below ``max_line_bytes``. A malformed line is always a record of its
    own: it neither closes nor joins an open split line.
    """

    def __init__(self, max_line_bytes: int) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._open: dict[Stream, _OpenLine] = {}
        self.partial_merges = 0
        """Records made of two or more parts."""
        self.truncated_lines = 0
        """Records cut to ``max_line_bytes``."""
        self.truncated_bytes = 0
        """Bytes discarded from truncated records."""
        self.malformed_lines = 0
        """Lines that did not have the format's shape (forwarded raw, flagged)."""
        self.partial_at_eof_lines = 0
        """Open split lines emitted unfinished by ``flush``."""

    @property
    def open_lines(self) -> int:
        """Split lines waiting for their last part."""
        return len(self._open)

    def feed(self, lines: Iterable[ParsedLine]) -> list[MergedRecord]:
        """Records completed by ``lines`` (in completion order, which may differ from
        offset order when stdout and stderr parts interleave)."""
        out: list[MergedRecord] = []
        append = out.append
        open_lines = self._open
        limit = self.max_line_bytes
        new = tuple.__new__
        for line in lines:
            if line.malformed:
                self.malformed_lines += 1
            elif line.stream in open_lines:
                state = open_lines[line.stream]
                self._add(state, line)
                if not line.partial:
                    del open_lines[line.stream]
                    append(self._finish(line.stream, state, at_eof=False))
                continue
            elif line.partial:
                state = _OpenLine(line.offset, line.time_ns, line.end_offset)
                open_lines[line.stream] = state
                self._add(state, line)
                continue
            # A full line on its own: the fast path, no copying.
            text = line.text
            truncated = len(text) > limit
            if truncated:
                kept = _cut(text, limit)
                self.truncated_lines += 1
                self.truncated_bytes += len(text) - len(kept)
                text = kept
            record = (
                line.offset,
                line.end_offset,
                line.time_ns,
                line.stream,
                text.decode("utf-8", "replace"),
                truncated,
                False,
                line.malformed,
                1,
            )
            append(new(MergedRecord, record))  # tuple.__new__: skips NamedTuple's slow __new__
        return out

    def safe_offset(self, consumed_end: int) -> int:
        """The file offset up to which every line has been emitted as a record.

        ``consumed_end`` is the offset just past the last line fed. With a split line
        still open, this is the offset of the first byte of the oldest open one, so a
        restart from the persisted position re-reads that line from its first part.
        """
        if not self._open:
            return consumed_end
        return min(min(state.offset for state in self._open.values()), consumed_end)

    def flush(self) -> list[MergedRecord]:
        """Emit open split lines as they are (``partial_at_eof=True``), oldest first.

        For a file that ended for good (rotated away and drained, deleted, truncated).
        """
        states = sorted(self._open.items(), key=lambda item: item[1].offset)
        self._open.clear()
        self.partial_at_eof_lines += len(states)
        return [self._finish(stream, state, at_eof=True) for stream, state in states]

    def _add(self, state: _OpenLine, line: ParsedLine) -> None:
        text = line.text
        state.parts += 1
        state.end_offset = line.end_offset
        # Keep one byte over the cap so _finish can see whether a character straddles it.
        room = self.max_line_bytes + 1 - state.kept
        if room <= 0:
            state.discarded += len(text)
        elif len(text) <= room:
            state.chunks.append(text)
            state.kept += len(text)
        else:
            state.chunks.append(text[:room])
            state.kept += room
            state.discarded += len(text) - room

    def _finish(self, stream: Stream, state: _OpenLine, *, at_eof: bool) -> MergedRecord:
        data = b"".join(state.chunks)
        discarded = state.discarded
        if len(data) > self.max_line_bytes:
            kept = _cut(data, self.max_line_bytes)
            discarded += len(data) - len(kept)
            data = kept
        truncated = discarded > 0
        if truncated:
            self.truncated_lines += 1
            self.truncated_bytes += discarded
        if state.parts > 1:
            self.partial_merges += 1
        return MergedRecord(
            state.offset,
            state.end_offset,
            state.time_ns,
            stream,
            data.decode("utf-8", "replace"),
            truncated,
            at_eof,
            False,
            state.parts,
        )
