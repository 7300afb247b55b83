"""What an aggregator's file output delivered: the documents in its NDJSON files, counted by
record id (``_lf.id``), for exactly-once checks without a store.

Documents with an ``_lf.kind`` (a forwarder's checkpoints, the aggregator's accounting
records) are not log records: every helper but :func:`marks` leaves them out, so counts of
delivered records stay counts of log records."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import orjson


def documents(directory: Path) -> list[dict[str, Any]]:
    """Every complete log record document under ``directory`` (``<index>/<index>.<n>.ndjson``);
    a line being written at this very moment (no newline yet) is left out."""
    return [doc for doc in _all_documents(directory) if "kind" not in doc.get("_lf", {})]


def marks(directory: Path, kind: str = "checkpoint") -> list[dict[str, Any]]:
    """The complete documents under ``directory`` whose ``_lf.kind`` is ``kind``."""
    return [doc for doc in _all_documents(directory) if doc.get("_lf", {}).get("kind") == kind]


def _all_documents(directory: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not directory.is_dir():
        return out
    for root, _dirs, files in os.walk(directory):
        for name in sorted(files):
            if not name.endswith(".ndjson"):
                continue
            data = (Path(root) / name).read_bytes()
            for line in data.split(b"\n")[:-1]:
                out.append(orjson.loads(line))
    return out


def ids(directory: Path) -> Counter[str]:
    """How many times each ``_lf.id`` was delivered."""
    return Counter(str(doc["_lf"]["id"]) for doc in documents(directory))


def seqs_by_source(directory: Path) -> dict[str, list[int]]:
    """Per ``_lf.src``: the delivered ``_lf.seq`` values, sorted (duplicates kept)."""
    out: dict[str, list[int]] = {}
    for doc in documents(directory):
        out.setdefault(str(doc["_lf"]["src"]), []).append(int(doc["_lf"]["seq"]))
    return {src: sorted(seqs) for src, seqs in out.items()}


def assert_exactly_once(
    directory: Path, expected_per_source: list[int], *, max_copies: int = 1
) -> None:
    """Every id once (at most ``max_copies`` lines each: the file output writes a resent
    chunk again, where a store's create-by-id keeps one), and per source every seq from 0
    to its count - 1."""
    counted = ids(directory)
    doubled = {i: n for i, n in counted.items() if n > max_copies}
    assert not doubled, f"delivered more than {max_copies}x: {list(doubled.items())[:5]}"
    by_source = {src: sorted(set(seqs)) for src, seqs in seqs_by_source(directory).items()}
    assert sorted(len(s) for s in by_source.values()) == sorted(expected_per_source), {
        src: len(s) for src, s in by_source.items()
    }
    for src, seqs in by_source.items():
        assert seqs == list(range(len(seqs))), f"{src}: seqs not contiguous from 0"
