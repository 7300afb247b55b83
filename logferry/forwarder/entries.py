"""The forward entries the forwarder builds, and the spool blocks they travel in.

An entry is ``[EventTime, record]`` with the record of docs/architecture.md ("Record
format"), held as msgspec structs so that a whole batch encodes to MessagePack in one C
call: no per-line ``packb``.

A **block** is one spool record: a header (entry count and uncompressed size, u32 each,
big-endian) and one gzip member holding those entries as a MessagePackEventStream: the
records of one read of one file, at most ``per_block`` of them and ``max_bytes`` uncompressed
(unless one record alone is larger). Entries are compressed once, when they are made: the
spool writes, checksums, fsyncs and reads small compressed blocks, and the sender builds a
CompressedPackedForward chunk by concatenating the gzip members of several blocks (the
protocol allows several members; Fluentd and Fluent Bit read them), with no decoding and no
compression of its own.

A block of checkpoint records (``checkpoints``) has the top bit of its count set: on the
wire its entries are entries like any (``block_count``, the chunk's ``size``), but they are
not log records, and the sender leaves them out of what it counts as records
(``block_records``). Log record blocks never come near 2**31 entries.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence

import msgspec
from msgspec.msgpack import Ext

from logferry.common.deflate import gzip_parts
from logferry.forwarder.partials import MergedRecord

__all__ = [
    "Body",
    "Entry",
    "LfMeta",
    "block_count",
    "block_gzip",
    "block_raw_size",
    "block_records",
    "block_stream",
    "encode_blocks",
    "event_time",
    "kubernetes_raw",
    "make_block",
    "make_entry",
]

EVENT_TIME_EXT = 0
_SECONDS_NANOS = struct.Struct(">II")
pack_event_time = _SECONDS_NANOS.pack
"""``pack_event_time(seconds, nanoseconds)``: the 8 data bytes of an EventTime."""
_encode = msgspec.msgpack.Encoder().encode
_HEADER = struct.Struct(">II")  # entries (top bit: checkpoint records), uncompressed bytes
_CHECKPOINT_FLAG = 0x8000_0000
_COUNT_MASK = _CHECKPOINT_FLAG - 1


# gc=False: entries hold only strings, numbers and each other, never a cycle, so the cyclic
# collector need not track the millions made per minute.
class LfMeta(msgspec.Struct, gc=False, omit_defaults=True):
    """``_lf``: the record's identity, source and sequence number, and rare flags."""

    id: str
    src: str
    seq: int
    truncated: bool = False
    malformed: bool = False
    partial_at_eof: bool = False
    seq_end: int = 0
    """The last seq a multiline record stands for (0, omitted: one line)."""


class Body(msgspec.Struct, gc=False):
    """The record map, keys in the order of docs/architecture.md ("Record format")."""

    log: str
    stream: str
    kubernetes: msgspec.Raw
    """The file's metadata map, encoded once per file."""
    lf: LfMeta = msgspec.field(name="_lf")


class Entry(msgspec.Struct, array_like=True, gc=False):
    """``[EventTime, record]``."""

    time: Ext
    record: Body

    @property
    def seq(self) -> int:
        """The record's ``_lf.seq``."""
        return self.record.lf.seq

    @property
    def offset(self) -> int:
        """File offset of the record's first byte (the hex tail of its id)."""
        return int(self.record.lf.id.rpartition("-")[2], 16)

    @property
    def time_ns(self) -> int:
        """The EventTime in nanoseconds since the epoch."""
        seconds, nanoseconds = _SECONDS_NANOS.unpack(self.time.data)
        return int(seconds) * 1_000_000_000 + int(nanoseconds)


def event_time(time_ns: int) -> Ext:
    """The EventTime ext (type 0: uint32 seconds, uint32 nanoseconds) of ``time_ns``."""
    seconds, nanoseconds = divmod(time_ns, 1_000_000_000)
    return Ext(EVENT_TIME_EXT, pack_event_time(seconds, nanoseconds))


def kubernetes_raw(kubernetes: dict[str, str]) -> msgspec.Raw:
    """The ``kubernetes`` map encoded once, to be embedded in every entry of the file."""
    return msgspec.Raw(_encode(kubernetes))


def make_entry(record: MergedRecord, seq: int, source: str, kubernetes: msgspec.Raw) -> Entry:
    """The entry of one merged record (the general path; ``fastpath`` builds them inline)."""
    lf = LfMeta(
        f"{source}-{record.offset:x}",  # records.record_id, inlined on the fast path too
        source,
        seq,
        truncated=record.truncated,
        malformed=record.malformed,
        partial_at_eof=record.partial_at_eof,
    )
    return Entry(event_time(record.time_ns), Body(record.log, record.stream, kubernetes, lf))


def encode_blocks(
    entries: Sequence[msgspec.Struct], per_block: int, max_bytes: int, *, checkpoints: bool = False
) -> list[bytes]:
    """``entries`` as spool blocks, in order, each of at most ``per_block`` entries and at most
    ``max_bytes`` uncompressed (a single larger entry makes a block of its own);
    ``checkpoints``: they are checkpoint records, not log records (see the module docstring)."""
    blocks: list[bytes] = []
    for i in range(0, len(entries), per_block):
        _encode_within(entries[i : i + per_block], max_bytes, blocks, checkpoints)
    return blocks


def _encode_within(
    entries: Sequence[msgspec.Struct], max_bytes: int, out: list[bytes], checkpoints: bool
) -> None:
    packed = memoryview(_encode(entries))
    stream = packed[_array_header_len(packed) :]  # the entries without the array header
    if len(stream) > max_bytes and len(entries) > 1:
        # Rare (long lines): halve until it fits rather than measure every entry up front.
        half = len(entries) // 2
        _encode_within(entries[:half], max_bytes, out, checkpoints)
        _encode_within(entries[half:], max_bytes, out, checkpoints)
        return
    out.append(make_block(stream, len(entries), checkpoints=checkpoints))


def make_block(stream: bytes | memoryview, count: int, *, checkpoints: bool = False) -> bytes:
    """The block of a MessagePackEventStream of ``count`` entries (``checkpoints``: checkpoint
    records, kept out of the record counts)."""
    if not 0 <= count <= _COUNT_MASK:
        raise ValueError(f"a block holds at most {_COUNT_MASK} entries, not {count}")
    flag = _CHECKPOINT_FLAG if checkpoints else 0
    return _HEADER.pack(count | flag, len(stream)) + gzip_parts([stream])


def _array_header_len(packed: memoryview) -> int:
    first = packed[0]
    if 0x90 <= first <= 0x9F:
        return 1
    return 3 if first == 0xDC else 5  # array 16 / array 32: msgspec encodes lists no other way


def block_count(block: bytes | memoryview) -> int:
    """How many entries a block holds (checkpoint records included: what goes on the wire)."""
    count: int = _HEADER.unpack_from(block)[0]
    return count & _COUNT_MASK


def block_records(block: bytes | memoryview) -> int:
    """How many log records a block holds: its entries, or 0 for checkpoint records."""
    count: int = _HEADER.unpack_from(block)[0]
    return 0 if count & _CHECKPOINT_FLAG else count


def block_raw_size(block: bytes | memoryview) -> int:
    """Bytes of the block's entries uncompressed."""
    size: int = _HEADER.unpack_from(block)[1]
    return size


def block_gzip(block: bytes) -> memoryview:
    """The block's entries: one gzip member of a MessagePackEventStream (no copy)."""
    return memoryview(block)[_HEADER.size :]


def block_stream(block: bytes) -> bytes:
    """The block's entries decompressed (tools and tests; the sender never needs them)."""
    return gzip.decompress(block_gzip(block))
