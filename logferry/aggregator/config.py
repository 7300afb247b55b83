"""The aggregator's configuration (``logferry aggregator --config aggregator.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from pydantic import Field, field_validator, model_validator

from logferry.aggregator.dlq import DeadLetterSettings
from logferry.aggregator.filters import FilterConfig
from logferry.aggregator.outputs import OutputSettings
from logferry.aggregator.pipeline_watch import PipelineSettings
from logferry.aggregator.routing import DEFAULT_TENANT, NAMESPACE, PREFIX
from logferry.aggregator.spools import AggregatorSpoolSettings
from logferry.common.config import ConfigModel
from logferry.common.sections import HttpSettings, LogSettings
from logferry.common.units import ByteSize

MiB = 1024 * 1024


class ForwardInputSettings(ConfigModel):
    """The Forward Protocol server that forwarders, Fluent Bit and Fluentd send to."""

    listen_host: str = "0.0.0.0"
    """Address to bind."""
    listen_port: int = Field(default=24224, ge=0, le=65535)
    """TCP port (24224 is the Forward Protocol's customary port); 0 picks a free one."""
    shared_key: str | None = None
    """When set, peers must pass the HELO/PING/PONG handshake with this key. Prefer
    ``shared_key_file`` so the key stays in a Secret."""
    shared_key_file: Path | None = None
    """File holding the shared key (a mounted Secret)."""
    users: dict[str, Path] = Field(default_factory=dict)
    """Username -> file holding that user's password; when set, PING must carry valid
    credentials as well as the shared key."""
    tls_cert_file: Path | None = None
    """PEM certificate; with ``tls_key_file`` the port speaks TLS."""
    tls_key_file: Path | None = None
    """PEM private key for ``tls_cert_file``."""
    max_message_bytes: ByteSize = Field(default=64 * MiB, ge=1024)
    """A message larger than this closes the connection (decompressed entries may be 8x)."""
    max_entries: int = Field(default=100_000, ge=1)
    """Most events one message may carry."""
    max_connections: int = Field(default=1024, ge=1)
    """Connections beyond this are refused at accept."""
    read_timeout_s: float = Field(default=300.0, gt=0)
    """An idle peer is disconnected after this long."""

    @model_validator(mode="after")
    def _pairs(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.shared_key is not None and self.shared_key_file is not None:
            raise ValueError("set shared_key or shared_key_file, not both")
        if self.users and self.shared_key is None and self.shared_key_file is None:
            raise ValueError("users need a shared key (the handshake carries both)")
        return self


class RoutingSettings(ConfigModel):
    """How records find their tenant and index."""

    index_prefix: str = "logs"
    """Indices are ``<index_prefix>-<namespace>-YYYY.MM.DD`` (UTC, from the event time)."""
    default_tenant: str = "_default"
    """Tenant for records without a valid ``kubernetes.namespace_name``. Starts with '_' so it
    can never be a real namespace."""

    @field_validator("index_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not PREFIX.match(value):
            raise ValueError("lowercase letters, digits and '-', at most 32 characters")
        return value

    @field_validator("default_tenant")
    @classmethod
    def _default(cls, value: str) -> str:
        if not DEFAULT_TENANT.match(value):
            raise ValueError("must be '_' followed by a DNS label, e.g. '_default'")
        return value


class TenantSettings(ConfigModel):
    """One tenant's processing (the LogPipeline resources feed this later)."""

    filters: list[FilterConfig] = Field(default_factory=list)
    """Filters run in order on the tenant's records before they are spooled."""


class AggregatorConfig(ConfigModel):
    """Root of aggregator.yaml."""

    log: LogSettings = LogSettings()
    """The daemon's own log."""
    http: HttpSettings = HttpSettings()
    """/metrics, /healthz, /readyz."""
    input: ForwardInputSettings = ForwardInputSettings()
    """The Forward Protocol server."""
    spool: AggregatorSpoolSettings
    """The persistent-volume buffer; a chunk is acked only once fsynced here."""
    routing: RoutingSettings = RoutingSettings()
    """Tenant and index naming."""
    output: OutputSettings
    """Where documents go: ``opensearch``/``elasticsearch`` (bulk), ``file`` (NDJSON per index)
    or ``null`` (discard; for benchmarks). Without this section: ``file`` under
    ``<spool.directory>/../output``."""
    dlq: DeadLetterSettings
    """Dead-letter queue for documents the store refuses for good. Default: directory
    ``<spool.directory>/../dlq``."""
    tenants: dict[str, TenantSettings] = Field(default_factory=dict)
    """Per-tenant filters, keyed by namespace."""
    pipelines: PipelineSettings | None = None
    """Tenant LogPipelines from a watched directory, applied without a restart."""
    shutdown_deadline_s: float = Field(default=20.0, gt=0, le=3600)
    """On SIGTERM: time to finish in-flight acks and let the output flush, before exiting with
    the rest left safely in the spool."""

    @model_validator(mode="before")
    @classmethod
    def _embedded_defaults(cls, data: Any) -> Any:
        # The file output and the DLQ sit beside the spool unless configured elsewhere.
        spool = data.get("spool") if isinstance(data, dict) else None
        directory = spool.get("directory") if isinstance(spool, dict) else None
        if not isinstance(directory, str | Path):
            return data
        base = Path(directory).parent
        data = dict(data)
        if data.get("output") is None:
            data["output"] = {"type": "file", "directory": str(base / "output")}
        if data.get("dlq") is None:
            data["dlq"] = {"directory": str(base / "dlq")}
        return data

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, value: dict[str, TenantSettings]) -> dict[str, TenantSettings]:
        for name in value:
            if not (NAMESPACE.match(name) or DEFAULT_TENANT.match(name)):
                raise ValueError(f"tenant {name!r} is not a namespace name")
        return value
