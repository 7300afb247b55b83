"""Small durable files: modes, atomic replacement, directory fsync.

Everything logferry writes that holds records or their positions (spool segments, commit and
position files, parked chunks, the DLQ, the file output) is written through these, readable
by the daemon's user only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable

FILE_MODE = 0o600
"""Spool segments, commit and position files, parked chunks: records of every tenant of the
node (or of the aggregator), readable by the daemon's user only."""
DIR_MODE = 0o700
"""Directories this code creates for such files."""


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so that a created, renamed or removed entry is durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite ``data`` at ``offset``, looping over short writes (usually one syscall)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def write_file_atomic(path: str, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data``: tmp file, fsync, rename, directory fsync.

    On failure the old file is untouched and the tmp file is removed: on a full disk a
    half-written copy would hold the very space a retry needs.
    """
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            write_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")


def write_new_file(directory: str | os.PathLike[str], names: Iterable[str], data: bytes) -> str:
    """Write ``data`` durably as a new file of ``directory`` under the first of ``names``
    that is free; its path. Tmp file, fsync, link (which, unlike rename, never replaces a
    file), directory fsync: a crash leaves either the whole file or none under its name.
    """
    directory = os.fspath(directory)
    make_private_dirs(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".new-", suffix=".tmp")  # 0600
    try:
        try:
            write_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        for name in names:
            path = os.path.join(directory, name)
            try:
                os.link(tmp, path)
            except FileExistsError:
                continue
            break
        else:
            raise FileExistsError(errno.EEXIST, f"no free name in {directory}")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(directory)
    return path


def overwrite_in_place(path: str, data: bytes) -> None:
    """Write ``data`` over the start of the existing file ``path`` and fsync it.

    Needs no new block (the file's first block is already allocated), so it works on a
    volume too full for :func:`write_file_atomic`'s tmp file. Not atomic: only for small
    checksummed files whose damage is detected and safe (the spool's commit file: a torn
    one makes the spool resend from its oldest segment). FileNotFoundError if absent.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size != len(data):
            raise OSError(errno.EINVAL, f"{path} is not {len(data)} bytes: not overwritten")
        write_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(path: str | os.PathLike[str]) -> None:
    """``os.makedirs`` whose new directories (parents too) are 0700; existing ones are left
    as they are (an operator may have opened one to a backup agent on purpose)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path.rstrip(os.sep))
    if parent and parent != path:
        make_private_dirs(parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, DIR_MODE)
