"""Takes processed requests off the queue and delivers them, retrying for as long as it takes.

Requests waiting in the queue when a worker is free go out together, as one export call of up to
``max_call_bytes`` (serialized requests end to end are one request with all their resource_logs).
A call costs the processor about the same CPU whatever its size (a grpc.aio client sending the
bench's 500-record requests: 0.74 CPU-s per million records one per call, 0.35 four per call), so
under load calls grow and the exporter's cost falls. With ``linger_s`` (TRIAGE_EXPORT_LINGER, 0 by
default) a free worker that takes a request first waits that long for more to join it, unless a
full call is already waiting: fewer calls at moderate load, for that much latency.
Two workers (the default) keep a remote backend busy and let requests gather behind them; one
gathers at a time.

Retryable failures are retried with exponential backoff and jitter, honouring the server's
Retry-After / RetryInfo; meanwhile the queue fills and receivers push back on the senders upstream,
so nothing acknowledged is dropped. Permanent failures (bad data) and partial success are not
retried (OTLP says so): they are counted and logged with the backend's reason. A call of several
requests that fails permanently is sent again one request at a time, so that only the requests
the backend refuses are dropped (and a backend whose size limit is below ``max_call_bytes`` still
gets everything).
"""

from __future__ import annotations

import asyncio
import logging
import random

from ..config import DEFAULT_EXPORT_MAX_BYTES
from ..metrics import Metrics
from ..queue import Batch, BoundedQueue
from ..wire import Malformed
from .split import split
from .transports import Permanent, Retryable, Sent

log = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 0.5
MAX_HINT_S = 300.0  # a server's Retry-After is honoured, up to this
# A call refused as too large is halved (and halved again) down to this size: smaller, a backend's
# RESOURCE_EXHAUSTED is more likely a quota than a size limit, and halving would multiply calls.
MIN_HALVED_BYTES = 64 * 1024


async def _split(payload: bytes, max_bytes: int) -> list[tuple[bytes, int]]:
    """``split`` in a thread: a request of millions of tiny messages takes seconds to cut, and the
    event loop (health checks, receivers) must go on meanwhile."""
    return await asyncio.to_thread(split, payload, max_bytes)


class Exporter:
    def __init__(
        self,
        transport,
        queue: BoundedQueue,
        metrics: Metrics,
        concurrency: int,
        max_interval_s: float,
        max_call_bytes: int = DEFAULT_EXPORT_MAX_BYTES,
        linger_s: float = 0.0,
    ):
        self.transport = transport
        self.queue = queue
        self.metrics = metrics
        self.concurrency = concurrency
        self.max_interval_s = max_interval_s
        self.max_call_bytes = max_call_bytes
        self.linger_s = linger_s
        self._workers: list[asyncio.Task] = []
        self._in_flight: dict[int, Batch] = {}
        # One worker gathers its call at a time (the others deliver theirs): two lingering at once
        # would each send half of what arrived.
        self._gathering = asyncio.Lock()

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work(), name=f"exporter-{i}") for i in range(self.concurrency)]

    async def _work(self) -> None:
        failures = 0
        while True:
            try:
                batches = await self._gather()
            except Exception:  # e.g. a disk read error: keep the worker, try again after a pause
                failures += 1
                log.exception("reading the next batch from the queue failed; retrying")
                await asyncio.sleep(self.backoff(min(failures, 10), None))
                continue
            failures = 0
            try:
                await self.deliver_together(batches)
            finally:
                for taken in batches:
                    del self._in_flight[id(taken)]
            # Not reached when cancelled mid-delivery: persistent batches then stay on disk for the next
            # start.
            for taken in batches:
                self.queue.done(taken)

    async def _gather(self) -> list[Batch]:
        """The next call's batches, in flight from here: the next in line and, after the linger, those
        waiting behind it that fit in the call."""
        async with self._gathering:
            batch = await self.queue.get()
            self._in_flight[id(batch)] = batch  # counted as undelivered if stopped while lingering
            batches = [batch]
            room = self.max_call_bytes - len(batch.payload)
            if room > 0:
                if self.linger_s > 0 and not self.queue.fills(room):
                    await asyncio.sleep(self.linger_s)
                try:
                    batches += await self.queue.get_waiting(room)
                except Exception:  # the batches stay queued; this one goes alone
                    log.exception("reading the batches waiting behind this one failed; sending it alone")
            for taken in batches[1:]:
                self._in_flight[id(taken)] = taken
            return batches

    def backoff(self, attempt: int, hint_s: float | None) -> float:
        delay = min(self.max_interval_s, INITIAL_BACKOFF_S * 2**attempt) * random.uniform(0.8, 1.2)
        if hint_s is not None:
            delay = max(delay, min(hint_s, MAX_HINT_S))
        return delay

    async def deliver_together(self, batches: list[Batch]) -> None:
        """``deliver`` the batches as one export call; if the backend refuses it permanently, one by one.
        A batch larger than a call may be goes as several (``split``)."""
        if len(batches) == 1:
            batch = batches[0]
            if len(batch.payload) <= self.max_call_bytes:
                await self.deliver(batch)
                return
            try:
                parts = await _split(batch.payload, self.max_call_bytes)
            except Malformed:  # not ours to judge here: the backend says what it makes of it
                parts = [(batch.payload, batch.records)]
            log.debug("a request of %d bytes goes as %d export calls", len(batch.payload), len(parts))
            for payload, records in parts:
                await self.deliver(Batch(payload, records))
            return
        # A copy outside the queue's memory bound: at most max_call_bytes per worker.
        joined = Batch(b"".join(batch.payload for batch in batches), sum(batch.records for batch in batches))
        if await self.deliver(joined, split_on_permanent=True):
            return
        log.warning("backend refused %d requests sent together; sending them one by one", len(batches))
        for batch in batches:
            await self.deliver(batch)

    async def deliver(self, batch: Batch, split_on_permanent: bool = False) -> bool:
        """Send ``batch`` until the backend answers, retrying what OTLP calls retryable; True once it has.
        False only if it refused permanently and ``split_on_permanent``: nothing is counted as dropped
        then, the caller sends the parts."""
        attempt = 0
        while True:
            try:
                outcome = await self.transport.send(batch.payload)
            except Exception as error:  # a transport bug must not kill the worker: retry, loudly
                log.exception("export attempt failed unexpectedly")
                outcome = Retryable(f"{type(error).__name__}: {error}")
            if isinstance(outcome, Sent):
                self.metrics.export_requests.labels("success").inc()
                self.metrics.records_forwarded.inc(batch.records - outcome.rejected)
                if outcome.rejected:
                    self.metrics.records_dropped.labels("partial_success").inc(outcome.rejected)
                    log.warning(
                        "backend accepted the request partially: %d of %d records rejected: %s",
                        outcome.rejected, batch.records, outcome.message,
                    )
                return True
            if isinstance(outcome, Permanent):
                self.metrics.export_requests.labels("permanent_failure").inc()
                if split_on_permanent:
                    return False
                if outcome.too_large and await self._deliver_halves(batch, outcome.reason):
                    return True
                self.metrics.records_dropped.labels("permanent_error").inc(batch.records)
                log.error("backend refused %d records permanently, not retrying: %s", batch.records, outcome.reason)
                return True
            self.metrics.export_requests.labels("retryable_failure").inc()
            self.metrics.export_retries.inc()
            delay = self.backoff(attempt, outcome.retry_after_s)
            # First failure and then every tenth: a long outage should not flood the processor's own log.
            level = logging.WARNING if attempt % 10 == 0 else logging.DEBUG
            log.log(level, "export failed, retrying in %.1fs (attempt %d): %s", delay, attempt + 1, outcome.reason)
            attempt += 1
            await asyncio.sleep(delay)

    async def _deliver_halves(self, batch: Batch, reason: str) -> bool:
        """A call the backend refused as too large, sent again as calls of at most half its size
        (each halved again if refused again); False if it cannot be cut (one record, or small enough
        that size is not the likely reason)."""
        if len(batch.payload) < MIN_HALVED_BYTES:
            return False
        try:
            parts = await _split(batch.payload, len(batch.payload) // 2)
        except Malformed:
            return False
        if len(parts) < 2:
            return False
        log.warning(
            "backend refused a call of %d bytes as too large (%s); sending it as %d calls: "
            "set TRIAGE_EXPORT_MAX_BYTES below the backend's limit",
            len(batch.payload), reason, len(parts),
        )
        for payload, records in parts:
            await self.deliver(Batch(payload, records))
        return True

    async def stop(self) -> int:
        """Cancel the workers; returns how many acknowledged records were not delivered (yet)."""
        undelivered = sum(b.records for b in self._in_flight.values()) + sum(b.records for b in self.queue.pending())
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await self.transport.close()
        return undelivered
