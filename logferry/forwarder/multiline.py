"""Multiline at the source: continuation lines (stack traces) joined to the line that started
them, per file and container stream, before the spool.

Here the stream is still in order and whole, so a trace is never cut by where a chunk
happened to end. A joined record keeps its first line's identity (``_lf.id``, ``_lf.seq``)
and says which lines it stands for with ``_lf.seq_end``; the proof of delivery counts that
range.

A line joins the open group when it is a *continuation* by the rule (it matches
``continuation``, or does not match ``start``), is the next seq of the same stream, came at
most ``flush_timeout`` after the group's last line (by the lines' own times, so the decision
is the same whenever the file is read), and the group stays within ``max_lines`` and
``max_bytes`` (past a cap the line starts a new record: a cap splits, never drops). Any other
line closes the group and opens its own.

Every decision depends on the lines alone, and a checkpoint never falls inside an open
group: a restart reads the group's lines again from its first and joins them the same way,
so a resend has the same records with the same ids. A group whose last line is older than
``flush_timeout`` (on this node's clock, with a margin) is emitted when the file is idle: a
trace's end does not wait for the next line. At shutdown only such groups go out; a younger
one is read again after the restart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from logferry.forwarder.entries import Body, Entry, LfMeta
from logferry.forwarder.reader import Checkpoint

__all__ = ["PRESETS", "Joiner", "MultilineRule", "Preset"]

Preset = Literal["java", "python", "go"]

PRESETS: dict[str, tuple[str | None, str | None]] = {
    # (start, continuation): the exception line after a logged message, frames, "Caused
    # by:", "... 12 more", "Suppressed:", and any indented line continue a JVM record.
    "java": (
        None,
        r"^(?:\s+\S|\s*Caused by: |\s*Suppressed: |\s*\.\.\. \d+ (?:more|common)|"
        r"[a-zA-Z_$][\w$]*(?:\.[\w$]+)+(?:Exception|Error|Throwable)(?::|$))",
    ),
    # Indented frames, the traceback header after a logged message, chained tracebacks and
    # the final "SomeError: message" line.
    "python": (
        None,
        r"^(?:\s+\S|Traceback \(most recent call last\):|During handling of the above|"
        r"The above exception was the direct cause|[A-Za-z_][\w.]*(?:Error|Exception|"
        r"Warning|Exit|Interrupt)(?::|$))",
    ),
    # A panic: blank lines, goroutine headers, function lines, indented file:line frames and
    # the exit status.
    "go": (
        None,
        r"^(?:$|\s+\S|goroutine \d+ \[|[\w./*()\[\]-]+\(.*\)$|\[signal |created by |"
        r"exit status \d+$)",
    ),
}


@dataclass(frozen=True, slots=True)
class MultilineRule:
    """When a line continues the record before it."""

    name: str
    start: re.Pattern[str] | None = None
    continuation: re.Pattern[str] | None = None
    max_lines: int = 0
    """Most lines of a joined record under this rule (0: the forwarder's setting)."""

    @classmethod
    def preset(cls, name: str) -> MultilineRule:
        """A built-in rule: ``java``, ``python`` or ``go``."""
        start, continuation = PRESETS[name]
        return cls.of(name, start, continuation)

    @classmethod
    def of(
        cls, name: str, start: str | None, continuation: str | None, max_lines: int = 0
    ) -> MultilineRule:
        """A rule from its patterns (at least one)."""
        if start is None and continuation is None:
            raise ValueError("a multiline rule needs start or continuation")
        return cls(
            name,
            re.compile(start) if start is not None else None,
            re.compile(continuation) if continuation is not None else None,
            max_lines,
        )

    def continues(self, text: str) -> bool:
        """True if ``text`` continues the record before it."""
        if self.continuation is not None:
            return self.continuation.search(text) is not None
        assert self.start is not None
        return self.start.search(text) is None


@dataclass(slots=True)
class _Group:
    lines: list[Entry]
    size: int
    last_seq: int
    last_ns: int


@dataclass(slots=True)
class Joiner:
    """One source's multiline state: entries in (seq order), joined entries out."""

    rule: MultilineRule
    flush_timeout_ns: int = 1_000_000_000
    max_lines: int = 500
    max_bytes: int = 256 * 1024
    margin_ns: int = 500_000_000
    """Added to the timeout before an idle flush: the container runtime and this process
    read the same clock, but a line may be a moment from the runtime to the file."""
    start: Checkpoint | None = None
    """Where the source was opened: the checkpoint to hold if a group opens at once."""
    _group: _Group | None = field(init=False, default=None)
    _held: Checkpoint | None = field(init=False, default=None)
    """The last checkpoint given out before the open group began."""
    _last: Checkpoint | None = field(init=False, default=None)
    joined_lines: int = field(init=False, default=0)
    """Lines folded into the line before them (for the metrics)."""
    split_groups: int = field(init=False, default=0)
    """Groups cut at max_lines or max_bytes."""

    def __post_init__(self) -> None:
        self._last = self.start

    def feed(self, entries: list[Entry], checkpoint: Checkpoint) -> tuple[list[Entry], Checkpoint]:
        """The entries that are complete, and the checkpoint to persist once they are durable
        (never past the first line of the open group)."""
        out: list[Entry] = []
        rule, timeout = self.rule, self.flush_timeout_ns
        for entry in entries:
            group = self._group
            if group is not None:
                body = entry.record
                head = group.lines[0].record
                joins = (
                    body.stream == head.stream
                    and body.lf.seq == group.last_seq + 1
                    and not body.lf.malformed
                    and entry.time_ns - group.last_ns <= timeout
                    and rule.continues(body.log)
                )
                if joins and (
                    len(group.lines) >= self.max_lines
                    or group.size + len(body.log) + 1 > self.max_bytes
                ):
                    joins = False
                    self.split_groups += 1
                if joins:
                    group.lines.append(entry)
                    group.size += len(body.log) + 1
                    group.last_seq = body.lf.seq
                    group.last_ns = entry.time_ns
                    continue
                out.append(self._close())
            if self._group is None and self._held is None:
                self._held = self._last
            self._group = _Group([entry], len(entry.record.log), entry.seq, entry.time_ns)
        return out, self._checkpoint(checkpoint)

    def flush_idle(self, now_ns: int, checkpoint: Checkpoint) -> tuple[list[Entry], Checkpoint]:
        """The open group, if its last line is older than the timeout (the file is idle)."""
        group = self._group
        if group is None or now_ns - group.last_ns <= self.flush_timeout_ns + self.margin_ns:
            return [], self._checkpoint(checkpoint)
        return [self._close()], self._checkpoint(checkpoint)

    def finish(self, checkpoint: Checkpoint) -> tuple[list[Entry], Checkpoint]:
        """The file ended for good: the open group goes out as it is."""
        out = [self._close()] if self._group is not None else []
        return out, self._checkpoint(checkpoint)

    @property
    def pending_lines(self) -> int:
        """Lines held in the open group."""
        return len(self._group.lines) if self._group is not None else 0

    def _checkpoint(self, checkpoint: Checkpoint) -> Checkpoint:
        group = self._group
        if group is None or checkpoint.next_seq <= group.lines[0].seq:
            self._held = None
            self._last = checkpoint
            return checkpoint
        # The reader's checkpoint is inside or past the open group: give out the last one
        # before it (the group's lines are read again from there after a restart).
        held = self._held if self._held is not None else self._last
        assert held is not None, "a Joiner needs its source's start checkpoint"
        self._last = held
        return held

    def _close(self) -> Entry:
        group = self._group
        assert group is not None
        self._group = None
        self._held = None
        if len(group.lines) == 1:
            return group.lines[0]
        first = group.lines[0]
        head = first.record
        self.joined_lines += len(group.lines) - 1
        lf = head.lf
        meta = LfMeta(
            lf.id,
            lf.src,
            lf.seq,
            truncated=any(e.record.lf.truncated for e in group.lines),
            partial_at_eof=group.lines[-1].record.lf.partial_at_eof,
            seq_end=group.last_seq,
        )
        text = "\n".join(e.record.log for e in group.lines)
        return Entry(first.time, Body(text, head.stream, head.kubernetes, meta))
