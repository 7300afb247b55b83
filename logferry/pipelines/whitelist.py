"""The filter whitelist of a LogPipeline: every filter a tenant may write, as a strict
config (grep, parse_json, parse_regex, add, remove, rename, drop_level, sample, multiline).

These are configs only; :mod:`.steps` compiles them into the code that runs. Regexes are
checked by :mod:`.regexes` (size, catastrophic patterns), field paths by :mod:`.fields`
(``_lf``, ``kubernetes`` and ``@timestamp`` may be read, never written).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator

from logferry.common.config import ConfigModel
from logferry.pipelines.fields import field_path
from logferry.pipelines.regexes import check_pattern, compile_pattern

# Kubernetes validates a CRD against its OpenAPI schema without coercion ("10" is not an
# integer), so the offline validation does not coerce either: the two must agree.
_STRICT = ConfigDict(strict=True)


class Grep(ConfigModel):
    """Keep (``include``) or discard (``exclude``) records whose field matches a regex."""

    model_config = _STRICT

    type: Literal["grep"]
    field: str = "log"
    """Dotted path of the field to test; a record without it never matches."""
    regex: str
    """Python regular expression, searched anywhere in the field's text."""
    mode: Literal["include", "exclude"] = "include"
    """``include`` keeps only matching records; ``exclude`` discards matching records."""

    _check_field = field_validator("field")(lambda v: field_path(v, writable=False))
    _check_regex = field_validator("regex")(check_pattern)


class ParseJson(ConfigModel):
    """Parse JSON text found in a field into fields; on failure the record is kept unchanged."""

    model_config = _STRICT

    type: Literal["parse_json"]
    field: str = "log"
    """Field holding the JSON text."""
    target: str | None = None
    """Put the parsed object under this key; by default it is merged into the record's root."""
    keep_original: bool = True
    """Keep the source field after a successful parse."""

    _check_field = field_validator("field")(lambda v: field_path(v, writable=False))

    @field_validator("target")
    @classmethod
    def _check_target(cls, value: str | None) -> str | None:
        return None if value is None else field_path(value, writable=True)


class Add(ConfigModel):
    """Set fields to constant values (overwriting)."""

    model_config = _STRICT

    type: Literal["add"]
    fields: dict[str, str | int | float | bool]
    """Field path -> value."""

    @field_validator("fields")
    @classmethod
    def _check(cls, value: dict[str, Any]) -> dict[str, Any]:
        for path in value:
            field_path(path, writable=True)
        return value


class Remove(ConfigModel):
    """Remove fields (absent ones are ignored)."""

    model_config = _STRICT

    type: Literal["remove"]
    fields: list[str] = Field(min_length=1)
    """Field paths to remove."""

    @field_validator("fields")
    @classmethod
    def _check(cls, value: list[str]) -> list[str]:
        return [field_path(path, writable=True) for path in value]


class Rename(ConfigModel):
    """Move fields to new names (absent ones are ignored)."""

    model_config = _STRICT

    type: Literal["rename"]
    fields: dict[str, str] = Field(min_length=1)
    """Old path -> new path."""

    @field_validator("fields")
    @classmethod
    def _check(cls, value: dict[str, str]) -> dict[str, str]:
        for old, new in value.items():
            field_path(old, writable=True)
            field_path(new, writable=True)
        return value


class ParseRegex(ConfigModel):
    """Extract the named groups of a regex match on a field into fields; a record that does
    not match is kept unchanged."""

    model_config = _STRICT

    type: Literal["parse_regex"]
    field: str = "log"
    """Dotted path of the field to parse."""
    regex: str
    """Regular expression with named groups (``(?P<name>...)``), searched in the field."""
    target: str | None = None
    """Put the groups under this key; by default they are set at the record's root."""
    keep_original: bool = True
    """Keep the source field after a successful match."""

    _check_field = field_validator("field")(lambda v: field_path(v, writable=False))

    @field_validator("regex")
    @classmethod
    def _check_regex(cls, value: str) -> str:
        check_pattern(value)
        groups = compile_pattern(value).groupindex
        if not groups:
            raise ValueError("parse_regex needs named groups, e.g. (?P<status>\\d+)")
        for name in groups:
            field_path(name, writable=True)
        return value

    @field_validator("target")
    @classmethod
    def _check_target(cls, value: str | None) -> str | None:
        return None if value is None else field_path(value, writable=True)


class DropLevel(ConfigModel):
    """Discard records whose level field is one of ``levels`` (compared case-insensitively)."""

    model_config = _STRICT

    type: Literal["drop_level"]
    field: str = "level"
    """Dotted path of the level field (e.g. set by parse_json); records without it are kept."""
    levels: list[str] = Field(min_length=1, max_length=32)
    """Levels to discard, e.g. ``[debug, trace]``."""

    _check_field = field_validator("field")(lambda v: field_path(v, writable=False))

    @field_validator("levels")
    @classmethod
    def _check_levels(cls, value: list[str]) -> list[str]:
        if any(not level or len(level) > 32 for level in value):
            raise ValueError("each level is a non-empty word of at most 32 characters")
        return [level.lower() for level in value]


class Sample(ConfigModel):
    """Keep one record in ``rate``, chosen by a hash of the record's id (``_lf.id``, else its
    content): the same record always gets the same decision, so a resend is sampled the same
    way and never half-stored."""

    model_config = _STRICT

    type: Literal["sample"]
    rate: int = Field(ge=1, le=1_000_000)
    """Keep 1 record in this many (1 keeps everything)."""


class Multiline(ConfigModel):
    """Join continuation lines (stack traces) to the record that started them.

    Runs at the forwarder, per file and container stream, before the spool (the order among
    the filters does not matter: it always comes first), so a trace is never cut by where a
    chunk happened to end. A record whose ``log`` matches ``start`` begins a record; the
    following lines of the same stream that do not match are appended (after a newline)
    while they come within the forwarder's ``multiline.flush_timeout_s`` of each other. The
    joined record keeps the first line's identity (``_lf.id``, ``_lf.seq``) and gets
    ``_lf.seq_end``, the last sequence number it covers. Nothing is dropped: past
    ``max_lines`` a new record starts.
    """

    model_config = _STRICT

    type: Literal["multiline"]
    start: str
    """Regular expression matching the first line of a record (e.g. a timestamp)."""
    field: Literal["log"] = "log"
    """The field joined: the log line (the forwarder joins lines before anything is parsed)."""
    max_lines: int = Field(default=500, ge=2, le=10_000)
    """A joined record holds at most this many lines; past it a new record starts."""

    _check_start = field_validator("start")(check_pattern)


PipelineFilter = Annotated[
    Grep | ParseJson | ParseRegex | Add | Remove | Rename | DropLevel | Sample | Multiline,
    Field(discriminator="type"),
]
"""One filter of a LogPipeline, chosen by ``type``."""

AnyFilter = Grep | ParseJson | ParseRegex | Add | Remove | Rename | DropLevel | Sample | Multiline

DROPPING_TYPES = frozenset({"grep", "drop_level", "sample"})
"""Filters that discard records: refused in audit pipelines."""


def regex_fields(config: AnyFilter) -> list[tuple[str, str]]:
    """``(key, pattern)`` of every regex in a filter config (for the size policy)."""
    if isinstance(config, Grep | ParseRegex):
        return [("regex", config.regex)]
    if isinstance(config, Multiline):
        return [("start", config.start)]
    return []
