"""Which container log files exist: a glob, watched with inotify, rescanned as a safety net.

kubelet keeps ``/var/log/containers/<pod>_<ns>_<container>-<id>.log`` as symlinks into
``/var/log/pods/...``; a scan follows them and reports the target's device, inode and size,
which is what positions are keyed on. Discovery only says *which* files exist now; noticing
that a target was rotated behind an unchanged link is the tailer's job: a rename inside
/var/log/pods raises no event here, so the tail loop asks for a scan (``request_scan``) when a
file it has read to the end is no longer what its link points to, and the periodic rescan
reports the new inode anyway.

Batch-oriented: every change (inotify burst or timer) leads to one full scan and one
``on_change(found)`` call with the complete current set, never a call per event.

kubelet's own layout (``source.pods_glob``, ``/var/log/pods/*/*/*.log`` by default) is read
directly as well, for runtimes that keep no links; a file found both ways is reported once,
through its link. A matching file whose name attributes it to no container is counted
(``not_container``) and logged once: nothing the forwarder was pointed at is skipped in
silence.

A link is reported only if its target is that container's own log under the pods root
(:mod:`.pathguard`); the others are *refused*: counted in ``logferry_files_skipped_total``
by reason and logged once at warning, not at every rescan (again only if the link
changes, or after it was accepted or gone in between).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import glob
import os
import stat
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from logferry.common.events import first_set
from logferry.common.logs import get_logger
from logferry.common.metrics import count_and_log
from logferry.forwarder.config import SourceSettings
from logferry.forwarder.metadata import (
    ContainerMeta,
    excluded,
    parse_file_name,
    parse_pod_path,
)
from logferry.forwarder.metrics import ForwarderMetrics
from logferry.forwarder.pathguard import RefusalReason, check_target, pods_root

log = get_logger(__name__)

SkipReason = Literal["not_container", "excluded", "dangling"] | RefusalReason
"""Why a path matching the globs is not reported. ``excluded`` (the config says so) and
``dangling`` (a link whose target is gone, as during every rotation) are routine;
``not_container`` (a name that says no namespace, pod and container) and the refusals are
counted in ``logferry_files_skipped_total`` and logged once."""

OnChange = Callable[[dict[str, "FoundFile"]], Awaitable[None]]

# inotify events that change the set of names; modify/open/close do not.
_SET_CHANGING = frozenset({"created", "deleted", "moved"})
# While the watched directory does not exist, look for it at least this often.
_MISSING_DIR_RETRY_S = 1.0
# A burst ends after this much quiet...
DEBOUNCE_S = 0.1
# ...or after this long, so a directory that never stops changing is still rescanned.
DEBOUNCE_MAX_S = 1.0


@dataclass(frozen=True, slots=True)
class FoundFile:
    """One container log file as found by a scan."""

    path: str
    """The path that matched the glob (usually kubelet's symlink)."""
    real_path: str
    """The file the link resolves to (``/var/log/pods/<ns>_<pod>_<uid>/<container>/0.log``)."""
    stat: os.stat_result
    """``os.stat`` of the target, taken during the scan."""
    meta: ContainerMeta
    """Kubernetes metadata from the file name."""
    plain: bool = False
    """A plain text file of ``source.files`` (not a container's log)."""

    @property
    def device(self) -> int:
        return self.stat.st_dev

    @property
    def inode(self) -> int:
        return self.stat.st_ino

    @property
    def size(self) -> int:
        return self.stat.st_size


@dataclass(slots=True)
class ScanStats:
    """What the last scan skipped, by reason, and how many scans ran (for gauges/tests)."""

    scans: int = 0
    found: int = 0
    skipped: dict[SkipReason, int] = field(default_factory=dict)


def watch_root(path_glob: str) -> tuple[str, bool]:
    """The directory to watch for ``path_glob`` and whether the watch must be recursive
    (when a wildcard appears in a directory part, e.g. ``/var/log/pods/*/*/0.log``)."""
    directory = os.path.dirname(path_glob) or "."
    parts = directory.split(os.sep)
    fixed: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            return os.sep.join(fixed) or os.sep, True
        fixed.append(part)
    return directory, False


class _Handler(FileSystemEventHandler):
    """Runs on the observer thread: filters events and pokes the loop, nothing else."""

    def __init__(self, pattern: str, poke: Callable[[], None]) -> None:
        self._pattern = pattern
        self._poke = poke

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _SET_CHANGING:
            return
        # fnmatch's `*` also matches `/`, so this is a superset of what glob matches.
        paths = (os.fsdecode(event.src_path), os.fsdecode(event.dest_path or b""))
        if any(p and fnmatch.fnmatchcase(p, self._pattern) for p in paths):
            self._poke()


class Discovery:
    """Finds the container log files matching ``settings.path_glob`` and reports changes.

    ``scan()`` is synchronous and may be called from any thread; ``run()`` owns the watchdog
    observer thread and stops and joins it before it returns, however it ends.
    """

    def __init__(
        self,
        settings: SourceSettings,
        host: str,
        *,
        use_inotify: bool = True,
        metrics: ForwarderMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._host = host
        self._use_inotify = use_inotify
        self._root, self._recursive = watch_root(settings.path_glob)
        self.pods_root = pods_root(settings.pods_root_path)
        """The resolved pods root every target must lie under."""
        self.docker_root = (
            pods_root(settings.docker_root) if settings.docker_root is not None else None
        )
        """The resolved docker json-file root (cri-dockerd), or None."""
        self.skipped = (metrics if metrics is not None else ForwarderMetrics()).files_skipped
        self._refused: dict[str, tuple[RefusalReason, str]] = {}  # link -> (reason, target)
        self._unknown: set[str] = set()  # skipped paths (not refusals) already warned about
        self._refused_lock = threading.Lock()
        self.stats = ScanStats()
        self._observer: BaseObserver | None = None
        self._watched: tuple[int, int] | None = None  # (st_dev, st_ino) of the watched dir
        self._dirty: asyncio.Event | None = None

    def scan(self) -> dict[str, FoundFile]:
        """The files matching the glob now, keyed by the matched path, in sorted order."""
        s = self._settings
        self.pods_root = root = pods_root(s.pods_root_path)
        found: dict[str, FoundFile] = {}
        skipped: dict[SkipReason, int] = {}
        paths = sorted(glob.glob(s.path_glob, recursive=self._recursive))
        pods_glob = s.pods_glob_path
        direct = set(glob.glob(pods_glob)) if pods_glob else set()
        paths = sorted(set(paths) | direct)
        linked = {os.path.realpath(p) for p in paths if p not in direct}
        for path in paths:
            reason: SkipReason | None = None
            if path in direct:
                if path in linked or os.path.realpath(path) in linked:
                    continue  # found through its link too: one file, read (or refused) once
                meta = parse_pod_path(path, self._host)
            else:
                meta = parse_file_name(path, self._host)
            if meta is None:
                reason = "not_container"
                self._skipped_once(
                    path,
                    reason,
                    "discovery.file_unattributable",
                    "the name is not kubelet's <pod>_<namespace>_<container>-<64 hex id>.log "
                    "nor .../<namespace>_<pod>_<uid>/<container>/<n>.log: no tenant to route "
                    "it to",
                )
            elif excluded(meta, s.exclude_namespaces, s.exclude_pods, s.exclude_containers):
                reason = "excluded"
            else:
                reason = self._judge(path, root, meta, found)
            if reason is not None:
                skipped[reason] = skipped.get(reason, 0) + 1
        plain_paths = self._plain_files(found, skipped)
        with self._refused_lock:  # a link that is gone is forgotten: it warns again if back
            live = set(paths) | plain_paths
            self._refused = {k: v for k, v in self._refused.items() if k in live}
            self._unknown &= live
        self.stats.scans += 1
        self.stats.found = len(found)
        self.stats.skipped = skipped
        return found

    def _plain_files(self, found: dict[str, FoundFile], skipped: dict[SkipReason, int]) -> set[str]:
        """The files of ``source.files``: regular files, their symlinks followed (the platform
        chose these paths, not a tenant), attributed to their configured tenant; the paths
        the globs matched."""
        matched: set[str] = set()
        for plain in self._settings.files:
            for path in sorted(glob.glob(plain.glob)):
                matched.add(path)
                if path in found:
                    continue
                real = os.path.realpath(path)
                meta = ContainerMeta(
                    plain.tenant, os.path.basename(path), plain.name, "", self._host
                )
                try:
                    st = os.stat(real, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    skipped["dangling"] = skipped.get("dangling", 0) + 1
                    continue
                if not stat.S_ISREG(st.st_mode):
                    skipped["not_regular"] = skipped.get("not_regular", 0) + 1
                    self._skipped_once(
                        path,
                        "not_regular",
                        "discovery.file_not_regular",
                        "a source.files glob matched something that is not a regular file "
                        "(a folder, a FIFO, a device): not read",
                    )
                    continue
                found[path] = FoundFile(path, real, st, meta, plain=True)
        return matched

    def _judge(
        self, path: str, root: str, meta: ContainerMeta, found: dict[str, FoundFile]
    ) -> SkipReason | None:
        """Add ``path`` to ``found`` if its target may be read, else say why not."""
        # Resolved and judged before anything is stat'ed through the link.
        real = os.path.realpath(path)
        refusal = check_target(real, root, meta, self.docker_root)
        if refusal is None:
            outcome = self._stat(path, real, meta, found)
            if outcome == "dangling":
                return outcome
            refusal = outcome
        if refusal is not None:
            self.refuse(path, refusal, real, meta)
        return refusal

    @staticmethod
    def _stat(
        path: str, real: str, meta: ContainerMeta, found: dict[str, FoundFile]
    ) -> RefusalReason | Literal["dangling"] | None:
        try:
            st = os.stat(real, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return "dangling"  # the target was rotated away (or never was)
        if stat.S_ISLNK(st.st_mode):
            return "symlink"  # swapped in since it was resolved
        if not stat.S_ISREG(st.st_mode):
            return "not_regular"
        found[path] = FoundFile(path, real, st, meta)
        return None

    def _skipped_once(self, path: str, reason: SkipReason, event: str, detail: str) -> None:
        """A file the globs match that is not read (no container to attribute it to, not a
        regular file): counted and logged once while it stays, never skipped in silence."""
        with self._refused_lock:
            if path in self._unknown:
                return
            self._unknown.add(path)
        count_and_log(
            self.skipped,
            log,
            event,
            labels={"reason": reason},
            path=path,
            detail=detail,
        )

    def refuse(self, link: str, reason: RefusalReason, target: str, meta: ContainerMeta) -> None:
        """Count and log a refused file, once while its link keeps the same target and reason
        (the scan calls this, and the tailer when the open itself refuses the file)."""
        with self._refused_lock:
            if self._refused.get(link) == (reason, target):
                return
            self._refused[link] = (reason, target)
        count_and_log(
            self.skipped,
            log,
            "discovery.file_refused",
            labels={"reason": reason},
            namespace=meta.namespace_name,
            pod=meta.pod_name,
            container=meta.container_name,
            link=link,
            target=target,
            pods_root=self.pods_root,
        )

    def accepted(self, link: str) -> None:
        """``link``'s file was opened: a later refusal of it is a new one, logged again."""
        with self._refused_lock:
            self._refused.pop(link, None)

    async def run(self, on_change: OnChange, stop: asyncio.Event) -> None:
        """Call ``on_change`` with a fresh scan now, after each burst of inotify events in
        the watched directory, and every ``rescan_interval_s``, until ``stop`` is set.

        An exception from ``on_change`` ends the run (after the observer is joined).
        """
        loop = asyncio.get_running_loop()
        dirty = self._dirty = asyncio.Event()
        try:
            while not stop.is_set():
                if self._use_inotify:
                    self._ensure_watch(loop)
                dirty.clear()  # events from here on lead to another scan
                found = await asyncio.to_thread(self.scan)
                log.debug("discovery.scanned", found=len(found), skipped=dict(self.stats.skipped))
                await on_change(found)
                interval = self._settings.rescan_interval_s
                if self._use_inotify and self._observer is None:
                    interval = min(interval, _MISSING_DIR_RETRY_S)
                if await first_set((dirty, stop), interval) is dirty:
                    await self._settle(dirty, stop)
        finally:
            self._stop_watch()
            self._dirty = None

    def request_scan(self) -> None:
        """Scan again soon (debounced), e.g. because a tailed file was rotated behind its link,
        which no inotify event here reports."""
        if self._dirty is not None:
            self._dirty.set()

    async def _settle(self, dirty: asyncio.Event, stop: asyncio.Event) -> None:
        """Wait until the burst has been quiet for DEBOUNCE_S (at most DEBOUNCE_MAX_S)."""
        deadline = asyncio.get_running_loop().time() + DEBOUNCE_MAX_S
        while not stop.is_set():
            dirty.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or await first_set((dirty, stop), min(DEBOUNCE_S, left)) is None:
                return

    def _poke_threadsafe(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        def poke() -> None:
            dirty = self._dirty
            if dirty is not None:
                dirty.set()

        def from_thread() -> None:
            # RuntimeError: the loop closed under a late event; there is nobody to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(poke)

        return from_thread

    def _ensure_watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start watching the directory if it exists; re-watch if it was replaced."""
        try:
            st = os.stat(self._root)
        except OSError:
            current = None
        else:
            current = (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None
        if self._observer is not None and current == self._watched:
            return
        self._stop_watch()
        if current is None:
            return
        observer = Observer()
        handler = _Handler(self._settings.path_glob, self._poke_threadsafe(loop))
        try:
            observer.schedule(handler, self._root, recursive=self._recursive)
            observer.start()
        except OSError as exc:  # removed between stat and watch, or out of inotify watches
            log.warning("discovery.watch_failed", error=type(exc).__name__, detail=str(exc))
            _join(observer)
            return
        self._observer, self._watched = observer, current
        log.info("discovery.watching", directory=self._root, recursive=self._recursive)

    def _stop_watch(self) -> None:
        observer, self._observer, self._watched = self._observer, None, None
        if observer is not None:
            _join(observer)


def _join(observer: BaseObserver) -> None:
    # stop() closes the inotify fd, so the emitter threads end promptly; the observer joins
    # them before its own thread ends.
    observer.stop()
    if observer.is_alive():
        observer.join()
