"""The bounded in-memory queue between receivers and exporter.

Bounded in bytes (``TRIAGE_MEMORY_LIMIT_MIB``): a request is admitted only if it fits, otherwise the
receiver answers with backpressure and the sender retries — nothing is dropped silently. Bytes
stay counted until the export is finished (delivered or given up), so in-flight data counts too.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(slots=True)
class Batch:
    payload: bytes  # a serialized ExportLogsServiceRequest
    records: int
    id: int = 0  # the persistent queue's row id


def fitting(sizes: Iterable[int], max_bytes: int, max_count: int | None = None) -> tuple[int, bool]:
    """How many of the batches next in line (``sizes``, in order) one export call takes: together
    within ``max_bytes``, at most ``max_count``. And whether that is all it ever could (the next does
    not fit, or the count is reached) rather than all that is waiting."""
    taken = 0
    for size in sizes:
        if size > max_bytes or taken == max_count:
            return taken, True
        max_bytes -= size
        taken += 1
    return taken, False


class QueueFull(Exception):
    """No room for the request: the caller answers 503 / UNAVAILABLE with a retry hint."""


class QueueAccounting:
    """What is queued or in flight, for the bound, the metrics and the drain; shared by both queues."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.records = 0
        self.batches = 0  # queued or in flight
        self._idle = asyncio.Event()
        self._idle.set()

    def has_room(self, size: int) -> bool:
        # An empty queue takes any request (each is already capped by the request-size limit),
        # so one large request cannot be refused forever.
        return self.bytes == 0 or self.bytes + size <= self.max_bytes

    def _count_in(self, size: int, records: int) -> None:
        self.bytes += size
        self.records += records
        self.batches += 1
        self._idle.clear()

    def _count_out(self, size: int, records: int) -> None:
        self.bytes -= size
        self.records -= records
        self.batches -= 1
        if self.batches == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class BoundedQueue(QueueAccounting):
    persistent = False

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes)
        self._items: deque[Batch] = deque()
        self._wakeup = asyncio.Event()

    async def put(self, batch: Batch) -> None:
        self._items.append(batch)
        self._count_in(len(batch.payload), batch.records)
        self._wakeup.set()

    async def get(self) -> Batch:
        while not self._items:
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._items.popleft()

    async def get_waiting(self, max_bytes: int) -> list[Batch]:
        """The batches next in line, without waiting for any, while together they fit in ``max_bytes``."""
        count, _ = fitting(self._sizes(), max_bytes)
        return [self._items.popleft() for _ in range(count)]

    def fills(self, max_bytes: int) -> bool:
        """Whether ``get_waiting(max_bytes)`` would take as much as it ever could: waiting for more is no use."""
        return fitting(self._sizes(), max_bytes)[1]

    def _sizes(self) -> Iterator[int]:
        return (len(batch.payload) for batch in self._items)

    def done(self, batch: Batch) -> None:
        """The batch is finished with (delivered, or given up and counted): release its room."""
        self._count_out(len(batch.payload), batch.records)

    def pending(self) -> list[Batch]:
        return list(self._items)

    async def close(self) -> None:
        pass
