"""Record identity: sources, deterministic record ids and per-source sequence numbers.

guarantee 3 (resends are harmless) and 4 (gaps are detectable) rest on this module:

- a **source** is one generation of one file on one node: (node, device, inode, generation);
- a record from a file gets the id ``<source id>-<byte offset of the line's first byte>`` in
  hex, so the same line read twice gets the same id and two different lines never share one;
- a record from a client that sent no id (plain Fluent Bit/Fluentd) gets an id derived from
  its content and its position in the client's chunk (see derived_record_id).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

SOURCE_ID_HEX_CHARS = 20
"""80 bits: collisions between sources stay negligible for any fleet's lifetime."""


def source_id(node: str, device: int, inode: int, generation: int) -> str:
    """A short, stable id for one generation of one file on one node."""
    key = f"{node}\x00{device}\x00{inode}\x00{generation}".encode()
    return hashlib.blake2b(key, digest_size=SOURCE_ID_HEX_CHARS // 2).hexdigest()


def record_id(source: str, offset: int) -> str:
    """The id of the line that starts at byte ``offset`` of ``source``."""
    return f"{source}-{offset:x}"


def derived_record_id(tag: str, position: str, time_ns: int, record: dict[str, Any]) -> str:
    """Id of an entry that came without an ``_lf.id``: from its content and its position.

    ``position`` is ``<chunk id>:<index>`` when the client sent a chunk id: a resend of the chunk
    carries the same id, entries and order, so it maps to the same ids and the store's
    create-if-absent deduplicates it. Without a chunk id the client gets no ack and never knows
    what to resend, while two identical lines in one second are common (integer-second clocks),
    so the caller passes a position unique to this receipt (instance, connection, message,
    index): a repeated line is never mistaken for a duplicate and lost.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{tag}\x00{position}\x00{time_ns}\x00".encode())
    try:
        body = orjson.dumps(
            record, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=repr
        )
    except TypeError:
        # Keys JSON cannot sort (bytes, mixed types): repr is as deterministic for a resend,
        # which carries the same record with the same key order.
        body = repr(record).encode()
    digest.update(body)
    return "h" + digest.hexdigest()
