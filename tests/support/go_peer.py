"""Third-party Go Forward Protocol peers (tests/peers/go), built once and run as subprocesses.

- ``client``: github.com/IBM/fluent-forward-go sending ack-required messages in one carrier mode;
- ``server``: the OpenTelemetry Collector's fluentforward receiver, writing what it accepted to
  a JSON-lines file (it acks a chunk only after that file was fsynced).

They are two binaries of one Go module because both libraries register msgpack extension 0 at
init and tinylib/msgp panics on the second registration. The binaries are cached in
``.cache/peers/go/<digest>/``, keyed by a hash of go.mod, go.sum and the Go sources, so a second
run does not invoke ``go`` at all; Go's own build cache keeps a rebuild after an edit cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.net import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
PEER_DIR = REPO / "tests" / "peers" / "go"
CACHE_DIR = REPO / ".cache" / "peers" / "go"
BINARIES = ("client", "server")
BUILD_TIMEOUT_S = 600.0  # a cold module cache downloads and compiles the OTel collector


@dataclass(frozen=True)
class GoPeers:
    """Paths of the built peer binaries."""

    client: Path
    server: Path


def source_digest() -> str:
    """Hash of everything the binaries are built from: go.mod, go.sum and every .go file."""
    digest = hashlib.sha256()
    files = [PEER_DIR / "go.mod", PEER_DIR / "go.sum", *sorted(PEER_DIR.rglob("*.go"))]
    for path in files:
        digest.update(str(path.relative_to(PEER_DIR)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build_go_peers() -> GoPeers:
    """Return the peer binaries, building them first if this source has no cached build.

    An exclusive ``flock`` serialises builds between parallel test processes; whoever gets the
    lock second finds the finished binaries. Raises RuntimeError if ``go`` is missing or the
    build fails, with go's own output.
    """
    target = CACHE_DIR / source_digest()
    peers = GoPeers(client=target / "client", server=target / "server")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all((target / name).is_file() for name in BINARIES):
            return peers
        go = shutil.which("go")
        if go is None:
            raise RuntimeError(
                "the Go toolchain is not on PATH: the interop tests build their third-party "
                f"peers from {PEER_DIR} with `go build` (Go >= 1.26 and access to the Go "
                "module proxy are needed)"
            )
        # Build next to the target and rename, so a killed build never leaves half a cache.
        staging = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE_DIR))
        staging.chmod(0o755)  # mkdtemp makes it private; the binaries are for any user
        try:
            result = subprocess.run(
                [go, "build", "-trimpath", "-mod=readonly", "-buildvcs=false", "-o", f"{staging}/"]
                + [f"./{name}" for name in BINARIES],
                cwd=PEER_DIR,
                # GOTOOLCHAIN=local: fail clearly on an old go instead of fetching a toolchain.
                env={**os.environ, "GOTOOLCHAIN": "local"},
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"go build in {PEER_DIR} failed ({result.returncode}):\n{result.stderr}"
                )
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        # Builds of older sources (and staging left by a killed build) are of no further use;
        # holding the lock, no other process is using them.
        for old in CACHE_DIR.iterdir():
            if old.is_dir() and old != target:
                shutil.rmtree(old, ignore_errors=True)
    return peers


@dataclass(frozen=True)
class ClientRun:
    """The outcome of one ``client`` run."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        """The client's last stdout line: ``{"mode", "records", "messages", "resends"}``."""
        lines = self.stdout.strip().splitlines()
        return dict(json.loads(lines[-1])) if lines else {}


async def run_go_client(
    peers: GoPeers,
    port: int,
    *,
    mode: str,
    count: int,
    batch: int,
    namespace: str,
    ack_timeout_s: float = 10.0,
    timeout_s: float = 120.0,
    extra_args: list[str] | None = None,
) -> ClientRun:
    """Send ``count`` records to 127.0.0.1:``port`` with the Go client, without blocking the loop.

    The client exits 0 only once every message was acked; ``timeout_s`` bounds the whole run.
    ``extra_args`` are more client flags (e.g. ``-retries=2``).
    """
    args = [
        str(peers.client),
        f"-addr=127.0.0.1:{port}",
        f"-mode={mode}",
        f"-n={count}",
        f"-batch={batch}",
        f"-namespace={namespace}",
        f"-timeout={ack_timeout_s}s",
        *(extra_args or []),
    ]
    done = await asyncio.to_thread(
        subprocess.run, args, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    return ClientRun(done.returncode, done.stdout, done.stderr)


class GoServer:
    """The OTel fluentforward receiver as a subprocess on 127.0.0.1, recording to a file."""

    def __init__(self, peers: GoPeers, workdir: Path, *, debug: bool = True) -> None:
        self.peers = peers
        self.workdir = workdir
        self.port = free_port()
        self.out_path = workdir / "received.jsonl"
        self.stdout_path = workdir / "server.stdout"
        self.stderr_path = workdir / "server.stderr"
        self.debug = debug
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port`` as a sender's ``servers`` entry."""
        return f"127.0.0.1:{self.port}"

    def spawn(self) -> None:
        """Start the process without waiting for it to listen."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    str(self.peers.server),
                    f"-listen={self.address}",
                    f"-out={self.out_path}",
                    f"-debug={str(self.debug).lower()}",
                ],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

    async def start(self, *, timeout_s: float = 30.0) -> None:
        """Spawn the server and wait, up to ``timeout_s``, for its ``listening`` line."""
        self.spawn()

        async def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"go server exited with {self.proc.returncode}:\n{self.stderr_tail()}"
                )
            return "listening" in self.stdout_path.read_text(errors="replace")

        try:
            await wait_until(listening, timeout_s=timeout_s, what="the go server to listen")
        except AssertionError:
            self.kill()
            raise

    def stderr_tail(self, lines: int = 40) -> str:
        """The end of the server's stderr (its debug log), for failure messages."""
        if not self.stderr_path.exists():
            return ""
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])

    def records(self) -> list[dict[str, Any]]:
        """Every record written so far: the original fields, ``fluent.tag`` and ``@time_ns``.

        Only complete lines count: the server may be in the middle of writing the next one.
        """
        if not self.out_path.exists():
            return []
        text = self.out_path.read_text()
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines()]

    async def stop(self, *, timeout_s: float = 10.0) -> int:
        """SIGTERM, then wait (killing it after ``timeout_s``); returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"go server ignored SIGTERM:\n{self.stderr_tail()}") from None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL if still running (cleanup after a failed test)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
