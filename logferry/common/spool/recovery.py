"""Recovery of a spool directory on open: scan, quarantine damage, find where to resume.

Invariants this restores before the spool accepts work:

- every segment file holds only valid frames, in increasing sequence order (damaged byte
  ranges are moved to ``quarantine/`` and the segment is rewritten atomically without them);
- nothing that an ``append`` acknowledged is lost unless its bytes were damaged, and then
  the loss is reported as a :class:`QuarantineEvent` with the missing sequence range;
- a damaged committed-position file falls back to the oldest segment on disk (resend rather
  than lose).

Any damage pattern must open: this module never raises for bad bytes, only for I/O errors.
It is synchronous; the spool runs it in a worker thread.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from logferry.common.files import (
    write_file_atomic,
    write_new_file,
)
from logferry.common.spool.segment import (
    DamagedRange,
    FrameHeader,
    decode_commit,
    parse_segment_name,
    scan_frames,
    segment_name,
)

COMMIT_FILE = "committed"
QUARANTINE_DIR = "quarantine"


@dataclass(frozen=True, slots=True)
class QuarantineEvent:
    """A damaged range cut out of a segment on open (or records found missing).

    ``missing_seqs`` is the half-open sequence range ``[start, end)`` lost with it, when the
    neighbouring valid frames tell (a torn tail of the newest segment has no right neighbour:
    it was never acknowledged, and its numbers are reused). ``length`` is 0 when records are
    missing without damaged bytes (a segment truncated at a frame boundary, or deleted).
    """

    segment: str
    offset: int
    length: int
    missing_seqs: tuple[int, int] | None
    quarantine_file: str | None


@dataclass(slots=True)
class RecoveredSegment:
    """A segment after recovery: valid frames only. ``end_seq`` is past its last record."""

    first_seq: int
    size: int
    end_seq: int


@dataclass(slots=True)
class RecoveryResult:
    """What :func:`recover` found, and where reading resumes."""

    segments: list[RecoveredSegment]
    low_water: int
    next_seq: int
    events: list[QuarantineEvent]
    quarantined_frames: int = 0
    quarantined_bytes: int = 0
    commit_file_damaged: bool = False
    read_offset: int = 0  # where the reader starts, in the first remaining segment
    unread_records: int = 0
    unread_oldest_ms: int | None = None


@dataclass(slots=True)
class _Open:
    """Damaged ranges seen since the last valid frame, waiting for their right neighbour."""

    pending: list[tuple[str, int, int, str | None]] = field(default_factory=list)


def read_low_water(directory: str) -> tuple[int | None, bool]:
    """The persisted low-water mark (None if absent or damaged) and whether it was damaged."""
    path = os.path.join(directory, COMMIT_FILE)
    try:
        with open(path, "rb") as fh:
            data = fh.read(64)
    except FileNotFoundError:
        return None, False
    low_water = decode_commit(data)
    if low_water is None:
        _quarantine_bytes(directory, f"{COMMIT_FILE}@0.bin", data)
        return None, True
    return low_water, False


def recover(directory: str) -> RecoveryResult:
    """Scan every segment of ``directory``, quarantine damage and compute the resume point."""
    _remove_tmp_files(directory)
    names = _segment_seqs(directory)
    low_water, damaged_commit = read_low_water(directory)
    # A missing commit file with segments on disk is damage too (it is written on first open).
    damaged_commit = damaged_commit or (low_water is None and bool(names))
    if low_water is None:
        low_water = names[0] if names else 0
    names = _drop_committed(directory, names, low_water)
    result = RecoveryResult([], low_water, low_water, [], commit_file_damaged=damaged_commit)
    scan = _Scan(directory, result)
    for first_seq in names:
        scan.segment(first_seq)
    scan.finish()
    result.next_seq = max([low_water, scan.expected, *names])
    _drop_useless(directory, result)
    return result


class _Scan:
    """Walks the segments in order, keeping the chain of expected sequence numbers."""

    def __init__(self, directory: str, result: RecoveryResult) -> None:
        self.directory = directory
        self.result = result
        self.expected = result.low_water
        self.prev_end = 0  # frames never overlap, even across segments
        self.open = _Open()
        self.found_reader = False

    def segment(self, first_seq: int) -> None:
        name = segment_name(first_seq)
        path = os.path.join(self.directory, name)
        with open(path, "rb") as fh:
            data = fh.read()
        good: list[bytes] = []
        size, end_seq = 0, first_seq
        for item in scan_frames(data, max(first_seq, self.prev_end)):
            if isinstance(item, DamagedRange):
                self._damaged(name, data, item)
                continue
            self._valid(item, name, size)
            good.append(data[item.offset : item.end])
            size += item.size
            end_seq = item.end_seq
        if size != len(data):
            write_file_atomic(path, b"".join(good))
        self.result.segments.append(RecoveredSegment(first_seq, size, end_seq))

    def _damaged(self, name: str, data: bytes, item: DamagedRange) -> None:
        qname = f"{name}@{item.offset}.bin"
        qfile = _quarantine_bytes(
            self.directory, qname, data[item.offset : item.offset + item.length]
        )
        self.open.pending.append((name, item.offset, item.length, qfile))
        self.result.quarantined_frames += 1
        self.result.quarantined_bytes += item.length

    def _valid(self, header: FrameHeader, name: str, new_offset: int) -> None:
        if header.first_seq > self.expected:
            self._close_open((self.expected, header.first_seq), name, new_offset)
        else:
            self._close_open(None, name, new_offset)
        self.expected = max(self.expected, header.end_seq)
        self.prev_end = header.end_seq
        low_water = self.result.low_water
        if header.end_seq <= low_water:
            return
        self.result.unread_records += header.end_seq - max(header.first_seq, low_water)
        if not self.found_reader:
            self.found_reader = True
            self.result.read_offset = new_offset
            self.result.unread_oldest_ms = header.time_ms

    def _close_open(self, missing: tuple[int, int] | None, name: str, offset: int) -> None:
        """Report the damage since the last valid frame, with the range it lost if known."""
        if missing is not None and not self.open.pending:
            # Records missing with no damaged bytes: a truncated or deleted segment.
            self.open.pending.append((name, offset, 0, None))
        for seg, off, length, qfile in self.open.pending:
            self.result.events.append(QuarantineEvent(seg, off, length, missing, qfile))
        self.open.pending.clear()

    def finish(self) -> None:
        """Damage after the last valid frame: its sequence numbers cannot be inferred."""
        self._close_open(None, "", 0)


def _drop_committed(directory: str, names: list[int], low_water: int) -> list[int]:
    """Delete segments whose successor starts at or below the mark: all their records are
    committed, so they need not even be scanned."""
    keep: list[int] = []
    for i, first_seq in enumerate(names):
        if i + 1 < len(names) and names[i + 1] <= low_water:
            os.unlink(os.path.join(directory, segment_name(first_seq)))
        else:
            keep.append(first_seq)
    return keep


def _drop_useless(directory: str, result: RecoveryResult) -> None:
    """Delete segments with nothing left to read: empty, or wholly below the mark.

    Every segment before the reader's start is wholly below the mark, so the reader then
    starts in the first remaining segment.
    """
    keep: list[RecoveredSegment] = []
    for seg in result.segments:
        if seg.size == 0 or seg.end_seq <= result.low_water:
            os.unlink(os.path.join(directory, segment_name(seg.first_seq)))
        else:
            keep.append(seg)
    result.segments = keep
    if not keep:
        result.read_offset = 0


def _segment_seqs(directory: str) -> list[int]:
    seqs = [s for s in (parse_segment_name(n) for n in os.listdir(directory)) if s is not None]
    return sorted(seqs)


def _remove_tmp_files(directory: str) -> None:
    """Leftovers of an interrupted atomic write: the original is intact, drop the copy."""
    for name in os.listdir(directory):
        if name.endswith(".tmp"):
            os.unlink(os.path.join(directory, name))


def _quarantine_bytes(directory: str, name: str, data: bytes) -> str:
    """Write ``data`` durably under ``quarantine/`` (before the segment is rewritten)."""
    # A counter when damage is found again at the same place on a later open.
    names = itertools.chain([name], (f"{name}.{n}" for n in itertools.count(1)))
    return write_new_file(os.path.join(directory, QUARANTINE_DIR), names, data)
