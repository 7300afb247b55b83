"""Full disks: telling ENOSPC/EDQUOT apart, pausing the writer that hit one, saying so once.

A write that fails because its volume (or its owner's quota) is full is not a reason to
crash: space comes back when the stage after the spool delivers and segments are deleted, or
when an operator cleans up. The writer keeps what it holds, waits with backoff and tries
again, and the stage before it waits meanwhile (backpressure). :class:`DiskStalls` turns
each stall into one warning and a metric, however many retries it takes.

Also here: the check, when a spool opens, that its volume is large enough to be useful.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

from prometheus_client import CollectorRegistry

from logferry.common import metrics
from logferry.common.backoff import backoff_delay
from logferry.common.logs import get_logger
from logferry.common.metrics import count_and_log

__all__ = [
    "DEFAULT_STALLS",
    "SMALL_VOLUME_SEGMENTS",
    "DiskStalls",
    "StallKind",
    "check_volume",
    "is_disk_full",
    "stall_delay",
    "until_room",
    "volume_of",
]

log = get_logger(__name__)
_T = TypeVar("_T")

StallKind = Literal["spool", "positions", "parked"]
"""What was being written: the value of the ``kind`` label."""

_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_STALL_FIRST_S = 0.05
_STALL_MAX_S = 2.0
SMALL_VOLUME_SEGMENTS = 4
"""A spool volume smaller than this many segments earns a warning at open."""
SAME_STALL_WITHIN_S = 60.0
"""A stall that begins again this soon after the last one ended is still that stall."""

# One warning per filesystem and process: an aggregator opens a spool per tenant.
_warned_devices: set[int] = set()
_warned_lock = threading.Lock()


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the volume or the quota is full (retry later, do not crash)."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def stall_delay(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1, 2, ...) of a write that found no space.

    Short at first (a neighbour's commit may free a segment at any moment), at most 2 s so
    that a resume after an operator frees space is quick; a failed retry costs one syscall.
    """
    return backoff_delay(attempt - 1, _STALL_FIRST_S, _STALL_MAX_S, jitter="none")


class DiskStalls:
    """Writes waiting for disk space, by kind and volume; one warning and one count per stall.

    An *owner* (a spool directory, the positions file) has *sites* (segment data, the commit
    file) that write to one *volume*. A stall of a kind on a volume begins with the first
    failed site there and ends when none is failing any more; one that begins again within
    :data:`SAME_STALL_WITHIN_S` of its end is the same stall (writers sharing a volume take
    turns at the few pages a truncated attempt frees: that is no news). Exported as
    ``logferry_disk_full{kind}`` (volumes where writes of that kind wait now) and
    ``logferry_disk_full_stalls_total{kind}`` when built with the daemon's registry; the
    process-wide :data:`DEFAULT_STALLS` keeps its metrics private but still logs.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.stalls = metrics.counter(
            registry,
            "disk_full_stalls",
            "Writes paused because their volume or quota was full (ENOSPC/EDQUOT), counted "
            "once per stall of a volume. Nothing is dropped: the writer retries with backoff "
            "and the stage before it waits.",
            ("kind",),
        )
        self.full = metrics.gauge(
            registry,
            "disk_full",
            "Volumes where writes of this kind wait for disk space now (0: none).",
            ("kind",),
        )
        self._lock = threading.Lock()
        self._failing: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._since: dict[tuple[str, str], float] = {}
        self._ended: dict[tuple[str, str], float] = {}

    def failed(
        self, kind: StallKind, owner: str, site: str, exc: OSError, *, volume: str = ""
    ) -> bool:
        """A write of ``owner`` at ``site`` on ``volume`` (default: the owner's own) found
        no space; True if that began a new stall (counted and logged)."""
        key = (kind, volume or owner)
        now = time.monotonic()
        with self._lock:
            sites = self._failing.setdefault(key, set())
            began = not sites
            sites.add((owner, site))
            if not began:
                return False
            self._since[key] = now
            self.full.labels(kind).set(self._count(kind))
            ended = self._ended.get(key)
            new = ended is None or now - ended > SAME_STALL_WITHIN_S
        if not new:
            log.debug("disk.full_again", kind=kind, owner=owner, site=site)
            return False
        count_and_log(
            self.stalls,
            log,
            "disk.full",
            labels={"kind": kind},
            owner=owner,
            site=site,
            volume=volume or owner,
            error=os.strerror(exc.errno) if exc.errno else str(exc),
            action="paused; retrying with backoff until space returns",
        )
        return True

    def succeeded(self, kind: StallKind, owner: str, site: str, *, volume: str = "") -> None:
        """A write of ``owner`` at ``site`` went through; ends the stall if it was the last."""
        key = (kind, volume or owner)
        with self._lock:
            sites = self._failing.get(key)
            if sites is None or (owner, site) not in sites:
                return
            sites.discard((owner, site))
            if sites:
                return
            waited = self._end(key, kind)
        log.info("disk.space_back", kind=kind, owner=owner, waited_s=round(waited, 3))

    def clear(self, kind: StallKind, owner: str, *, volume: str = "") -> None:
        """Forget ``owner`` (it closed): it waits for nothing any more."""
        key = (kind, volume or owner)
        with self._lock:
            sites = self._failing.get(key)
            if sites is None:
                return
            for item in [item for item in sites if item[0] == owner]:
                sites.discard(item)
            if not sites:
                self._end(key, kind)

    def stalled(self, kind: StallKind | None = None, owner: str | None = None) -> bool:
        """Whether anything (of ``kind``, of ``owner``) is waiting for space now."""
        with self._lock:
            return any(
                (kind is None or k == kind) and (owner is None or any(o == owner for o, _ in s))
                for (k, _volume), s in self._failing.items()
                if s
            )

    def _end(self, key: tuple[str, str], kind: str) -> float:
        """Close the stall of ``key`` (lock held); returns how long it lasted."""
        del self._failing[key]
        now = time.monotonic()
        self._ended[key] = now
        self.full.labels(kind).set(self._count(kind))
        return now - self._since.pop(key, now)

    def _count(self, kind: str) -> int:
        return sum(1 for (k, _volume), sites in self._failing.items() if k == kind and sites)


DEFAULT_STALLS = DiskStalls()
"""Shared by the spools of a process that were given none (an aggregator's tenant spools),
so that one full volume is one stall, not one per tenant."""


def volume_of(path: str | os.PathLike[str]) -> str:
    """``major:minor`` of the filesystem holding ``path`` (its nearest existing folder)."""
    path = os.fspath(path)
    while True:
        try:
            dev = os.stat(path).st_dev
        except OSError:
            parent = os.path.dirname(path) or "."
            if parent == path:
                return ""
            path = parent
            continue
        return f"{os.major(dev)}:{os.minor(dev)}"


async def until_room(stalls: DiskStalls, path: str, site: str, fn: Callable[[str], _T]) -> _T:
    """``fn(path)`` in a worker thread, retried with backoff while it fails because the
    volume is full (an OSError, or an error caused by one), reported as a spool stall."""
    attempt = 0
    while True:
        try:
            result = await asyncio.to_thread(fn, path)
        except Exception as exc:
            cause = exc if isinstance(exc, OSError) else exc.__cause__
            if not isinstance(cause, OSError) or not is_disk_full(cause):
                raise
            attempt += 1
            stalls.failed("spool", path, site, cause, volume=volume_of(path))
            await asyncio.sleep(stall_delay(attempt))
            continue
        if attempt:
            stalls.succeeded("spool", path, site, volume=volume_of(path))
        return result


def check_volume(directory: str, *, segment_max_bytes: int, max_bytes: int) -> int | None:
    """Size in bytes of the filesystem holding ``directory`` (None if unknown), with a warning,
    once per filesystem, when it is too small for the spool configured on it.

    Smaller than a few segments: space is freed a whole segment at a time, so most of such a
    volume can be held by records already delivered, waiting for their segment to be sealed.
    Smaller than ``max_bytes``: the volume, not the cap, is the limit, and reaching it pauses
    writers on ENOSPC instead of the cap's cleaner backpressure.
    """
    try:
        st = os.statvfs(directory)
        device = os.stat(directory).st_dev
    except OSError:
        return None
    total = int(st.f_blocks) * int(st.f_frsize)
    problems = []
    if total < SMALL_VOLUME_SEGMENTS * segment_max_bytes:
        problems.append(f"smaller than {SMALL_VOLUME_SEGMENTS} segments")
    if total < max_bytes:
        problems.append("smaller than spool.max_bytes")
    if problems:
        with _warned_lock:
            first = device not in _warned_devices
            _warned_devices.add(device)
        if first:
            log.warning(
                "spool.volume_small",
                directory=directory,
                volume_bytes=total,
                segment_max_bytes=segment_max_bytes,
                max_bytes=max_bytes,
                problem="; ".join(problems),
                hint="give the spool a volume of at least max_bytes and several segments, "
                "or lower spool.max_bytes and spool.segment_max_bytes",
            )
    return total
