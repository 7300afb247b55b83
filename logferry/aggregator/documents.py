"""The aggregator's spool payload: documents pre-rendered as ``_bulk`` NDJSON.

Records are rendered once, on the way in (when the chunk is decoded anyway), into what the
bulk API takes: an action line ``{"create":{"_index":..,"_id":..}}`` and a source line per
document. One spool record (a *fragment*) holds all documents of one chunk for one tenant, so
the spool's per-record cost is paid per chunk, and the output builds a request by joining
fragments. JSON never contains a raw newline (orjson escapes it), so lines split cleanly.

A fragment is stored compressed (``spool.compression: deflate``, the default): a header, then
its NDJSON as a flushed raw deflate piece (:func:`~logferry.common.deflate.deflate_flushed`).
The header's first byte, 0xF5, never occurs in UTF-8, so it never starts NDJSON: a fragment
that starts otherwise is plain NDJSON (``compression: none``, or written by a version before
compression). The header also holds the NDJSON's length, its CRC-32 and the document count,
so counting needs no inflating and the bulk output sends the pieces as a gzip body as they
are (:func:`gzip_body`). What needs the documents themselves inflates one fragment at a time.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import orjson

from logferry.common.deflate import (
    DeflatePiece,
    crc32,
    deflate_flushed,
    gzip_from_pieces,
    gzip_parts,
    inflate_flushed,
)

Compression = Literal["deflate", "none"]
"""How fragments are stored on the aggregator spool."""
_DEFLATED = 0xF5
_HEADER = struct.Struct("<BIII")  # marker, NDJSON length, CRC-32 of the NDJSON, documents
_MAX_DEFLATED = 2**32 - 1  # the header's length field; the spool's record limit besides


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


def render_fragment(
    documents: Iterable[tuple[bytes, bytes]], compression: Compression = "none"
) -> bytes:
    """(action, source) pairs -> one fragment: newline-terminated NDJSON, stored as
    ``compression`` says."""
    parts: list[bytes] = []
    for action, source in documents:
        parts.append(action)
        parts.append(source)
    parts.append(b"")
    return pack_fragment(b"\n".join(parts), len(parts) // 2, compression)


def pack_fragment(ndjson: bytes, documents: int, compression: Compression) -> bytes:
    """The fragment to spool for ``ndjson`` (``documents`` action/source line pairs)."""
    if compression == "none" or not ndjson or len(ndjson) > _MAX_DEFLATED:
        return ndjson
    header = _HEADER.pack(_DEFLATED, len(ndjson), crc32(ndjson), documents)
    return header + deflate_flushed(ndjson)


def is_deflated(fragment: bytes) -> bool:
    """Whether ``fragment`` is stored compressed (else it is NDJSON as it stands)."""
    return fragment[:1] == b"\xf5"


def _header(fragment: bytes) -> tuple[int, int, int]:
    """(NDJSON length, CRC-32, documents) of a compressed fragment."""
    if len(fragment) < _HEADER.size:
        raise ValueError("a compressed fragment shorter than its header")
    _marker, size, crc, documents = _HEADER.unpack_from(fragment)
    return size, crc, documents


def fragment_ndjson(fragment: bytes) -> bytes:
    """The fragment's NDJSON, inflated and checked against its length and CRC if need be."""
    if not is_deflated(fragment):
        return fragment
    size, crc, _documents = _header(fragment)
    ndjson = inflate_flushed(memoryview(fragment)[_HEADER.size :], size)
    if crc32(ndjson) != crc:
        raise ValueError("a compressed fragment whose NDJSON fails its CRC-32")
    return ndjson


def fragment_size(fragment: bytes) -> int:
    """The length of the fragment's NDJSON, without inflating it (never raises: a header cut
    short counts as the bytes stored, and splitting the fragment dead-letters it)."""
    if is_deflated(fragment) and len(fragment) >= _HEADER.size:
        return _header(fragment)[0]
    return len(fragment)


def split_fragment(fragment: bytes) -> list[Document]:
    """The documents of a fragment, in order (``ValueError`` if it is not line pairs, or
    not the documents its header counts)."""
    lines = fragment_ndjson(fragment).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) % 2:
        raise ValueError("a fragment must hold action/source line pairs")
    if is_deflated(fragment) and _header(fragment)[2] != len(lines) // 2:
        raise ValueError("a compressed fragment holding other than the documents it counts")
    return [Document(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]


def count_documents(fragment: bytes) -> int:
    """How many documents a fragment holds, without splitting (or inflating) it."""
    if is_deflated(fragment):
        return _header(fragment)[2]
    return fragment.count(b"\n") // 2


def deflate_piece(fragment: bytes) -> DeflatePiece:
    """The fragment's NDJSON as a flushed deflate piece: a compressed fragment's own data
    (a view, no copy), a plain one compressed now."""
    if is_deflated(fragment):
        size, crc, _documents = _header(fragment)
        return DeflatePiece(memoryview(fragment)[_HEADER.size :], crc, size)
    return DeflatePiece(deflate_flushed(fragment), crc32(fragment), len(fragment))


def gzip_body(fragments: Sequence[bytes]) -> bytes:
    """One gzip member holding the fragments' NDJSON in order; compressed fragments are
    not inflated nor compressed again."""
    if not any(map(is_deflated, fragments)):
        return gzip_parts(fragments)  # one stream costs less than a piece per fragment
    return gzip_from_pieces(deflate_piece(fragment) for fragment in fragments)


def ndjson_body(fragments: Sequence[bytes]) -> bytes:
    """The fragments' NDJSON in order, uncompressed."""
    if len(fragments) == 1:
        return fragment_ndjson(fragments[0])
    return b"".join(fragment_ndjson(fragment) for fragment in fragments)


def plain_bytes(fragments: Sequence[bytes]) -> int:
    """Bytes of the fragments stored uncompressed (what :func:`gzip_body` compresses)."""
    return sum(len(fragment) for fragment in fragments if not is_deflated(fragment))
