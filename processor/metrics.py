"""The processor's own metrics, exposed in Prometheus format on the admin endpoint.

One registry per process (not prometheus_client's global one) so in-process tests start clean.
Every counter is incremented once per request or export, never per record.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from .pipeline import Stats


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests_received = Counter(
            "triage_requests_received", "OTLP export requests received.", ["transport"], registry=registry
        )
        self.requests_rejected = Counter(
            "triage_requests_rejected",
            "OTLP export requests refused (invalid, too_large, unsupported, overloaded, shutting_down).",
            ["transport", "reason"],
            registry=registry,
        )
        self.records_received = Counter(
            "triage_records_received", "Log records accepted (and acknowledged).", ["transport"], registry=registry
        )
        self.spans_received = Counter(
            "triage_spans_received", "Spans received as evidence (TRIAGE_TRACES_AS_EVIDENCE; not forwarded).",
            ["transport"], registry=registry,
        )
        self.records_rejected = Counter(
            "triage_records_rejected", "Records refused inside an accepted request (partial success).", ["reason"],
            registry=registry,
        )
        self.redactions = Counter(
            "triage_redactions", "Secrets replaced by [REDACTED], by rule (attribute, jwt, ...).", ["rule"],
            registry=registry,
        )
        self.records_by_source = Counter(
            "triage_records_by_source", "Log records by decided source.", ["source"], registry=registry
        )
        self.records_downgraded = Counter(
            "triage_records_downgraded", "Log records downgraded to DEBUG, by rule.", ["rule"], registry=registry
        )
        self.records_would_downgrade = Counter(
            "triage_records_would_downgrade", "Shadow mode: records a rule would have downgraded.", ["rule"],
            registry=registry,
        )
        self.records_forwarded = Counter(
            "triage_records_forwarded", "Log records the backend accepted.", registry=registry
        )
        self.records_dropped = Counter(
            "triage_records_dropped",
            "Acknowledged records that did not reach the backend: permanent_error, partial_success, shutdown.",
            ["reason"],
            registry=registry,
        )
        self.export_requests = Counter(
            "triage_export_requests", "Export attempts to the backend, by outcome.", ["outcome"], registry=registry
        )
        self.export_retries = Counter(
            "triage_export_retries", "Export attempts that will be retried.", registry=registry
        )
        self.queue_bytes = Gauge("triage_queue_bytes", "Bytes of requests queued or in flight.", registry=registry)
        self.queue_records = Gauge("triage_queue_records", "Records queued or in flight.", registry=registry)
        self.queue_batches = Gauge("triage_queue_batches", "Requests queued or in flight.", registry=registry)
        self.held_records = Gauge(
            "triage_held_records", "Records held waiting for their trace's evidence.", registry=registry
        )
        self.correlation_traces = Gauge(
            "triage_correlation_traces", "Traces whose verdict is remembered.", registry=registry
        )
        self.correlation_evicted = Gauge(
            "triage_correlation_evicted_traces",
            "Traces forgotten early because TRIAGE_CORRELATION_MAX_TRACES was reached (a counter).",
            registry=registry,
        )

    def received(self, transport: str, records: int) -> None:
        self.requests_received.labels(transport).inc()
        self.records_received.labels(transport).inc(records)

    def processed(self, stats: Stats) -> None:
        for source, count in stats.by_source.items():
            self.records_by_source.labels(source).inc(count)
        for rule, count in stats.downgraded.items():
            self.records_downgraded.labels(rule).inc(count)
        for rule, count in stats.would_downgrade.items():
            self.records_would_downgrade.labels(rule).inc(count)

    def rejected(self, transport: str, reason: str) -> None:
        self.requests_received.labels(transport).inc()
        self.requests_rejected.labels(transport, reason).inc()
