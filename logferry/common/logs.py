"""Structured logging: one event per line on stderr, as JSON or logfmt.

Call sites name an event and its fields (``log.warning("spool.quarantined", segment=..,
bytes=..)``); they never interpolate a message, and never log a record's payload.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

import orjson

LogFormat = Literal["json", "logfmt"]
LogLevel = Literal["debug", "info", "warning", "error"]

_FIELDS_ATTR = "logferry_fields"
_PROCESS_FIELDS: dict[str, Any] = {}


class EventLogger:
    """A thin wrapper over a stdlib logger that takes an event name and key=value fields."""

    __slots__ = ("_logger",)

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={_FIELDS_ATTR: fields}, stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log at error level with the current exception's type, message and traceback."""
        if self._logger.isEnabledFor(logging.ERROR):
            self._logger.error(event, extra={_FIELDS_ATTR: fields}, exc_info=True, stacklevel=2)


def set_process_fields(**fields: Any) -> None:
    """Fields every line of this process carries (an aggregator worker's ``worker``), so
    the interleaved lines of several processes on one stream tell who wrote them."""
    _PROCESS_FIELDS.update(fields)


def get_logger(name: str) -> EventLogger:
    """The event logger for a module (pass ``__name__``)."""
    return EventLogger(name)


def _base(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "event": record.getMessage(),
        **_PROCESS_FIELDS,
    }
    out.update(getattr(record, _FIELDS_ATTR, {}))
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        out["error_type"] = type(exc).__name__
        out["error"] = str(exc)
        out["traceback"] = logging.Formatter().formatException(record.exc_info)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(_base(record), default=str).decode()


class LogfmtFormatter(logging.Formatter):
    """``key=value`` pairs, values quoted when they contain spaces, quotes or '='."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _base(record).items())


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def setup_logging(level: LogLevel = "info", fmt: LogFormat = "json") -> None:
    """Send every logger's events to stderr in the chosen format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log is one line per request: far too chatty for a metrics endpoint.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
