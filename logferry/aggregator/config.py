"""The aggregator's configuration (``logferry aggregator --config aggregator.yaml``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from logferry.common.config import ConfigModel
from logferry.common.sections import HttpSettings, LogSettings, SpoolSettings
from logferry.common.units import ByteSize

MiB = 1024 * 1024


class ForwardInputSettings(ConfigModel):
    """The Forward Protocol v1 server that forwarders, Fluent Bit and Fluentd send to."""

    listen_host: str = "0.0.0.0"
    """Address to bind."""
    listen_port: int = Field(default=24224, ge=0, le=65535)
    """TCP port (24224 is the Forward Protocol's customary port); 0 picks a free one."""
    shared_key: str | None = None
    """When set, peers must pass the HELO/PING/PONG handshake with this key."""
    tls_cert_file: Path | None = None
    """PEM certificate; with ``tls_key_file`` the port speaks TLS."""
    tls_key_file: Path | None = None
    """PEM private key for ``tls_cert_file``."""
    max_message_bytes: ByteSize = Field(default=64 * MiB, ge=1024)
    """A message larger than this (or whose entries decompress to more) closes the connection."""
    max_entries: int = Field(default=100_000, ge=1)
    """Most events one message may carry."""
    max_connections: int = Field(default=1024, ge=1)
    """Connections beyond this are refused at accept."""
    read_timeout_s: float = Field(default=300.0, gt=0)
    """An idle peer is disconnected after this long."""


class AggregatorConfig(ConfigModel):
    """Root of aggregator.yaml."""

    log: LogSettings = LogSettings()
    """The daemon's own log."""
    http: HttpSettings = HttpSettings()
    """/metrics, /healthz, /readyz."""
    input: ForwardInputSettings = ForwardInputSettings()
    """The Forward Protocol server."""
    spool: SpoolSettings
    """The persistent-volume buffer; a chunk is acked only once fsynced here."""
    default_tenant: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Tenant for records without ``kubernetes.namespace_name``."""
