"""The dead-letter queue: documents the store refused for good, kept durably and readable.

Layout: per tenant, append-only JSON-lines files ``<directory>/<tenant>/dlq-<n>.jsonl``
(``n`` zero-padded; files of older versions directly in ``<directory>`` are still read), one
object per rejected document::

    {"entry_id": .., "time": "2026-11-25T20:17:40.123Z", "tenant": .., "index": .., "id": ..,
     "status": 400, "reason": "mapper_parsing_exception: ..", "source": {..the document..}}

Space is capped twice: ``max_bytes`` for the queue and ``tenant_max_bytes`` for each tenant,
so one tenant cannot fill it for the others. Files are 0600, directories 0700.

Invariants:

- an ``append`` returns only after its lines are written and fsynced (and, for a new file,
  the directory fsynced): the output commits the spool batch after that, never before;
- the daemon and the ``dlq`` command coordinate through ``flock`` on ``<directory>/.lock``:
  appends and rewrites hold it exclusively, listings shared; the daemon opens the file for
  each append, so a file replaced by a rewrite is never written through a stale descriptor;
- a torn last line (a crash mid-append) is skipped and counted on read, never a crash; the
  next append starts on a fresh line;
- removing replayed entries rewrites a file to a temporary name, fsyncs and renames it over
  the old one: a crash leaves either the old or the new file, whole.

A crash between an append and the spool commit resends the batch and may add a second entry
for the same document; replaying both is harmless (the second is a 409, then removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field, model_validator

from logferry.common.config import ConfigModel
from logferry.common.errors import OutputError
from logferry.common.files import DIR_MODE, FILE_MODE, fsync_dir
from logferry.common.logs import get_logger
from logferry.common.units import ByteSize, MiB

log = get_logger(__name__)

LOCK_FILE = ".lock"
_FILE = re.compile(r"^dlq-(\d{8})\.jsonl\Z")
_TENANT_DIR = re.compile(r"^_?[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


class DeadLetterSettings(ConfigModel):
    """Where documents the store refused for good are kept, for ``dlq list|replay``."""

    directory: Path
    """Folder of the queue's files (on the persistent volume, next to the spool)."""
    rotate_bytes: ByteSize = Field(default=64 * MiB, ge=4096)
    """A new file starts once the current one reaches this size."""
    max_bytes: ByteSize = Field(default=1024 * MiB, ge=4096)
    """Size cap. When full, rejected documents stay in the spool (and the spool's
    backpressure slows senders) until entries are replayed or removed: nothing is dropped."""
    tenant_max_bytes: ByteSize = Field(default=256 * MiB, ge=4096)
    """One tenant's share of ``max_bytes``: a tenant past it waits (its documents stay in
    its spool), and its unrenderable records are kept in its own index instead; the others'
    letters still fit."""

    @model_validator(mode="after")
    def _rotation_fits(self) -> DeadLetterSettings:
        if self.rotate_bytes > self.max_bytes:
            raise ValueError("rotate_bytes cannot exceed max_bytes")
        if self.tenant_max_bytes > self.max_bytes:
            raise ValueError("tenant_max_bytes cannot exceed max_bytes")
        return self


class DeadLetterQueueFullError(OutputError):
    """The DLQ is at ``max_bytes``; retriable once entries are replayed or removed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=True)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A document to put in the queue."""

    tenant: str
    index: str
    doc_id: str
    status: int
    """HTTP status of the item (413 when the document alone was too large)."""
    reason: str
    """The server's reason."""
    source: bytes
    """The document as JSON (kept as is; stored as a string if it is not valid JSON)."""


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """An entry read back from the queue."""

    entry_id: str
    time: str
    tenant: str
    index: str
    doc_id: str
    status: int
    reason: str
    source: bytes
    file: str

    def summary(self) -> dict[str, Any]:
        """The listing fields (no source), for ``dlq list --json``."""
        return {
            "entry_id": self.entry_id,
            "time": self.time,
            "tenant": self.tenant,
            "index": self.index,
            "id": self.doc_id,
            "status": self.status,
            "reason": self.reason,
        }


@dataclass(slots=True)
class ScanResult:
    """Entries matching a filter, and how many damaged lines were skipped on the way."""

    entries: list[DlqEntry] = field(default_factory=list)
    damaged_lines: int = 0


def encode_letter(letter: DeadLetter, now_ns: int | None = None) -> bytes:
    """One JSON line (newline-terminated) for ``letter``."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    entry: dict[str, Any] = {
        "entry_id": uuid.uuid4().hex,
        "time": _iso(now_ns),
        "tenant": letter.tenant,
        "index": letter.index,
        "id": letter.doc_id,
        "status": letter.status,
        "reason": letter.reason,
    }
    try:
        orjson.loads(letter.source)
        entry["source"] = orjson.Fragment(letter.source)
    except orjson.JSONDecodeError:
        entry["source_text"] = letter.source.decode("utf-8", "replace")
    return orjson.dumps(entry) + b"\n"


def decode_entry(line: bytes, file: str) -> DlqEntry | None:
    """The entry of one line, or None if it is damaged (torn, not JSON, fields missing)."""
    try:
        obj = orjson.loads(line)
        if "source" in obj:
            source = orjson.dumps(obj["source"])
        else:
            source = str(obj["source_text"]).encode()
        return DlqEntry(
            entry_id=str(obj["entry_id"]),
            time=str(obj["time"]),
            tenant=str(obj["tenant"]),
            index=str(obj["index"]),
            doc_id=str(obj["id"]),
            status=int(obj["status"]),
            reason=str(obj["reason"]),
            source=source,
            file=file,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class DeadLetterQueue:
    """The queue in one directory; safe to use from the daemon and the CLI at once."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        rotate_bytes: int = 64 * MiB,
        max_bytes: int = 1024 * MiB,
        tenant_max_bytes: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.rotate_bytes = rotate_bytes
        self.max_bytes = max_bytes
        self.tenant_max_bytes = max_bytes if tenant_max_bytes is None else tenant_max_bytes
        self._append_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: DeadLetterSettings) -> DeadLetterQueue:
        """The queue described by ``settings``."""
        return cls(
            settings.directory,
            rotate_bytes=settings.rotate_bytes,
            max_bytes=settings.max_bytes,
            tenant_max_bytes=settings.tenant_max_bytes,
        )

    def close(self) -> None:
        """Nothing stays open between appends (each one opens, fsyncs and closes its file).
        Kept so owners can treat the queue like their other resources; safe to call twice."""

    # ----------------------------------------------------------------- writing

    async def append(self, letters: Sequence[DeadLetter]) -> None:
        """Write ``letters`` durably; return once fsynced. Raises OutputError (retriable)."""
        if not letters:
            return
        async with self._append_lock:  # one writer thread at a time in this process
            await asyncio.to_thread(self.append_sync, letters)

    def append_sync(self, letters: Sequence[DeadLetter]) -> None:
        """Blocking :meth:`append` (for threads and tests)."""
        by_tenant: dict[str, bytes] = {}
        for letter in letters:
            key = _tenant_dir(letter.tenant)
            by_tenant[key] = by_tenant.get(key, b"") + encode_letter(letter)
        try:
            with self._locked(fcntl.LOCK_EX):
                files = self._files()
                used = sum(size for _, _, size in files)
                adding = sum(len(data) for data in by_tenant.values())
                if used + adding > self.max_bytes:
                    raise DeadLetterQueueFullError(
                        f"dead-letter queue full: {used} of {self.max_bytes} bytes"
                    )
                for tenant, data in by_tenant.items():
                    mine = [f for f in files if f[1].parent.name == tenant]
                    tenant_used = sum(size for _, _, size in mine)
                    if tenant_used + len(data) > self.tenant_max_bytes:
                        raise DeadLetterQueueFullError(
                            f"tenant {tenant}'s share of the dead-letter queue is full: "
                            f"{tenant_used} of {self.tenant_max_bytes} bytes"
                        )
                for tenant, data in by_tenant.items():
                    mine = [f for f in files if f[1].parent.name == tenant]
                    folder = self.directory / tenant
                    if mine and mine[-1][2] < self.rotate_bytes:
                        number, path, size = mine[-1]
                    else:
                        number = mine[-1][0] + 1 if mine else 0
                        path, size = folder / _name(number), 0
                    new_dir = not folder.exists()
                    if new_dir:
                        folder.mkdir(mode=DIR_MODE)
                        fsync_dir(self.directory)
                    _append_file(path, data, size, new=size == 0 and not path.exists())
        except OSError as exc:
            raise OutputError(f"dead-letter queue write failed: {exc}", retriable=True) from exc

    # ----------------------------------------------------------------- reading

    def scan(
        self,
        *,
        tenant: str | None = None,
        reason_contains: str | None = None,
        limit: int | None = None,
    ) -> ScanResult:
        """Entries in append order matching every filter given (at most ``limit``)."""
        result = ScanResult()
        needle = reason_contains.lower() if reason_contains else None
        with self._locked(fcntl.LOCK_SH):
            for _, path, _ in self._files():
                for line in _lines(path):
                    entry = decode_entry(line, path.name) if line.endswith(b"\n") else None
                    if entry is None:
                        result.damaged_lines += 1
                        continue
                    if tenant is not None and entry.tenant != tenant:
                        continue
                    if needle is not None and needle not in entry.reason.lower():
                        continue
                    result.entries.append(entry)
                    if limit is not None and len(result.entries) >= limit:
                        return self._report(result)
        return self._report(result)

    def _report(self, result: ScanResult) -> ScanResult:
        if result.damaged_lines:
            log.warning(
                "dlq.damaged_lines", directory=str(self.directory), lines=result.damaged_lines
            )
        return result

    @property
    def bytes_used(self) -> int:
        """Bytes in the queue's files."""
        return sum(size for _, _, size in self._files())

    # ---------------------------------------------------------------- settling

    def settle_replayed(self, delivered: set[str], refused: Mapping[str, tuple[int, str]]) -> int:
        """Remove the ``delivered`` entry ids and give ``refused`` ones their new
        (status, reason), atomically per file. Returns how many entries were removed.

        Damaged lines in a rewritten file are dropped (they were counted when read).
        """
        removed = 0
        if not delivered and not refused:
            return 0
        with self._locked(fcntl.LOCK_EX):
            for _, path, _ in self._files():
                removed += self._rewrite(path, delivered, refused)
        return removed

    def _rewrite(
        self, path: Path, delivered: set[str], refused: Mapping[str, tuple[int, str]]
    ) -> int:
        """Stream ``path`` into a temporary file without the delivered entries; rename it
        over ``path`` only if something changed."""
        tmp = path.with_name(f".{path.name}.tmp")
        removed = changed = damaged = kept = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        with open(os.open(tmp, flags, FILE_MODE), "wb") as out:
            for line in _lines(path):
                obj = _object(line)
                if obj is None:
                    damaged += 1
                    continue
                entry_id = str(obj.get("entry_id"))
                if entry_id in delivered:
                    removed += 1
                    continue
                if entry_id in refused:
                    obj["status"], obj["reason"] = refused[entry_id]
                    obj["time_refused_again"] = _iso(time.time_ns())
                    line = orjson.dumps(obj) + b"\n"
                    changed += 1
                out.write(line)
                kept += 1
            out.flush()
            os.fsync(out.fileno())
        if not removed and not changed and not damaged:
            tmp.unlink()
            return 0
        if damaged:
            log.warning("dlq.damaged_lines_dropped", file=path.name, lines=damaged)
        if kept:
            os.replace(tmp, path)
        else:
            tmp.unlink()
            path.unlink()
        fsync_dir(path.parent)
        return removed

    # ----------------------------------------------------------------- helpers

    def _files(self) -> list[tuple[int, Path, int]]:
        """(number, path, size) of every queue file, in :func:`queue_files` order."""
        found = []
        for path in queue_files(self.directory):
            match = _FILE.match(path.name)
            assert match is not None
            with contextlib.suppress(FileNotFoundError):
                found.append((int(match.group(1)), path, path.stat().st_size))
        return found

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # releases the lock


def queue_files(directory: Path) -> list[Path]:
    """Every queue file under ``directory``: those of older versions directly in it first,
    then each tenant's folder (by name), each oldest first."""
    found: list[tuple[tuple[int, str], int, Path]] = []
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(directory)):
            path = directory / name
            match = _FILE.match(name)
            if match:
                found.append(((0, ""), int(match.group(1)), path))
            elif _TENANT_DIR.match(name) and path.is_dir():
                for inner in os.listdir(path):
                    inner_match = _FILE.match(inner)
                    if inner_match:
                        found.append(((1, name), int(inner_match.group(1)), path / inner))
    return [path for _key, _number, path in sorted(found)]


def _tenant_dir(tenant: str) -> str:
    """The folder of a tenant's letters (a namespace or ``_default``: a safe name)."""
    return tenant if _TENANT_DIR.match(tenant) else "_invalid"


def _name(number: int) -> str:
    return f"dlq-{number:08d}.jsonl"


def _iso(now_ns: int) -> str:
    seconds, nanos = divmod(now_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1_000_000:03d}Z"


def _lines(path: Path) -> Iterator[bytes]:
    """Lines of ``path`` with their newline (a torn last line has none)."""
    try:
        with path.open("rb") as file:
            yield from file
    except FileNotFoundError:
        return


def _object(line: bytes) -> dict[str, Any] | None:
    if not line.endswith(b"\n"):
        return None
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and "entry_id" in obj else None


def _append_file(path: Path, data: bytes, size: int, *, new: bool) -> None:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a torn last line stays alone on its (skipped) line
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        fsync_dir(path.parent)
