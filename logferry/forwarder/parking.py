"""Parked chunks: what the aggregators refused again and again, kept on the node.

A chunk an aggregator keeps refusing (it closes the connection on it, see the sender) would
otherwise be resent for ever, and since a chunk mixes every namespace of the node, one bad
record would hold the whole node's spool. After ``sender.park_after_refusals`` refusals the
sender writes it here and commits it, so the spool moves on; nothing is dropped: an operator
looks at it (``logferry forwarder parked list``) and puts it back (``... requeue``) once the
aggregators take it.

One file per chunk, ``<UTC time>-<chunk id>.parked``, written atomically (tmp, fsync, rename,
folder fsync), 0600 in a 0700 folder::

    <one line of JSON: the header>\\n<the message exactly as it was sent>

The header holds the reason, the chunk id, the spool sequence range, the record count, the
sources (``_lf.src``) with their seq ranges and namespaces, the time, and the payload's
size and CRC-32 (checked on read). A full volume pauses parking (the chunk stays in the
spool meanwhile) and retries, like every other write of the forwarder.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import orjson

from logferry.common.disk_full import DiskStalls, is_disk_full, stall_delay
from logferry.common.files import write_new_file
from logferry.common.logs import get_logger
from logferry.common.metrics import count_and_log
from logferry.common.units import MiB
from logferry.forwarder.metrics import ForwarderMetrics

__all__ = [
    "PARKED_SUFFIX",
    "ParkedChunk",
    "Parking",
    "decode_payload",
    "encode_parked",
    "list_parked",
    "read_parked",
]

log = get_logger(__name__)

PARKED_SUFFIX = ".parked"
_FORMAT = "logferry-parked-chunk"
_VERSION = 1
_MAX_DECOMPRESSED = 256 * MiB  # far above any chunk the forwarder makes


@dataclass(frozen=True, slots=True)
class ParkedChunk:
    """A parked chunk read back: its file, header and the message bytes as sent."""

    path: Path
    header: dict[str, Any]
    payload: bytes


def decode_payload(payload: bytes) -> tuple[str, bytes, int]:
    """``(tag, entry stream, entry count)`` of a CompressedPackedForward message; ValueError
    if it is not one."""
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"not msgpack: {exc}") from exc
    if (
        not isinstance(message, list)
        or len(message) != 3
        or not isinstance(message[0], str)
        or not isinstance(message[1], bytes)
        or not isinstance(message[2], dict)
        or message[2].get("compressed") != "gzip"
    ):
        raise ValueError("not a CompressedPackedForward message")
    stream = _gunzip(message[1])
    size = message[2].get("size")
    count = sum(1 for _ in _entries(stream))
    if isinstance(size, int) and size != count:
        raise ValueError(f"options.size says {size} entries, the stream holds {count}")
    return message[0], stream, count


def _gunzip(data: bytes) -> bytes:
    """Every gzip member of ``data``, decompressed (the forwarder sends several)."""
    out: list[bytes] = []
    total = 0
    while data:
        inflater = zlib.decompressobj(31)
        chunk = inflater.decompress(data, _MAX_DECOMPRESSED - total)
        if inflater.unconsumed_tail:
            raise ValueError(f"entries larger than {_MAX_DECOMPRESSED} bytes")
        if not inflater.eof:
            raise ValueError("truncated gzip member")
        out.append(chunk)
        total += len(chunk)
        data = inflater.unused_data
    return b"".join(out)


def _entries(stream: bytes) -> Iterator[Any]:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(stream))
    unpacker.feed(stream)
    yield from unpacker


def summarize(stream: bytes) -> dict[str, dict[str, Any]]:
    """Per source (``_lf.src``): namespace, lowest and highest seq, record count."""
    sources: dict[str, dict[str, Any]] = {}
    for entry in _entries(stream):
        record = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
        lf = record.get("_lf") if isinstance(record, dict) else None
        if not isinstance(lf, dict) or not isinstance(lf.get("src"), str) or "kind" in lf:
            continue  # not a log record (a checkpoint): no seq to range over
        seq = lf.get("seq") if isinstance(lf.get("seq"), int) else -1
        kubernetes = record.get("kubernetes") if isinstance(record, dict) else None
        namespace = kubernetes.get("namespace_name") if isinstance(kubernetes, dict) else None
        row = sources.setdefault(
            lf["src"], {"namespace": namespace, "first_seq": seq, "last_seq": seq, "records": 0}
        )
        row["first_seq"] = min(row["first_seq"], seq)
        row["last_seq"] = max(row["last_seq"], seq)
        row["records"] += 1
    return sources


def encode_parked(header: dict[str, Any], payload: bytes) -> bytes:
    """The file contents: header line (with the payload's size and CRC) and the payload."""
    full = {
        "format": _FORMAT,
        "version": _VERSION,
        **header,
        "payload_bytes": len(payload),
        "payload_crc32": zlib.crc32(payload),
    }
    return orjson.dumps(full) + b"\n" + payload


def read_parked(path: Path) -> ParkedChunk:
    """Read and check one parked chunk; ValueError says what is wrong with it."""
    data = path.read_bytes()
    head, sep, payload = data.partition(b"\n")
    if not sep:
        raise ValueError("no header line")
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise ValueError("not a parked chunk")
    if header.get("version") != _VERSION:
        raise ValueError(f"unknown version {header.get('version')!r}")
    claimed = header.get("payload_bytes")
    if claimed != len(payload):
        raise ValueError(f"payload is {len(payload)} bytes, header says {claimed}")
    if header.get("payload_crc32") != zlib.crc32(payload):
        raise ValueError("payload CRC mismatch")
    return ParkedChunk(path, header, payload)


def list_parked(directory: Path) -> list[Path]:
    """Parked chunk files in ``directory``, oldest first (names start with the UTC time)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(directory / n for n in names if n.endswith(PARKED_SUFFIX))


def _write_new(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as a new file named ``name`` (or ``name`` with a counter) atomically."""
    stem = name.removesuffix(PARKED_SUFFIX)
    # A counter when the same chunk is parked again (it was requeued and refused again).
    names = itertools.chain([name], (f"{stem}.{n}{PARKED_SUFFIX}" for n in itertools.count(1)))
    return Path(write_new_file(directory, names, data))


class Parking:
    """Writes parked chunks for the sender: durably, counted, one warning each."""

    def __init__(
        self,
        directory: Path,
        *,
        metrics: ForwarderMetrics | None = None,
        stalls: DiskStalls | None = None,
    ) -> None:
        self.directory = directory
        metrics = metrics if metrics is not None else ForwarderMetrics()
        self._stalls = stalls if stalls is not None else DiskStalls(metrics.registry)
        self.parked = metrics.chunks_parked

    async def park(self, header: dict[str, Any], payload: bytes, *, reason: str) -> Path:
        """Write the chunk; returns its file once durable. Waits (and retries) while the
        volume is full; the caller commits the chunk only after this returns."""
        try:
            _tag, stream, count = decode_payload(payload)
            sources = summarize(stream)
        except ValueError as exc:  # parked anyway: the bytes are kept as sent
            count, sources = int(header.get("records", 0)), {}
            log.info("parked.undecodable", chunk=header.get("chunk_id"), error=str(exc))
        stamp = time.time()
        header = {
            **header,
            "reason": reason,
            "records": count,
            "sources": sources,
            "parked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)),
        }
        data = encode_parked(header, payload)
        name = (
            time.strftime("%Y%m%dT%H%M%S", time.gmtime(stamp))
            + f".{int(stamp * 1e6) % 1_000_000:06d}Z-{header.get('chunk_id', 'chunk')}"
            + PARKED_SUFFIX
        )
        owner = str(self.directory)
        attempt = 0
        while True:
            try:
                path = await asyncio.to_thread(_write_new, self.directory, name, data)
                break
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                attempt += 1
                self._stalls.failed("parked", owner, "file", exc)
                await asyncio.sleep(stall_delay(attempt))
        self._stalls.succeeded("parked", owner, "file")
        count_and_log(
            self.parked,
            log,
            "sender.chunk_parked",
            labels={"reason": reason},
            chunk=header.get("chunk_id"),
            records=count,
            sources=len(sources),
            namespaces=sorted({str(s["namespace"]) for s in sources.values()}),
            refusals=header.get("refusals"),
            file=str(path),
            hint="logferry forwarder parked list|requeue",
        )
        return path
