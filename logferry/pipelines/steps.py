"""Compiled filters of a pipeline: the code that runs over a batch.

Each step runs over a list of records and returns those it keeps. Two rules make a failed or
interrupted run undoable, so that a record is either processed by the whole pipeline or
passed on exactly as it came:

- steps change records **copy-on-write at the top level**: they assign or delete top-level
  keys, and to change a nested value they replace the whole top-level value with a copy.
  A shallow copy of a record taken before the pipeline therefore restores it exactly;
- a step that raises on one record reports it to the :class:`RunContext` and drops it from
  the flow; the pipeline puts it back, unchanged, at the end.

Time is bounded by a deadline in the context: checked every few records, and passed as the
timeout of every regex search.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from logferry.common.protocol.entries import too_deep
from logferry.pipelines.fields import RESERVED_ROOTS, field_text, get_field
from logferry.pipelines.regexes import MATCH_TIMEOUT_S, Pattern, compile_pattern
from logferry.pipelines.whitelist import (
    Add,
    DropLevel,
    Grep,
    ParseJson,
    ParseRegex,
    Remove,
    Rename,
    Sample,
)

Record = dict[str, Any]
Path = tuple[str, ...]
CLOCK_EVERY = 64  # records between two deadline checks inside a step


class BudgetExceeded(Exception):
    """The batch's time budget ran out while step ``index`` ran (-1: before the first)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


@dataclass
class RunContext:
    """Deadline and failure bookkeeping of one pipeline run over one group of records."""

    deadline: float
    clock: Callable[[], float]
    failed: dict[int, tuple[Record, int, str]] = field(default_factory=dict)
    """id(record) -> (record, step index, reason) for records a step raised on."""

    def check(self, index: int) -> None:
        """Raise BudgetExceeded if the deadline has passed."""
        if self.clock() > self.deadline:
            raise BudgetExceeded(index)

    def regex_timeout(self, index: int) -> float:
        """Timeout for the next search: the per-call cap or what is left of the budget."""
        left = self.deadline - self.clock()
        if left <= 0:
            raise BudgetExceeded(index)
        return min(MATCH_TIMEOUT_S, left)

    def fail(self, record: Record, index: int, reason: str) -> None:
        """Record that step ``index`` raised on ``record``."""
        self.failed[id(record)] = (record, index, reason)


def path_of(dotted: str) -> Path:
    """``"http.status"`` -> ``("http", "status")``."""
    return tuple(dotted.split("."))


def cow_set(record: Record, path: Path, value: Any) -> None:
    """Set a field, copying nested dicts along the path instead of changing them in place."""
    if len(path) == 1:
        record[path[0]] = value
        return
    root = record.get(path[0])
    node: Record = dict(root) if isinstance(root, dict) else {}
    record[path[0]] = node
    for part in path[1:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    node[path[-1]] = value


def cow_pop(record: Record, path: Path) -> tuple[bool, Any]:
    """Remove a field copy-on-write; returns (found, value)."""
    if len(path) == 1:
        if path[0] in record:
            return True, record.pop(path[0])
        return False, None
    chain: list[Record] = []
    node: Any = record
    for part in path[:-1]:
        node = node.get(part)
        if not isinstance(node, dict):
            return False, None
        chain.append(node)
    if path[-1] not in node:
        return False, None
    copies = [dict(n) for n in chain]
    value = copies[-1].pop(path[-1])
    record[path[0]] = copies[0]
    for depth in range(1, len(copies)):
        copies[depth - 1][path[depth]] = copies[depth]
    return True, value


class Step:
    """One compiled filter; ``index`` is its position in ``spec.filters``."""

    drops = False

    def __init__(self, index: int) -> None:
        self.index = index

    def run(self, records: list[Record], ctx: RunContext) -> list[Record]:
        """The records kept, in order; those that raised are handed to ``ctx.fail``."""
        kept: list[Record] = []
        for position, record in enumerate(records):
            if position % CLOCK_EVERY == 0:
                ctx.check(self.index)
            try:
                keep = self.apply(record, ctx)
            except BudgetExceeded:
                raise
            except TimeoutError:
                # A search may time out at the per-call cap with budget left: that record
                # fails alone. If the budget itself is gone, the whole run is over.
                ctx.check(self.index)
                ctx.fail(record, self.index, "regular expression timed out on this record")
                continue
            except Exception as exc:
                ctx.fail(record, self.index, f"{type(exc).__name__}: {exc}")
                continue
            if keep:
                kept.append(record)
        return kept

    def apply(self, record: Record, ctx: RunContext) -> bool:
        """Change one record (copy-on-write); return False to discard it."""
        raise NotImplementedError


class GrepStep(Step):
    drops = True

    def __init__(self, index: int, config: Grep) -> None:
        super().__init__(index)
        self.path = path_of(config.field)
        self.pattern: Pattern = compile_pattern(config.regex)
        self.include = config.mode == "include"

    def apply(self, record: Record, ctx: RunContext) -> bool:
        text = field_text(get_field(record, self.path))
        matched = (
            text is not None
            and self.pattern.search(text, timeout=ctx.regex_timeout(self.index)) is not None
        )
        return matched == self.include


PARSE_JSON_MAX_DEPTH = 20
"""Containers one parse_json result may nest (Elasticsearch's default mapping depth limit)."""


class ParseJsonStep(Step):
    def __init__(self, index: int, config: ParseJson) -> None:
        super().__init__(index)
        self.path = path_of(config.field)
        self.target = path_of(config.target) if config.target else None
        self.keep_original = config.keep_original

    def apply(self, record: Record, ctx: RunContext) -> bool:
        text = get_field(record, self.path)
        if not isinstance(text, str | bytes) or text[:1] not in ("{", b"{"):
            return True
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            return True  # not JSON after all: the record goes on unchanged
        if not isinstance(parsed, dict):
            return True
        if too_deep(parsed, PARSE_JSON_MAX_DEPTH):
            # Fails this record alone (kept unchanged, counted): nested deeper than a store's
            # mapping depth limit, and deep enough to be a way to hurt the renderer.
            raise ValueError(f"JSON nested deeper than {PARSE_JSON_MAX_DEPTH} levels")
        if not self.keep_original:
            cow_pop(record, self.path)
        if self.target is not None:
            cow_set(record, self.target, parsed)
        else:
            for key, value in parsed.items():
                if key not in RESERVED_ROOTS:
                    record[key] = value
        return True


class ParseRegexStep(Step):
    def __init__(self, index: int, config: ParseRegex) -> None:
        super().__init__(index)
        self.path = path_of(config.field)
        self.pattern: Pattern = compile_pattern(config.regex)
        self.target = path_of(config.target) if config.target else None
        self.keep_original = config.keep_original

    def apply(self, record: Record, ctx: RunContext) -> bool:
        text = field_text(get_field(record, self.path))
        if text is None:
            return True
        match = self.pattern.search(text, timeout=ctx.regex_timeout(self.index))
        if match is None:
            return True
        groups = {k: v for k, v in match.groupdict().items() if v is not None}
        if not self.keep_original:
            cow_pop(record, self.path)
        if self.target is not None:
            cow_set(record, self.target, groups)
        else:
            for key, value in groups.items():
                cow_set(record, path_of(key), value)
        return True


class AddStep(Step):
    def __init__(self, index: int, config: Add) -> None:
        super().__init__(index)
        self.fields = [(path_of(k), v) for k, v in config.fields.items()]

    def apply(self, record: Record, ctx: RunContext) -> bool:
        for path, value in self.fields:
            cow_set(record, path, value)
        return True


class PassStep(Step):
    """A filter that runs elsewhere (``multiline``, at the forwarder): records go on as
    they are."""

    def __init__(self, index: int, config: object) -> None:
        super().__init__(index)

    def run(self, records: list[Record], ctx: RunContext) -> list[Record]:
        return records


class RemoveStep(Step):
    def __init__(self, index: int, config: Remove) -> None:
        super().__init__(index)
        self.paths = [path_of(p) for p in config.fields]

    def apply(self, record: Record, ctx: RunContext) -> bool:
        for path in self.paths:
            cow_pop(record, path)
        return True


class RenameStep(Step):
    def __init__(self, index: int, config: Rename) -> None:
        super().__init__(index)
        self.moves = [(path_of(a), path_of(b)) for a, b in config.fields.items()]

    def apply(self, record: Record, ctx: RunContext) -> bool:
        for old, new in self.moves:
            found, value = cow_pop(record, old)
            if found:
                cow_set(record, new, value)
        return True


class DropLevelStep(Step):
    drops = True

    def __init__(self, index: int, config: DropLevel) -> None:
        super().__init__(index)
        self.path = path_of(config.field)
        self.levels = frozenset(config.levels)

    def apply(self, record: Record, ctx: RunContext) -> bool:
        level = get_field(record, self.path)
        return not (isinstance(level, str) and level.lower() in self.levels)


def sample_key(record: Record) -> bytes:
    """What sampling hashes: the record's id, else its content (sorted, so stable)."""
    lf = record.get("_lf")
    if isinstance(lf, dict) and isinstance(lf.get("id"), str | bytes) and lf["id"]:
        ident = lf["id"]
        return ident.encode() if isinstance(ident, str) else bytes(ident)
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)


class SampleStep(Step):
    drops = True

    def __init__(self, index: int, config: Sample) -> None:
        super().__init__(index)
        self.rate = config.rate

    def apply(self, record: Record, ctx: RunContext) -> bool:
        if self.rate == 1:
            return True
        # A cryptographic hash, not hash(): the decision must be the same in every process
        # and after a restart, so a resent record is kept or discarded exactly as before.
        digest = hashlib.blake2b(sample_key(record), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.rate == 0
