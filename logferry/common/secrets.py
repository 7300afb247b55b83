"""Secrets in config: an inline value that may not be blank, or a file read once at start."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from logferry.common.errors import ConfigError

__all__ = ["InlineSecret", "read_secret"]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("a secret may not be blank")
    return value


InlineSecret = Annotated[str, AfterValidator(_not_blank)]
"""A secret written in the config file itself; blank is refused (it would mean no secret)."""


def read_secret(inline: str | None, path: Path | None, key: str, what: str) -> str | None:
    """``inline``, or the stripped content of the file at ``path`` (read now: call once at
    start). An unreadable or empty file is refused with a ConfigError naming ``key`` and
    ``what`` it should hold: a daemon that would accept any key, or send a wrong one, must not
    start."""
    if path is None:
        return inline
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"cannot read the {what} from {path}: {reason}", path=key) from exc
    if not value:
        raise ConfigError(f"{path} is empty: no {what}", path=key)
    return value
