"""Every metric the forwarder exports (one registry per daemon instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from logferry.common import metrics


class ForwarderMetrics:
    """The forwarder's Prometheus metrics; label sets come from the fixed allowed set.

    Discovery, the tails, the sender and parking each increment theirs where the event
    happens; gauges of current state (lag, open files, spool) are read at scrape time.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = self.registry = registry if registry is not None else CollectorRegistry()
        metrics.standard(registry, "forwarder")

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return metrics.counter(registry, name, doc, labels)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return metrics.gauge(registry, name, doc, labels)

        self.lines_read = counter("lines_read", "Physical log lines read.", "tenant")
        self.bytes_read = counter("bytes_read", "Log file bytes read.", "tenant")
        self.records_spooled = counter("records_spooled", "Records made durable in the spool.")
        self.rotations = counter("rotations", "Files drained and released after rotation/deletion.")
        self.truncations = counter("truncations", "Files found truncated (a new generation).")
        self.sources_found_rotated = counter(
            "sources_found_rotated",
            "Files created and rotated away while the forwarder was down, found beside their "
            "container's log at start and read whole.",
        )
        self.sources_lost = counter(
            "sources_lost",
            "Sources with unread bytes whose file was gone before it could be drained "
            "(rotated and deleted while the forwarder was down).",
        )
        self.partial_merges = counter("partial_merges", "Split lines merged into one record.")
        self.truncated_lines = counter(
            "truncated_lines", "Lines cut at source.max_line_bytes (kept, flagged)."
        )
        self.malformed_lines = counter(
            "malformed_lines", "Lines not in the file's format, forwarded raw and flagged."
        )
        self.multiline_joined_lines = counter(
            "multiline_joined_lines",
            "Lines a multiline rule joined to the line before them (one record covers them).",
            "tenant",
        )
        self.multiline_split_groups = counter(
            "multiline_split_groups",
            "Joined records cut at multiline.max_lines or max_bytes (the rest starts a new "
            "record; nothing is dropped).",
            "tenant",
        )
        self.multiline_pipelines_refused = counter(
            "multiline_pipelines_refused",
            "LogPipeline documents in multiline.pipelines_directory the forwarder refused "
            "(their last accepted version stays in force).",
        )
        self.metadata_incomplete = counter(
            "records_metadata_incomplete",
            "Records spooled with only the file name's metadata: the pod was not (yet) known "
            "from the API server (flagged kubernetes.metadata_incomplete).",
            "tenant",
        )
        self.records_excluded = counter(
            "records_excluded",
            "Records not shipped because their pod has the logferry.io/exclude annotation "
            "(excluded by policy, not lost).",
            "tenant",
        )
        self.checkpoints = counter(
            "checkpoints",
            "Checkpoint records spooled (a source's durable next seq: open, finished or lost); "
            "not log records, so in no record or line count.",
            "tenant",
        )
        self.open_files = gauge("open_files", "Files being tailed.")
        self.lag_bytes = gauge(
            "lag_bytes",
            "Bytes written to tailed files but not read yet (file size minus position).",
            "tenant",
        )
        self.spool_capacity = gauge(
            "node_spool_capacity_bytes", "Most bytes the node spool may hold (spool.max_bytes)."
        )
        self.spool_bytes = gauge(
            "node_spool_bytes",
            "Bytes on disk in the node spool (segments not yet freed, acked or not).",
        )
        self.spool_quarantined_frames = counter(
            "node_spool_quarantined_frames",
            "Damaged node spool frames moved to quarantine at start (their records are lost; "
            "verify reports them missing).",
        )
        self.spool_quarantined_bytes = counter(
            "node_spool_quarantined_bytes", "Damaged node spool bytes moved to quarantine at start."
        )
        self.positions_quarantined = counter(
            "positions_quarantined",
            "Damaged position files set aside at start (every file is then read again from "
            "its start; record ids make the resend harmless).",
        )
        self.spool_blocks = gauge(
            "node_spool_blocks", "Node spool blocks (compressed groups of records) not yet acked."
        )
        self.spool_volume_bytes = gauge(
            "node_spool_volume_bytes",
            "Size of the filesystem holding the spool (a warning at start when it is smaller "
            "than a few segments or than spool.max_bytes).",
        )
        # discovery
        self.files_skipped = counter(
            "files_skipped",
            "Container log files refused, by reason (each refusal counted once, not per "
            "rescan): outside_pods_root, not_pod_layout, wrong_owner (the link's target is "
            "another container's file), symlink, not_regular.",
            "reason",
        )
        # sender
        self.chunks_sent = counter("sender_chunks_sent", "Chunks sent.", "endpoint")
        self.chunks_acked = counter("sender_chunks_acked", "Chunks acked.", "endpoint")
        self.chunks_retried = counter(
            "sender_chunks_retried", "Chunk attempts that failed.", "endpoint"
        )
        self.records_acked = counter("sender_records_acked", "Records acked.")
        self.ack_latency = Histogram(
            "logferry_sender_ack_latency_seconds",
            "From writing a chunk to its ack.",
            metrics.check_labels(("endpoint",)),
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.endpoints_up = gauge("sender_endpoints_up", "Endpoints that are healthy.")
        self.chunks_parked = counter(
            "chunks_parked",
            "Chunks the aggregators refused sender.park_after_refusals times, written to the "
            "parked folder and committed (requeue with logferry forwarder parked requeue).",
            "reason",
        )
