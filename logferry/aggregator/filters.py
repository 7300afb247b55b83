"""Tenant filters: typed configs and their compiled, batch-oriented forms.

A filter takes a list of records (dicts, already routed to one tenant) and returns the list
it keeps, mutating records in place. Filters never see another tenant's records, never touch
the reserved fields (``_lf``, which carries the proof of delivery, and ``kubernetes``, which
carries the routing), and what they discard is counted by the chain that runs them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, field_validator

from logferry.common.config import ConfigModel

Record = dict[str, Any]
RESERVED_ROOTS = frozenset({"_lf", "kubernetes", "@timestamp"})
_PATH = re.compile(r"^[A-Za-z0-9_@$][A-Za-z0-9_@$\-]*(\.[A-Za-z0-9_@$][A-Za-z0-9_@$\-]*)*$")


def _field_path(value: str, *, writable: bool) -> str:
    if not _PATH.match(value):
        raise ValueError(
            f"{value!r} is not a field path (dotted names, e.g. 'log' or 'http.status')"
        )
    if writable and value.split(".", 1)[0] in RESERVED_ROOTS:
        raise ValueError(
            f"{value!r} is reserved: filters may read but not change {sorted(RESERVED_ROOTS)}"
        )
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from exc
    return value


class GrepFilter(ConfigModel):
    """Keep (``include``) or discard (``exclude``) records whose field matches a regex."""

    type: Literal["grep"]
    field: str = "log"
    """Dotted path of the field to test; a record without it never matches."""
    regex: str
    """Python regular expression, searched anywhere in the field's text."""
    mode: Literal["include", "exclude"] = "include"
    """``include`` keeps only matching records; ``exclude`` discards matching records."""

    _check_field = field_validator("field")(lambda v: _field_path(v, writable=False))
    _check_regex = field_validator("regex")(_regex)


class ParseJsonFilter(ConfigModel):
    """Parse JSON text found in a field into fields; on failure the record is kept unchanged."""

    type: Literal["parse_json"]
    field: str = "log"
    """Field holding the JSON text."""
    target: str | None = None
    """Put the parsed object under this key; by default it is merged into the record's root."""
    keep_original: bool = True
    """Keep the source field after a successful parse."""

    _check_field = field_validator("field")(lambda v: _field_path(v, writable=False))

    @field_validator("target")
    @classmethod
    def _check_target(cls, value: str | None) -> str | None:
        return None if value is None else _field_path(value, writable=True)


class AddFilter(ConfigModel):
    """Set fields to constant values (overwriting)."""

    type: Literal["add"]
    fields: dict[str, str | int | float | bool]
    """Field path -> value."""

    @field_validator("fields")
    @classmethod
    def _check(cls, value: dict[str, Any]) -> dict[str, Any]:
        for path in value:
            _field_path(path, writable=True)
        return value


class RemoveFilter(ConfigModel):
    """Remove fields (absent ones are ignored)."""

    type: Literal["remove"]
    fields: list[str] = Field(min_length=1)
    """Field paths to remove."""

    @field_validator("fields")
    @classmethod
    def _check(cls, value: list[str]) -> list[str]:
        return [_field_path(path, writable=True) for path in value]


class RenameFilter(ConfigModel):
    """Move fields to new names (absent ones are ignored)."""

    type: Literal["rename"]
    fields: dict[str, str] = Field(min_length=1)
    """Old path -> new path."""

    @field_validator("fields")
    @classmethod
    def _check(cls, value: dict[str, str]) -> dict[str, str]:
        for old, new in value.items():
            _field_path(old, writable=True)
            _field_path(new, writable=True)
        return value


FilterConfig = Annotated[
    GrepFilter | ParseJsonFilter | AddFilter | RemoveFilter | RenameFilter,
    Field(discriminator="type"),
]


def _get(record: Record, path: tuple[str, ...]) -> Any:
    node: Any = record
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _set(record: Record, path: tuple[str, ...], value: Any) -> None:
    node = record
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _pop(record: Record, path: tuple[str, ...]) -> tuple[bool, Any]:
    node: Any = record
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and path[-1] in node:
        return True, node.pop(path[-1])
    return False, None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    """One filter ready to run over batches."""

    config: GrepFilter | ParseJsonFilter | AddFilter | RemoveFilter | RenameFilter
    _path: tuple[str, ...] = field(init=False)
    _pattern: re.Pattern[str] | None = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        path = getattr(cfg, "field", None)
        object.__setattr__(self, "_path", tuple(path.split(".")) if path else ())
        pattern = re.compile(cfg.regex) if isinstance(cfg, GrepFilter) else None
        object.__setattr__(self, "_pattern", pattern)

    def apply(self, records: list[Record]) -> list[Record]:
        """Run over a batch; returns the records kept (the same dicts, changed in place)."""
        cfg = self.config
        if isinstance(cfg, GrepFilter):
            return self._grep(records, cfg.mode == "include")
        if isinstance(cfg, ParseJsonFilter):
            self._parse_json(records, cfg)
        elif isinstance(cfg, AddFilter):
            targets = [(tuple(k.split(".")), v) for k, v in cfg.fields.items()]
            for record in records:
                for path, value in targets:
                    _set(record, path, value)
        elif isinstance(cfg, RemoveFilter):
            paths = [tuple(p.split(".")) for p in cfg.fields]
            for record in records:
                for path in paths:
                    _pop(record, path)
        else:
            moves = [(tuple(a.split(".")), tuple(b.split("."))) for a, b in cfg.fields.items()]
            for record in records:
                for old, new in moves:
                    found, value = _pop(record, old)
                    if found:
                        _set(record, new, value)
        return records

    def _grep(self, records: list[Record], include: bool) -> list[Record]:
        assert self._pattern is not None
        search = self._pattern.search
        path = self._path
        kept = []
        for record in records:
            text = _text(record.get(path[0]) if len(path) == 1 else _get(record, path))
            matched = text is not None and search(text) is not None
            if matched == include:
                kept.append(record)
        return kept

    def _parse_json(self, records: list[Record], cfg: ParseJsonFilter) -> None:
        path = self._path
        target = tuple(cfg.target.split(".")) if cfg.target else None
        for record in records:
            text = _get(record, path)
            if not isinstance(text, str | bytes) or not text or text[:1] not in ("{", b"{"):
                continue
            try:
                parsed = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue  # not JSON after all: the record goes on unchanged
            if not isinstance(parsed, dict):
                continue
            if not cfg.keep_original:
                _pop(record, path)
            if target is not None:
                _set(record, target, parsed)
            else:
                for key, value in parsed.items():
                    if key not in RESERVED_ROOTS:
                        record[key] = value


@dataclass(frozen=True, slots=True)
class FilterChain:
    """An ordered list of compiled filters; reports how many records each run discarded."""

    filters: tuple[CompiledFilter, ...] = ()

    @classmethod
    def compile(cls, configs: Sequence[FilterConfig]) -> FilterChain:
        """Compile validated filter configs (regexes compiled once, here)."""
        return cls(tuple(CompiledFilter(cfg) for cfg in configs))

    def run(self, records: list[Record]) -> tuple[list[Record], int]:
        """Returns (records kept, count discarded by grep)."""
        before = len(records)
        for compiled in self.filters:
            if not records:
                break
            records = compiled.apply(records)
        return records, before - len(records)
