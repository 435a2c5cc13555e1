"""What both receivers do with a request body: admit, decode, process, queue. No sockets here.

A request is acknowledged only once it is in the queue; a request that does not fit is refused
before any decoding work is spent on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from . import otlp_json, wire
from .config import DEFAULT_EXPORT_MAX_BYTES
from .metrics import Metrics
from .pipeline import Pipeline, Stats
from .queue import Batch, BoundedQueue
from .status import INVALID, OVERLOADED, SHUTTING_DOWN, TOO_LARGE, UNSUPPORTED, Rejected

log = logging.getLogger(__name__)

PROTOBUF = "protobuf"
JSON = "json"
# Released records join the request being forwarded only while both stay under the largest export
# call (TRIAGE_EXPORT_MAX_BYTES): a merge must not make a request the backend refuses.
MERGE_LIMIT_BYTES = DEFAULT_EXPORT_MAX_BYTES
RETRY_QUEUE_S = 1.0  # released records that the queue could not take are offered again after this
# A request body larger than this is processed in a worker thread, so that the event loop (health
# checks, the other receiver, the ticker, the exporter) goes on meanwhile: the pipeline takes up to
# ~18 µs a record (every record a rule candidate held for evidence), 1.4 s for 80,000 such records,
# within the default limits. Smaller ones stay on the loop: the hand-off would cost more than it saves.
OFFLOAD_BYTES = 1 << 20


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The decoded body; a body that would expand past ``limit`` is refused without expanding it."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise Rejected(UNSUPPORTED, f"unsupported Content-Encoding {encoding!r}; use gzip or none")
    # wbits: 16+ for a gzip wrapper, + for zlib; deflate bodies in the wild are zlib-wrapped.
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    parts: list[bytes] = []
    size = 0
    data = body
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(data, limit - size + 1)
        except zlib.error as e:
            raise Rejected(INVALID, f"malformed {encoding} body: {e}") from None
        size += len(part)
        if size > limit:
            raise Rejected(TOO_LARGE, f"decompressed body exceeds the limit of {limit} bytes")
        parts.append(part)
        if not inflater.eof:
            raise Rejected(INVALID, f"truncated {encoding} body")
        data = inflater.unused_data
        if not data:
            return b"".join(parts)
        # A gzip body may hold several members (RFC 1952): all of them are the body. Anything else
        # after the end of the stream is refused rather than silently dropped.
        if encoding != "gzip" or not data.startswith(b"\x1f\x8b"):
            raise Rejected(INVALID, f"unexpected bytes after the end of the {encoding} stream")


@dataclass(frozen=True)
class Limits:
    """Per-request and per-record limits a hostile or broken client cannot get around."""

    max_records: int = 100_000
    max_attributes: int = 256
    max_record_bytes: int = 1024 * 1024

    def check(self, found: wire.Index, record_at) -> tuple[set[int], int, str]:
        """Refuse a request with too many records; name the over-limit records (-> partial success).

        ``found`` is the request's index (its largest record and most attributes tell whether any
        record is over a limit), ``record_at(i)`` the i-th record decoded. Records are rejected whole,
        never truncated: a truncated record would be silently wrong.
        """
        spans = found.spans
        count = len(spans) // 2
        if count > self.max_records:
            raise Rejected(INVALID, f"{count} log records in one request; the limit is {self.max_records}")
        if found.largest <= self.max_record_bytes and found.most_attributes <= self.max_attributes:
            return set(), 0, ""
        rejected = set()
        reasons = set()
        for i in range(count):
            size = spans[2 * i + 1] - spans[2 * i]
            # Every attribute takes at least 2 bytes: only a record this large can have too many.
            if size > 2 * self.max_attributes and len(record_at(i).attributes) > self.max_attributes:
                rejected.add(i)
                reasons.add(f"more than {self.max_attributes} attributes")
            elif size > self.max_record_bytes:
                rejected.add(i)
                reasons.add(f"larger than {self.max_record_bytes} bytes")
        if not rejected:
            return rejected, 0, ""
        return rejected, len(rejected), f"{len(rejected)} log records rejected: " + " or ".join(sorted(reasons))


class Intake:
    def __init__(
        self,
        pipeline: Pipeline,
        queue: BoundedQueue,
        metrics: Metrics,
        memory_limit: int,
        limits: Limits | None = None,
        merge_limit_bytes: int | None = None,
    ):
        self.pipeline = pipeline
        self.merge_limit_bytes = MERGE_LIMIT_BYTES if merge_limit_bytes is None else merge_limit_bytes
        self.queue = queue
        self.metrics = metrics
        self.memory_limit = memory_limit
        self.limits = limits or Limits()
        self.accepting = True
        self._json_turn = asyncio.Lock()  # one OTLP/JSON document in memory at a time
        # The pipeline's tables serve one call at a time, on the loop or in a worker thread.
        self._pipeline_turn = asyncio.Lock()

    async def accept(self, payload: bytes, encoding: str, transport: str) -> Stats:
        """Process and queue one decompressed request body; returns once it is safely queued.

        Raises Rejected with the reason. With the persistent queue, "safely" means on disk.
        """
        self.admit(len(payload))
        if encoding == PROTOBUF:
            serialized = payload
        else:
            # The pipeline works on the protobuf wire form: in JSON a key or a secret can be written with
            # escapes (user_agent\u002eoriginal) that no byte search would find.
            serialized = (await self._decode(payload, encoding, check=self._count_json)).SerializeToString()
        async with self._pipeline_turn:
            now = time.monotonic()  # once it is this request's turn: held records' deadlines stay in order
            if len(serialized) > OFFLOAD_BYTES:
                forward, stats = await _in_thread(self._process_body, serialized, now)
            else:
                forward, stats = self._process_body(serialized, now)
            released = self._ready(now)  # this request's evidence may have freed records held earlier
        if stats.rejected:
            self.metrics.records_rejected.labels("limits").inc(stats.rejected)
        self._count_redactions(stats)
        self.metrics.received(transport, stats.records + stats.held)
        self.metrics.processed(stats)
        if stats.records:
            batch = Batch(forward, stats.records)
            # Two serialized requests end to end are one request with both's resource_logs: one
            # export call instead of two (with held records, nearly every request releases some).
            together = released is not None and len(forward) + len(released.payload) <= self.merge_limit_bytes
            if together:
                batch = Batch(forward + released.payload, stats.records + released.records)
            try:
                await self._put(batch)
            except Rejected:
                # This request is refused (its sender retries it), but the released records were
                # acknowledged when they came: they still go.
                if released is not None:
                    await asyncio.shield(self._queue_acknowledged(released))
                raise
            except asyncio.CancelledError:
                # Its caller gave up (a client's deadline) while the persistent queue wrote it: the
                # write goes on, with the released records if they went together; if not, they go now.
                if released is not None and not together:
                    await asyncio.shield(self._queue_acknowledged(released))
                raise
            if together:
                released = None  # gone with the request
        if released is not None:
            await asyncio.shield(self._queue_acknowledged(released))
        return stats

    def _process_body(self, serialized: bytes, now: float) -> tuple[bytes, Stats]:
        try:
            # The pipeline's walk checks the body as upb would, without decoding it ...
            return self._process(serialized, now)
        except wire.Malformed as problem:
            # ... and upb has the last word on a body the walk refuses (and says why to the client).
            decoded = self.decode(serialized, PROTOBUF)
            log.warning("upb decoded a body the wire check refused (%s); forwarding it as upb re-encodes it", problem)
            return self._process(decoded.SerializeToString(), now)

    def _process(self, serialized: bytes, now: float) -> tuple[bytes, Stats]:
        try:
            return self.pipeline.process_wire(serialized, now, self.limits)
        except wire.TooMany as too_many:  # refused by the walk, before it kept anything per message
            raise self._too_many(str(too_many)) from None

    def _too_many(self, what: str) -> Rejected:
        return Rejected(
            INVALID,
            f"{what}; the limit is {self.limits.max_records} (TRIAGE_MAX_RECORDS_PER_REQUEST, which also bounds"
            " ResourceLogs and ScopeLogs)",
        )

    def _count_json(self, document: dict) -> None:
        """The walk's limits on an OTLP/JSON logs request, before its messages are built: that is Python,
        and 1,000,000 empty ScopeLogs (3 MiB of JSON) took json_format 3.4 s."""
        limit = self.limits.max_records
        messages = records = 0
        for resource_logs in _items(document, "resourceLogs", "resource_logs"):
            for scope_logs in chain((None,), _items(resource_logs, "scopeLogs", "scope_logs")):  # None: the ResourceLogs
                messages += 1
                if messages > limit:
                    raise self._too_many(f"more than {limit} ResourceLogs and ScopeLogs in one request")
                records += sum(map(len, _lists(scope_logs, "logRecords", "log_records")))
                if records > limit:
                    raise self._too_many(f"more than {limit} log records in one request")

    def admit(self, size: int) -> None:
        if not self.accepting:
            raise Rejected(SHUTTING_DOWN, "shutting down; send to another replica or retry")
        if not self.queue.has_room(size):
            raise Rejected(OVERLOADED, "export queue is full; retry later")
        # Held records live in memory: with the memory queue they share its bound, else they have their own.
        held = self.pipeline.holding.bytes
        if held and held + (0 if self.queue.persistent else self.queue.bytes) + size > self.memory_limit:
            raise Rejected(OVERLOADED, "too many records held for correlation; retry later")

    async def _put(self, batch: Batch) -> None:
        try:
            await self.queue.put(batch)
        except OSError as e:  # the persistent queue could not write: not acknowledged, the sender retries
            raise Rejected(OVERLOADED, f"cannot queue the request durably: {e}") from None

    def _ready(self, now: float, everything: bool = False) -> Batch | None:
        released = self.pipeline.release_all(now) if everything else self.pipeline.release_ready(now)
        if released is None:
            return None
        payload, stats = released
        self.metrics.processed(stats)
        self._count_redactions(stats)
        return Batch(payload, stats.records)

    def _count_redactions(self, stats: Stats) -> None:
        for rule, count in stats.redactions.items():
            self.metrics.redactions.labels(rule).inc(count)

    async def release(self, now: float, everything: bool = False) -> None:
        """Queue the held records that are ready (evidence came, window passed), or all of them."""
        async with self._pipeline_turn:
            batch = self._ready(now, everything)
        if batch is not None:
            await self._queue_acknowledged(batch)

    async def _queue_acknowledged(self, batch: Batch) -> None:
        """Queue released records: acknowledged long ago, they cannot be refused, so a failed write
        (the persistent queue's disk) is retried until it succeeds."""
        while True:
            try:
                await self.queue.put(batch)
                return
            except OSError as e:
                log.error("cannot queue %d released records, retrying in %gs: %s", batch.records, RETRY_QUEUE_S, e)
                await asyncio.sleep(RETRY_QUEUE_S)

    def refused(self, transport: str, rejected: Rejected) -> None:
        """Count a refusal, whichever stage (receiver or intake) raised it."""
        self.metrics.rejected(transport, rejected.refusal.reason)

    async def accept_spans(self, payload: bytes, encoding: str, transport: str) -> int:
        """Learn each trace's verdict from server spans and tracestate; spans are not forwarded."""
        if not self.accepting:
            raise Rejected(SHUTTING_DOWN, "shutting down; send to another replica or retry")
        request = await self._decode(payload, encoding, ExportTraceServiceRequest())
        async with self._pipeline_turn:
            now = time.monotonic()
            if len(payload) > OFFLOAD_BYTES:
                spans, learned = await _in_thread(self._learn_spans, request, now)
            else:
                spans, learned = self._learn_spans(request, now)
        self.metrics.spans_received.labels(transport).inc(spans)
        await self.release(now)
        return learned

    async def forget_expired(self, now: float) -> None:
        """Forget the traces whose evidence is older than the memory's TTL."""
        if self.pipeline.memory is not None:
            async with self._pipeline_turn:
                self.pipeline.memory.expire(now)

    def _learn_spans(self, request: ExportTraceServiceRequest, now: float) -> tuple[int, int]:
        """The spans in ``request``, and how many taught their trace a verdict."""
        classifier = self.pipeline.classifier
        learned = spans = 0
        for resource_spans in request.resource_spans:
            resource_verdict = classifier.attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans += 1
                    if not span.trace_id:
                        continue
                    # The server span describes the incoming request; tracestate travels with the whole trace.
                    verdict = None
                    if span.kind == Span.SPAN_KIND_SERVER:
                        verdict = classifier.attributes(span.attributes) or resource_verdict
                    if span.trace_state:
                        marked = classifier.tracestate(span.trace_state)
                        if marked is not None and (verdict is None or marked.rank < verdict.rank):
                            verdict = marked
                    if verdict is not None:
                        self.pipeline.learn(span.trace_id, verdict, now)
                        learned += 1
        return spans, learned

    async def _decode(self, payload: bytes, encoding: str, request=None, check=None):
        """``decode``, with an OTLP/JSON body decoded in a thread, one at a time, and only if its
        document fits in TRIAGE_MEMORY_LIMIT_MIB: building the messages is Python (~40 µs per record of
        the bench's workload, ~300 with json_format: 6 s for a 15 MB request, which held health checks
        and every other request while it ran), and orjson's document costs up to ~40 times the body (a
        32 MiB body of tiny objects: over a gigabyte, past the pod's memory limit)."""
        if encoding != JSON:
            return self.decode(payload, encoding, request)
        async with self._json_turn:
            return await asyncio.to_thread(self._decode_json, payload, request, check)

    def _decode_json(self, payload: bytes, request, check):
        budget = self.memory_limit
        if len(payload) * otlp_json.MAX_COST_PER_BYTE > budget and (cost := otlp_json.parsed_size(payload)) > budget:
            raise Rejected(
                TOO_LARGE,
                f"this OTLP/JSON body ({len(payload)} bytes) would take about {cost >> 20} MiB to decode, more"
                f" than TRIAGE_MEMORY_LIMIT_MIB ({budget >> 20} MiB) allows: send smaller requests, or protobuf",
            )
        return self.decode(payload, JSON, request, check)

    @staticmethod
    def decode(payload: bytes, encoding: str, request=None, check=None):
        """``payload`` as ``request`` (a logs request by default); ``check`` sees a JSON document first."""
        request = ExportLogsServiceRequest() if request is None else request
        if encoding == JSON:
            try:
                return otlp_json.decode(payload, request, check)
            except otlp_json.JsonError as e:
                raise Rejected(INVALID, str(e)) from None
        try:
            request.ParseFromString(payload)
        except DecodeError as e:
            raise Rejected(INVALID, f"malformed protobuf {type(request).__name__}: {e}") from None
        return request


async def _in_thread(work, *args):
    """``work(*args)`` in a worker thread, for a caller that holds the pipeline's turn. A thread cannot
    be stopped: a caller cancelled meanwhile keeps the turn until the thread ends, so no other call
    enters the pipeline while it runs, and then leaves as cancelled."""
    running = asyncio.ensure_future(asyncio.to_thread(work, *args))
    cancelled = False
    while not running.done():
        try:
            await asyncio.wait((running,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        running.exception()  # retrieved (an error of a request nobody waits for is not logged as lost)
        raise asyncio.CancelledError
    return running.result()


def _lists(message: Any, *names: str) -> list[list]:
    """The lists a JSON message gives under either spelling of a repeated field (json_format takes
    both); nothing for anything else, which json_format then refuses or ignores."""
    if not isinstance(message, dict):
        return []
    return [value for value in map(message.get, names) if isinstance(value, list)]


def _items(message: Any, *names: str) -> Iterator:
    """The items of ``_lists``, without copying them."""
    return chain.from_iterable(_lists(message, *names))
