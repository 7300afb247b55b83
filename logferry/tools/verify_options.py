"""What ``logferry verify`` is asked to do: its options, the error raised when it cannot run,
and the parsing of the ``--since``/``--until`` times (also used on dead letters' timestamps).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from logferry.common.errors import LogferryError
from logferry.common.store_access import StoreAccess

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class VerifyError(LogferryError):
    """A usage, input-file or store problem: the verification could not run (exit 2)."""


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    """What to verify and where; the CLI flags of ``logferry verify``."""

    store: StoreAccess
    """The store's nodes, credentials and TLS (the ``--url`` ... ``--insecure`` flags)."""
    index: str = "logs-*"
    namespace: str | None = None
    since: datetime | None = None
    """Start of the window (inclusive); seqs before it are out of scope."""
    until: datetime | None = None
    """End of the window (exclusive)."""
    dlq_dirs: tuple[Path, ...] = ()
    positions_file: Path | None = None
    manifest_file: Path | None = None
    node: str | None = None
    """Node name of the manifest's files (part of their source ids)."""
    files: tuple[str, ...] = ()
    """Globs of container log files still on disk, whose records are counted (needs node)."""
    request_timeout_s: float = 300.0


def parse_time(text: str, now: datetime) -> datetime:
    """ISO 8601 (naive means UTC) or a span back from ``now``: ``90s``, ``15m``, ``2h``, ``1d``."""
    match = _RELATIVE.match(text)
    if match:
        return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise VerifyError(f"not a time: {text!r} (ISO 8601, or 15m / 2h / 1d ago)") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def epoch_ms(when: datetime) -> int:
    """``when`` in milliseconds since the epoch."""
    # The store keeps dates in milliseconds: compare at that resolution on both sides.
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
