"""The chaos harness: the whole pipeline as real processes, a fault, and `logferry verify`.

Used by tests/chaos (its ``make_pipeline`` fixture is in tests/chaos/conftest.py).

A :class:`Pipeline` runs, on 127.0.0.1: ``logferry loadgen`` writing container log files laid
out like a node's ``/var/log``, one forwarder tailing them, two or three aggregators (each a
supervisor of two worker processes unless a scenario says otherwise) and the
real OpenSearch node (or a fault proxy in front of it). A scenario starts load, injects its
fault, lets the system settle, and checks with ``logferry verify`` (the same code as the
command) against the loadgen manifest, the files still on disk, the forwarder's positions and
the aggregators' DLQs:
missing = 0, duplicates in the store = 0, every DLQ entry accounted for.

``CHAOS_LONG=1`` makes scenarios run more iterations and longer outages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logferry.common.store_access import StoreAccess
from logferry.tools.verify import VerifyError, VerifyOptions, VerifyReport, verify
from tests.support.aggregator import aggregator_config, input_address, merge_sections
from tests.support.daemon import DaemonProcess
from tests.support.net import wait_until

LONG = os.environ.get("CHAOS_LONG") == "1"
WORKERS = 2
NODE = "chaos-node"


def scale(short: int, long: int) -> int:
    """``long`` under ``CHAOS_LONG=1``, else ``short``."""
    return long if LONG else short


@dataclass
class Outcome:
    """What a scenario prints: the counts the suite is judged on."""

    scenario: str
    written: int
    indexed: int
    missing: int
    duplicates: int
    dlq: int
    drain_s: float

    def line(self) -> str:
        return (
            f"[chaos] {self.scenario}: written={self.written} indexed={self.indexed} "
            f"missing={self.missing} duplicates={self.duplicates} dlq={self.dlq} "
            f"drain={self.drain_s:.1f}s"
        )


class Pipeline:
    """Loadgen -> forwarder -> aggregators -> store, each a real process."""

    def __init__(
        self,
        workdir: Path,
        store_url: str,
        *,
        aggregators: int = 2,
        forwarder: dict[str, Any] | None = None,
        aggregator: dict[str, Any] | None = None,
        extra_servers: list[str] | None = None,
        output_url: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.store_url = store_url
        """The real store, where verify looks."""
        self.output_url = output_url or store_url
        """Where the aggregators write (a fault proxy in front of the store, say)."""
        self.prefix = f"c{uuid.uuid4().hex[:6]}"
        """Namespaces are ``<prefix>-<n>``: this run's indices are ``logs-<prefix>-*``."""
        self.logs = workdir / "node"
        self.manifest = workdir / "manifest.json"
        self.loadgen: subprocess.Popen[bytes] | None = None
        self.aggregators = [
            DaemonProcess(
                "aggregator",
                workdir / f"agg{i}",
                merge_sections(self._aggregator_config(workdir / f"agg{i}"), aggregator or {}),
            )
            for i in range(aggregators)
        ]
        servers = [input_address(a) for a in self.aggregators]
        self.forwarder = DaemonProcess(
            "forwarder",
            workdir / "fwd",
            merge_sections(
                self._forwarder_config(workdir / "fwd", servers + (extra_servers or [])),
                forwarder or {},
            ),
        )

    def _aggregator_config(self, workdir: Path) -> dict[str, Any]:
        config = aggregator_config(workdir, self.output_url)
        config["log"] = {"level": "info", "format": "json"}
        # Every scenario runs against aggregators of several worker processes, as deployed.
        config["workers"] = WORKERS
        return config

    def _forwarder_config(self, workdir: Path, servers: list[str]) -> dict[str, Any]:
        return {
            "node_name": NODE,
            "spool": {
                "directory": str(workdir / "spool"),
                "max_bytes": "128MiB",
                "segment_max_bytes": "4MiB",
            },
            "source": {
                "path_glob": str(self.logs / "containers" / "*.log"),
                "rescan_interval_s": 1,
                "poll_interval_s": 0.05,
            },
            "sender": {"servers": servers, "ack_timeout_s": 5, "backoff_max_s": 2},
            "log": {"level": "info", "format": "json"},
        }

    @property
    def positions(self) -> Path:
        return self.workdir / "fwd" / "positions"

    @property
    def index_pattern(self) -> str:
        return f"logs-{self.prefix}-*"

    # -- processes ---------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(*(a.start() for a in self.aggregators))
        await self.forwarder.start()

    def start_loadgen(
        self, *, lines: int, rate: int, rotate_bytes: str = "4MiB", extra: list[str] | None = None
    ) -> None:
        """Start ``logferry loadgen``; it stops by itself after ``lines`` messages."""
        args = [
            sys.executable,
            "-m",
            "logferry.tools.loadgen",
            "--dir",
            str(self.logs),
            "--manifest",
            str(self.manifest),
            "--namespaces",
            "3",
            "--namespace-prefix",
            self.prefix,
            "--pods",
            "2",
            "--lines",
            str(lines),
            "--rate",
            str(rate),
            "--rotate-bytes",
            rotate_bytes,
            "--seed",
            "7",
            "--quiet",
            *(extra or []),
        ]
        with (self.workdir / "loadgen.log").open("ab") as log:
            self.loadgen = subprocess.Popen(args, stdout=log, stderr=log)

    async def wait_loadgen(self, timeout_s: float = 300) -> None:
        loadgen = self.loadgen
        assert loadgen is not None
        await wait_until(
            lambda: loadgen.poll() is not None,
            timeout_s=timeout_s,
            what="loadgen to finish",
            poll_s=0.1,
        )
        assert loadgen.returncode == 0, (self.workdir / "loadgen.log").read_text()

    async def stop(self) -> None:
        """SIGTERM everything (forwarder first), each must exit 0."""
        assert await self.forwarder.stop() == 0, self.forwarder.tail()
        for aggregator in self.aggregators:
            assert await aggregator.stop() == 0, aggregator.tail()

    def ensure_dead(self) -> None:
        if self.loadgen is not None and self.loadgen.poll() is None:
            self.loadgen.send_signal(signal.SIGKILL)
            self.loadgen.wait(timeout=30)
        self.forwarder.ensure_dead()
        for aggregator in self.aggregators:
            aggregator.ensure_dead()

    # -- proof -------------------------------------------------------------------------

    def verify_options(self) -> VerifyOptions:
        return VerifyOptions(
            store=StoreAccess(urls=[self.store_url]),
            index=self.index_pattern,
            # Absent until the first save, and for a moment after a damaged one is set aside.
            positions_file=self.positions if self.positions.exists() else None,
            manifest_file=self.manifest if self.manifest.exists() else None,
            # The files still on disk are counted too: every line in them must arrive.
            files=(str(self.logs / "pods" / "**" / "*.log*"),),
            node=NODE,
            dlq_dirs=tuple(
                Path(a.config["dlq"]["directory"])
                for a in self.aggregators
                if Path(a.config["dlq"]["directory"]).is_dir()  # made at the first dead letter
            ),
        )

    async def verify(self) -> VerifyReport:
        return await verify(self.verify_options())

    async def settle(
        self, scenario: str, *, timeout_s: float = 240, expected_missing: int = 0
    ) -> Outcome:
        """Wait until verify finds every written line exactly once (or the deadline), then
        return the counts. A scenario asserts on them; it never sleeps for the system.

        ``expected_missing``: a scenario that destroys records on purpose (damaged spool) waits
        for exactly that many to be reported missing instead.
        """
        started = time.monotonic()
        report: VerifyReport | None = None
        self.last_report: VerifyReport | None = None

        async def proven() -> bool:
            nonlocal report
            try:
                report = self.last_report = await self.verify()
            except VerifyError:
                return False  # e.g. the position file replaced under our feet: ask again

            totals = report.totals
            return (
                totals.expected > 0
                and totals.missing == expected_missing
                and totals.duplicates == 0
            )

        # On a timeout the outcome below shows what is missing; the scenario's asserts fail.
        with contextlib.suppress(AssertionError):
            await wait_until(proven, timeout_s=timeout_s, what="verify to pass", poll_s=1.0)
        assert report is not None
        totals = report.totals
        outcome = Outcome(
            scenario,
            written=totals.expected,
            indexed=totals.found,
            missing=totals.missing,
            duplicates=totals.duplicates,
            dlq=totals.in_dlq,
            drain_s=time.monotonic() - started,
        )
        print(outcome.line())
        return outcome


def assert_proven(outcome: Outcome) -> None:
    """What every scenario ends on: something was written, none missing, none twice."""
    assert outcome.missing == 0, outcome.line()
    assert outcome.duplicates == 0, outcome.line()
    assert outcome.written > 0, outcome.line()


MakePipeline = Callable[..., Pipeline]
"""The ``make_pipeline`` fixture: ``Pipeline`` arguments but the workdir (and the store URL,
which defaults to the session's node)."""
