"""Worker processes of one aggregator: who a worker is, where its spools live, how many.

With ``workers`` above 1 the aggregator is a supervisor (:mod:`.supervisor`) and N copies of
the daemon, each started with ``LOGFERRY_WORKER=<index>/<count>``. The supervisor holds the
Forward port (bound with ``SO_REUSEPORT``, never listening) and every worker listens on it
with a socket of its own: the kernel spreads new connections over the workers by their
addresses. (One socket shared by all was tried first: the worker that woke first took a
whole burst of connections, and with long-lived connections the split stuck, 948:138.)
Each worker owns its tenant spools under the one volume:

    <spool.directory>/tenants/<tenant>/            worker 0 (and a single-process aggregator)
    <spool.directory>/worker-<i>/tenants/<tenant>/ worker i > 0

so a worker restarted after a crash reopens exactly the spools it acked from, and a single
process that becomes two workers keeps its backlog where it was. The spool budgets are
split evenly. When the count shrinks, a worker ``i`` also drains the folders of the workers
that are gone (``j >= count`` with ``j % count == i``); nothing acked is left behind.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from logferry.aggregator.config import ForwardInputSettings
from logferry.aggregator.spools import AggregatorSpoolSettings
from logferry.common.errors import ConfigError

WORKER_ENV = "LOGFERRY_WORKER"
SOCKETS_ENV = "LOGFERRY_WORKER_SOCKETS"
PARENT_ENV = "LOGFERRY_WORKER_PARENT"
_WORKER_DIR = re.compile(r"^worker-(\d+)\Z")
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """This process as worker ``index`` of ``count``: the Forward port its supervisor holds and
    the status socket it bound for this worker."""

    index: int
    count: int
    input_port: int
    http_fd: int

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> WorkerSlot | None:
        """The slot the supervisor gave this process, or None when it is not a worker."""
        env = os.environ if environ is None else environ
        spec = env.get(WORKER_ENV)
        if not spec:
            return None
        try:
            index, count = (int(part) for part in spec.split("/"))
            input_port, http_fd = (int(part) for part in env[SOCKETS_ENV].split(","))
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{WORKER_ENV}={spec!r}: not a worker slot ({exc})") from exc
        if not 0 <= index < count:
            raise ConfigError(f"{WORKER_ENV}={spec!r}: index out of range")
        return cls(index, count, input_port, http_fd)

    def input_socket(self, host: str) -> socket.socket:
        """This worker's own listening socket on the shared Forward port."""
        return port_socket(host, self.input_port, listen=True)

    def http_socket(self) -> socket.socket:
        """This worker's own status socket on 127.0.0.1 (its supervisor scrapes it)."""
        return socket.socket(fileno=self.http_fd)


LISTEN_BACKLOG = 1024


def port_socket(host: str, port: int, *, listen: bool) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` (listening if ``listen``):
    every worker's and the supervisor's, so that they share the port."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its supervisor dies.

    A supervisor killed outright (OOM, SIGKILL) must not leave workers holding the port and
    the spool locks, or its replacement could open neither. Checked once more after the
    call: the parent may have died before it.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    expected = os.environ.get(PARENT_ENV)
    if expected and int(expected) != os.getppid():
        os._exit(1)


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota
    (a pod's ``resources.limits.cpu``), at least 1."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit visible: the affinity is the answer
    return max(1, cores)


def worker_count(configured: int) -> int:
    """``workers`` as configured, 0 meaning :func:`available_cores`."""
    return configured if configured > 0 else available_cores()


def worker_spool_dir(directory: str | Path, index: int) -> Path:
    """The folder that holds worker ``index``'s ``tenants/`` (see the module docstring)."""
    return Path(directory) if index == 0 else Path(directory) / f"worker-{index}"


def worker_spool_settings(
    settings: AggregatorSpoolSettings, slot: WorkerSlot
) -> AggregatorSpoolSettings:
    """Worker ``slot``'s spool settings: its own folder and an even share of the budgets."""
    share = settings.max_bytes // slot.count
    tenant_share = settings.tenant_max_bytes // slot.count
    if tenant_share < 2 * settings.segment_max_bytes:
        raise ConfigError(
            f"spool.tenant_max_bytes split over {slot.count} workers leaves {tenant_share} "
            f"bytes each, less than two segments of spool.segment_max_bytes "
            f"({settings.segment_max_bytes}): raise tenant_max_bytes, lower "
            "segment_max_bytes or set fewer workers"
        )
    return settings.model_copy(
        update={
            "directory": worker_spool_dir(settings.directory, slot.index),
            "max_bytes": share,
            "tenant_max_bytes": tenant_share,
        }
    )


def worker_input_settings(settings: ForwardInputSettings, slot: WorkerSlot) -> ForwardInputSettings:
    """Worker ``slot``'s share of the input limits that hold for the pod as a whole: the
    connection caps (one address still cannot hold more than its cap across the workers;
    the kernel's split by address may refuse one a little early on a busy worker) and the
    room for messages being received (never below one message)."""
    return settings.model_copy(
        update={
            "max_connections": max(1, settings.max_connections // slot.count),
            "max_connections_per_source": max(1, settings.max_connections_per_source // slot.count),
            "buffer_budget_bytes": max(
                settings.max_message_bytes, settings.buffer_budget_bytes // slot.count
            ),
        }
    )


def orphaned_spool_dirs(directory: str | Path, slot: WorkerSlot | None) -> list[Path]:
    """Folders of workers beyond the current count that this worker (or the only process,
    for ``None``) drains."""
    index, count = (slot.index, slot.count) if slot is not None else (0, 1)
    root = Path(directory)
    if not root.is_dir():
        return []
    found: list[Path] = []
    for name in sorted(os.listdir(root)):
        match = _WORKER_DIR.match(name)
        if match is None:
            continue
        number = int(match.group(1))
        if number >= count and number % count == index:
            found.append(root / name)
    return found
