"""Every metric the aggregator exports (one registry per daemon instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from logferry.common import metrics


class AggregatorMetrics:
    """The aggregator's Prometheus metrics; label sets come from the fixed allowed set."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        metrics.standard(r, "aggregator")

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return metrics.counter(r, name, doc, labels)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return metrics.gauge(r, name, doc, labels)

        # input
        self.connections = gauge("connections", "Open Forward Protocol connections.")
        self.input_buffered_bytes = gauge(
            "input_buffer_reserved_bytes",
            "Room reserved in input.buffer_budget_bytes for messages being received.",
        )
        self.connections_total = counter(
            "connection_attempts", "Forward Protocol connections accepted or refused.", "status"
        )
        self.protocol_errors = counter(
            "protocol_errors", "Connections closed for a protocol violation.", "reason"
        )
        self.handshake_failures = counter(
            "handshake_failures", "Peers refused by the shared-key handshake.", "reason"
        )
        self.records_in = counter("records_in", "Records received, by tenant.", "tenant")
        self.records_unsupported = counter(
            "records_unsupported",
            "Messages of a non-log signal (Fluent Bit's fluent_signal: metrics, traces, ...):"
            " acked, their payload parked in the DLQ with reason unsupported_signal.",
            "signal",
        )
        self.bytes_in = counter("bytes_in", "Wire bytes of received messages.")
        self.records_rerouted = counter(
            "records_rerouted",
            "Records sent to the default tenant because the tenant policy refused their"
            " namespace (not_allowed: outside routing.allowed_namespaces; tenant_cap: past"
            " routing.max_tenants). Each carries rerouted.from and rerouted.reason.",
            "reason",
        )
        self.records_time_adjusted = counter(
            "records_time_adjusted",
            "Records whose event time was outside the accepted window: stored at the receive"
            " time, the original kept in @timestamp_original.",
            "tenant",
        )
        self.records_unrenderable = counter(
            "records_unrenderable",
            "Records that could not be rendered (too_deep, encode_error): parked in the DLQ"
            " with the bytes received, the rest of their message acked.",
            "tenant",
            "reason",
        )
        self.records_unrenderable_kept = counter(
            "records_unrenderable_kept",
            "Unrenderable records kept as documents in the tenant's own index because its"
            " DLQ share was full.",
            "tenant",
        )
        self.records_filtered = counter(
            "records_filtered", "Records discarded by a tenant filter, on purpose.", "tenant"
        )
        self.records_diverted = counter(
            "records_diverted",
            "Records of a stuck tenant (share full, nothing delivered for "
            "spool.divert_stuck_after_s) parked in the DLQ instead of holding up others.",
            "tenant",
        )
        self.accounting_records = counter(
            "accounting_records",
            "Accounting records written: one per source and message listing the seq ranges "
            "the tenant's filters discarded (what verify counts them by).",
            "tenant",
        )
        self.checkpoints_received = counter(
            "checkpoints_received",
            "Forwarder checkpoint records received (_lf.kind: checkpoint): stored in the "
            "tenant's accounting index, past its pipelines; not counted in records_in.",
            "tenant",
        )
        self.records_kind_refused = counter(
            "records_kind_refused",
            "Records that arrived with an _lf.kind logferry does not take from the wire "
            "(reason reserved_kind: accounting or unknown; malformed_checkpoint): stored as log "
            "records, the kind kept in _lf.wire_kind, so they never pass for logferry's own.",
            "tenant",
            "reason",
        )
        self.pipeline_over_budget = counter(
            "pipeline_over_budget",
            "Messages whose tenant pipelines ran out of time (the rest went on unfiltered).",
            "tenant",
        )
        self.pipeline_errors = counter(
            "pipeline_errors",
            "Records a pipeline filter failed on (kept unchanged, never dropped).",
            "tenant",
        )
        self.pipeline_bypassed = gauge(
            "pipeline_bypassed",
            "1 while the tenant's pipelines are bypassed for using more CPU than their"
            " allowance (records pass unfiltered), else 0.",
            "tenant",
        )
        self.pipeline_bypassed_records = counter(
            "pipeline_bypassed_records",
            "Records passed on unfiltered because their tenant was over its CPU allowance.",
            "tenant",
        )
        self.pipeline_states = gauge(
            "pipelines", "LogPipelines by state (Accepted, Rejected).", "tenant", "status"
        )
        self.pipeline_rejections = counter(
            "pipeline_rejections",
            "Pipeline changes refused (the tenant keeps the last good version).",
            "tenant",
        )
        self.acks = counter("acks", "Chunks acknowledged after their records were fsynced.")
        self.ack_latency = Histogram(
            "logferry_ack_latency_seconds",
            "From a chunk's last byte received to its ack sent.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        # spool
        self.spool_capacity = gauge(
            "spool_capacity_bytes",
            "Most bytes this process's spools may hold: kind=volume for all its tenants "
            "together (spool.max_bytes, or a worker's share), kind=tenant for each one's share.",
            "kind",
        )
        self.spool_bytes = gauge(
            "spool_bytes",
            "Bytes on disk in the tenant's spool (segments not yet freed, delivered or not).",
            "tenant",
        )
        self.spool_fragments = gauge(
            "spool_fragments",
            "Spool records not yet delivered: fragments, each a chunk's documents of one tenant.",
            "tenant",
        )
        self.spool_oldest_age = gauge(
            "spool_oldest_record_age_seconds", "Age of the oldest undelivered record.", "tenant"
        )
        self.spool_quarantined = counter(
            "spool_quarantined_bytes", "Damaged spool bytes moved to quarantine at start."
        )
        self.backpressure_waits = counter(
            "backpressure_waits", "Times ingest paused because a spool was full.", "tenant"
        )
        # output
        self.records_out = counter(
            "records_out", "Records the store confirmed (created or already there).", "tenant"
        )
        self.bytes_out = counter("bytes_out", "Uncompressed document bytes delivered.", "tenant")
        self.template_installs = counter(
            "store_template_installs",
            "Index template checks at start, by outcome: installed, current (already there), "
            "newer_kept (a newer logferry's template is left alone), failed (retried).",
            "outcome",
        )
        self.indices_deleted = counter(
            "store_indices_deleted", "Indices the janitor deleted past retention.", "tenant"
        )
        self.janitor_runs = counter(
            "store_janitor_runs",
            "Janitor rounds, by outcome: deleted, nothing, not_holder (another aggregator "
            "holds the lease), error.",
            "outcome",
        )
        self.store_refusals = counter(
            "store_refusals",
            "Documents the store refused for a reason about the cluster, not the document "
            "(too_many_shards, write_block, disk_watermark, index_closed, index_missing, "
            "shards_unavailable, rejected_execution, cluster_unavailable, too_many_requests, "
            "store_error): kept in the spool and sent again, never dead-lettered.",
            "tenant",
            "reason",
        )
        self.duplicates = counter(
            "duplicates", "Records the store already had (409 on create): resends.", "tenant"
        )
        self.bulk_requests = counter("bulk_requests", "Bulk requests by outcome.", "status")
        self.retries = counter("output_retries", "Records sent again after a failure.", "tenant")
        self.dlq_records = counter(
            "dlq_records",
            "Records the store refused for good, kept in the DLQ.",
            "tenant",
            "reason",
        )


class SupervisorMetrics:
    """What the supervisor of several worker processes exports beside its workers' metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        metrics.standard(r, "supervisor")
        self.workers = metrics.gauge(
            r,
            "aggregator_workers",
            "Worker processes this aggregator runs (the workers setting, resolved).",
            (),
        )
        self.running = metrics.gauge(
            r, "aggregator_workers_running", "Worker processes of this aggregator running now.", ()
        )
        self.restarts = metrics.counter(
            r,
            "aggregator_worker_restarts",
            "Workers started again after they exited unasked (crash, SIGKILL, OOM).",
            ("worker",),
        )
