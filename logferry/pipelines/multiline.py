"""The multiline filter: continuation lines (stack traces) joined to the record that started
them, per source and in sequence order, inside one batch.

Unlike the other filters it needs the whole batch (records of one source arrive interleaved
with others and not always in sequence order), so it implements :meth:`Step.run` itself.
Joining is copy-on-write like every step, and the joined-in records are reported to the run
context, so a later failure can give them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from logferry.pipelines.fields import field_text, get_field
from logferry.pipelines.regexes import Pattern, compile_pattern
from logferry.pipelines.steps import (
    CLOCK_EVERY,
    Record,
    RunContext,
    Step,
    cow_set,
    path_of,
)
from logferry.pipelines.whitelist import Multiline


@dataclass
class _Open:
    """A started record of one source and the continuations joined to it so far."""

    record: Record
    lines: list[str]
    members: list[Record]
    last_seq: int | None


def _source_of(record: Record, position: int) -> tuple[Any, int, int | None]:
    """(source key, sort key, seq) of a record, for multiline grouping."""
    lf = record.get("_lf")
    if isinstance(lf, dict) and isinstance(lf.get("src"), str):
        seq = lf.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            return lf["src"], seq, seq
        return lf["src"], position, None
    # Clients without _lf: the container stream is the best source we have, in batch order.
    k8s = record.get("kubernetes")
    k8s = k8s if isinstance(k8s, dict) else {}
    key = ("k8s", k8s.get("pod_name"), k8s.get("container_name"), record.get("stream"))
    return key, position, None


class MultilineStep(Step):
    def __init__(self, index: int, config: Multiline) -> None:
        super().__init__(index)
        self.path = path_of(config.field)
        self.start: Pattern = compile_pattern(config.start)
        self.max_lines = config.max_lines

    def run(self, records: list[Record], ctx: RunContext) -> list[Record]:
        by_source: dict[Any, list[tuple[int, int, int | None, Record]]] = {}
        for position, record in enumerate(records):
            key, order, seq = _source_of(record, position)
            by_source.setdefault(key, []).append((order, position, seq, record))
        joined: set[int] = set()
        opened: list[_Open] = []
        checked = 0
        for entries in by_source.values():
            entries.sort(key=lambda e: (e[0], e[1]))
            current: _Open | None = None
            for _order, _position, seq, record in entries:
                checked += 1
                if checked % CLOCK_EVERY == 0:
                    ctx.check(self.index)
                text = field_text(get_field(record, self.path))
                if text is None:
                    current = None  # nothing to join: it ends the current record
                    continue
                try:
                    starts = self.start.search(text, timeout=ctx.regex_timeout(self.index))
                except TimeoutError:
                    ctx.check(self.index)
                    ctx.fail(record, self.index, "regular expression timed out on this record")
                    current = None
                    continue
                consecutive = (
                    current is not None
                    and (seq is None or current.last_seq is None or seq == current.last_seq + 1)
                    and len(current.lines) < self.max_lines
                )
                if starts is None and consecutive and current is not None:
                    current.lines.append(text)
                    current.members.append(record)
                    current.last_seq = seq
                    joined.add(id(record))
                elif starts is not None:
                    current = _Open(record, [text], [], seq)
                    opened.append(current)
                else:
                    current = None  # an orphan continuation stays a record of its own
        for group in opened:
            if group.members:
                self._finish(group, ctx)
        return [r for r in records if id(r) not in joined and id(r) not in ctx.failed]

    def _finish(self, group: _Open, ctx: RunContext) -> None:
        cow_set(group.record, self.path, "\n".join(group.lines))
        lf = group.record.get("_lf")
        if isinstance(lf, dict) and group.last_seq is not None:
            # The proof of delivery counts sequence numbers: the joined record says which
            # ones it stands for. A new dict, so the snapshot's _lf stays as it was.
            group.record["_lf"] = {**lf, "seq_end": group.last_seq}
        ctx.merged[id(group.record)] = group.members
