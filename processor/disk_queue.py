"""The persistent queue (``TRIAGE_QUEUE_DIR``): a request is acknowledged only once it is on disk.

SQLite from the standard library, in WAL mode, rather than a file format of our own: it already
does atomic commits, crash recovery and bounded fsyncs. One writer thread does group commit —
every put waiting when a transaction starts goes into it, so one fsync covers many requests.
Payloads are read back from disk when a worker takes them, so memory holds only what is in flight.

Delivered batches are deleted; on start-up whatever is left is replayed (at-least-once: a batch
delivered just before a crash is sent again). A full disk queue (``TRIAGE_QUEUE_MAX_BYTES``) makes
receivers push back, like the memory queue.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue as thread_queue
import sqlite3
import threading
from collections import deque
from collections.abc import Iterator

from .queue import Batch, QueueAccounting, fitting

log = logging.getLogger(__name__)

DB_NAME = "queue.sqlite"
_GROUP_MAX = 512  # puts and deletes per transaction at most
_READ_MAX = 512  # batches read in one query at most (SQLite bounds a statement's parameters)


class QueueDirError(Exception):
    """The queue directory cannot be used; the message names it and the fix."""


class DiskQueue(QueueAccounting):
    persistent = True

    def __init__(self, directory: str, max_bytes: int, fsync: str = "always"):
        super().__init__(max_bytes)
        self.path = os.path.join(directory, DB_NAME)
        try:
            os.makedirs(directory, exist_ok=True)
            # One process per queue: a second replica on the same volume would send everything twice.
            self._lock_file = open(os.path.join(directory, "queue.lock"), "w")
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise QueueDirError(f"TRIAGE_QUEUE_DIR={directory!r}: another otlp-triage process is using it") from None
        except OSError as e:
            raise QueueDirError(f"TRIAGE_QUEUE_DIR={directory!r}: cannot use it: {e.strerror}") from None
        self._synchronous = "FULL" if fsync == "always" else "NORMAL"
        try:
            writer = self._connect()
            writer.execute(
                "CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY, records INTEGER NOT NULL, payload BLOB NOT NULL)"
            )
            rows = writer.execute("SELECT id, records, length(payload) FROM batches ORDER BY id").fetchall()
        except sqlite3.DatabaseError as e:
            raise QueueDirError(f"{self.path}: not a usable queue database ({e}); move it aside to start empty") from None
        self._index: deque[tuple[int, int, int]] = deque(rows)  # (id, records, size), waiting to be sent
        for _, records, size in rows:
            self._count_in(size, records)
        self.replayed = (len(rows), self.records)
        self._reader = self._connect()
        self._read_lock = threading.Lock()
        self._ops: thread_queue.SimpleQueue = thread_queue.SimpleQueue()
        self._wakeup = asyncio.Event()
        if rows:
            self._wakeup.set()
        self._loop = asyncio.get_running_loop()
        self._writer = threading.Thread(target=self._write_loop, args=(writer,), name="disk-queue-writer", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={self._synchronous}")
        return connection

    # --- the writer thread -------------------------------------------------------------------------------

    def _write_loop(self, connection: sqlite3.Connection) -> None:
        while True:
            ops = [self._ops.get()]
            while len(ops) < _GROUP_MAX:
                try:
                    ops.append(self._ops.get_nowait())
                except thread_queue.Empty:
                    break
            if any(op is None for op in ops):
                ops = [op for op in ops if op is not None]
                stop = True
            else:
                stop = False
            results = []
            try:
                connection.execute("BEGIN")
                for kind, arg, future in ops:
                    if kind == "put":
                        payload, records = arg
                        cursor = connection.execute(
                            "INSERT INTO batches (records, payload) VALUES (?, ?)", (records, payload)
                        )
                        results.append((future, cursor.lastrowid, None))
                    else:
                        connection.execute("DELETE FROM batches WHERE id = ?", (arg,))
                connection.execute("COMMIT")
            except sqlite3.Error as e:  # disk full, I/O error: the puts fail, the senders retry
                try:
                    connection.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                log.error("persistent queue write failed: %s", e)
                results = [(future, None, e) for kind, _, future in ops if kind == "put"]
            for future, row_id, error in results:
                self._loop.call_soon_threadsafe(_settle, future, row_id, error)
            if stop:
                connection.close()
                return

    # --- the queue interface (event loop) ----------------------------------------------------------------

    async def put(self, batch: Batch) -> None:
        """Returns once the batch is durably written (per TRIAGE_QUEUE_FSYNC); raises OSError if not."""
        size = len(batch.payload)
        self._count_in(size, batch.records)  # reserved now, so concurrent puts see the room taken
        future = self._loop.create_future()
        self._ops.put(("put", (batch.payload, batch.records), future))
        try:
            # Shielded: a caller that gives up (a client's deadline cancels its handler) does not stop
            # the write, so the batch is indexed when it lands, rather than found after a restart.
            await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda written: self._landed(written, batch.records, size))
            raise
        except BaseException:
            self._count_out(size, batch.records)
            raise
        self._landed(future, batch.records, size)

    def _landed(self, written: asyncio.Future, records: int, size: int) -> None:
        if written.cancelled() or written.exception() is not None:
            self._count_out(size, records)
            return
        self._index.append((written.result(), records, size))
        self._wakeup.set()

    async def get(self) -> Batch:
        while not self._index:
            self._wakeup.clear()
            await self._wakeup.wait()
        entry = self._index.popleft()
        try:
            payload = await asyncio.to_thread(self._read, entry[0])
        except BaseException:
            self._index.appendleft(entry)  # not lost: the next get() tries it again
            raise
        return Batch(payload, entry[1], entry[0])

    async def get_waiting(self, max_bytes: int) -> list[Batch]:
        """The batches next in line, without waiting for any, while together they fit in ``max_bytes``:
        read in one go."""
        index = self._index
        count, _ = fitting(self._sizes(), max_bytes, _READ_MAX)
        entries = [index.popleft() for _ in range(count)]
        if not entries:
            return []
        try:
            payloads = await asyncio.to_thread(self._read_many, [entry[0] for entry in entries])
        except BaseException:
            index.extendleft(reversed(entries))  # not lost: the next get() tries them again
            raise
        return [Batch(payload, records, row_id) for payload, (row_id, records, _) in zip(payloads, entries)]

    def fills(self, max_bytes: int) -> bool:
        """Whether ``get_waiting(max_bytes)`` would take as much as it ever could: waiting for more is no use."""
        return fitting(self._sizes(), max_bytes, _READ_MAX)[1]

    def _sizes(self) -> Iterator[int]:
        return (size for _, _, size in self._index)

    def _read(self, row_id: int) -> bytes:
        return self._read_many([row_id])[0]

    def _read_many(self, row_ids: list[int]) -> list[bytes]:
        # Export workers read concurrently from worker threads; one sqlite3 connection must not be
        # used by two threads at once.
        with self._read_lock:
            rows = dict(
                self._reader.execute(
                    f"SELECT id, payload FROM batches WHERE id IN ({','.join('?' * len(row_ids))})", row_ids
                ).fetchall()
            )
        return [rows[row_id] for row_id in row_ids]

    def done(self, batch: Batch) -> None:
        self._ops.put(("delete", batch.id, None))
        self._count_out(len(batch.payload), batch.records)

    def pending(self) -> list[Batch]:
        """Queued batches (without payloads): they stay on disk and are replayed on the next start."""
        return [Batch(b"", records, row_id) for row_id, records, _ in self._index]

    async def close(self) -> None:
        self._ops.put(None)
        await asyncio.to_thread(self._writer.join, 10)
        self._reader.close()
        self._lock_file.close()


def _settle(future: asyncio.Future, row_id: int | None, error: Exception | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(OSError(f"persistent queue write failed: {error}"))
    else:
        future.set_result(row_id)
