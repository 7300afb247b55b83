"""Small durable files: a new file never replaces one that is there."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

from logferry.common.files import write_new_file


def _names(base: str) -> itertools.chain[str]:
    return itertools.chain([base], (f"{base}.{n}" for n in itertools.count(1)))


def test_a_new_file_takes_the_first_free_name_and_replaces_nothing(tmp_path: Path) -> None:
    (tmp_path / "chunk").write_bytes(b"first")
    (tmp_path / "chunk.1").write_bytes(b"second")
    path = write_new_file(tmp_path, _names("chunk"), b"third")
    assert path == str(tmp_path / "chunk.2")
    assert [(tmp_path / n).read_bytes() for n in ("chunk", "chunk.1", "chunk.2")] == [
        b"first",
        b"second",
        b"third",
    ]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk", "chunk.1", "chunk.2"]


def test_a_new_directory_is_made_private(tmp_path: Path) -> None:
    path = write_new_file(tmp_path / "quarantine", ["segment"], b"x")
    assert Path(path).read_bytes() == b"x"
    assert stat.S_IMODE((tmp_path / "quarantine").stat().st_mode) == 0o700
