"""Read positions and sequence numbers of every source, and how a file on disk maps to one.

A **source** (docs/architecture.md) is one generation of one file on one node: (node, device, inode,
generation). Its state here is the next byte offset to read and the ``_lf.seq`` of the next
record; both are persisted together in one position file, so a re-read after a restart gets
the same record ids and sequence numbers (guarantees 3 and 4).

Contract with the caller (guarantee 2, *positions trail durability*): the store records only
what the caller tells it, and the caller calls :meth:`PositionStore.update` with an offset
and ``next_seq`` only once every record before them is durable in the forwarder spool. The
store never advances anything by itself; :func:`resolve` only creates states at offset 0 or
refreshes a source's fingerprint and path, which claim nothing about durability. Saving is
separate and batched (:meth:`PositionStore.save` skips when nothing changed): a crash between
update and save only makes the forwarder re-read, and the deterministic ids make that harmless.

The position file (guarantee 7) is one file written atomically (tmp, fsync, rename, directory
fsync) and framed as ``magic | body length | crc32(body) | JSON body``. A torn, damaged or
empty file is moved aside to ``<path>.corrupt-<timestamp>``, counted in ``corrupt_loads`` and
treated as empty: the forwarder re-reads from the start instead of crash-looping. A stray
``<path>.tmp`` (a crash before the rename) is ignored and removed; the old file stays valid.

A fingerprint is a hash of a file's first bytes (up to :data:`FINGERPRINT_BYTES`) together
with how many bytes it covers: a file shorter than that has a fingerprint that grows with it,
so two fingerprints are compared on the prefix the older one covered. Its limit: two files
on the same inode whose first bytes are identical over that prefix, and the second at least as
long as the first's read offset, are taken for one file. Container log lines start with a
nanosecond timestamp, which makes that practically impossible.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import orjson

from logferry.common.files import fsync_dir, make_private_dirs, write_file_atomic
from logferry.common.logs import get_logger
from logferry.common.records import source_id

log = get_logger(__name__)

FINGERPRINT_BYTES = 1024
"""How many leading bytes of a file its fingerprint covers once the file is that long."""

MAX_RELEASED = 4096
"""How many released (device, inode) pairs keep their last generation (see remove())."""

_MAGIC = b"LFP1"
_HEADER = struct.Struct("<4sII")  # magic, body length, crc32 of the body
_FORMAT_VERSION = 1

FileKey = tuple[int, int]
"""(device, inode): how the store finds the live source of a file."""


class StatLike(Protocol):
    """The parts of an ``os.stat_result`` that resolve() reads."""

    @property
    def st_dev(self) -> int: ...
    @property
    def st_ino(self) -> int: ...
    @property
    def st_size(self) -> int: ...


def fingerprint(fd_or_path: int | str | os.PathLike[str], length: int = FINGERPRINT_BYTES) -> str:
    """``"<covered bytes>:<hash>"`` of the first ``length`` bytes of a file (fewer if shorter).

    An int is an open file descriptor, read with pread (its offset is left alone).
    """
    if length < 0:
        raise ValueError(f"fingerprint length must be >= 0, got {length}")
    if isinstance(fd_or_path, int):
        head = _pread_head(fd_or_path, length)
    else:
        fd = os.open(fd_or_path, os.O_RDONLY)
        try:
            head = _pread_head(fd, length)
        finally:
            os.close(fd)
    return fingerprint_of(head)


def fingerprint_of(head: bytes) -> str:
    """The fingerprint of a file whose first bytes are ``head`` (all of them, however many:
    cut it to the length a fingerprint covers to compare with it)."""
    return f"{len(head)}:{hashlib.blake2b(head, digest_size=16).hexdigest()}"


def _pread_head(fd: int, length: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def fingerprint_length(fp: str) -> int:
    """How many leading bytes the fingerprint ``fp`` covers."""
    covered, sep, digest = fp.partition(":")
    if not sep or not covered.isdigit() or not digest:
        raise ValueError(f"not a fingerprint: {fp!r}")
    return int(covered)


@dataclass(frozen=True, slots=True)
class SourceState:
    """What the forwarder knows about one source. Immutable: derive a new one to change it."""

    node: str
    device: int
    inode: int
    generation: int
    fingerprint: str
    """``"<covered bytes>:<hash>"`` of the file's head (see :func:`fingerprint`)."""
    path: str
    """Where the file was last seen (it moves on rename rotation)."""
    offset: int = 0
    """The next byte to read: every record from the bytes before it is durable in the spool."""
    next_seq: int = 0
    """The ``_lf.seq`` of the next record; sequence numbers are contiguous from 0 per source."""
    link: str = ""
    """The container log name that led to the file (``/var/log/containers/...``): its name
    carries the Kubernetes metadata, needed to drain a file rotated while we were down."""

    @property
    def key(self) -> FileKey:
        """(device, inode)."""
        return (self.device, self.inode)

    @property
    def source_id(self) -> str:
        """The id that goes into ``_lf.src`` and into every record id of this source."""
        return source_id(self.node, self.device, self.inode, self.generation)

    @property
    def fingerprint_bytes(self) -> int:
        """How many leading bytes of the file ``fingerprint`` covers."""
        return fingerprint_length(self.fingerprint)

    def advanced(self, offset: int, next_seq: int) -> SourceState:
        """This source with its position moved to ``offset``/``next_seq`` (both durable)."""
        return dataclasses.replace(self, offset=offset, next_seq=next_seq)


class Resolution(StrEnum):
    """How resolve() matched a file on disk to a source."""

    NEW = "new"
    """No known source on this (device, inode): a new one, read from 0."""
    RESUMED = "resumed"
    """The known source at the same path: resume at its saved offset."""
    MOVED = "moved"
    """The known source, found at another path (rename rotation): resume at its saved offset."""
    TRUNCATED = "truncated"
    """Same inode, now shorter than what was seen (truncation, copytruncate): new generation."""
    REPLACED = "replaced"
    """Same inode, different head (inode reuse, or rewritten in place): new generation."""


class PositionStore:
    """All sources' states of one forwarder, persisted in one crash-safe file at ``path``.

    Loaded on construction. Mutations and save() may run on different threads (save() is
    blocking: call it through ``asyncio.to_thread``); a lock keeps the snapshot consistent.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_released: int = MAX_RELEASED) -> None:
        self.path = os.fspath(path)
        self.max_released = max_released
        self.corrupt_loads = 0
        """How many times a damaged position file was quarantined (export it as a metric)."""
        self._states: dict[FileKey, SourceState] = {}
        # The last generation of inodes whose source was removed: a file that reuses one of
        # them starts at the next generation, so it never gets the ids of the old content.
        self._released: dict[FileKey, int] = {}
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._dirty = False
        self._load()

    # -- queries ----------------------------------------------------------------------------

    def get(self, device: int, inode: int) -> SourceState | None:
        """The live source of (device, inode), if any."""
        return self._states.get((device, inode))

    def all(self) -> list[SourceState]:
        """Every live source."""
        with self._lock:
            return list(self._states.values())

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[SourceState]:
        return iter(self.all())

    @property
    def dirty(self) -> bool:
        """Something changed since the last save()."""
        return self._dirty

    def was_released(self, device: int, inode: int) -> bool:
        """(device, inode) held a source that was read to its end and let go (recently)."""
        return (device, inode) in self._released

    def first_generation(self, device: int, inode: int) -> int:
        """The generation a new source on (device, inode) starts at: 0 unless it was used."""
        released = self._released.get((device, inode))
        return 0 if released is None else released + 1

    # -- mutations --------------------------------------------------------------------------

    def update(self, state: SourceState) -> bool:
        """Record ``state`` as the live source of its (device, inode).

        Call with a moved position only once the records before it are durable in the spool.
        An update for an older generation than the stored one (a late settle of a source that
        has since started over) is ignored and returns False. Moving a source's position
        backwards is a caller bug and raises ValueError.
        """
        if state.offset < 0 or state.next_seq < 0 or state.generation < 0:
            raise ValueError(f"negative position in {state!r}")
        with self._lock:
            current = self._states.get(state.key)
            if current is not None:
                if state.generation < current.generation:
                    return False
                if state.generation == current.generation and (
                    state.offset < current.offset or state.next_seq < current.next_seq
                ):
                    raise ValueError(
                        f"position of source {state.source_id} moved backwards: "
                        f"{current.offset}/{current.next_seq} -> {state.offset}/{state.next_seq}"
                    )
                if state == current:
                    return True
            self._states[state.key] = state
            self._released.pop(state.key, None)
            self._dirty = True
            return True

    def remove(self, device: int, inode: int) -> SourceState | None:
        """Release the source of (device, inode) (file deleted and drained, or gone).

        Its generation is remembered (up to ``max_released`` inodes, oldest forgotten first),
        so a new file on the same inode gets a new source id.
        """
        with self._lock:
            state = self._states.pop((device, inode), None)
            if state is None:
                return None
            self._released.pop(state.key, None)
            self._released[state.key] = state.generation
            while len(self._released) > self.max_released:
                del self._released[next(iter(self._released))]
            self._dirty = True
            return state

    # -- persistence ------------------------------------------------------------------------

    def save(self, *, force: bool = False) -> bool:
        """Write every state to the position file atomically; False if nothing had changed."""
        with self._save_lock:
            with self._lock:
                if not self._dirty and not force:
                    return False
                self._dirty = False
                states = list(self._states.values())
                released = [[dev, ino, gen] for (dev, ino), gen in self._released.items()]
            try:
                make_private_dirs(os.path.dirname(self.path) or ".")
                write_file_atomic(self.path, encode_positions(states, released))
            except BaseException:
                self._dirty = True
                raise
            return True

    def _load(self) -> None:
        tmp = self.path + ".tmp"
        if os.path.exists(tmp):
            # A crash before the rename: the main file is still the last complete save.
            log.info("positions.stray_tmp_removed", file=tmp)
            os.unlink(tmp)
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        try:
            states, released = decode_positions(data)
        except ValueError as exc:
            self._quarantine(str(exc), len(data))
            return
        for state in states:
            self._states[state.key] = state
        for dev, ino, gen in released:
            if (dev, ino) not in self._states:
                self._released[(dev, ino)] = gen

    def _quarantine(self, reason: str, size: int) -> None:
        now = time.time_ns()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 1_000_000_000))
        target = f"{self.path}.corrupt-{stamp}.{now % 1_000_000_000:09d}Z"
        os.replace(self.path, target)
        fsync_dir(os.path.dirname(self.path) or ".")
        self.corrupt_loads += 1
        log.warning(
            "positions.quarantined", reason=reason, bytes=size, file=self.path, moved_to=target
        )


def encode_positions(states: list[SourceState], released: list[list[int]]) -> bytes:
    """The framed position file holding ``states`` and the released inodes' generations."""
    body = orjson.dumps(
        {
            "version": _FORMAT_VERSION,
            "sources": [dataclasses.asdict(s) for s in states],
            "released": released,
        }
    )
    return _HEADER.pack(_MAGIC, len(body), zlib.crc32(body)) + body


def decode_positions(data: bytes) -> tuple[list[SourceState], list[tuple[int, int, int]]]:
    """Parse a position file; ValueError says why it is damaged."""
    if len(data) < _HEADER.size:
        raise ValueError(f"too short ({len(data)} bytes)")
    magic, length, crc = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError("bad magic")
    body = data[_HEADER.size :]
    if len(body) != length:
        raise ValueError(f"body is {len(body)} bytes, header says {length}")
    if zlib.crc32(body) != crc:
        raise ValueError("crc mismatch")
    try:
        doc = orjson.loads(body)
        if doc["version"] != _FORMAT_VERSION:
            raise ValueError(f"unknown version {doc['version']!r}")
        states = [_state_from(item) for item in doc["sources"]]
        released = [(_uint(d), _uint(i), _uint(g)) for d, i, g in doc["released"]]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"bad body: {type(exc).__name__}: {exc}") from exc
    return states, released


def _state_from(item: dict[str, Any]) -> SourceState:
    if not isinstance(item["node"], str) or not isinstance(item["path"], str):
        raise TypeError("node and path must be strings")
    fp = item["fingerprint"]
    if not isinstance(fp, str):
        raise TypeError("fingerprint must be a string")
    fingerprint_length(fp)
    return SourceState(
        node=item["node"],
        device=_uint(item["device"]),
        inode=_uint(item["inode"]),
        generation=_uint(item["generation"]),
        fingerprint=fp,
        path=item["path"],
        offset=_uint(item["offset"]),
        next_seq=_uint(item["next_seq"]),
        # (position files of older versions also carry "draining", never set: ignored)
        link=str(item.get("link", "")),
    )


def _uint(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"expected a non-negative integer, got {value!r}")
    return value


def resolve(
    store: PositionStore,
    node: str,
    path: str,
    stat_result: StatLike,
    fp: str,
    *,
    fd: int | None = None,
) -> tuple[SourceState, Resolution]:
    """Match a file found on disk to its source, record the outcome in ``store``, return both.

    ``stat_result`` and ``fp`` (its :func:`fingerprint`) describe the file at ``path``. When
    the saved fingerprint covers fewer bytes than ``fp``, the file's head is hashed again over
    that prefix through ``fd`` when given (race-free: pass the descriptor you will read from),
    else through ``path``.

    - unknown (device, inode): NEW, at the generation after any released one of that inode;
    - shorter than the saved offset or than the saved fingerprint's prefix: TRUNCATED;
    - the saved prefix hashes differently: REPLACED (inode reuse or a rewrite in place);
    - otherwise the same source, RESUMED at its path or MOVED to a new one, at its saved
      offset and ``next_seq``; its fingerprint is widened if the file grew.

    A new generation starts at offset 0 and seq 0 with the new fingerprint.
    """
    device, inode, size = stat_result.st_dev, stat_result.st_ino, stat_result.st_size
    known = store.get(device, inode)
    if known is None:
        generation = store.first_generation(device, inode)
        state = SourceState(node, device, inode, generation, fp, path)
        store.update(state)
        return state, Resolution.NEW

    resolution = _compare(known, path, size, fp, fd)
    if resolution in (Resolution.TRUNCATED, Resolution.REPLACED):
        state = SourceState(known.node, device, inode, known.generation + 1, fp, path)
        log.info(
            "positions.new_generation",
            resolution=resolution.value,
            source=known.source_id,
            new_source=state.source_id,
            generation=state.generation,
            offset=known.offset,
            size=size,
        )
    else:
        # The saved node is kept: the source's identity was fixed when it was first seen.
        wider = fp if fingerprint_length(fp) > known.fingerprint_bytes else known.fingerprint
        state = dataclasses.replace(known, fingerprint=wider, path=path)
    store.update(state)
    return state, resolution


def _compare(known: SourceState, path: str, size: int, fp: str, fd: int | None) -> Resolution:
    covered = known.fingerprint_bytes
    # Log files only grow: shorter than anything seen before means it started over.
    if size < known.offset or size < covered:
        return Resolution.TRUNCATED
    current = fp
    if fingerprint_length(fp) != covered:
        current = fingerprint(fd if fd is not None else path, covered)
        if fingerprint_length(current) < covered:  # shrank between stat and read
            return Resolution.TRUNCATED
    if current != known.fingerprint:
        return Resolution.REPLACED
    return Resolution.RESUMED if path == known.path else Resolution.MOVED
