"""The forwarder's configuration (``logferry forwarder --config forwarder.yaml``)."""

from __future__ import annotations

from pydantic import Field

from logferry.common.config import ConfigModel
from logferry.common.sections import HttpSettings, LogSettings, SpoolSettings
from logferry.common.units import ByteSize

KiB = 1024


class SourceSettings(ConfigModel):
    """Which container log files to tail."""

    path_glob: str = "/var/log/containers/*.log"
    """Files to tail; kubelet keeps symlinks here into /var/log/pods."""
    exclude_namespaces: list[str] = Field(default_factory=list)
    """Namespace globs whose containers are not tailed (e.g. ``kube-system``)."""
    exclude_pods: list[str] = Field(default_factory=list)
    """Pod name globs that are not tailed."""
    exclude_containers: list[str] = Field(default_factory=list)
    """Container name globs that are not tailed."""
    rescan_interval_s: float = Field(default=10.0, gt=0, le=3600)
    """Full rescan of the glob as a safety net beside inotify."""
    max_line_bytes: ByteSize = Field(default=1024 * KiB, ge=16 * KiB)
    """A merged line longer than this is cut and marked truncated (never dropped)."""


class SenderSettings(ConfigModel):
    """Where spooled chunks go: one or more aggregators speaking Forward Protocol v1."""

    servers: list[str] = Field(default_factory=list)
    """Static ``host:port`` endpoints."""
    dns_name: str | None = None
    """A name resolved periodically to all its addresses (a headless Service)."""
    dns_port: int = Field(default=24224, ge=1, le=65535)
    """Port used with the addresses of ``dns_name``."""
    ack_timeout_s: float = Field(default=30.0, gt=0)
    """An endpoint that does not ack a chunk within this time is marked down; the chunk goes
    elsewhere with the same chunk id."""
    shared_key: str | None = None
    """Forward Protocol shared key for the HELO/PING/PONG handshake."""


class ForwarderConfig(ConfigModel):
    """Root of forwarder.yaml."""

    node_name: str = Field(min_length=1)
    """This node's name, part of every source id (use ``${NODE_NAME}`` from the downward API)."""
    log: LogSettings = LogSettings()
    """The daemon's own log."""
    http: HttpSettings = HttpSettings()
    """/metrics, /healthz, /readyz."""
    spool: SpoolSettings
    """The node disk buffer (a hostPath, e.g. /var/lib/logferry/spool)."""
    source: SourceSettings = SourceSettings()
    """Container log discovery."""
    sender: SenderSettings = SenderSettings()
    """Aggregator endpoints."""
