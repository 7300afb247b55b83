"""The lines a lost source never read, counted in kubelet's compressed copy of its file."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from logferry.forwarder.lost import UNKNOWN, count_lost_lines
from logferry.forwarder.positions import fingerprint
from tests.support.kubelet import cri_lines


def rotated(folder: Path, body: bytes, stamp: str = "20261125-000000") -> Path:
    """``body`` as kubelet leaves a rotated file: compressed, the original gone."""
    path = folder / f"0.log.{stamp}.gz"
    path.write_bytes(gzip.compress(body))
    return path


def head_fingerprint(tmp_path: Path, head: bytes) -> str:
    """The fingerprint the forwarder saved when the file held ``head``."""
    path = tmp_path / "seen"
    path.write_bytes(head)
    return fingerprint(str(path))


def test_the_copy_whose_head_matches_is_counted_after_the_offset(tmp_path: Path) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    body = cri_lines(0, 300, "ours")
    offset = len(cri_lines(0, 120, "ours"))
    rotated(folder, cri_lines(0, 500, "other"), "20261125-000000")  # the container's older file
    rotated(folder, body, "20261125-010000")
    (folder / "0.log").write_bytes(cri_lines(0, 10, "next"))  # the live log: never read here
    fp = head_fingerprint(tmp_path, body[:1024])
    assert count_lost_lines(str(folder), fp, offset) == 180


def test_a_fingerprint_of_a_shorter_file_and_an_offset_inside_it(tmp_path: Path) -> None:
    # Seen when it held two lines (the fingerprint covers those bytes only), read to one.
    body = cri_lines(0, 50, "ours") + b"2026-11-25T19:50:31.0Z stdout P no newline yet"
    rotated(tmp_path, body)
    fp = head_fingerprint(tmp_path / "..", body[: len(cri_lines(0, 2, "ours"))])
    one_line = len(cri_lines(0, 1, "ours"))
    assert count_lost_lines(str(tmp_path), fp, one_line) == 49  # the unfinished one: not a line


def test_large_copies_are_read_a_chunk_at_a_time(tmp_path: Path) -> None:
    body = cri_lines(0, 60_000, "x" * 40)  # several MiB: the offset falls inside a chunk
    offset = len(cri_lines(0, 25_001, "x" * 40))
    rotated(tmp_path, body)
    fp = head_fingerprint(tmp_path / "..", body[:1024])
    assert count_lost_lines(str(tmp_path), fp, offset) == 60_000 - 25_001


def test_without_a_matching_copy_it_is_unknown(tmp_path: Path) -> None:
    body = cri_lines(0, 40, "ours")
    fp = head_fingerprint(tmp_path / "..", body[:1024])
    assert count_lost_lines(str(tmp_path), fp, 100) == UNKNOWN  # nothing there
    assert count_lost_lines(str(tmp_path / "gone"), fp, 100) == UNKNOWN  # no folder
    rotated(tmp_path, cri_lines(0, 40, "other"))
    (tmp_path / "0.log.20261125-020000").write_bytes(body)  # not compressed: not looked at
    assert count_lost_lines(str(tmp_path), fp, 100) == UNKNOWN


def test_a_symlink_or_a_damaged_or_short_copy_is_unknown(tmp_path: Path) -> None:
    body = cri_lines(0, 40, "ours")
    fp = head_fingerprint(tmp_path / "..", body[:1024])
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere.gz"
    elsewhere.write_bytes(gzip.compress(body))
    folder = tmp_path / "app"
    folder.mkdir()
    os.symlink(elsewhere, folder / "0.log.20261125-000000.gz")  # planted by the tenant
    assert count_lost_lines(str(folder), fp, 100) == UNKNOWN
    torn = gzip.compress(body * 50)
    (folder / "0.log.20261125-010000.gz").write_bytes(torn[: len(torn) // 2])
    assert count_lost_lines(str(folder), fp, 100) == UNKNOWN
    os.unlink(folder / "0.log.20261125-010000.gz")
    rotated(folder, body, "20261125-020000")  # now a sound one beside the symlink
    assert count_lost_lines(str(folder), fp, len(body) + 1) == UNKNOWN  # shorter than read
    assert count_lost_lines(str(folder), fp, len(body)) == 0
