"""The aggregator's spool payload: documents pre-rendered as ``_bulk`` NDJSON.

Records are rendered once, on the way in (when the chunk is decoded anyway), into what the
bulk API takes: an action line ``{"create":{"_index":..,"_id":..}}`` and a source line per
document. One spool record (a *fragment*) holds all documents of one chunk for one tenant, so
the spool's per-record cost is paid per chunk, and the output builds a request by joining
fragments. JSON never contains a raw newline (orjson escapes it), so lines split cleanly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class Document:
    """One rendered document: its ``_bulk`` action line and its JSON source (no newlines)."""

    action: bytes
    source: bytes

    @property
    def index(self) -> str:
        """The target index (parsed from the action line)."""
        return str(orjson.loads(self.action)["create"]["_index"])

    @property
    def doc_id(self) -> str:
        """The deterministic ``_id`` (parsed from the action line)."""
        return str(orjson.loads(self.action)["create"]["_id"])


def action_line(index: str, doc_id: str) -> bytes:
    """The ``create`` action for ``doc_id`` in ``index``."""
    return orjson.dumps({"create": {"_index": index, "_id": doc_id}})


def render_fragment(documents: Iterable[tuple[bytes, bytes]]) -> bytes:
    """(action, source) pairs -> one NDJSON fragment, newline-terminated."""
    parts: list[bytes] = []
    for action, source in documents:
        parts.append(action)
        parts.append(source)
    parts.append(b"")
    return b"\n".join(parts)


def split_fragment(fragment: bytes) -> list[Document]:
    """The documents of a fragment, in order."""
    lines = fragment.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) % 2:
        raise ValueError("a fragment must hold action/source line pairs")
    return [Document(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]


def count_documents(fragment: bytes) -> int:
    """How many documents a fragment holds, without splitting it."""
    return fragment.count(b"\n") // 2
