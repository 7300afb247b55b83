"""The typed configs of the basic filters (grep, parse_json, add, remove, rename) and the
field-path helpers the LogPipeline steps share. Filters never touch the reserved fields
(``_lf``, which carries the proof of delivery, and ``kubernetes``, which carries the
routing); they run only inside tenant pipelines (``aggregator/pipelines``)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from logferry.common.config import ConfigModel

Record = dict[str, Any]
RESERVED_ROOTS = frozenset({"_lf", "kubernetes", "@timestamp"})
_PATH = re.compile(r"^[A-Za-z0-9_@$][A-Za-z0-9_@$\-]*(\.[A-Za-z0-9_@$][A-Za-z0-9_@$\-]*)*\Z")


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


def _get(record: Record, path: tuple[str, ...]) -> Any:
    node: Any = record
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)
