"""A forwarder daemon's config for tests: the counterpart of ``aggregator_config``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.aggregator import merge_sections


def forwarder_config(
    workdir: Path, path_glob: str, servers: list[str], **overrides: Any
) -> dict[str, Any]:
    """A forwarder tailing ``path_glob`` into its spool under ``workdir`` and sending to
    ``servers``, scanning every second and polling every 50 ms; ``overrides`` are merged
    section by section (:func:`~tests.support.aggregator.merge_sections`)."""
    config: dict[str, Any] = {
        "node_name": "node-it",
        "spool": {
            "directory": str(workdir / "spool"),
            "max_bytes": "64MiB",
            "segment_max_bytes": "4MiB",
        },
        "source": {"path_glob": path_glob, "rescan_interval_s": 1, "poll_interval_s": 0.05},
        "sender": {"servers": servers, "ack_timeout_s": 10},
    }
    return merge_sections(config, overrides)
