"""The forwarder daemon: discovery -> tails -> node spool -> sender, with positions that trail
durability.

The order of one round is the invariant of guarantee 2: read a file, append its
records to the spool (``append`` returns only once they are fsynced), and only then move that
file's position to the reader's checkpoint. The sender commits spool batches only after an
aggregator acked them. A kill at any instant can therefore only make something be read or
sent again, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import ssl
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from logferry.common.disk_full import DiskStalls
from logferry.common.errors import SpoolFullError
from logferry.common.events import first_set, unless_stopped
from logferry.common.logs import get_logger
from logferry.common.metrics import count_and_log
from logferry.common.reload import ConfigReloader
from logferry.common.spool import Spool
from logferry.common.status_http import StatusServer
from logferry.forwarder.checkpoints import CheckpointBook, CheckpointState, Mark, checkpoint_entry
from logferry.forwarder.config import ForwarderConfig
from logferry.forwarder.discovery import Discovery, FoundFile
from logferry.forwarder.enrich import enriched, excluded_by_annotation, pod_uid
from logferry.forwarder.entries import encode_blocks, kubernetes_raw
from logferry.forwarder.lost import count_lost_lines
from logferry.forwarder.metadata import parse_file_name
from logferry.forwarder.metrics import ForwarderMetrics
from logferry.forwarder.multiline_rules import RuleBook
from logferry.forwarder.parking import Parking
from logferry.forwarder.pathguard import RefusedFileError, check_target, open_pod_log
from logferry.forwarder.podwatch import ApiAccess, PodCache, PodInfo, PodWatcher
from logferry.forwarder.positions import (
    PositionStore,
    Resolution,
    SourceState,
    fingerprint,
    resolve,
)
from logferry.forwarder.positions_saver import PositionsSaver
from logferry.forwarder.reload import forwarder_policy
from logferry.forwarder.sender import Sender
from logferry.forwarder.tail import FileTail, TailBatch, TailStatus

log = get_logger(__name__)
Key = tuple[int, int]
POSITIONS_SAVE_INTERVAL_S = 0.5
# kubelet's (and containerd's) rotated name for a container log: 0.log.20261130-025749; the
# compressed ones (.gz) are not read.
_ROTATED = re.compile(r"^\d+\.log\.\d{8}-\d{6}\Z")
IDLE_ROUNDS_TO_RELEASE = 2
_STOP_POLL_S = 0.1
# Checkpoints per spool append: an interval's go in one append on any node (a few hundred
# containers), in a few on a larger one, each far below the spool's append size.
_CHECKPOINTS_PER_APPEND = 1000


class Forwarder:
    """One forwarder process. ``run`` returns when ``stop`` is set and shutdown is done."""

    def __init__(self, config: ForwarderConfig, config_path: Path | None = None) -> None:
        """``config_path``: the file ``config`` came from, reloaded on SIGHUP and when it (or a
        key or CA file it names) changes; None: no reloads."""
        self.config = config
        self._wake = asyncio.Event()
        # Read first: a missing or empty key file refuses the start (ConfigError).
        self._shared_key = config.sender.read_shared_key()
        self.registry = CollectorRegistry()
        self.metrics = ForwarderMetrics(self.registry)
        self.metrics.spool_capacity.set(config.spool.max_bytes)
        self.stalls = DiskStalls(self.registry)
        # When the last run last saved its positions: a rotated file written after that, and
        # known to nobody, was born while no forwarder ran (None: a first start).
        self._started_at = time.time()
        try:
            self._down_since: float | None = os.stat(config.positions_path).st_mtime
        except OSError:
            self._down_since = None
        self.positions = PositionStore(config.positions_path)
        self._positions_saver = PositionsSaver(self.positions, self.stalls)
        self.discovery = Discovery(config.source, config.node_name, metrics=self.metrics)
        self.rules = RuleBook(config.multiline)
        self._reload_rules()
        settings = config.kubernetes
        self.pods: PodCache | None = None
        self.pod_watcher: PodWatcher | None = None
        self.namespaces: PodCache | None = None
        self.namespace_watcher: PodWatcher | None = None
        if settings.enabled:
            self.pods = PodCache(max_pods=settings.max_pods)
            access = ApiAccess(settings.resolved_url(), settings.token_file, settings.ca_file)
            self.pod_watcher = PodWatcher(
                access, config.node_name, self.pods, on_change=self._wake.set
            )
            if settings.namespace_labels:
                self.namespaces = PodCache(max_pods=100_000, deleted_ttl_s=0)
                self.namespace_watcher = PodWatcher(
                    access,
                    config.node_name,
                    self.namespaces,
                    on_change=self._wake.set,
                    resource="namespaces",
                )
        # Files whose pod metadata is not in yet: key -> (pod uid, deadline to wait until).
        self._awaiting: dict[Key, tuple[str, float]] = {}
        self._enriched: dict[Key, tuple[PodInfo | None, PodInfo | None]] = {}
        self._excluded: set[Key] = set()
        # Sources opened since the last save of the position file. Their first lines do not
        # enter the spool before the file knows them: killed then, and rotated before the
        # restart, such a file would be found by nobody (its name is gone from the glob and
        # its inode from the file) and the rest of its lines never read.
        self._unsaved: set[Key] = set()
        self.parking = Parking(config.parked_path, metrics=self.metrics, stalls=self.stalls)
        self._tails: dict[Key, FileTail] = {}
        self._live: set[Key] = set()
        self._idle_rounds: dict[Key, int] = {}
        self._checkpoints = CheckpointBook(config.checkpoints.interval_s, time.monotonic())
        self._checkpoints_deferred = False
        self._spool: Spool | None = None
        self._sender: Sender | None = None
        self.reloader = (
            ConfigReloader(
                config_path,
                ForwarderConfig,
                config,
                forwarder_policy(self._apply),
                self.registry,
                watch_interval_s=lambda c: c.reload.watch_interval_s,
            )
            if config_path is not None
            else None
        )
        self._ready = False
        self._recovered = False
        self.status = StatusServer(
            config.http.listen_host,
            config.http.listen_port,
            self.registry,
            live=lambda: (True, "ok"),
            ready=lambda: (self._ready, "ok" if self._ready else "starting"),
            before_scrape=self._update_gauges,
        )

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until ``stop``; returns the exit code."""
        # /healthz first: opening may wait for disk space (recovery on a full volume).
        await self.status.start()
        try:
            opened = await self._open_spool(stop)
        except BaseException:
            await self.status.stop()
            raise
        if opened is None:  # stopped while the spool waited for space
            await self.status.stop()
            return 0
        spool = self._spool = opened
        self.metrics.spool_quarantined_frames.inc(spool.quarantined_frames)
        self.metrics.spool_quarantined_bytes.inc(spool.quarantined_bytes)
        self.metrics.positions_quarantined.inc(self.positions.corrupt_loads)
        if spool.volume_bytes is not None:
            self.metrics.spool_volume_bytes.set(spool.volume_bytes)
        sender = self._sender = Sender(
            self.config.sender,
            spool,
            node_name=self.config.node_name,
            metrics=self.metrics,
            shared_key=self._shared_key,
            parking=self.parking,
        )
        sender_stop = asyncio.Event()
        tailing_stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.discovery.run(self._on_change, tailing_stop))
                group.create_task(self._rules_loop(tailing_stop))
                if self.pod_watcher is not None:
                    group.create_task(self.pod_watcher.run(tailing_stop))
                if self.namespace_watcher is not None:
                    group.create_task(self.namespace_watcher.run(tailing_stop))
                tail_task = group.create_task(self._tail_loop(tailing_stop))
                group.create_task(sender.run(sender_stop))
                if self.reloader is not None:
                    group.create_task(self.reloader.run(tailing_stop))
                self._ready = True
                log.info(
                    "forwarder.started", node=self.config.node_name, http_port=self.status.port
                )
                await stop.wait()
                self._ready = False
                log.info("forwarder.stopping")
                tailing_stop.set()
                self._wake.set()
                await self._finish_tailing(tail_task, spool)
                sender_stop.set()
        finally:
            await self._positions_saver.save(force=True)
            for tail in self._tails.values():
                tail.close()
            self._tails.clear()
            await spool.close()
            await self.status.stop()
            log.info("forwarder.stopped")
        return 0

    def request_reload(self) -> None:
        """SIGHUP: read the config file again and apply what can change live."""
        if self.reloader is not None:
            self.reloader.request()

    def _apply(
        self, config: ForwarderConfig, shared_key: str | None, context: ssl.SSLContext | None
    ) -> None:
        self.config = config
        self._shared_key = shared_key
        if self._sender is not None:
            self._sender.apply(config.sender, shared_key, context)

    async def _open_spool(self, stop: asyncio.Event) -> Spool | None:
        """The node spool, or None if ``stop`` came first."""
        settings = self.config.spool
        opening = asyncio.create_task(
            Spool.open(
                settings.directory,
                max_bytes=settings.max_bytes,
                segment_max_bytes=settings.segment_max_bytes,
                stalls=self.stalls,
            )
        )
        spool = await unless_stopped(opening, stop)
        return None if spool.cancelled() else spool.result()

    def _reload_rules(self) -> None:
        before = self.rules.refused_documents
        self.rules.reload()
        refused = self.rules.refused_documents - before
        if refused:
            self.metrics.multiline_pipelines_refused.inc(refused)

    async def _rules_loop(self, stop: asyncio.Event) -> None:
        """Read the tenants' pipelines again now and then (new files get the new rules)."""
        if self.config.multiline.pipelines_directory is None:
            return
        interval = self.config.multiline.reload_interval_s
        while await first_set((stop,), interval) is None:
            await asyncio.to_thread(self._reload_rules)

    async def _finish_tailing(self, task: asyncio.Task[None], spool: Spool) -> None:
        """Let the last round spool its records and save positions, unless the spool cannot
        take them (its volume or its cap is full, say with the aggregators down): then stop
        waiting. What was not appended is read again after the restart, since positions
        moved only past what the spool holds."""
        while not task.done():
            await asyncio.wait({task}, timeout=_STOP_POLL_S)
            if not task.done() and spool.appends_blocked:
                log.info("forwarder.stop_abandons_append", reason="spool cannot take more")
                task.cancel()
                await asyncio.wait({task})

    async def _on_change(self, found: dict[str, FoundFile]) -> None:
        live: set[Key] = set()
        for item in found.values():
            key = (item.device, item.inode)
            live.add(key)
            if key not in self._tails:
                self._open(item)
        self._live = live
        lost: list[SourceState] = []
        if not self._recovered:
            self._recovered = True
            lost = self._reopen_rotated_while_down()
        else:
            # A fast writer can rotate a file between two scans: born and renamed away before
            # any scan saw it under the container's link.
            self._read_unseen_rotations(self._started_at, "created and rotated between scans")
        self._wake.set()
        if lost and self._checkpoints.enabled:
            await self._checkpoint_lost(lost)

    def _reopen_rotated_while_down(self) -> list[SourceState]:
        """Sources with a saved position that the glob no longer shows were rotated away while
        we were down: find each by device and inode beside where it was last seen, and drain
        it from its saved position (never from the start, never skipped). Returns the sources
        whose file is gone (lost)."""
        lost: list[SourceState] = []
        for state in self.positions.all():
            if state.key in self._tails or not state.link:
                continue
            meta = parse_file_name(state.link, self.config.node_name)
            directory = os.path.dirname(state.path)
            if meta is None or not os.path.isdir(directory):
                continue
            found = False
            for entry in os.scandir(directory):
                with contextlib.suppress(OSError):
                    stat = entry.stat(follow_symlinks=False)
                    regular = entry.is_file(follow_symlinks=False)
                    if (stat.st_dev, stat.st_ino) == state.key and regular:
                        if self._open(FoundFile(state.link, entry.path, stat, meta)):
                            log.info(
                                "tail.rotated_while_down", source=state.source_id, path=entry.path
                            )
                        found = True  # refused: counted and logged as such, not as lost
                        break
            if not found:
                count_and_log(
                    self.metrics.sources_lost,
                    log,
                    "tail.source_lost",
                    source=state.source_id,
                    offset=state.offset,
                    path=state.path,
                )
                self.positions.remove(*state.key)
                lost.append(state)
        since = self._down_since
        if since is not None:  # a first start: rotated files before this forwarder are history
            self._read_unseen_rotations(
                since, "created and rotated away while the forwarder was down"
            )
        return lost

    async def _checkpoint_lost(self, states: list[SourceState]) -> None:
        """A ``lost`` checkpoint for each source gone while we were down, with the lines it
        never read when a compressed copy of its file survives beside its log."""
        for state in states:
            meta = parse_file_name(state.link, self.config.node_name)
            if meta is None:
                continue
            lines = await asyncio.to_thread(
                count_lost_lines, os.path.dirname(state.path), state.fingerprint, state.offset
            )
            mark = Mark(
                state.source_id,
                state.next_seq,
                CheckpointState.LOST,
                meta.namespace_name,
                kubernetes_raw(meta.as_record()),
                reason="gone_while_down",
                lost_lines=lines,
            )
            self._checkpoints.ended(mark)
            log.info("checkpoint.lost", source=state.source_id, lost_lines=lines)
        self._wake.set()

    def _read_unseen_rotations(self, since: float, why: str) -> None:
        """Rotated files beside a container's log that no position, no release and no tail
        knows, written since ``since``: created and rotated away unseen (while the forwarder
        was down, or between two scans). Read whole, from 0."""
        places = {
            os.path.dirname(tail.state.path): (tail.state.link, tail.meta)
            for tail in self._tails.values()
            if tail.fmt != "raw" and tail.state.link
        }
        for directory, (link, meta) in places.items():
            entries: list[os.DirEntry[str]] = []
            with contextlib.suppress(OSError):
                entries = [e for e in os.scandir(directory) if _ROTATED.match(e.name)]
            for entry in entries:
                with contextlib.suppress(OSError):
                    stat = entry.stat(follow_symlinks=False)
                    key = (stat.st_dev, stat.st_ino)
                    known = (
                        key in self._tails
                        or self.positions.get(*key) is not None
                        or self.positions.was_released(*key)
                    )
                    if known or not entry.is_file(follow_symlinks=False) or stat.st_mtime < since:
                        continue
                    if self._open(FoundFile(link, entry.path, stat, meta)):
                        count_and_log(
                            self.metrics.sources_found_rotated,
                            log,
                            "tail.rotated_unseen",
                            path=entry.path,
                            why=why,
                        )

    def _open(self, item: FoundFile) -> bool:
        """Start tailing ``item``; False if it was refused or is gone (or tailed already)."""
        # The forwarder may read any file on the node: only a container's own log is opened,
        # without following a symlink swapped in since the scan (pathguard).
        root = self.discovery.pods_root
        if item.plain:
            return self._open_plain(item)
        try:
            docker = self.discovery.docker_root
            refusal = check_target(item.real_path, root, item.meta, docker)
            if refusal is not None:
                raise RefusedFileError(refusal, item.real_path)
            under_docker = docker is not None and item.real_path.startswith(docker + os.sep)
            fd, stat = open_pod_log(item.real_path, docker if under_docker and docker else root)
        except FileNotFoundError:
            return False  # rotated between the scan and now: the next scan sees the new one
        except RefusedFileError as exc:
            self.discovery.refuse(item.path, exc.reason, item.real_path, item.meta)
            return False
        return self._start_tail(item, fd, stat)

    def _open_plain(self, item: FoundFile) -> bool:
        """Start tailing a plain file of ``source.files`` (no pod, no path guard: the
        platform chose its path), one line per record."""
        try:
            fd = os.open(item.real_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        return self._start_tail(item, fd, os.fstat(fd))

    def _start_tail(self, item: FoundFile, fd: int, stat: os.stat_result) -> bool:
        """Tail the file open on ``fd`` from its position; False (``fd`` closed) if it is
        not the file the scan saw, or tailed already."""
        key = (stat.st_dev, stat.st_ino)
        if key != (item.device, item.inode):
            # Replaced since the scan (a rotation): what opened is safe to read, but its
            # metadata is another file's. The next scan finds it as it is now.
            os.close(fd)
            log.info("tail.changed_since_scan", link=item.path, path=item.real_path)
            self.discovery.request_scan()
            return False
        if not item.plain:
            self.discovery.accepted(item.path)
        if key in self._tails:
            os.close(fd)
            return False
        state, resolution = resolve(
            self.positions, self.config.node_name, item.real_path, stat, fingerprint(fd), fd=fd
        )
        if resolution.value in ("truncated", "replaced"):
            self.metrics.truncations.inc()
        if state.link != item.path:
            state = dataclasses.replace(state, link=item.path)
            self.positions.update(state)
            self._unsaved.add(key)
        elif resolution is not Resolution.RESUMED:
            self._unsaved.add(key)
        multiline = self.config.multiline
        # With pod metadata on, the rule waits for it (the pod's annotation may name one); a
        # plain file has neither pod nor rule.
        rule = self.rules.rule_for(item.meta) if self.pods is None and not item.plain else None
        if self.pods is not None and not item.plain:
            wait = self.config.kubernetes.wait_for_metadata_s
            self._awaiting[key] = (pod_uid(item.real_path) or "", time.monotonic() + wait)
        self._tails[key] = FileTail(
            state,
            item.meta,
            fd,
            self.config.source.max_line_bytes,
            block_records=self.config.sender.batch_max_records,
            block_bytes=self.config.sender.batch_max_bytes,
            multiline=rule,
            multiline_timeout_s=multiline.flush_timeout_s,
            multiline_max_lines=multiline.max_lines,
            multiline_max_bytes=multiline.max_bytes,
            fmt="raw" if item.plain else None,
        )
        log.info(
            "tail.opened",
            namespace=item.meta.namespace_name,
            pod=item.meta.pod_name,
            container=item.meta.container_name,
            source=state.source_id,
            offset=state.offset,
            resolution=resolution.value,
            multiline=rule.name if rule is not None else None,
            plain=item.plain,
        )
        return True

    async def _tail_loop(self, stop: asyncio.Event) -> None:
        last_save = time.monotonic()
        settings = self.config.source
        while True:
            stopping = stop.is_set()
            progressed = False
            for key, tail in list(self._tails.items()):
                if self.pods is not None and not self._metadata_ready(key, tail, stopping):
                    continue  # its pod's labels may be a moment away: wait (bounded)
                batch = tail.read(settings.read_budget_bytes)
                if batch.status is TailStatus.TRUNCATED:
                    if batch.entries:  # a multiline group read before the truncation
                        await self._make_durable(tail, batch)
                    self._truncated(key, tail)
                    continue
                if batch.entries or batch.bytes_read:
                    progressed = True
                    await self._make_durable(tail, batch)
                    self._idle_rounds.pop(key, None)
                elif key not in self._live and not stopping:
                    await self._maybe_release(key, tail)
                elif not stopping and _rotated_behind_link(key, tail):
                    self.discovery.request_scan()
            if self._checkpoints.enabled:
                # After the round's appends: a checkpoint follows the records it covers.
                await self._write_checkpoints(final=stopping and not progressed)
            now = time.monotonic()
            if self.positions.dirty and (stopping or now - last_save >= POSITIONS_SAVE_INTERVAL_S):
                await self._save_positions(force=stopping)
                last_save = now
            if stopping and not progressed:
                return
            if not progressed:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(settings.poll_interval_s):
                        await self._wake.wait()

    async def _save_positions(self, *, force: bool) -> None:
        if await self._positions_saver.save(force=force):
            self._unsaved.clear()  # a save writes every source's state

    def _metadata_ready(self, key: Key, tail: FileTail, stopping: bool) -> bool:
        """Give the tail its pod's metadata when the cache has it (or it changed); False while
        a new file still waits for it."""
        assert self.pods is not None
        if tail.fmt == "raw":
            return True  # a plain file: no pod
        uid = pod_uid(tail.state.path)
        info = self.pods.get(uid) if uid else None
        namespace = (
            self.namespaces.get(tail.meta.namespace_name) if self.namespaces is not None else None
        )
        if key in self._enriched and self._enriched[key] == (info, namespace):
            return True
        waiting = self._awaiting.get(key)
        namespaces_pending = (
            self.namespace_watcher is not None and not self.namespace_watcher.synced.is_set()
        )
        missing = info is None or namespaces_pending
        if missing and waiting is not None and not stopping and time.monotonic() < waiting[1]:
            return False
        self._awaiting.pop(key, None)
        settings = self.config.kubernetes
        if info is None and key not in self._enriched:
            log.warning(
                "kubernetes.metadata_missing",
                source=tail.state.source_id,
                pod=tail.meta.pod_name,
                namespace=tail.meta.namespace_name,
                meanwhile="lines go on with the file name's metadata, flagged metadata_incomplete",
            )
        first_time = key not in self._enriched
        self._enriched[key] = (info, namespace)
        if first_time and tail.multiline is None:
            rule = self.rules.rule_for(tail.meta, info.annotations if info else None)
            if rule is not None and tail.set_multiline(rule):
                log.info("tail.multiline", source=tail.state.source_id, multiline=rule.name)
        record = enriched(
            tail.meta,
            info,
            labels=settings.labels,
            annotations=settings.annotations,
            namespace=namespace,
        )
        tail.set_kubernetes(record)
        if excluded_by_annotation(info):
            if key not in self._excluded:
                log.warning(
                    "tail.excluded_by_annotation",
                    source=tail.state.source_id,
                    pod=tail.meta.pod_name,
                    namespace=tail.meta.namespace_name,
                )
            self._excluded.add(key)
        else:
            self._excluded.discard(key)
        return True

    async def _make_durable(self, tail: FileTail, batch: TailBatch) -> None:
        namespace = tail.meta.namespace_name
        metrics = self.metrics
        key = (tail.state.device, tail.state.inode)
        if key in self._excluded and batch.entries:
            # Excluded by the pod's annotation: read, counted as excluded, not shipped.
            metrics.records_excluded.labels(namespace).inc(batch.records)
            batch = dataclasses.replace(batch, entries=[], records=0)
            self._checkpoints.exclude(tail.state.source_id)
        elif self.pods is not None and key in self._enriched and self._enriched[key][0] is None:
            metrics.metadata_incomplete.labels(namespace).inc(batch.records)
        metrics.bytes_read.labels(namespace).inc(batch.bytes_read)
        metrics.lines_read.labels(namespace).inc(batch.lines)
        if batch.partial_merges:
            metrics.partial_merges.inc(batch.partial_merges)
        if batch.truncated_lines:
            metrics.truncated_lines.inc(batch.truncated_lines)
        if batch.malformed_lines:
            metrics.malformed_lines.inc(batch.malformed_lines)
        if batch.joined_lines:
            metrics.multiline_joined_lines.labels(namespace).inc(batch.joined_lines)
        if batch.split_groups:
            metrics.multiline_split_groups.labels(namespace).inc(batch.split_groups)
        if batch.entries:
            assert self._spool is not None
            if key in self._unsaved:
                await self._save_positions(force=True)
            # Appends sized to a fraction of the spool, so one big read always fits; each
            # waits while the spool is full (backpressure). The position moves only after all.
            limit = max(64 * 1024, self._spool.max_bytes // 8)
            group: list[bytes] = []
            size = 0
            for entry in batch.entries:
                if group and size + len(entry) > limit:
                    await self._spool.append(group)
                    group, size = [], 0
                group.append(entry)
                size += len(entry) + 4
            await self._spool.append(group)
            self.metrics.records_spooled.inc(batch.records)
        checkpoint = batch.checkpoint
        if checkpoint.offset > tail.state.offset:
            tail.state = tail.state.advanced(checkpoint.offset, checkpoint.next_seq)
            self.positions.update(tail.state)

    async def _maybe_release(self, key: Key, tail: FileTail) -> None:
        # Rotated away or deleted: read to the end through the descriptor; release only after
        # the file has stayed at its end for a few rounds (a writer may finish a last line).
        rounds = self._idle_rounds.get(key, 0) + 1
        self._idle_rounds[key] = rounds
        if rounds < IDLE_ROUNDS_TO_RELEASE:
            return
        await self._make_durable(tail, tail.finish())
        self._ended(key, tail, "deleted" if _deleted(tail) else "rotated")
        self.positions.remove(*key)
        tail.close()
        del self._tails[key]
        self._idle_rounds.pop(key, None)
        self._forget_pod(key)
        self.metrics.rotations.inc()
        log.info("tail.released", source=tail.state.source_id, offset=tail.state.offset)

    def _truncated(self, key: Key, tail: FileTail) -> None:
        # The bytes past the new size are gone from the file; what was read is spooled. The
        # next scan reopens it, and resolve() starts a new generation (a new source id).
        log.warning("tail.truncated", source=tail.state.source_id, offset=tail.state.offset)
        self._ended(key, tail, "truncated")
        tail.close()
        del self._tails[key]
        self._live.discard(key)
        self._forget_pod(key)
        self._wake.set()

    def _checkpointable(self, key: Key, tail: FileTail) -> bool:
        """Whether the source's records are shipped: not excluded, and (with pod metadata)
        its exclusion decided."""
        if key in self._excluded:
            return False
        return self.pods is None or tail.fmt == "raw" or key in self._enriched

    def _open_mark(self, key: Key, tail: FileTail) -> Mark:
        return Mark(
            tail.state.source_id,
            tail.state.next_seq,  # durable: _make_durable moves it only after the append
            CheckpointState.OPEN,
            tail.meta.namespace_name,
            tail.reader.kubernetes,
        )

    def _tailed_marks(self) -> list[Mark]:
        return [
            self._open_mark(key, tail)
            for key, tail in self._tails.items()
            if self._checkpointable(key, tail)
        ]

    def _ended(self, key: Key, tail: FileTail, reason: str) -> None:
        """The source will grow no more: its ``finished`` checkpoint, at what is durable."""
        if not self._checkpointable(key, tail):
            self._checkpoints.forget(tail.state.source_id)
            return
        mark = self._open_mark(key, tail)
        finished = dataclasses.replace(mark, state=CheckpointState.FINISHED, reason=reason)
        self._checkpoints.ended(finished)

    async def _write_checkpoints(self, *, final: bool) -> None:
        """Append the checkpoints due now (``final``: at shutdown, every source that
        advanced). They never wait for room: with the spool full, the finished and lost ones
        wait for a later round, and the open ones for the next interval."""
        assert self._spool is not None
        marks = self._checkpoints.collect(time.monotonic(), self._tailed_marks, final=final)
        settings = self.config.sender
        node = self.config.node_name
        for start in range(0, len(marks), _CHECKPOINTS_PER_APPEND):
            group = marks[start : start + _CHECKPOINTS_PER_APPEND]
            now = time.time_ns()
            entries = [checkpoint_entry(mark, node, now) for mark in group]
            blocks = encode_blocks(
                entries, settings.batch_max_records, settings.batch_max_bytes, checkpoints=True
            )
            try:
                await self._spool.append(blocks, block=False)
            except SpoolFullError:
                if not self._checkpoints_deferred:
                    self._checkpoints_deferred = True
                    log.info(
                        "checkpoint.deferred",
                        reason="spool full",
                        waiting=self._checkpoints.waiting,
                        final=final,
                    )
                return
            self._checkpoints_deferred = False
            self._checkpoints.written(group)
            for mark in group:
                self.metrics.checkpoints.labels(mark.tenant).inc()

    def _forget_pod(self, key: Key) -> None:
        self._awaiting.pop(key, None)
        self._enriched.pop(key, None)
        self._excluded.discard(key)

    def _update_gauges(self) -> None:
        lag: dict[str, int] = {}
        for tail in list(self._tails.values()):
            with contextlib.suppress(OSError):
                namespace = tail.meta.namespace_name
                lag[namespace] = lag.get(namespace, 0) + tail.lag_bytes()
        for namespace, value in lag.items():
            self.metrics.lag_bytes.labels(namespace).set(value)
        self.metrics.open_files.set(len(self._tails))
        if self._spool is not None:
            with contextlib.suppress(Exception):
                self.metrics.spool_bytes.set(self._spool.bytes_used)
                self.metrics.spool_blocks.set(self._spool.records_pending)


def _deleted(tail: FileTail) -> bool:
    """Whether the released file has no name left (deleted, rather than rotated away)."""
    try:
        return os.fstat(tail.fd).st_nlink == 0
    except OSError:
        return False


def _rotated_behind_link(key: Key, tail: FileTail) -> bool:
    """Whether the path a file was found by now names another file (or none): at its end,
    a tailed file is checked so a rotation is noticed within a poll, not at the next rescan."""
    try:
        st = os.stat(tail.state.link or tail.state.path)
    except OSError:
        return True
    return (st.st_dev, st.st_ino) != key
