"""An aggregator daemon for tests: its config, the ``make_aggregator`` fixture, and the small
things tests ask of one (its input port, a fresh tenant name)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.net import free_port

MakeAggregator = Callable[..., DaemonProcess]


def merge_sections(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, one level deep: a section given as a dict
    replaces only the keys it names; anything else replaces the whole value."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def aggregator_config(workdir: Path, store_url: str | None, **overrides: Any) -> dict[str, Any]:
    """An aggregator on a free port of 127.0.0.1 with its spool and DLQ under ``workdir``,
    writing to the store at ``store_url`` (or to nothing, for ``None``); ``overrides`` are
    merged section by section (:func:`merge_sections`)."""
    config: dict[str, Any] = {
        "input": {
            "listen_host": "127.0.0.1",
            "listen_port": free_port(),
            # fluent-logger and the third-party peers cannot do the shared-key handshake
            "allow_unauthenticated": True,
        },
        "spool": {
            "directory": str(workdir / "spool"),
            "max_bytes": "256MiB",
            "tenant_max_bytes": "64MiB",
            "segment_max_bytes": "4MiB",
        },
        "dlq": {"directory": str(workdir / "dlq")},
        "output": (
            {"type": "opensearch", "urls": [store_url], "retry_max_s": 1.0, "retry_initial_s": 0.05}
            if store_url
            else {"type": "null"}
        ),
        # One node: a replica could never be assigned (every index would stay yellow).
        "indices": {"replicas": 0},
        "shutdown_deadline_s": 10,
        # One process unless a test asks for workers: a test reads one spool folder and one
        # process's metrics (tests/integration/test_aggregator_workers.py runs several).
        "workers": 1,
    }
    return merge_sections(config, overrides)


@pytest.fixture
def make_aggregator(tmp_path: Path, daemons: list[DaemonProcess]) -> MakeAggregator:
    """``make(store_url, name="agg", **overrides)``: an aggregator (not started yet) working
    under ``tmp_path / name``; killed at the end of the test if still running."""

    def make(store_url: str | None, name: str = "agg", **overrides: Any) -> DaemonProcess:
        workdir = tmp_path / name
        daemon = DaemonProcess(
            "aggregator", workdir, aggregator_config(workdir, store_url, **overrides)
        )
        daemons.append(daemon)
        return daemon

    return make


def input_port(daemon: DaemonProcess) -> int:
    """The Forward Protocol port of an aggregator."""
    return int(daemon.config["input"]["listen_port"])


def input_address(daemon: DaemonProcess) -> str:
    """``host:port`` of an aggregator's Forward Protocol input, as a sender's ``servers``."""
    return f"127.0.0.1:{input_port(daemon)}"


def unique_ns(prefix: str) -> str:
    """A namespace (tenant) no other test uses: the store is shared by the whole session."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
