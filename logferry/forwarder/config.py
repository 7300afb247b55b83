"""The forwarder's configuration (``logferry forwarder --config forwarder.yaml``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from pydantic import Field, field_validator, model_validator

from logferry.common.config import ConfigModel
from logferry.common.naming import NAMESPACE
from logferry.common.secrets import InlineSecret, read_secret
from logferry.common.sections import HttpSettings, LogSettings, ReloadSettings, SpoolSettings
from logferry.common.units import ByteSize, KiB
from logferry.forwarder.multiline_rules import MultilineSettings


class PlainFiles(ConfigModel):
    """Plain text files outside Kubernetes (a node agent's log, say), shipped to a tenant."""

    glob: str
    """Files to tail, e.g. ``/var/log/node-agent/*.log``."""
    tenant: str
    """The tenant their records go to (``kubernetes.namespace_name``): a namespace name,
    e.g. ``node-logs``; the aggregators route and limit it like any namespace."""
    name: str = "file"
    """``kubernetes.container_name`` of their records (``pod_name`` is the file's name)."""

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        if not NAMESPACE.match(value):
            raise ValueError("a namespace name (lowercase letters, digits and '-')")
        return value


class SourceSettings(ConfigModel):
    """Which container log files to tail."""

    path_glob: str = "/var/log/containers/*.log"
    """Files to tail; kubelet keeps symlinks here into /var/log/pods."""
    pods_root: Path | None = None
    """kubelet's pod log folder. A file is read only if its link resolves to
    ``<pods_root>/<namespace>_<pod>_<uid>/<container>/<n>.log`` with the namespace, pod and
    container of the link's own name, and is opened there without following a symlink:
    a tenant cannot make the forwarder read a node file or another tenant's log. Default:
    ``pods`` beside the glob's folder (``/var/log/pods`` for the default glob)."""
    docker_root: Path | None = Path("/var/lib/docker/containers")
    """Where docker keeps json-file logs, into which kubelet's links point with cri-dockerd
    (``<docker_root>/<id>/<id>-json.log``): read when the id is the link's own. ``null``:
    never read there."""
    pods_glob: str | None = ""
    """kubelet's own layout, read directly as well as through the links (not every runtime
    keeps ``/var/log/containers``): a file found both ways is read once. ``""`` (the
    default): ``<pods_root>/*/*/*.log``; ``null``: the links only."""
    files: list[PlainFiles] = Field(default_factory=list)
    """Plain text files outside Kubernetes, each glob with its tenant: one line per record,
    stamped with the time it was read."""
    exclude_namespaces: list[str] = Field(default_factory=list)
    """Namespace globs whose containers are not tailed (e.g. ``kube-system``)."""
    exclude_pods: list[str] = Field(default_factory=list)
    """Pod name globs that are not tailed."""
    exclude_containers: list[str] = Field(default_factory=list)
    """Container name globs that are not tailed."""
    rescan_interval_s: float = Field(default=10.0, gt=0, le=3600)
    """Full rescan of the glob as a safety net beside inotify."""
    poll_interval_s: float = Field(default=0.25, gt=0, le=10)
    """How often open files are checked for new bytes when the last round found none."""
    read_budget_bytes: ByteSize = Field(default=1024 * KiB, ge=64 * KiB)
    """Most bytes read from one file per round, so one busy file cannot starve the others."""
    max_line_bytes: ByteSize = Field(default=1024 * KiB, ge=16 * KiB)
    """A merged line longer than this is cut and marked truncated (never dropped)."""

    @property
    def pods_glob_path(self) -> str | None:
        """The effective glob of the pods layout (see ``pods_glob``)."""
        if self.pods_glob is None:
            return None
        return self.pods_glob or str(self.pods_root_path / "*" / "*" / "*.log")

    @property
    def pods_root_path(self) -> Path:
        """The effective pods root (see ``pods_root``)."""
        if self.pods_root is not None:
            return self.pods_root
        directory = os.path.dirname(self.path_glob) or "."
        if any(c in directory for c in "*?["):
            return Path("/var/log/pods")
        return Path(os.path.dirname(os.path.normpath(directory)) or ".") / "pods"


class SenderSettings(ConfigModel):
    """Where spooled chunks go: one or more aggregators speaking Forward Protocol v1."""

    servers: list[str] = Field(default_factory=list)
    """Static ``host:port`` endpoints (``[v6]:port`` for IPv6). The forwarder needs at least
    one endpoint here or through ``dns_name``."""
    dns_name: str | None = None
    """A name resolved periodically to all its addresses (a headless Service)."""
    dns_port: int = Field(default=24224, ge=1, le=65535)
    """Port used with the addresses of ``dns_name``."""
    dns_refresh_interval_s: float = Field(default=30.0, gt=0, le=3600)
    """How often ``dns_name`` is resolved again; a failed lookup keeps the last addresses."""
    ack_timeout_s: float = Field(default=30.0, gt=0)
    """An endpoint that does not ack a chunk within this time is marked down; the chunk goes
    elsewhere with the same chunk id."""
    connect_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """Limit for TCP connect, TLS and the shared-key handshake together."""
    shared_key: InlineSecret | None = None
    """Forward Protocol shared key for the HELO/PING/PONG handshake. Prefer
    ``shared_key_file`` so the key stays in a Secret."""
    shared_key_file: Path | None = None
    """File holding the shared key (a mounted Secret); read at start, surrounding whitespace
    and the trailing newline stripped as the aggregator does; an empty one is refused."""
    tag: str = Field(default="kube", min_length=1)
    """Forward Protocol tag of every chunk (the aggregator routes by namespace, not by tag)."""
    batch_max_records: int = Field(default=2000, ge=1, le=1_000_000)
    """Most records in one chunk."""
    batch_max_bytes: ByteSize = Field(default=4 * 1024 * KiB, ge=KiB)
    """Most record bytes (uncompressed) in one chunk; a single larger record goes alone."""
    max_in_flight_per_endpoint: int = Field(default=4, ge=1, le=1024)
    """Chunks sent to one endpoint and not yet acked (the per-endpoint window)."""
    max_chunks_in_hand: int = Field(default=16, ge=1, le=4096)
    """Chunks read from the spool and not yet acked, over all endpoints: bounds memory to
    about ``max_chunks_in_hand x batch_max_bytes`` whatever the backlog."""
    backoff_initial_s: float = Field(default=0.5, gt=0, le=60)
    """First wait before a failed endpoint is tried again; doubles per failure, with jitter."""
    backoff_max_s: float = Field(default=30.0, gt=0, le=3600)
    """Longest wait before a failed endpoint is tried again."""
    tls: bool = False
    """Speak TLS to the endpoints."""
    tls_ca_file: Path | None = None
    """PEM CA bundle to verify the servers with (default: the system's trust store)."""
    tls_verify: bool = True
    """Verify the server certificate and host name. Turn off only for tests."""
    tls_server_name: str | None = None
    """Name expected in the server certificate (default: the endpoint host); useful when
    endpoints are addresses from ``dns_name``."""
    shutdown_deadline_s: float = Field(default=10.0, ge=0, le=3600)
    """On stop, how long to wait for acks of chunks in flight; the rest stays in the spool."""
    park_after_refusals: int = Field(default=5, ge=0, le=1000)
    """A chunk whose connection an aggregator closes this many times (closed or reset after
    the chunk was sent and before its ack, while it was the only chunk unacked there, by an
    endpoint that had acked other chunks) is parked in ``parked_directory`` and committed,
    so one poison chunk cannot hold the node's spool for ever. Timeouts and connect failures
    never count. 0: never park (retry for ever)."""

    @model_validator(mode="after")
    def _endpoints_valid(self) -> Self:
        for server in self.servers:
            parse_host_port(server)
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        if self.tls_ca_file is not None and not self.tls:
            raise ValueError("tls_ca_file needs tls: true")
        if self.shared_key is not None and self.shared_key_file is not None:
            raise ValueError("set shared_key or shared_key_file, not both")
        return self

    def read_shared_key(self) -> str | None:
        """The handshake key: ``shared_key``, or the content of ``shared_key_file`` (read
        now: call once at start; ConfigError if it is unreadable or empty)."""
        return read_secret(
            self.shared_key, self.shared_key_file, "sender.shared_key_file", "shared key"
        )


def parse_host_port(server: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError if malformed."""
    host, sep, port_text = server.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"server {server!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


class CheckpointSettings(ConfigModel):
    """Checkpoint records: each source announces, through the pipeline itself, how far its
    records are durable, so that ``verify`` and the auditor know where it should end without
    the node's position file."""

    interval_s: float = Field(default=60.0, ge=0, le=86400)
    """Every interval, one ``open`` checkpoint for each source that advanced since its last
    one; sources also get one when rotated, truncated, lost, and at shutdown. ``0``: no
    checkpoints at all (benchmarks)."""


class KubernetesSettings(ConfigModel):
    """Pod metadata from the API server (labels, annotations, images) on every record."""

    enabled: bool = False
    """Watch this node's pods and add their metadata to records. Off: records carry what the
    file name says (namespace, pod, container, container id, host)."""
    api_url: str | None = None
    """The API server. Default: ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``."""
    token_file: Path | None = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    """The service account token (read per request: projected tokens rotate)."""
    ca_file: Path | None = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    """The API server's CA."""
    labels: list[str] = Field(default_factory=lambda: ["*"])
    """Globs of the label keys copied to ``kubernetes.labels`` (default: all)."""
    annotations: list[str] = Field(default_factory=lambda: ["logferry.io/*"])
    """Globs of the annotation keys copied to ``kubernetes.annotations`` (default: only
    logferry's own)."""
    namespace_labels: bool = False
    """Also copy the namespace's labels to ``kubernetes.namespace_labels`` (for teams that mark
    ownership there); needs get/list/watch on namespaces in the forwarder's ClusterRole."""
    wait_for_metadata_s: float = Field(default=2.0, ge=0, le=60)
    """A file whose pod the cache does not know yet waits this long before its lines go on
    with the file name's metadata (flagged ``metadata_incomplete``)."""
    max_pods: int = Field(default=1000, ge=10, le=100_000)
    """Most pods the cache holds (a node runs a few hundred at most)."""

    def resolved_url(self) -> str:
        if self.api_url:
            return self.api_url
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        return f"https://{host}:{port}"


class ForwarderConfig(ConfigModel):
    """Root of forwarder.yaml."""

    node_name: str = Field(min_length=1)
    """This node's name, part of every source id (use ``${NODE_NAME}`` from the downward API)."""
    log: LogSettings = LogSettings()
    """The daemon's own log."""
    http: HttpSettings = HttpSettings()
    """/metrics, /healthz, /readyz."""
    reload: ReloadSettings = ReloadSettings()
    """Applying config changes live (on SIGHUP, and when the files change)."""
    spool: SpoolSettings
    """The node disk buffer (a hostPath, e.g. /var/lib/logferry/spool)."""
    source: SourceSettings = SourceSettings()
    """Container log discovery."""
    sender: SenderSettings = SenderSettings()
    """Aggregator endpoints."""
    positions_file: Path | None = None
    """Where file positions are kept (default: ``<spool.directory>/../positions``); on the
    same host path as the spool, since positions only ever trail what the spool holds."""
    kubernetes: KubernetesSettings = KubernetesSettings()
    """Pod metadata from the API server."""
    multiline: MultilineSettings = MultilineSettings()
    """Joining stack traces and other continuation lines into one record, at the source."""
    checkpoints: CheckpointSettings = CheckpointSettings()
    """Checkpoint records: proof of how far each source got, sent like any record."""
    parked_directory: Path | None = None
    """Where chunks refused ``sender.park_after_refusals`` times are kept, one file each
    (default: ``<spool.directory>/../parked``); list and requeue them with
    ``logferry forwarder parked list|requeue``."""

    @model_validator(mode="after")
    def _has_endpoints(self) -> ForwarderConfig:
        if not self.sender.servers and self.sender.dns_name is None:
            raise ValueError("sender needs servers or dns_name: somewhere to send to")
        return self

    @property
    def positions_path(self) -> Path:
        """The effective positions file."""
        return self.positions_file or Path(self.spool.directory).parent / "positions"

    @property
    def parked_path(self) -> Path:
        """The effective folder of parked chunks."""
        return self.parked_directory or Path(self.spool.directory).parent / "parked"
