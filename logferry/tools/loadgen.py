"""``logferry loadgen``: writes container log files the way a Kubernetes node does.

Layout under ``ROOT`` (what the container runtime and kubelet make)::

    ROOT/pods/<namespace>_<pod>_<uid>/<container>/0.log              the runtime writes this
    ROOT/containers/<pod>_<namespace>_<container>-<id>.log -> (abs)  kubelet's symlink to it

Each container writes docker json-file or CRI lines; a message over 16 KiB is split into
parts as the runtimes split it, and a file is rotated as kubelet does (``0.log`` renamed to
``0.log.<UTC time>``, a new empty ``0.log``). A JSON manifest records, for every file
generation, its device and inode and how many logical messages (the records a forwarder must
deliver), physical lines and bytes it holds, so an end-to-end test can compare what arrived
with what was written. Python API: :func:`run_loadgen`; command line: :func:`loadgen_main`.

What the messages say is in :mod:`.loadgen_content`; how a runtime writes them as lines
(docker, CRI, split parts) in :mod:`.loadgen_formats`.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

import orjson

from logferry.common.commands import Subcommands, run_handler, standalone_parser
from logferry.common.errors import LogferryError
from logferry.common.units import parse_byte_size
from logferry.tools.loadgen_content import Clock, Kind, Messages
from logferry.tools.loadgen_formats import (
    PART_BYTES,
    Format,
    render_message,
    rfc3339_ns,
    split_message,
)

__all__ = [
    "PART_BYTES",
    "LoadgenError",
    "LoadgenOptions",
    "Manifest",
    "ManifestFile",
    "Pacer",
    "loadgen_main",
    "render_message",
    "run_loadgen",
    "split_message",
]

_BURST = 50_000  # most messages rendered in one tick, so memory stays bounded when behind
_TICK_S = 0.05
_MANIFEST_EVERY_S = 1.0
_MICROSECOND = timedelta(microseconds=1)


class LoadgenError(LogferryError):
    """Options that cannot work, or a target file that already exists."""


@dataclass(frozen=True)
class LoadgenOptions:
    """What to write, where, and how fast."""

    root: Path
    """The node's log root: ``pods/`` and ``containers/`` are made under it."""
    namespaces: int = 3
    namespace_prefix: str = "team"
    """Namespaces are ``<prefix>-a``, ``<prefix>-b``, ..."""
    pods: int = 2
    """Pods per namespace."""
    containers: int = 1
    """Containers per pod."""
    formats: tuple[Format, ...] = ("docker", "cri")
    """Assigned to containers round-robin."""
    rate_per_s: float = 1000.0
    """Messages per second across all containers; 0 writes as fast as possible."""
    lines: int | None = None
    """Stop after this many messages in total."""
    duration_s: float | None = None
    """Stop after this many seconds. Without ``lines`` or this, run until ``stop``."""
    rotate_bytes: int = 10 * 1024 * 1024
    """Rotate a file once it holds at least this many bytes; 0 never rotates."""
    keep_rotated: int | None = None
    """Rotated files kept per container (the oldest beyond are deleted); None keeps all."""
    long_every: int = 500
    """About one message in this many is 2-40 KB long; 0 never."""
    seed: int | None = None
    """Seeds names, ids and content; None picks one (it is in the manifest)."""
    manifest: Path | None = None
    """Where the manifest goes; None is ``ROOT/manifest.json``."""
    tick_s: float = _TICK_S
    manifest_every_s: float = _MANIFEST_EVERY_S

    @property
    def manifest_path(self) -> Path:
        return self.manifest if self.manifest is not None else self.root / "manifest.json"

    def check(self) -> None:
        """Raise :class:`LoadgenError` for values that cannot work."""
        counts = {"namespaces": self.namespaces, "pods": self.pods}
        counts["containers"] = self.containers
        for name, value in counts.items():
            if value < 1:
                raise LoadgenError(f"--{name} must be at least 1, not {value}")
        if not _is_dns_label(self.namespace_prefix):
            raise LoadgenError(f"--namespace-prefix {self.namespace_prefix!r} is not a DNS label")
        if not self.formats or any(fmt not in ("docker", "cri") for fmt in self.formats):
            raise LoadgenError(f"--formats must name docker and/or cri, not {self.formats}")
        for name, number in (("rate", self.rate_per_s), ("rotate-bytes", self.rotate_bytes)):
            if number < 0:
                raise LoadgenError(f"--{name} cannot be negative")
        for name, limit in (("lines", self.lines), ("keep-rotated", self.keep_rotated)):
            if limit is not None and limit < 0:
                raise LoadgenError(f"--{name} cannot be negative")
        if self.duration_s is not None and self.duration_s < 0:
            raise LoadgenError("--duration cannot be negative")
        if self.long_every < 0:
            raise LoadgenError("--long-every cannot be negative")
        if self.tick_s <= 0 or self.manifest_every_s <= 0:
            raise LoadgenError("tick_s and manifest_every_s must be positive")


@dataclass
class ManifestFile:
    """One generation of one container's log file."""

    path: str
    """Where the file is now: ``.../0.log``, or ``.../0.log.<time>`` once rotated."""
    link: str
    namespace: str
    pod: str
    container: str
    container_id: str
    format: Format
    device: int
    inode: int
    messages: int = 0
    """Logical messages: a message split into parts counts once (one record downstream)."""
    lines: int = 0
    """Physical lines."""
    bytes: int = 0
    rotated: bool = False
    deleted: bool = False
    """A rotated file removed by ``keep_rotated``."""


@dataclass
class Manifest:
    """Everything written, as ``manifest.json`` holds it."""

    files: list[ManifestFile]
    messages_total: int
    started: str
    finished: str | None
    seed: int
    root: str

    def to_json(self) -> bytes:
        return orjson.dumps(self, option=orjson.OPT_INDENT_2) + b"\n"


# -- topology ------------------------------------------------------------------------------

_APPS: tuple[tuple[str, Kind], ...] = (
    ("web", "access"),
    ("checkout", "json"),
    ("payments", "java"),
    ("search", "json"),
    ("gateway", "access"),
    ("auth", "java"),
    ("inventory", "json"),
    ("billing", "java"),
)
_SIDECARS: tuple[tuple[str, Kind], ...] = (
    ("istio-proxy", "access"),
    ("metrics-exporter", "json"),
    ("config-reloader", "json"),
    ("worker", "java"),
)
_POD_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet of Kubernetes name suffixes


@dataclass(frozen=True)
class _Spec:
    namespace: str
    pod: str
    uid: str
    container: str
    container_id: str
    fmt: Format
    kind: Kind
    weight: int


def _is_dns_label(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-")
    return bool(name) and name[0] != "-" and name[-1] != "-" and set(name) <= allowed


def _letters(index: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa: bijective base 26."""
    out = ""
    index += 1
    while index:
        index, digit = divmod(index - 1, 26)
        out = chr(ord("a") + digit) + out
    return out


def _topology(options: LoadgenOptions, rng: random.Random) -> list[_Spec]:
    specs: list[_Spec] = []
    for n in range(options.namespaces):
        namespace = f"{options.namespace_prefix}-{_letters(n)}"
        # Replicas of one app share their ReplicaSet hash, as on a real cluster.
        hashes = {app: "".join(rng.choices(_POD_ALPHABET, k=10)) for app, _ in _APPS}
        for p in range(options.pods):
            # Namespaces run different apps, so the defaults cover every kind of content.
            app, app_kind = _APPS[(n * options.pods + p) % len(_APPS)]
            pod = f"{app}-{hashes[app]}-{''.join(rng.choices(_POD_ALPHABET, k=5))}"
            uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            for c in range(options.containers):
                name, kind = (app, app_kind) if c == 0 else _SIDECARS[(c - 1) % len(_SIDECARS)]
                if c > len(_SIDECARS):
                    name = f"{name}-{(c - 1) // len(_SIDECARS)}"
                fmt = options.formats[len(specs) % len(options.formats)]
                container_id = f"{rng.getrandbits(256):064x}"
                weight = rng.choice((1, 2, 3, 5, 8))
                specs.append(_Spec(namespace, pod, uid, name, container_id, fmt, kind, weight))
    return specs


# -- files ---------------------------------------------------------------------------------


class _ContainerLog:
    """One container's ``0.log``, its symlink, its rotations and their manifest entries."""

    def __init__(self, spec: _Spec, root: Path, options: LoadgenOptions) -> None:
        self.spec = spec
        self.directory = root / "pods" / f"{spec.namespace}_{spec.pod}_{spec.uid}" / spec.container
        self.path = self.directory / "0.log"
        name = f"{spec.pod}_{spec.namespace}_{spec.container}-{spec.container_id}.log"
        self.link = root / "containers" / name
        self.rotate_bytes = options.rotate_bytes
        self.keep_rotated = options.keep_rotated
        self.files: list[ManifestFile] = []
        self.rotations = 0
        self._kept: list[ManifestFile] = []  # rotated files still on disk, oldest first
        self._fd = -1
        self._last_rotation: datetime | None = None

    @property
    def current(self) -> ManifestFile:
        return self.files[-1]

    def refuse_existing(self) -> None:
        if self.path.exists() or self.link.is_symlink():
            raise LoadgenError(f"{self.link} already exists: use an empty --dir or another --seed")

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open()
        self.link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(self.path, self.link)

    def append(self, messages: list[tuple[bytes, int]]) -> None:
        """Write a batch: one ``write`` per file generation it lands in."""
        batch: list[bytes] = []
        for data, lines in messages:
            batch.append(data)
            entry = self.current
            entry.messages += 1
            entry.lines += lines
            entry.bytes += len(data)
            # Messages stay whole within a file, so each generation's count is exact.
            if self.rotate_bytes and entry.bytes >= self.rotate_bytes:
                self._write(b"".join(batch))
                batch = []
                self._rotate()
        if batch:
            self._write(b"".join(batch))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o640)
        st = os.fstat(self._fd)
        spec = self.spec
        self.files.append(
            ManifestFile(
                str(self.path), str(self.link), spec.namespace, spec.pod, spec.container,
                spec.container_id, spec.fmt, st.st_dev, st.st_ino,
            )
        )  # fmt: skip

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _rotate(self) -> None:
        self.close()
        rotated = self.path.with_name(f"0.log.{self._rotation_stamp()}")
        os.rename(self.path, rotated)
        entry = self.current
        entry.path, entry.rotated = str(rotated), True
        self.rotations += 1
        self._kept.append(entry)
        self._open()
        self._prune()

    def _rotation_stamp(self) -> str:
        """kubelet's ``YYYYMMDD-HHMMSS``, with ``.ffffff`` for a second rotation within one
        second (kubelet waits 10 s between rotations; we may not): names stay unique and sort
        in rotation order, even after the oldest were deleted."""
        now = datetime.now(UTC)
        last = self._last_rotation
        self._last_rotation = now if last is None or now > last else last + _MICROSECOND
        if last is None or now.replace(microsecond=0) > last:
            return now.strftime("%Y%m%d-%H%M%S")
        return self._last_rotation.strftime("%Y%m%d-%H%M%S.%f")

    def _prune(self) -> None:
        while self.keep_rotated is not None and len(self._kept) > self.keep_rotated:
            oldest = self._kept.pop(0)
            os.unlink(oldest.path)
            oldest.deleted = True


# -- pacing and the run loop ---------------------------------------------------------------


@dataclass
class Pacer:
    """How many messages are due at a moment, from the rate and the limits."""

    rate_per_s: float
    lines: int | None = None
    duration_s: float | None = None
    burst: int = _BURST
    sent: int = 0

    def due(self, elapsed_s: float) -> int:
        if self.duration_s is not None:
            elapsed_s = min(elapsed_s, self.duration_s)
        if self.rate_per_s > 0:
            count = min(int(self.rate_per_s * elapsed_s) - self.sent, self.burst)
        else:
            count = self.burst
        if self.lines is not None:
            count = min(count, self.lines - self.sent)
        return max(count, 0)

    def finished(self, elapsed_s: float) -> bool:
        if self.lines is not None and self.sent >= self.lines:
            return True
        if self.duration_s is None or elapsed_s < self.duration_s:
            return False
        return self.rate_per_s <= 0 or self.sent >= int(self.rate_per_s * self.duration_s)


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class _Run:
    options: LoadgenOptions
    seed: int
    logs: list[_ContainerLog]
    sources: list[Messages]
    pick: Callable[[int], list[int]]
    started: str = field(default_factory=_iso_now)
    messages: int = 0

    def tick(self, count: int) -> None:
        """Write ``count`` messages, one batch per container."""
        per_container = [0] * len(self.logs)
        for index in self.pick(count):
            per_container[index] += 1
        now_ns = time.time_ns()
        clock = Clock.at(now_ns)
        for index, n in enumerate(per_container):
            if n:
                self._write(index, n, now_ns, clock)
        self.messages += count

    def _write(self, index: int, count: int, now_ns: int, clock: Clock) -> None:
        log, source = self.logs[index], self.sources[index]
        fmt = log.spec.fmt
        batch = []
        for i in range(count):
            stream, text = source.next(clock)
            timestamp = rfc3339_ns(now_ns + i * 1000)  # a microsecond apart: in order
            batch.append(render_message(fmt, stream, text.encode(), timestamp))
        log.append(batch)

    def manifest(self, *, finished: bool) -> Manifest:
        files = [entry for log in self.logs for entry in log.files]
        root = str(self.options.root)
        end = _iso_now() if finished else None
        return Manifest(files, self.messages, self.started, end, self.seed, root)


def _write_manifest(path: Path, manifest: Manifest) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(manifest.to_json())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


def _start(options: LoadgenOptions) -> _Run:
    seed = options.seed if options.seed is not None else random.SystemRandom().getrandbits(32)
    rng = random.Random(seed)
    specs = _topology(options, rng)
    root = options.root.absolute()  # kubelet's links hold absolute targets
    logs = [_ContainerLog(spec, root, options) for spec in specs]
    sources = [Messages(s.kind, rng.getrandbits(64), options.long_every) for s in specs]
    cum_weights: list[int] = []
    for spec in specs:
        cum_weights.append((cum_weights[-1] if cum_weights else 0) + spec.weight)
    picker = random.Random(rng.getrandbits(64))
    indexes = range(len(specs))

    # One draw per message whatever the batching, so the same seed gives the same files.
    def pick(count: int) -> list[int]:
        return picker.choices(indexes, cum_weights=cum_weights, k=count)

    for log in logs:
        log.refuse_existing()  # before creating anything, so a refusal leaves no debris
    try:
        for log in logs:
            log.create()
    except BaseException:
        for log in logs:
            log.close()
        raise
    return _Run(options, seed, logs, sources, pick)


def run_loadgen(options: LoadgenOptions, stop: threading.Event | None = None) -> Manifest:
    """Write logs until ``lines``/``duration_s`` is reached or ``stop`` is set.

    The manifest is rewritten about every ``manifest_every_s`` while running and once at the
    end (then with ``finished`` set), and returned.
    """
    options.check()
    stop = stop or threading.Event()
    run = _start(options)
    manifest_path = options.manifest_path
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    _write_manifest(manifest_path, run.manifest(finished=False))
    pacer = Pacer(options.rate_per_s, options.lines, options.duration_s)
    start = time.monotonic()
    next_manifest = start + options.manifest_every_s
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - start
            count = pacer.due(elapsed)
            if count:
                run.tick(count)
                pacer.sent += count
            if pacer.finished(elapsed):
                break
            now = time.monotonic()
            if now >= next_manifest:
                _write_manifest(manifest_path, run.manifest(finished=False))
                next_manifest = now + options.manifest_every_s
            if options.rate_per_s > 0:
                stop.wait(options.tick_s - (now - start) % options.tick_s)
    finally:
        for log in run.logs:
            log.close()
    manifest = run.manifest(finished=True)
    _write_manifest(manifest_path, manifest)
    return manifest


# -- command line --------------------------------------------------------------------------


def _formats(value: str) -> tuple[Format, ...]:
    known: dict[str, Format] = {"docker": "docker", "cri": "cri"}
    formats: list[Format] = []
    for name in (name.strip() for name in value.split(",") if name.strip()):
        if name not in known:
            raise argparse.ArgumentTypeError(f"unknown format {name!r} (docker, cri)")
        formats.append(known[name])
    if not formats:
        raise argparse.ArgumentTypeError("name at least one format")
    return tuple(formats)


def _byte_size(value: str) -> int:
    try:
        return parse_byte_size(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(commands: Subcommands, name: str, help_text: str) -> argparse.ArgumentParser:
    """Add ``loadgen`` to ``commands``."""
    parser = commands.add_parser(
        name,
        help=help_text,
        description="Write container log files laid out like a Kubernetes node "
        "(pods/ and containers/ symlinks, docker or CRI lines, kubelet rotation) "
        "and a manifest of what was written.",
    )
    add = parser.add_argument
    add("--dir", type=Path, required=True, metavar="ROOT", help="node log root to write under")
    add("--namespaces", type=int, default=3, metavar="N", help="namespaces (default 3)")
    add("--namespace-prefix", default="team", help="namespaces are PREFIX-a, PREFIX-b, ...")
    add("--pods", type=int, default=2, metavar="N", help="pods per namespace (default 2)")
    add("--containers", type=int, default=1, metavar="N", help="containers per pod (default 1)")
    add("--formats", type=_formats, default=("docker", "cri"), help="docker,cri (round-robin)")
    add("--rate", type=float, default=1000.0, metavar="LINES_PER_SECOND",
        help="messages per second in total (default 1000; 0: as fast as possible)")  # fmt: skip
    add("--lines", type=int, metavar="N", help="stop after N messages in total")
    add("--duration", type=float, metavar="S", help="stop after S seconds")
    add("--rotate-bytes", type=_byte_size, default=10 * 1024 * 1024, metavar="SIZE",
        help="rotate a file at this size, e.g. 2MiB (default 10MiB; 0: never)")  # fmt: skip
    add("--keep-rotated", type=int, metavar="N", help="keep N rotated files (default: all)")
    add("--long-every", type=int, default=500, metavar="N",
        help="about 1 message in N is 2-40 KB (default 500; 0: never)")  # fmt: skip
    add("--seed", type=int, help="seed for names, ids and content (default: random)")
    add("--manifest", type=Path, metavar="FILE", help="default ROOT/manifest.json")
    add("--quiet", action="store_true", help="no summary line on stderr")
    parser.set_defaults(handler=lambda args: run(parser, args))
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``logferry loadgen`` argument parser."""
    return standalone_parser(register, "loadgen")


def options_from_args(args: argparse.Namespace) -> LoadgenOptions:
    """:class:`LoadgenOptions` from parsed command-line arguments."""
    return LoadgenOptions(
        root=args.dir,
        namespaces=args.namespaces,
        namespace_prefix=args.namespace_prefix,
        pods=args.pods,
        containers=args.containers,
        formats=args.formats,
        rate_per_s=args.rate,
        lines=args.lines,
        duration_s=args.duration,
        rotate_bytes=args.rotate_bytes,
        keep_rotated=args.keep_rotated,
        long_every=args.long_every,
        seed=args.seed,
        manifest=args.manifest,
    )


def summary(manifest: Manifest, elapsed_s: float, manifest_path: Path) -> str:
    """The one status line printed at the end."""
    files = manifest.files
    rotations = sum(entry.rotated for entry in files)
    deleted = sum(entry.deleted for entry in files)
    size = sum(entry.bytes for entry in files)
    return (
        f"loadgen: {manifest.messages_total} messages, {size} bytes, {len(files)} files, "
        f"{rotations} rotations ({deleted} deleted) in {elapsed_s:.2f} s, "
        f"seed={manifest.seed}, manifest={manifest_path}"
    )


def loadgen_main(argv: Sequence[str]) -> int:
    """``logferry loadgen`` with ``argv``: 0 when done or stopped by SIGTERM/SIGINT, 2 on bad
    options."""
    return run_handler(build_parser(), argv)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run a parsed ``loadgen`` until done or signalled; the exit status."""
    options = options_from_args(args)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)  # a second signal: leave now
        stop.set()  # the loop finishes its batch and writes the manifest

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    began = time.monotonic()
    try:
        manifest = run_loadgen(options, stop)
    except LoadgenError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not args.quiet:
        print(summary(manifest, time.monotonic() - began, options.manifest_path), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(loadgen_main(sys.argv[1:]))
