"""Kubernetes metadata from a container log file name.

kubelet names the files ``/var/log/containers/<pod>_<namespace>_<container>-<id>.log``. Pod,
namespace and container names cannot contain ``_`` (they are DNS names), and the id is 64 hex
characters, so the name splits unambiguously.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass

_NAME = re.compile(
    r"^(?P<pod>[a-z0-9][-a-z0-9.]*)_(?P<namespace>[a-z0-9][-a-z0-9]*)_"
    r"(?P<container>[a-z0-9][-a-z0-9]*)-(?P<id>[0-9a-f]{64})\.log$"
)


@dataclass(frozen=True, slots=True)
class ContainerMeta:
    """Who wrote a file, in the keys Fluent Bit's and Fluentd's Kubernetes filters use."""

    namespace_name: str
    pod_name: str
    container_name: str
    container_id: str
    host: str

    def as_record(self) -> dict[str, str]:
        return {
            "namespace_name": self.namespace_name,
            "pod_name": self.pod_name,
            "container_name": self.container_name,
            "container_id": self.container_id,
            "host": self.host,
        }


def parse_file_name(path: str, host: str) -> ContainerMeta | None:
    """Metadata from a kubelet log file name, or None when the name is not one."""
    match = _NAME.match(os.path.basename(path))
    if match is None:
        return None
    return ContainerMeta(match["namespace"], match["pod"], match["container"], match["id"], host)


_POD_PATH = re.compile(
    r"(?:^|/)(?P<namespace>[a-z0-9][-a-z0-9]*)_(?P<pod>[a-z0-9][-a-z0-9.]*)_(?P<uid>[^/_]+)"
    r"/(?P<container>[a-z0-9][-a-z0-9]*)/(?P<n>\d+)\.log$"
)


def parse_pod_path(path: str, host: str) -> ContainerMeta | None:
    """Metadata from kubelet's own layout ``.../<ns>_<pod>_<uid>/<container>/<n>.log`` (for
    runtimes that keep no ``/var/log/containers`` links), or None. The container id is not
    in that path: it stays empty."""
    match = _POD_PATH.search(path)
    if match is None:
        return None
    return ContainerMeta(match["namespace"], match["pod"], match["container"], "", host)


def excluded(
    meta: ContainerMeta,
    namespaces: list[str],
    pods: list[str],
    containers: list[str],
) -> bool:
    """Whether the config's exclusion globs match this container."""
    return (
        any(fnmatch.fnmatchcase(meta.namespace_name, glob) for glob in namespaces)
        or any(fnmatch.fnmatchcase(meta.pod_name, glob) for glob in pods)
        or any(fnmatch.fnmatchcase(meta.container_name, glob) for glob in containers)
    )
