"""The file output, the embedded default when no store is configured: NDJSON per index.

Each document's source line is appended to ``<directory>/<index>/<index>.<n>.ndjson``; a new
``n`` starts once a file reaches ``rotate_bytes``. A batch is committed only after every file
it touched is fsynced (one fsync per file per batch, not per record), and a new file's
directory is fsynced too. A failed write is truncated back to where it started and retried
with backoff, so a file never holds half a batch's line.

Across a crash this is at-least-once: a batch written but not yet committed is written again
after the restart. Every line carries its record id (``_lf.id``), so a reader can drop repeats.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from logferry.aggregator.dlq import DeadLetter, DeadLetterQueue
from logferry.aggregator.documents import split_fragment
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs.dead_letters import DeadLetterWriter, malformed_fragment
from logferry.common.backoff import backoff_delay
from logferry.common.config import ConfigModel
from logferry.common.files import FILE_MODE, fsync_dir, make_private_dirs
from logferry.common.logs import get_logger
from logferry.common.spool import Spool, SpoolBatch
from logferry.common.units import ByteSize, MiB

log = get_logger(__name__)

# The store's own index-name rules, which also keep a name from escaping its directory.
_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,254}$")


class FileOutputSettings(ConfigModel):
    """NDJSON files per index under a directory (no store needed)."""

    type: Literal["file"]
    """Selects this output."""
    directory: Path
    """Root folder; each index gets a subfolder of numbered ``.ndjson`` files."""
    rotate_bytes: ByteSize = Field(default=256 * MiB, ge=4096)
    """A new file starts once the current one reaches this size."""
    batch_max_records: int = Field(default=5000, ge=1, le=100_000)
    """Most documents written (and fsynced) as one batch."""
    batch_max_bytes: ByteSize = Field(default=8 * MiB, ge=1024)
    """Most fragment bytes read into one batch."""
    retry_initial_s: float = Field(default=0.2, gt=0)
    """First delay after a failed write (disk full, I/O error); doubles, with full jitter."""
    retry_max_s: float = Field(default=30.0, gt=0)
    """Longest delay between write attempts."""


@dataclass(slots=True)
class _IndexFile:
    number: int
    size: int


class FileOutput:
    """Writes every tenant's documents to NDJSON files; implements :class:`~.base.Output`."""

    def __init__(
        self, settings: FileOutputSettings, metrics: AggregatorMetrics, dlq: DeadLetterQueue
    ) -> None:
        self.settings = settings
        self.batch_max_records = settings.batch_max_records
        self.batch_max_bytes = settings.batch_max_bytes
        self.slots = None  # no cap across tenants: each holds one batch (concurrency)
        self._metrics = metrics
        self._letters = DeadLetterWriter(
            dlq, retry_initial_s=settings.retry_initial_s, retry_max_s=settings.retry_max_s
        )
        self._root = Path(settings.directory)
        self._files: dict[str, _IndexFile] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    async def start(self) -> None:
        """Create the root folder (0700: it holds every tenant's documents)."""
        await asyncio.to_thread(make_private_dirs, self._root)

    def concurrency(self, tenant: str) -> int:
        """One batch at a time: it keeps each tenant's lines in spool order."""
        return 1

    async def close(self) -> None:
        """Nothing stays open between batches. Safe to call twice."""

    async def settle(self, tenant: str, spool: Spool, batch: SpoolBatch) -> None:
        """Write ``batch``'s documents (fsynced), dead-letter what cannot be written, commit."""
        by_index: dict[str, list[bytes]] = {}
        letters: list[DeadLetter] = []
        nbytes = 0
        for fragment in batch.records:
            try:
                documents = split_fragment(fragment)  # one fragment inflated at a time
            except ValueError as exc:
                letters.append(malformed_fragment(tenant, fragment, self._metrics, str(exc)))
                continue
            for doc in documents:
                index = doc.index
                if not _INDEX_NAME.match(index) or index in (".", ".."):
                    letters.append(
                        DeadLetter(tenant, index, doc.doc_id, 400, "invalid_index_name", doc.source)
                    )
                    self._metrics.dlq_records.labels(
                        tenant=tenant, reason="invalid_index_name"
                    ).inc()
                    continue
                by_index.setdefault(index, []).append(doc.source + b"\n")
                nbytes += len(doc.source)
        attempt = 0
        done: dict[str, int] = {}
        while True:
            try:
                await asyncio.to_thread(self._write_all, by_index, done)
                break
            except OSError as exc:
                log.error(
                    "file_output.write_failed",
                    tenant=tenant,
                    attempt=attempt,
                    error_type=type(exc).__name__,
                    error=str(exc),
                )
                delay = backoff_delay(
                    attempt, self.settings.retry_initial_s, self.settings.retry_max_s
                )
                await asyncio.sleep(delay)
                attempt += 1
        await self._letters.write(tenant, letters)
        spool.commit(batch)
        written = sum(len(lines) for lines in by_index.values())
        self._metrics.records_out.labels(tenant=tenant).inc(written)
        self._metrics.bytes_out.labels(tenant=tenant).inc(nbytes)

    # ------------------------------------------------------------ blocking part

    def _write_all(self, by_index: dict[str, list[bytes]], done: dict[str, int]) -> None:
        """Write each index's lines; ``done`` counts lines already durable, so a retry after
        a failure part-way does not write them twice."""
        for index, lines in by_index.items():
            with self._lock(index):
                self._write_index(index, lines[done.get(index, 0) :], done)

    def _lock(self, index: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(index, threading.Lock())

    def _write_index(self, index: str, lines: list[bytes], done: dict[str, int]) -> None:
        """Append ``lines`` to the index's files, rotating by size; fsync each file once."""
        directory = self._root / index
        current = self._files.get(index)
        if current is None:
            current = self._files[index] = _discover(directory, index)
        pieces: list[tuple[int, list[bytes]]] = []
        number, size = current.number, current.size
        chunk: list[bytes] = []
        for line in lines:
            if size and size + len(line) > self.settings.rotate_bytes:
                if chunk:
                    pieces.append((number, chunk))
                number, size, chunk = number + 1, 0, []
            chunk.append(line)
            size += len(line)
        if chunk:
            pieces.append((number, chunk))
        for piece_number, piece in pieces:
            path = directory / f"{index}.{piece_number}.ndjson"
            _append_durably(path, b"".join(piece))
            # Advance only after the fsync: a failed piece is retried into the same file.
            written = sum(len(line) for line in piece)
            done[index] = done.get(index, 0) + len(piece)
            if piece_number == current.number:
                current.size += written
            else:
                current.number, current.size = piece_number, written


def _discover(directory: Path, index: str) -> _IndexFile:
    """The newest file of ``index`` (number and size) on disk, or a fresh one."""
    pattern = re.compile(rf"^{re.escape(index)}\.(\d+)\.ndjson$")
    newest = -1
    if directory.is_dir():
        for name in os.listdir(directory):
            match = pattern.match(name)
            if match:
                newest = max(newest, int(match.group(1)))
    if newest < 0:
        return _IndexFile(0, 0)
    return _IndexFile(newest, (directory / f"{index}.{newest}.ndjson").stat().st_size)


def _append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` and fsync; on failure cut the file back so no partial line remains."""
    created_dir = not path.parent.exists()
    if created_dir:
        make_private_dirs(path.parent)
        fsync_dir(path.parent.parent)
    existed = path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)
    if not existed:
        fsync_dir(path.parent)
