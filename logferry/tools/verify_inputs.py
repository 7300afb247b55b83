"""What ``logferry verify`` reads besides the store: the forwarder's position file and a load
generator's manifest (how many records each source must have), and the aggregator's
dead-letter queue (seqs accounted for outside the store).
"""

from __future__ import annotations

import glob
import os
import stat
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from logferry.aggregator.dlq import decode_entry, queue_files
from logferry.common.records import source_id
from logferry.forwarder.metadata import parse_file_name
from logferry.forwarder.positions import decode_positions
from logferry.forwarder.reader import Checkpoint, SourceReader
from logferry.tools.verify_options import VerifyError, epoch_ms, parse_time
from logferry.tools.verify_store import TIME_FIELD


@dataclass(frozen=True, slots=True)
class Expectation:
    """A count of records a source must have, from outside the store."""

    next_seq: int
    namespace: str
    origin: str
    """``positions``, ``manifest`` or ``checkpoint`` (the forwarder's, from the store)."""


@dataclass(slots=True)
class DlqSource:
    """Seqs of one source found in the dead-letter queue (within the window)."""

    namespace: str
    seqs: set[int] = field(default_factory=set)


def load_positions(path: Path) -> tuple[dict[str, Expectation], dict[tuple[int, int], int]]:
    """From a forwarder position file: each live source's ``next_seq``, and the generation of
    the last source on each (device, inode), live or released.

    Decoded without :class:`PositionStore`, which would move a damaged file aside: this tool
    only reads the forwarder's state.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VerifyError(f"cannot read position file: {exc}") from exc
    try:
        states, released = decode_positions(data)
    except ValueError as exc:
        raise VerifyError(f"{path}: damaged position file: {exc}") from exc
    generations = {(dev, ino): gen for dev, ino, gen in released}
    expectations: dict[str, Expectation] = {}
    for state in states:
        generations[state.key] = state.generation
        namespace = _namespace_of(state.link) or _namespace_of(state.path)
        expectations[state.source_id] = Expectation(state.next_seq, namespace, "positions")
    return expectations, generations


def load_manifest(
    path: Path, node: str, generations: Mapping[tuple[int, int], int]
) -> dict[str, Expectation]:
    """Messages per source of a load generator's manifest ``{"files": [{"path", "device",
    "inode", "messages"}, ..]}`` (other keys ignored).

    A file's generation is the positions file's last one for its (device, inode), else 0.
    Files of the manifest that share an inode (reuse after deletion) took one generation each,
    in manifest order, so the last of them has that generation and each earlier one one less.
    """
    try:
        doc = orjson.loads(path.read_bytes())
        files = doc["files"]
        entries = [
            (str(f["path"]), _uint(f["device"]), _uint(f["inode"]), _uint(f["messages"]))
            for f in files
        ]
    except OSError as exc:
        raise VerifyError(f"cannot read manifest: {exc}") from exc
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise VerifyError(f"{path}: not a manifest ({type(exc).__name__}: {exc})") from exc
    later: dict[tuple[int, int], int] = defaultdict(int)
    expectations: dict[str, Expectation] = {}
    for file_path, device, inode, messages in reversed(entries):
        key = (device, inode)
        generation = max(generations.get(key, 0) - later[key], 0)
        later[key] += 1
        src = source_id(node, device, inode, generation)
        expectations[src] = Expectation(messages, _namespace_of(file_path), "manifest")
    return expectations


def read_dlq(
    directories: Iterable[Path],
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    namespace: str | None = None,
) -> dict[str, DlqSource]:
    """(source -> seqs) of the dead-lettered documents in the window and namespace.

    Read straight from the queue's files (no lock file created, no entry held in memory):
    appends and rewrites are line- and rename-atomic, and a torn last line is skipped.
    """
    found: dict[str, DlqSource] = {}
    for directory in directories:
        if not directory.is_dir():
            raise VerifyError(f"not a dead-letter queue directory: {directory}")
        for file in queue_files(directory):
            for line in _lines(file):
                entry = decode_entry(line, file.name) if line.endswith(b"\n") else None
                if entry is None:
                    continue
                try:
                    doc = orjson.loads(entry.source)
                except orjson.JSONDecodeError:
                    continue
                lf = doc.get("_lf") if isinstance(doc, dict) else None
                src = lf.get("src") if isinstance(lf, dict) else None
                seq = lf.get("seq") if isinstance(lf, dict) else None
                if not isinstance(src, str) or not isinstance(seq, int) or isinstance(seq, bool):
                    continue
                kubernetes = doc.get("kubernetes")
                ns = kubernetes.get("namespace_name") if isinstance(kubernetes, dict) else None
                ns = ns if isinstance(ns, str) and ns else entry.tenant
                if namespace is not None and ns != namespace:
                    continue
                if not _in_window(doc.get(TIME_FIELD), since_ms, until_ms):
                    continue
                found.setdefault(src, DlqSource(ns)).seqs.add(seq)
    return found


def _namespace_of(path: str) -> str:
    meta = parse_file_name(path, "") if path else None
    return meta.namespace_name if meta is not None else ""


def _uint(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as file:
            yield from file
    except FileNotFoundError:  # rewritten away while listing
        return
    except OSError as exc:
        raise VerifyError(f"cannot read {path}: {exc}") from exc


def _in_window(stamp: object, since_ms: int | None, until_ms: int | None) -> bool:
    if since_ms is None and until_ms is None:
        return True
    if not isinstance(stamp, str):
        return False
    try:
        when = epoch_ms(parse_time(stamp, datetime.now(UTC)))
    except VerifyError:
        return False
    return (since_ms is None or when >= since_ms) and (until_ms is None or when < until_ms)


def count_files(
    patterns: Iterable[str], node: str, generations: Mapping[tuple[int, int], int]
) -> dict[str, Expectation]:
    """Records per source of the container log files matching ``patterns`` (globs, e.g.
    ``/var/log/pods/*/*/*.log*``), counted by reading each file through the forwarder's own
    reader: partial lines merged as the forwarder merges them, so a count is what the pipeline
    must deliver. Compressed rotated files (``.gz``, a copy under another inode) are skipped;
    so are files that are not container logs."""
    expectations: dict[str, Expectation] = {}
    seen: set[tuple[int, int]] = set()
    for pattern in patterns:
        for name in sorted(glob.glob(pattern, recursive=True)):
            if name.endswith(".gz"):
                continue
            try:
                st = os.stat(name)
                if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
                    continue
                records = _count_records(name)
            except OSError as exc:
                raise VerifyError(f"cannot read {name}: {exc}") from exc
            key = (st.st_dev, st.st_ino)
            seen.add(key)
            src = source_id(node, st.st_dev, st.st_ino, generations.get(key, 0))
            expectations[src] = Expectation(records, _namespace_of_pod_path(name), "files")
    return expectations


def _count_records(path: str) -> int:
    reader = SourceReader(Checkpoint(0, 0), max_line_bytes=1 << 20)
    count = 0
    with open(path, "rb") as file:
        while data := file.read(1 << 20):
            count += len(reader.feed(data).records)
    return count + len(reader.finish().records)


def _namespace_of_pod_path(path: str) -> str:
    """The namespace of ``/var/log/pods/<ns>_<pod>_<uid>/<container>/0.log`` or of a kubelet
    link name; "" when neither."""
    by_link = _namespace_of(path)
    if by_link:
        return by_link
    parts = Path(path).parts
    pod_dir = parts[-3] if len(parts) >= 3 else ""
    return pod_dir.split("_", 1)[0] if pod_dir.count("_") >= 2 else ""
