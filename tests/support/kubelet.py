"""A node's container log layout for tests, as kubelet makes it.

``<root>/pods/<namespace>_<pod>_<uid>/<container>/0.log`` is the file the runtime writes;
``<root>/containers/<pod>_<namespace>_<container>-<id>.log`` is kubelet's symlink to it, and
what the forwarder's ``source.path_glob`` matches. The forwarder reads a file only if the
link resolves into the pods folder, to the folder of the container the link names.

Also the lines a container runtime writes there, in CRI format.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

CRI_TIME = "2026-11-25T19:50:31.{:09d}Z"
"""A CRI timestamp to ``.format(n)`` with a line's number: its nanoseconds, so lines differ."""


def cri_lines(first: int, count: int, tag: str) -> bytes:
    """Full CRI lines ``<time> stdout F <tag> line <n>`` for ``n`` from ``first`` on."""
    return b"".join(
        f"{CRI_TIME.format(n)} stdout F {tag} line {n}\n".encode()
        for n in range(first, first + count)
    )


@dataclass(frozen=True)
class ContainerLog:
    """One container's log file and its link."""

    link: Path
    path: Path
    namespace: str
    pod: str
    container: str


def container_id(namespace: str, pod: str, container: str) -> str:
    """A stable 64-hex container id for a container (kubelet's is the runtime's)."""
    return hashlib.sha256(f"{namespace}/{pod}/{container}".encode()).hexdigest()


def container_log(
    root: Path, namespace: str, pod: str, container: str = "app", body: bytes = b""
) -> ContainerLog:
    """Create the file (with ``body``) and its link under ``root``; returns both."""
    uid = hashlib.sha256(f"uid/{namespace}/{pod}".encode()).hexdigest()[:32]
    path = root / "pods" / f"{namespace}_{pod}_{uid}" / container / "0.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    link = root / "containers" / link_name(namespace, pod, container)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(path)
    return ContainerLog(link, path, namespace, pod, container)


def link_name(namespace: str, pod: str, container: str = "app") -> str:
    """The file name kubelet gives the link of a container."""
    return f"{pod}_{namespace}_{container}-{container_id(namespace, pod, container)}.log"


def glob_of(root: Path) -> str:
    """The forwarder's ``source.path_glob`` for a layout under ``root`` (its pods root is
    then ``root/pods``, the default beside the glob's folder)."""
    return str(root / "containers" / "*.log")
