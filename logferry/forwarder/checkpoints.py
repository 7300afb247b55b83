"""Checkpoint records: a source announces, through the pipeline itself, how far it got.

A checkpoint is an entry ``[EventTime(now), record]`` that travels like any record (node
spool, chunk, ack, aggregator, store), with the source's ``kubernetes`` map (it routes by
namespace like the source's records) and an ``_lf`` of ``kind: checkpoint``:
``next_seq`` (every seq below it was durable in the node spool before this record was
appended), ``state`` (``open``, ``finished``, ``lost``), ``lost_lines`` and ``reason`` where
they apply, and the node. Its id is derived from what it says, so the same checkpoint
emitted twice, or resent, is stored once.

:class:`CheckpointBook` decides which are due, bounded per source per interval: it remembers
per source the last (next_seq, state) written, in memory only; after a restart the first
interval says again what the last run said (the same id when nothing changed).

Ordering is the caller's part (``app``): a checkpoint's ``next_seq`` is the source's state
after ``_make_durable``, never the reader's or the multiline joiner's, and the checkpoint is
appended to the spool after that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import msgspec
from msgspec.msgpack import Ext

from logferry.forwarder.entries import event_time

__all__ = [
    "CHECKPOINT_KIND",
    "CheckpointBook",
    "CheckpointEntry",
    "CheckpointState",
    "Mark",
    "checkpoint_entry",
    "checkpoint_id",
]

CHECKPOINT_KIND = "checkpoint"


class CheckpointState(StrEnum):
    """How far a source is: still read, done for good, or gone before it was read."""

    OPEN = "open"
    FINISHED = "finished"
    LOST = "lost"


def checkpoint_id(src: str, next_seq: int, state: str, lost_lines: int | None) -> str:
    """The id of a checkpoint: the same claim always gets the same id. ``lost_lines`` is
    None for every state but ``lost``, and stands as 0 in the key then."""
    lost = 0 if lost_lines is None else lost_lines
    key = f"{src}|{next_seq}|{state}|{lost}".encode()
    return "ckpt-" + hashlib.blake2b(key, digest_size=12).hexdigest()


class CheckpointMeta(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """``_lf`` of a checkpoint, keys in the contract's order; absent fields are omitted (so no
    field that must always be there may have a default: it would be omitted too)."""

    kind: str
    id: str
    src: str
    next_seq: int
    state: str
    lost_lines: int | None = None
    reason: str | None = None
    node: str


class CheckpointBody(msgspec.Struct, gc=False):
    """A checkpoint's record map: no ``log``, no ``stream``, no ``seq`` (it takes none)."""

    kubernetes: msgspec.Raw
    lf: CheckpointMeta = msgspec.field(name="_lf")


class CheckpointEntry(msgspec.Struct, array_like=True, gc=False):
    """``[EventTime, record]`` of a checkpoint."""

    time: Ext
    record: CheckpointBody


@dataclass(frozen=True, slots=True)
class Mark:
    """One checkpoint to write: what it claims, and where it routes."""

    src: str
    next_seq: int
    state: CheckpointState
    tenant: str
    """The namespace (the metric's label)."""
    kubernetes: msgspec.Raw = field(compare=False)
    """The source's ``kubernetes`` map, encoded (``entries.kubernetes_raw``)."""
    reason: str | None = None
    lost_lines: int | None = None
    """Only for ``lost``: lines never read, -1 (or None) when unknown."""


def checkpoint_entry(mark: Mark, node: str, time_ns: int) -> CheckpointEntry:
    """The forward entry of ``mark``, stamped ``time_ns``."""
    lost = None
    if mark.state is CheckpointState.LOST:
        lost = -1 if mark.lost_lines is None else mark.lost_lines
    meta = CheckpointMeta(
        kind=CHECKPOINT_KIND,
        id=checkpoint_id(mark.src, mark.next_seq, mark.state, lost),
        src=mark.src,
        next_seq=mark.next_seq,
        state=mark.state.value,
        lost_lines=lost,
        reason=mark.reason if mark.state is not CheckpointState.OPEN else None,
        node=node,
    )
    return CheckpointEntry(event_time(time_ns), CheckpointBody(mark.kubernetes, meta))


class CheckpointBook:
    """Which checkpoints are due; ``interval_s`` 0: none ever (every method is then a no-op
    and ``collect`` returns nothing)."""

    def __init__(self, interval_s: float, now: float) -> None:
        self.interval_s = interval_s
        self._due_at = now + interval_s
        self._last: dict[str, tuple[int, CheckpointState]] = {}
        # finished and lost ones: each said once, kept until the spool took it
        self._ending: list[Mark] = []
        # sources excluded from shipping at any time: a checkpoint would claim seqs that
        # were read and never spooled
        self._excluded: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    @property
    def waiting(self) -> int:
        """Finished and lost checkpoints not written yet."""
        return len(self._ending)

    def exclude(self, src: str) -> None:
        """``src`` had records read and not shipped: it gets no checkpoint any more."""
        if self.enabled:
            self._excluded.add(src)
            self._last.pop(src, None)

    def ended(self, mark: Mark) -> None:
        """A source finished or was lost: its checkpoint goes with the next ``collect``."""
        if not self.enabled:
            return
        if mark.src in self._excluded:
            self.forget(mark.src)
            return
        self._ending.append(mark)

    def forget(self, src: str) -> None:
        """``src`` is gone without a checkpoint of its end (it was excluded)."""
        self._excluded.discard(src)
        self._last.pop(src, None)

    def collect(
        self, now: float, tailed: Callable[[], Iterable[Mark]], *, final: bool = False
    ) -> list[Mark]:
        """What to write now: every ended source's checkpoint, and, once an interval has
        passed (or ``final``: at shutdown), an ``open`` one for each source of ``tailed()``
        (``open`` marks at the sources' durable next seq) that advanced since its last."""
        if not self.enabled:
            return []
        out = list(self._ending)
        if final or now >= self._due_at:
            self._due_at = now + self.interval_s
            out += (mark for mark in tailed() if self._advanced(mark))
        return out

    def _advanced(self, mark: Mark) -> bool:
        if mark.src in self._excluded:
            return False
        last = self._last.get(mark.src)
        return mark.next_seq > (last[0] if last is not None else 0)

    def written(self, marks: Iterable[Mark]) -> None:
        """``marks`` are durable in the spool."""
        ended: set[int] = set()
        for mark in marks:
            if mark.state is CheckpointState.OPEN:
                self._last[mark.src] = (mark.next_seq, mark.state)
            else:
                self._last.pop(mark.src, None)  # the source is gone: nothing more to say
                ended.add(id(mark))
        if ended:
            self._ending = [mark for mark in self._ending if id(mark) not in ended]

    def last(self, src: str) -> tuple[int, CheckpointState] | None:
        """The last (next_seq, state) written for an open source (tests, status)."""
        return self._last.get(src)
