"""Rendering records as ``_bulk`` lines: ids, indices, ``@timestamp``, the time window.

One call renders one tenant's records of one message (or slice) with one C call
(``encode_lines``). A record JSON cannot hold as it is (bytes keys) is written with its keys as
text; a record that still cannot be written is handed back as a :class:`Failure`, with its
reason, for the caller to park, so it never takes its message down with it (a refused message
is resent for ever by its sender, with every other tenant's records in it).
"""

from __future__ import annotations

import base64
import struct
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import msgspec
import orjson

from logferry.common.naming import IndexNamer
from logferry.common.protocol import EventMessage, EventTime
from logferry.common.records import derived_record_id

_TIME = struct.Struct(">II")
_DAY_S = 86400
ORIGINAL_TIME_FIELD = "@timestamp_original"
"""Where a record whose event time was outside the accepted window keeps that time (ISO 8601);
its ``@timestamp`` and index are then those of the moment it was received."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where a message came from, for ids of entries that carry no ``_lf.id`` and no chunk."""

    instance: str
    connection: int
    message: int


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Event times accepted as they are, around the time of receipt."""

    max_age_s: int = 7 * 86400
    max_ahead_s: int = 86400


@dataclass(slots=True)
class Failure:
    """A record that could not be rendered, with why."""

    position: int
    index: str
    doc_id: str
    record: dict[str, Any]
    reason: str


@dataclass(slots=True)
class Group:
    """One tenant's rendered records."""

    lines: bytes
    documents: int
    failures: list[Failure]
    adjusted: int
    """Records whose event time was outside the window (stored at the receive time)."""


def _enc_hook(value: Any) -> Any:
    # Ext values (a nested EventTime, another ext type) have no JSON form of their own.
    if isinstance(value, EventTime):
        return value.to_float()
    if isinstance(value, msgpack.ExtType):
        return {"ext": value.code, "data": value.data.hex()}
    raise TypeError(f"cannot encode {type(value).__name__}")


_json = msgspec.json.Encoder(enc_hook=_enc_hook)


def text_keys(value: Any) -> Any:
    """``value`` with every map key as text and bytes as text (what JSON can hold)."""
    if isinstance(value, dict):
        return {str(k): text_keys(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [text_keys(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def iso_time(seconds: int, nanoseconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`` (UTC)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{nanoseconds:09d}Z"


class _Stamps:
    """The second-resolution part of ``@timestamp``, cached (records of a chunk share it)."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def set_second(self, seconds: int) -> None:
        self.second = seconds
        self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


class Renderer:
    """Renders one tenant's records at a time (see the module docstring)."""

    def __init__(self, namer: IndexNamer, window: TimeWindow) -> None:
        self.namer = namer
        self.window = window
        self._stamps = _Stamps()

    def render(
        self,
        tenant: str,
        group: list[tuple[int, Any, dict[str, Any]]],
        message: EventMessage,
        receipt: Receipt,
        received_s: int,
        suffixes: list[str | None] | None = None,
    ) -> Group:
        """Render (position, time, record) triples of ``tenant`` received at ``received_s``."""
        # The hot loop: per record only dict lookups and two small dicts; all JSON is written
        # by one C call (encode_lines) that emits the _bulk body, action and source lines.
        items: list[Any] = []
        append = items.append
        unpack = _TIME.unpack
        stamps = self._stamps
        current_day = -1
        index = ""
        suffix: str | None = None
        each_suffix = iter(suffixes) if suffixes is not None else None
        earliest = received_s - self.window.max_age_s
        latest = received_s + self.window.max_ahead_s
        adjusted = 0
        positions: list[int] = []
        for position, when, record in group:
            if each_suffix is not None:
                wanted = next(each_suffix)
                if wanted != suffix:
                    suffix, current_day = wanted, -1  # another destination: index again
            if when.__class__ is EventTime:
                seconds, nanoseconds = unpack(when[1])
            else:
                seconds, nanoseconds = int(when), 0
            if seconds < earliest or seconds > latest:
                # No index for every day since 1970 (or 2106): the receive time stands in.
                record[ORIGINAL_TIME_FIELD] = iso_time(seconds, nanoseconds)
                seconds, nanoseconds = received_s, 0
                adjusted += 1
            if "@timestamp" not in record:
                if seconds != stamps.second:
                    stamps.set_second(seconds)
                record["@timestamp"] = f"{stamps.text}.{nanoseconds:09d}Z"
            lf = record.get("_lf")
            doc_id = lf.get("id") if lf.__class__ is dict else None
            if doc_id.__class__ is not str or not doc_id or len(doc_id) > 512:
                doc_id = self._derived_id(message, receipt, position, seconds, nanoseconds, record)
            if seconds // _DAY_S != current_day:
                current_day = seconds // _DAY_S
                index = self.namer.index(tenant, seconds, suffix)
            log = record.get("log")
            if log.__class__ is bytes:
                # Raw container bytes sent as msgpack bin: text, as a log line is, not base64.
                record["log"] = log.decode("utf-8", "replace")
            append({"create": {"_index": index, "_id": doc_id}})
            append(record)
            positions.append(position)
        try:
            return Group(_json.encode_lines(items), len(positions), [], adjusted)
        except (TypeError, ValueError, RecursionError, msgspec.EncodeError):
            pass
        try:
            # Some record JSON cannot hold as it is (e.g. bytes keys): write it with its keys
            # as text instead of refusing the chunk (which its sender would resend forever).
            return Group(
                _json.encode_lines([text_keys(i) for i in items]), len(positions), [], adjusted
            )
        except (TypeError, ValueError, RecursionError, msgspec.EncodeError):
            return self._one_by_one(items, positions, adjusted)

    @staticmethod
    def _one_by_one(items: list[Any], positions: list[int], adjusted: int) -> Group:
        """Render record by record; those that fail become Failures."""
        lines: list[bytes] = []
        failures: list[Failure] = []
        for position, action, record in zip(positions, items[0::2], items[1::2], strict=True):
            try:
                lines.append(_json.encode_lines([action, text_keys(record)]))
            except (TypeError, ValueError, RecursionError, msgspec.EncodeError) as exc:
                create = action["create"]
                reason = f"cannot be written as JSON: {type(exc).__name__}: {exc}"[:300]
                failures.append(Failure(position, create["_index"], create["_id"], record, reason))
        return Group(b"".join(lines), len(lines), failures, adjusted)

    @staticmethod
    def _derived_id(
        message: EventMessage,
        receipt: Receipt,
        position: int,
        seconds: int,
        nanoseconds: int,
        record: dict[str, Any],
    ) -> str:
        if message.chunk is not None:
            where = f"{message.chunk}:{position}"
        else:
            where = f"{receipt.instance}:{receipt.connection}:{receipt.message}:{position}"
        return derived_record_id(message.tag, where, seconds * 1_000_000_000 + nanoseconds, record)


def unrenderable_document(
    record: dict[str, Any], reason: str, raw: bytes | None, received_s: int
) -> bytes:
    """What is kept of a record that cannot be rendered: a small JSON document with its
    ``_lf`` and ``kubernetes`` maps (so proof and routing still see it), the reason, and the
    record itself as the bytes received (base64) or, failing those, as text.

    It goes to the DLQ; should the tenant's DLQ share be full, it is stored in the tenant's own
    index instead, where nothing else of it can break."""
    body: dict[str, Any] = {"@timestamp": iso_time(received_s, 0)}
    for key in ("_lf", "kubernetes"):
        value = record.get(key)
        if value.__class__ is dict:
            try:
                orjson.dumps(value)
            except (TypeError, orjson.JSONEncodeError):
                continue
            body[key] = value
    detail: dict[str, Any] = {"reason": reason}
    if raw is not None:
        detail["msgpack_base64"] = base64.b64encode(raw).decode("ascii")
    else:
        try:
            detail["record_text"] = orjson.dumps(
                record, option=orjson.OPT_NON_STR_KEYS, default=repr
            ).decode()
        except (TypeError, orjson.JSONEncodeError, RecursionError):
            detail["record_text"] = repr(record)[:1_000_000]
    body["unrenderable"] = detail
    return orjson.dumps(body)


__all__ = [
    "ORIGINAL_TIME_FIELD",
    "Failure",
    "Group",
    "Receipt",
    "Renderer",
    "TimeWindow",
    "iso_time",
    "text_keys",
    "unrenderable_document",
]
