"""Run a logferry daemon as a real subprocess: config file, start, readiness, metrics, log
events, signals; and the ``daemons`` fixture that kills whatever a test left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.net import free_port, wait_until


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children, from /proc (an aggregator's supervisor and its workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]


class DaemonProcess:
    """``logferry <kind> --config <file>`` with stderr captured to a log file."""

    def __init__(self, kind: str, workdir: Path, config: dict[str, Any]) -> None:
        self.kind = kind
        self.workdir = workdir
        self.config = config
        self.config.setdefault("http", {"listen_host": "127.0.0.1", "listen_port": free_port()})
        self.config.setdefault("log", {"level": "info", "format": "json"})
        self.http_port = int(self.config["http"]["listen_port"])
        self.config_path = workdir / f"{kind}.yaml"
        self.log_path = workdir / f"{kind}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.env: dict[str, str] = {}
        """Extra environment for the next spawn (e.g. a crash point)."""

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config))

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready."""
        self.write_config()
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "logferry", self.kind, "--config", str(self.config_path)],
                stdout=log,
                stderr=log,
                cwd=self.workdir,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )

    async def start(self, *, timeout_s: float = 60.0) -> None:
        """Start and wait until /readyz answers 200."""
        self.spawn()
        await wait_until(
            self.ready, timeout_s=timeout_s, what=f"{self.kind} /readyz", detail=self.tail
        )

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def events(self, event: str) -> list[dict[str, Any]]:
        """Every JSON log line of ``event`` the daemon wrote, over all its starts (the log
        also holds our ``--- start n ---`` separators, which are not JSON)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == event:
                    out.append(entry)
        return out

    async def _get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{self.http_port}{path}", timeout=aiohttp.ClientTimeout(total=5)
            ) as response,
        ):
            return response.status, await response.text()

    async def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.kind} exited with {self.proc.returncode}\n{self.tail()}")
        try:
            status, _ = await self._get("/readyz")
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
        return status == 200

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample: (name, sorted labels) -> value."""
        _status, text = await self._get("/metrics")
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for (sample, sample_labels), value in (await self.metrics()).items():
            if sample == name and set(labels.items()) <= set(sample_labels):
                total += value
        return total

    def kill(self) -> None:
        """SIGKILL, no chance to flush anything."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    async def stop(self, *, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait for exit; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        proc = self.proc
        proc.send_signal(signal.SIGTERM)
        try:
            await wait_until(
                lambda: proc.poll() is not None,
                timeout_s=timeout_s,
                what=f"{self.kind} to stop on SIGTERM",
                detail=self.tail,
            )
        except AssertionError:
            proc.kill()
            raise
        return proc.returncode

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """A list a test appends its daemons to; whatever still runs at the end is killed, so a
    failing test leaves no process behind."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.ensure_dead()
