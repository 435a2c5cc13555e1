"""Wires the parts together and runs them: start-up, serving, and the SIGTERM drain."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import signal
import time

from .admin import Admin
from .classify import Classifier, builtin_catalog, load_catalog
from .classify.classifier import MonitorCidrs
from .config import Config
from .correlation import TraceMemory
from .downgrade import load_rule_set
from .export import Exporter, make_transport
from .intake import Intake, Limits
from .metrics import Metrics
from .pipeline import Pipeline
from .disk_queue import DiskQueue
from .queue import BoundedQueue
from .redact import Redactor
from .security import FileWatcher, TlsMaterial, TokenAuth
from .receivers.grpc import GrpcReceiver
from .receivers.http import HttpReceiver

log = logging.getLogger("otlp-triage")


def build_classifier(config: Config) -> Classifier:
    signatures = builtin_catalog()
    if config.signatures_file:
        signatures = load_catalog(config.signatures_file) + signatures
    sources = {s.name: s.source for s in signatures}
    # A monitor named in TRIAGE_MONITOR_CIDRS takes its catalog entry's source; an unknown name is a monitor.
    cidrs = tuple(
        MonitorCidrs(name, sources.get(name, "synthetic"), tuple(ipaddress.ip_network(c, strict=False) for c in ranges))
        for name, ranges in config.monitor_cidrs
    )
    return Classifier(signatures, config.ua_cache_size, config.health_paths, cidrs)


def build_pipeline(config: Config, redactor: Redactor | None = None) -> Pipeline:
    """The pure core, compiled once from the config (raises CatalogError / RulesError on bad files).

    Redaction is on only when ``redactor`` is given (the service gives the configured one), so
    tools that show what classification did (``explain``) see the records as they came.
    """
    classifier = build_classifier(config)
    memory = (
        TraceMemory(config.correlation_ttl_s, config.correlation_max_traces) if config.correlation_ttl_s > 0 else None
    )
    return Pipeline(
        classifier,
        load_rule_set(config.rules_file),
        config.downgrade_sources,
        mode=config.mode,
        downgrade_confidence=config.downgrade_confidence,
        memory=memory,
        window_s=config.correlation_window_s,
        redactor=redactor,
    )


class Service:
    def __init__(self, config: Config, transport=None):
        self.config = config
        self.metrics = Metrics()
        self.pipeline = build_pipeline(config, Redactor(config.redact_attributes, config.redact_patterns))
        if config.queue_dir:
            self.queue = DiskQueue(config.queue_dir, config.queue_max_bytes, config.queue_fsync)
            batches, records = self.queue.replayed
            if batches:
                log.info("persistent queue: replaying %d requests (%d records) left from the last run", batches, records)
        else:
            self.queue = BoundedQueue(config.memory_limit_bytes)
        limits = Limits(config.max_records_per_request, config.max_attributes_per_record, config.max_record_bytes)
        self.intake = Intake(
            self.pipeline,
            self.queue,
            self.metrics,
            config.memory_limit_bytes,
            limits,
            merge_limit_bytes=config.export_max_bytes,
        )
        # On SIGTERM, how long calls in flight get to finish before the drain: a quarter of the
        # shutdown timeout, at most 5 s (the rest is for delivering what is queued).
        self.receiver_grace_s = min(5.0, config.shutdown_timeout_s / 4)
        self.tls = (
            TlsMaterial(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
            if config.tls_cert_file
            else None
        )
        self.auth = TokenAuth(config.auth_token_file) if config.auth_token_file else None
        watched = (self.tls.files if self.tls else ()) + (self.auth.files if self.auth else ())
        self.watcher = FileWatcher(watched, self.reload_security) if watched else None
        self.transport = transport or make_transport(config.exporter)
        self.exporter = Exporter(
            self.transport,
            self.queue,
            self.metrics,
            config.export_concurrency,
            config.retry_max_interval_s,
            config.export_max_bytes,
            config.export_linger_s,
        )
        self.admin = Admin(config.admin_endpoint, self.metrics)
        self.grpc = (
            GrpcReceiver(
                self.intake,
                config.grpc_endpoint,
                config.max_decompressed_bytes,
                config.traces_as_evidence,
                tls=self.tls,
                auth=self.auth,
                max_concurrent_streams=config.max_concurrent_streams,
                shutdown_grace_s=self.receiver_grace_s,
            )
            if config.grpc_endpoint
            else None
        )
        self.http = (
            HttpReceiver(
                self.intake,
                config.http_endpoint,
                config.max_request_bytes,
                config.max_decompressed_bytes,
                config.traces_as_evidence,
                tls=self.tls,
                auth=self.auth,
                shutdown_grace_s=self.receiver_grace_s,
            )
            if config.http_endpoint
            else None
        )
        self.metrics.queue_bytes.set_function(lambda: self.queue.bytes)
        self.metrics.queue_records.set_function(lambda: self.queue.records)
        self.metrics.queue_batches.set_function(lambda: self.queue.batches)
        self.metrics.held_records.set_function(lambda: len(self.pipeline.holding))
        memory = self.pipeline.memory
        if memory is not None:
            self.metrics.correlation_traces.set_function(lambda: len(memory))
            self.metrics.correlation_evicted.set_function(lambda: memory.evicted)
        self._stop = asyncio.Event()
        self._ticker: asyncio.Task | None = None

    async def start(self) -> None:
        await self.admin.start()
        self.exporter.start()
        self._ticker = asyncio.create_task(self._tick(), name="correlation-ticker")
        if self.grpc:
            await self.grpc.start()
        if self.http:
            await self.http.start()
        # Everything built so far (catalog, rules, compiled patterns, modules) lives as long as the
        # process: out of the collector's way, so a full collection walks only request-time objects.
        gc.freeze()
        self.admin.ready = True
        log.info(
            "serving: otlp/grpc %s, otlp/http %s, admin %s; exporting to %s; downgrading %s in %s mode",
            self.config.grpc_endpoint or "off",
            self.config.http_endpoint or "off",
            self.config.admin_endpoint,
            self.transport.description,
            ",".join(sorted(self.config.downgrade_sources)) or "nothing",
            self.config.mode,
        )

    async def _tick(self) -> None:
        """Release held records whose window has passed; forget expired traces."""
        interval = min(0.1, max(0.01, self.config.correlation_window_s / 10))
        last_slow = 0.0
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            try:
                await self.intake.release(now)
                if now - last_slow >= 1.0:  # once a second: forget expired traces, look for changed certificates
                    last_slow = now
                    await self.intake.forget_expired(now)
                    if self.watcher is not None:
                        self.watcher.check()
            except Exception:  # a bug here must not stop releases for the life of the process
                log.exception("periodic work failed; continuing")

    def reload_security(self) -> None:
        """SIGHUP or a changed file: new certificates and tokens for new connections and calls."""
        if self.tls is not None:
            self.tls.reload()
        if self.auth is not None:
            self.auth.reload()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload_security)
        await self.start()
        await self._stop.wait()
        return await self.shutdown()

    async def shutdown(self) -> int:
        """Stop accepting, drain the queue within TRIAGE_SHUTDOWN_TIMEOUT; 0 when nothing was lost."""
        timeout = self.config.shutdown_timeout_s
        log.info("shutting down: draining %d queued records (up to %.0fs)", self.queue.records, timeout)
        self.admin.ready = False
        self.intake.accepting = False
        # In-flight calls finish (and land in the queue) before the drain starts.
        receivers = [r for r in (self.grpc, self.http) if r is not None]
        await asyncio.gather(*(r.stop() for r in receivers))
        if self._ticker is not None:
            self._ticker.cancel()
        # Held records are acknowledged data: they go now, with whatever their trace is known to be.
        await self.intake.release(time.monotonic(), everything=True)
        try:
            await asyncio.wait_for(self.queue.wait_idle(), timeout)
        except asyncio.TimeoutError:
            pass
        undelivered = await self.exporter.stop()
        await self.queue.close()
        lost = 0
        if undelivered and self.queue.persistent:
            log.warning("shutdown timeout: %d records stay in the persistent queue, sent after restart", undelivered)
        elif undelivered:
            lost = undelivered
            self.metrics.records_dropped.labels("shutdown").inc(lost)
            log.error("shutdown timeout: %d acknowledged records were not delivered", lost)
        else:
            log.info("drained; exiting")
        await self.admin.stop()
        return 0 if not lost else 1
