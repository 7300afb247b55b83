"""The aggregator's configuration (``logferry aggregator --config aggregator.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from pydantic import Field, field_validator, model_validator

from logferry.aggregator.dlq import DeadLetterSettings
from logferry.aggregator.outputs import OutputSettings
from logferry.aggregator.pipeline_watch import PipelineSettings
from logferry.aggregator.spools import AggregatorSpoolSettings
from logferry.common.config import ConfigModel
from logferry.common.naming import DEFAULT_TENANT, NAMESPACE, PREFIX
from logferry.common.secrets import InlineSecret
from logferry.common.sections import HttpSettings, LogSettings, ReloadSettings
from logferry.common.units import ByteSize, MiB
from logferry.store.settings import IndexSettings


class ForwardInputSettings(ConfigModel):
    """The Forward Protocol server that forwarders, Fluent Bit and Fluentd send to."""

    listen_host: str = "0.0.0.0"
    """Address to bind."""
    listen_port: int = Field(default=24224, ge=0, le=65535)
    """TCP port (24224 is the Forward Protocol's customary port); 0 picks a free one."""
    shared_key: InlineSecret | None = None
    """When set, peers must pass the HELO/PING/PONG handshake with this key. Prefer
    ``shared_key_file`` so the key stays in a Secret."""
    shared_key_file: Path | None = None
    """File holding the shared key (a mounted Secret); read at start, an empty one refused."""
    users: dict[str, Path] = Field(default_factory=dict)
    """Username -> file holding that user's password; when set, PING must carry valid
    credentials as well as the shared key. An empty password file is refused at start."""
    tls_cert_file: Path | None = None
    """PEM certificate; with ``tls_key_file`` the port speaks TLS."""
    tls_key_file: Path | None = None
    """PEM private key for ``tls_cert_file``."""
    tls_client_ca_file: Path | None = None
    """PEM CA bundle: peers must present a client certificate signed by it (TLS client
    authentication; needs ``tls_cert_file``)."""
    allow_unauthenticated: bool = False
    """Accept peers that neither pass a shared-key handshake nor present a client
    certificate. Without a shared key or ``tls_client_ca_file`` the aggregator refuses to
    start unless this is set: anyone who can reach the port could write any tenant's logs."""
    handshake_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """A peer must finish the TLS handshake, and then send its PING, within this; until then
    only a small PING is read from it."""
    max_message_bytes: ByteSize = Field(default=8 * MiB, ge=1024)
    """A message larger than this on the wire closes the connection (the forwarder's chunks
    are at most ``sender.batch_max_bytes`` before compression, 4MiB by default)."""
    max_decompressed_bytes: ByteSize = Field(default=16 * MiB, ge=1024)
    """Most bytes one message's entries may expand to when decompressed; enforced while
    decompressing, so a small gzip bomb is refused before it grows."""
    max_record_bytes: ByteSize = Field(default=1280 * 1024, ge=1024)
    """Most msgpack bytes one entry may take: the forwarder's lines are at most
    ``source.max_line_bytes`` (1MiB by default) plus their metadata; raise both together.
    Bounds the Python objects one record can become; a larger entry closes the connection."""
    max_entries: int = Field(default=100_000, ge=1)
    """Most events one message may carry."""
    buffer_budget_bytes: ByteSize = Field(default=256 * MiB, ge=MiB)
    """Room for messages being received, all connections together: a message larger than
    one 64KiB read takes a slot of ``max_message_bytes`` before the rest is read (one source
    address at most a quarter of the budget), so many large messages at once wait instead of
    multiplying memory. Each of the aggregator's ``workers`` takes an even share (at least one
    ``max_message_bytes``)."""
    message_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    """A message begun must be complete within this, or its connection is closed (a peer
    cannot hold its share of the buffer budget by sending slowly)."""
    max_connections: int = Field(default=1024, ge=1)
    """Connections beyond this are refused at accept (for the aggregator as a whole: each of
    its ``workers`` takes an even share)."""
    max_connections_per_source: int = Field(default=64, ge=1)
    """Connections one source address may hold at once; more are refused at accept (for the
    aggregator as a whole: each of its ``workers`` takes an even share)."""
    read_timeout_s: float = Field(default=300.0, gt=0)
    """An idle peer is disconnected after this long."""

    @model_validator(mode="after")
    def _pairs(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        if self.shared_key is not None and self.shared_key_file is not None:
            raise ValueError("set shared_key or shared_key_file, not both")
        if self.users and self.shared_key is None and self.shared_key_file is None:
            raise ValueError("users need a shared key (the handshake carries both)")
        if self.max_decompressed_bytes < self.max_record_bytes:
            raise ValueError("max_decompressed_bytes must be at least max_record_bytes")
        if self.buffer_budget_bytes < self.max_message_bytes:
            raise ValueError("buffer_budget_bytes must hold at least one max_message_bytes")
        return self

    @property
    def authenticates(self) -> bool:
        """True when peers must prove who they are (shared key or client certificate)."""
        keyed = self.shared_key is not None or self.shared_key_file is not None
        return keyed or self.tls_client_ca_file is not None


class RoutingSettings(ConfigModel):
    """How records find their tenant and index."""

    index_prefix: str = "logs"
    """Indices are ``<index_prefix>-<namespace>-<date>`` (UTC, from the event time; the date
    by the tenant's ``indices`` period: ``YYYY.MM.DD``, ``YYYY.wWW`` or ``YYYY.MM``)."""
    default_tenant: str = "_default"
    """Tenant for records without a valid ``kubernetes.namespace_name``. Starts with '_' so it
    can never be a real namespace."""
    max_tenants: int = Field(default=10_000, ge=1)
    """Most tenants (namespaces, each with its spool and indices) one aggregator takes. The
    records of a namespace past the cap go to ``default_tenant``, marked ``rerouted`` (with
    the namespace and the reason), and counted."""
    allowed_namespaces: list[str] | None = None
    """When set, only these namespaces are tenants; the records of any other go to
    ``default_tenant``, marked ``rerouted``, and counted."""
    max_event_age_s: int = Field(default=7 * 86400, ge=60)
    """Event times older than this (relative to receipt) are stored at the receive time, the
    original kept in ``@timestamp_original``: nobody can create an index for every day since
    1970."""
    max_event_ahead_s: int = Field(default=86400, ge=60)
    """Event times further ahead than this are treated the same way."""

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

    @field_validator("allowed_namespaces")
    @classmethod
    def _namespaces(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if not NAMESPACE.match(name):
                raise ValueError(f"{name!r} is not a namespace name")
        return value


class AggregatorConfig(ConfigModel):
    """Root of aggregator.yaml."""

    log: LogSettings = LogSettings()
    """The daemon's own log."""
    http: HttpSettings = HttpSettings()
    """/metrics, /healthz, /readyz."""
    reload: ReloadSettings = ReloadSettings()
    """Applying config changes live (on SIGHUP, and when the files change)."""
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
    tenants: Any = None
    """No longer supported: a tenant's filters are a LogPipeline in ``pipelines.directory``
    (time-bounded regexes, a CPU allowance, proof of what they discard). Refused at load."""
    pipelines: PipelineSettings | None = None
    """Tenant LogPipelines from a watched directory, applied without a restart."""
    indices: IndexSettings = IndexSettings()
    """The tenants' indices in the store: template, period, retention, shard budget."""
    workers: int = Field(default=0, ge=0, le=64)
    """Worker processes sharing the input port, each with its own tenant spools under
    ``spool.directory`` (the spool budgets split evenly) and its own outputs; the pod keeps
    one /metrics (samples labelled ``worker``) and one set of probes. 0: the cores this
    process may use (its CPU affinity, capped by a cgroup CPU limit). 1: one process."""
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

    @model_validator(mode="after")
    def _authenticated(self) -> Self:
        if not (self.input.authenticates or self.input.allow_unauthenticated):
            raise ValueError(
                "input: no authentication configured: set input.shared_key_file (or "
                "shared_key), or input.tls_client_ca_file with tls_cert_file and tls_key_file; "
                "to accept anyone who reaches the port, set input.allow_unauthenticated: true"
            )
        return self

    @field_validator("tenants")
    @classmethod
    def _no_static_filters(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError(
                "tenants.<namespace>.filters is no longer supported: declare the same filters "
                "in a LogPipeline for that namespace (see pipelines.directory), which runs them "
                "with time-bounded regexes, a CPU allowance per tenant and proof markers"
            )
        return value
