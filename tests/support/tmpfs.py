"""A real small tmpfs for full-disk tests: mounted for the test, unmounted after.

Needs root (mount(2)); tests that use it are skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def require_root() -> None:
    """Skip the calling test unless it can mount a tmpfs."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill it needs root (mount -t tmpfs)")


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size: str = "8m") -> Iterator[Path]:
    """``mount -t tmpfs -o size=<size>`` on ``directory`` (created), unmounted at the end
    whatever happened (lazily, if a process still holds a file there)."""
    require_root()
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path, *, leave_bytes: int = 0, name: str = "filler") -> Path:
    """Write a file in ``directory`` until its filesystem is full (or only ``leave_bytes``
    are left); returns the file, whose deletion gives the space back."""
    path = directory / name
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    block = b"\0" * (1 << 20)
    with path.open("wb") as f:
        written = 0
        try:
            while written < free - leave_bytes:
                chunk = block[: min(len(block), free - leave_bytes - written)]
                f.write(chunk)
                f.flush()
                written += len(chunk)
        except OSError:
            pass  # full: that was the point
    return path


def free_bytes(directory: Path) -> int:
    """Bytes still available on the filesystem of ``directory``."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize
