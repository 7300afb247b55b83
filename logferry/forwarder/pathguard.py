"""Which files the forwarder may read: a container's own log under kubelet's pods folder.

The forwarder runs as root with CAP_DAC_READ_SEARCH, so it can read any file on the node,
while a tenant may control its own pod log folder (and a link's target proves nothing about
who wrote it). A file is read only if:

- its link resolves, every symlink followed, to
  ``<pods root>/<namespace>_<pod>_<uid>/<container>/<n>.log`` (or a rotated ``<n>.log.<x>``)
  whose namespace, pod and container are those of the link's own name: not ``/etc/shadow``,
  not ``/proc/self/environ``, not another tenant's log (:func:`check_target`); or, with
  docker's json-file driver, to ``<docker root>/<id>/<id>-json.log`` whose id is the
  container id in the link's own name;
- it is opened one path component at a time from the pods root with ``O_NOFOLLOW``, so a
  symlink swapped in after the check, for the file or for a folder, fails the open instead
  of being followed; ``O_NONBLOCK`` so that a FIFO planted there cannot hang it; and what
  opened must be a regular file (:func:`open_pod_log`). The caller also checks that it is
  the (device, inode) the scan saw.

Out of scope: hard links (the kernel's ``protected_hardlinks`` refuses a tenant a link to a
file it does not own).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from typing import Literal

from logferry.forwarder.metadata import ContainerMeta

__all__ = ["RefusalReason", "RefusedFileError", "check_target", "open_pod_log", "pods_root"]

RefusalReason = Literal[
    "outside_pods_root", "not_pod_layout", "wrong_owner", "symlink", "not_regular"
]
"""Why a container log file is not read: the ``reason`` label of
``logferry_files_skipped_total``."""

# Namespace and pod names cannot hold '_' (DNS labels), so the folder name splits
# unambiguously; the uid is whatever kubelet put there (a UUID, or a static pod's hash).
_POD_DIR = re.compile(r"(?P<namespace>[^_/]+)_(?P<pod>[^_/]+)_(?P<uid>[^/]+)")
_LOG_NAME = re.compile(r"[0-9]+\.log(\.[^/]+)?")
_DOCKER_ID = re.compile(r"[0-9a-f]{64}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class RefusedFileError(Exception):
    """A file the forwarder must not read, and why."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RefusalReason = reason
        self.detail = detail


def pods_root(path: str | os.PathLike[str]) -> str:
    """The pods root as targets are compared with it: absolute, its own symlinks resolved
    (the root itself is the node's, e.g. /var/log/pods on a bind mount)."""
    return os.path.realpath(path)


def _parts(real_path: str, root: str) -> list[str] | None:
    rel = os.path.relpath(real_path, root)
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return None
    return rel.split(os.sep)


def check_target(
    real_path: str, root: str, meta: ContainerMeta, docker_root: str | None = None
) -> RefusalReason | None:
    """Why ``real_path`` (a link's target, fully resolved) may not be read for the container
    ``meta`` (from the link's name), or None if it may. ``root`` is :func:`pods_root`'s;
    ``docker_root`` (resolved too) where docker's json-file logs live, into which kubelet's
    links point with cri-dockerd: ``<docker_root>/<id>/<id>-json.log``, read only when the
    id is the one in the link's own name."""
    parts = _parts(real_path, root)
    if parts is None and docker_root is not None:
        docker = _parts(real_path, docker_root)
        if docker is None:
            return "outside_pods_root"
        if len(docker) != 2 or _DOCKER_ID.fullmatch(docker[0]) is None:
            return "not_pod_layout"
        if not docker[1].startswith(f"{docker[0]}-json.log"):
            return "not_pod_layout"
        return None if meta.container_id == docker[0] else "wrong_owner"
    if parts is None:
        return "outside_pods_root"
    if len(parts) != 3:
        return "not_pod_layout"
    pod_dir, container, name = parts
    match = _POD_DIR.fullmatch(pod_dir)
    if match is None or _LOG_NAME.fullmatch(name) is None:
        return "not_pod_layout"
    if (match["namespace"], match["pod"], container) != (
        meta.namespace_name,
        meta.pod_name,
        meta.container_name,
    ):
        return "wrong_owner"
    return None


def open_pod_log(real_path: str, root: str) -> tuple[int, os.stat_result]:
    """Open ``real_path`` (already passed :func:`check_target`) read-only without following
    any symlink below ``root``; returns the descriptor and its fstat.

    Raises :class:`RefusedFileError` (symlink, not_regular, or a path outside the root) and
    FileNotFoundError when something on the way is gone (rotated: the next scan sees it).
    """
    parts = _parts(real_path, root)
    if parts is None:
        raise RefusedFileError("outside_pods_root", real_path)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for part in parts[:-1]:
        fd = _step(fd, part, _DIR_FLAGS, real_path)  # each step closes the folder before
    fd = _step(fd, parts[-1], _FILE_FLAGS, real_path)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise RefusedFileError("not_regular", real_path)
    return fd, st


def _step(dir_fd: int, name: str, flags: int, real_path: str) -> int:
    """Open ``name`` inside ``dir_fd`` and close ``dir_fd`` (whatever happens)."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            # ELOOP: the file is a symlink. ENOTDIR: a folder is a symlink (O_DIRECTORY and
            # O_NOFOLLOW report that so) or not a folder at all.
            reason: RefusalReason = "symlink"
            with contextlib.suppress(OSError):
                if not stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    reason = "not_pod_layout"
            raise RefusedFileError(reason, real_path) from exc
        raise
    finally:
        os.close(dir_fd)
