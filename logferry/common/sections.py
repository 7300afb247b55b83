"""Config sections both daemons share: logging, the HTTP endpoint, reloads, the spool."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from logferry.common.config import ConfigModel
from logferry.common.logs import LogFormat, LogLevel
from logferry.common.units import ByteSize, MiB


class LogSettings(ConfigModel):
    """How the daemon writes its own log (stderr, one event per line)."""

    level: LogLevel = "info"
    """Lowest level written: debug, info, warning or error."""
    format: LogFormat = "json"
    """``json`` (one object per line) or ``logfmt`` (key=value pairs)."""


class HttpSettings(ConfigModel):
    """The HTTP endpoint serving /metrics, /healthz and /readyz."""

    listen_host: str = "0.0.0.0"
    """Address to bind. ``0.0.0.0`` so Prometheus and the kubelet probes reach it in a pod."""
    listen_port: int = Field(default=2020, ge=0, le=65535)
    """TCP port; 0 picks a free port (it is logged at start)."""


class ReloadSettings(ConfigModel):
    """Applying a changed config without a restart (SIGHUP always reloads)."""

    watch_interval_s: float = Field(default=5.0, ge=0, le=3600)
    """How often the config file and the files it names (keys, certificates) are checked for
    changes, which are then applied as on SIGHUP; 0 turns the watch off."""


class SpoolSettings(ConfigModel):
    """The durable on-disk buffer. Backlog lives here, never in memory."""

    directory: Path
    """Folder owned by this daemon alone (a hostPath on the node, a PV for an aggregator)."""
    max_bytes: ByteSize = 1024 * MiB
    """Size cap. When reached, the stage before the spool pauses (backpressure); nothing is
    dropped. Accepts units: ``512MiB``, ``2GiB``."""
    segment_max_bytes: ByteSize = 64 * MiB
    """Segment file size. Disk is freed a whole segment at a time once all of it is delivered."""

    @model_validator(mode="after")
    def _segments_fit(self) -> Self:
        if self.segment_max_bytes < MiB:
            raise ValueError("segment_max_bytes must be at least 1MiB")
        if self.max_bytes < 2 * self.segment_max_bytes:
            raise ValueError(
                "max_bytes must hold at least two segments (2 x segment_max_bytes), "
                "or a full spool could never free space"
            )
        return self
