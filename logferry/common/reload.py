"""Live reload of a daemon's config: on SIGHUP, or when the file or a file it names changes.

The file is read and validated exactly as at start. Each key that changed is either one the
daemon applies live (credentials, TLS certificates and keys, the log, limits, endpoints) or
one only a restart can apply (a listen port, the spool directory). The live ones are
*prepared* first (secrets read, TLS contexts built, as at start) and then committed together;
if anything fails, nothing is committed and the config in force stays (last known good). The
others are refused: each is named in a warning, ``logferry_config_restart_pending`` is 1, and
the daemon keeps running on the values it started with, so a file that mixes a certificate
rotation with a new port still gets its certificate in.

The watch polls ``stat`` of the config file and of every file it names (key files,
certificates), following symlinks: Kubernetes updates a mounted ConfigMap or Secret by
swapping a symlink, and cert-manager rewrites the files of its Secret in place; either way
the inode or the modification time changes.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from logferry.common.config import load_config
from logferry.common.errors import ConfigError, OutputError
from logferry.common.events import first_set
from logferry.common.logs import get_logger
from logferry.common.metrics import counter, gauge

__all__ = [
    "Commit",
    "ConfigReloader",
    "LivePolicy",
    "changed_paths",
    "merged",
]

log = get_logger(__name__)

M = TypeVar("M", bound=BaseModel)
Commit = Callable[[], None]
"""Puts a prepared config in force; must not fail (everything that can was done before)."""

# What preparing a config may raise: refused as a whole, the config in force kept.
_PREPARE_ERRORS = (ConfigError, OutputError, OSError, ssl.SSLError, ValueError)
_FileState = tuple[int, int, int, int] | None


@dataclass(frozen=True)
class LivePolicy(Generic[M]):
    """What of a daemon's config can change without a restart, and how to apply it."""

    live_keys: tuple[str, ...]
    """Key paths (a section or a leaf) applied live; any other change needs a restart."""
    files: Callable[[M], Iterable[Path | None]]
    """The files a config names whose *content* is applied live (keys, certificates)."""
    prepare: Callable[[M], Commit]
    """Reads and checks everything ``config`` needs (raises to refuse it); the commit."""
    restart_only: Callable[[M, M], Iterable[str]] = lambda _old, _new: ()
    """Keys (or sections) among the live ones whose change still needs a restart this time
    (say, turning TLS on where the listener was started without it)."""

    def is_live(self, path: str, old: M, new: M) -> bool:
        """Whether a change at ``path`` from ``old`` to ``new`` can be applied live."""
        return _covered(path, self.live_keys) and not _covered(
            path, tuple(self.restart_only(old, new))
        )


def _covered(path: str, keys: Iterable[str]) -> bool:
    return any(path == key or path.startswith((f"{key}.", f"{key}[")) for key in keys)


def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The key paths where two dumped configs differ (mappings compared key by key, lists
    and values whole)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                out.append(path)
            else:
                out.extend(changed_paths(old[key], new[key], path))
        return out
    return [] if old == new else [prefix]


def merged(old: Mapping[str, Any], new: Mapping[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """``old`` with the values ``new`` has at ``paths`` (a path missing from ``new`` is
    removed)."""
    out: dict[str, Any] = _copy(old)
    for path in paths:
        parts = path.split(".")
        source: Any = new
        for part in parts[:-1]:
            source = source.get(part, {}) if isinstance(source, Mapping) else {}
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        if isinstance(source, Mapping) and parts[-1] in source:
            target[parts[-1]] = _copy(source[parts[-1]])
        else:
            target.pop(parts[-1], None)
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _state(path: Path) -> _FileState:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class ReloadMetrics:
    """The reloads of one process's config."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reloads = counter(
            registry,
            "config_reloads",
            "Config reloads by outcome: applied, or refused (the file or what it names was "
            "invalid; the config in force was kept).",
            ("outcome",),
        )
        for outcome in ("applied", "refused"):
            self.reloads.labels(outcome)
        self.last_ok = gauge(
            registry,
            "config_last_reload_successful",
            "1 if the last reload was applied (or none was tried), 0 if it was refused.",
        )
        self.last_ok_time = gauge(
            registry,
            "config_last_reload_success_timestamp_seconds",
            "When the config in force was loaded (at start, or by the last applied reload).",
        )
        self.pending = gauge(
            registry,
            "config_restart_pending",
            "1 while the config file holds changes only a restart can apply.",
        )


class ConfigReloader(Generic[M]):
    """Re-reads ``path`` on :meth:`request` (SIGHUP) or when a watched file changes, and
    applies what ``policy`` allows. ``current`` is the config in force."""

    def __init__(
        self,
        path: Path,
        model: type[M],
        current: M,
        policy: LivePolicy[M],
        registry: CollectorRegistry,
        *,
        watch_interval_s: Callable[[M], float],
    ) -> None:
        self.path = path
        self.model = model
        self.current = current
        self.policy = policy
        self._interval = watch_interval_s
        self._asked = asyncio.Event()
        self._lock = asyncio.Lock()
        self._seen = self._fingerprint(current)
        self.metrics = ReloadMetrics(registry)
        self.metrics.last_ok.set(1)
        self.metrics.last_ok_time.set(time.time())

    def request(self) -> None:
        """Reload as soon as possible (SIGHUP)."""
        self._asked.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Reload on request, or when a watched file changes, until ``stop``."""
        while not stop.is_set():
            interval = self._interval(self.current)
            woke = await first_set((stop, self._asked), interval if interval > 0 else None)
            if woke is stop:
                return
            if woke is self._asked:
                self._asked.clear()
                await self.reload("signal")
            elif self._fingerprint(self.current) != self._seen:
                await self.reload("file changed")

    def _fingerprint(self, config: M) -> tuple[_FileState, ...]:
        paths = [self.path, *(p for p in self.policy.files(config) if p is not None)]
        return tuple(_state(Path(p)) for p in paths)

    async def reload(self, why: str) -> bool:
        """Read, check and apply the file now; True when a config was applied."""
        async with self._lock:
            # Files are read off the event loop; the commit runs on it, like the code it
            # changes under.
            prepared = await asyncio.to_thread(self._prepare, why)
            if prepared is None:
                return False
            effective, commit, live, restart = prepared
            try:
                commit()
            except Exception as exc:  # a bug, not a bad file: say so loudly, keep serving
                log.exception("config.reload_failed", file=str(self.path), trigger=why)
                self._refused(why, _reason(exc))
                return False
            self.current = effective
            self._seen = self._fingerprint(effective)
            self.metrics.reloads.labels("applied").inc()
            self.metrics.last_ok.set(1)
            self.metrics.last_ok_time.set(time.time())
            self.metrics.pending.set(1 if restart else 0)
            log.info("config.reloaded", file=str(self.path), trigger=why, changed=live)
            if restart:
                log.warning(
                    "config.restart_required",
                    file=str(self.path),
                    keys=restart,
                    why="these keys cannot change while the daemon runs; the values it "
                    "started with stay in force until it restarts",
                )
            return True

    def _prepare(self, why: str) -> tuple[M, Commit, list[str], list[str]] | None:
        """The new config in force-to-be, its commit, the keys applied live and the keys
        refused for a restart; None (refused, logged and counted) if it cannot be used."""
        old = self.current
        self._seen = self._fingerprint(old)
        try:
            new = load_config(self.path, self.model)
        except ConfigError as exc:
            self._refused(why, str(exc))
            return None
        old_dump = old.model_dump(mode="json")
        new_dump = new.model_dump(mode="json")
        changed = changed_paths(old_dump, new_dump)
        live = [p for p in changed if self.policy.is_live(p, old, new)]
        restart = [p for p in changed if p not in live]
        try:
            effective = (
                new if not restart else self.model.model_validate(merged(old_dump, new_dump, live))
            )
            return effective, self.policy.prepare(effective), live, restart
        except _PREPARE_ERRORS as exc:
            self._refused(why, _reason(exc))
            return None

    def _refused(self, why: str, reason: str) -> None:
        self.metrics.reloads.labels("refused").inc()
        self.metrics.last_ok.set(0)
        log.warning(
            "config.reload_refused",
            file=str(self.path),
            trigger=why,
            reason=reason,
            kept="the config in force (last known good)",
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConfigError | OutputError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"
