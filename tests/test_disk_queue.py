"""The persistent queue: acknowledged means on disk; replayed after a restart; bounded."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from processor.disk_queue import DiskQueue, QueueDirError
from processor.queue import Batch


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


class TestDiskQueue:
    def test_put_get_done_and_replay(self, tmp_path: Path) -> None:
        """What was put and not done is there again after a restart, in order; done batches are gone."""

        async def first_run() -> None:
            q = DiskQueue(str(tmp_path), max_bytes=1 << 20)
            for n in range(5):
                await q.put(Batch(f"payload-{n}".encode(), records=n + 1))
            got = await q.get()
            assert (got.payload, got.records) == (b"payload-0", 1)
            q.done(got)
            await q.get()  # taken but never done: the process "dies" mid-delivery
            await q.close()

        async def second_run() -> list[bytes]:
            q = DiskQueue(str(tmp_path), max_bytes=1 << 20)
            assert q.replayed == (4, 2 + 3 + 4 + 5)
            out = [(await q.get()) for _ in range(4)]
            for batch in out:
                q.done(batch)
            await q.wait_idle()
            await q.close()
            return [b.payload for b in out]

        run(first_run())
        assert run(second_run()) == [b"payload-1", b"payload-2", b"payload-3", b"payload-4"]

        async def third_run() -> tuple[int, int]:
            q = DiskQueue(str(tmp_path), max_bytes=1 << 20)
            await q.close()
            return q.replayed

        assert run(third_run()) == (0, 0)

    def test_bound_in_bytes(self, tmp_path: Path) -> None:
        """Past TRIAGE_QUEUE_MAX_BYTES there is no room (receivers answer with backpressure)."""

        async def scenario() -> None:
            q = DiskQueue(str(tmp_path), max_bytes=1000)
            assert q.has_room(5000)  # an empty queue takes any one request
            await q.put(Batch(b"x" * 600, 1))
            assert q.has_room(400) and not q.has_room(401)
            batch = await q.get()
            q.done(batch)
            assert q.has_room(1000)
            await q.close()

        run(scenario())

    def test_many_concurrent_puts_share_commits(self, tmp_path: Path) -> None:
        """Concurrent puts all complete (group commit) and all are readable."""

        async def scenario() -> int:
            q = DiskQueue(str(tmp_path), max_bytes=1 << 30, fsync="always")
            await asyncio.gather(*(q.put(Batch(bytes([n % 256]) * 100, 1)) for n in range(300)))
            assert q.batches == 300
            seen = 0
            while q.batches:
                q.done(await q.get())
                seen += 1
            await q.close()
            return seen

        assert run(scenario()) == 300

    def test_a_put_whose_caller_gives_up_still_goes(self, tmp_path: Path) -> None:
        """A client's deadline cancels its handler while the batch is written, not the write: the
        batch lands on disk either way, and must go now (it waited there, unindexed, for a restart)."""

        async def scenario() -> None:
            q = DiskQueue(str(tmp_path), max_bytes=1 << 20)
            other = sqlite3.connect(q.path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # holds the write lock: the writer waits (busy timeout, 5 s)
            putting = asyncio.create_task(q.put(Batch(b"payload", records=3)))
            await asyncio.sleep(0.2)
            assert not putting.done()
            putting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await putting
            other.execute("COMMIT")
            other.close()
            got = await asyncio.wait_for(q.get(), 10)
            assert (got.payload, got.records) == (b"payload", 3)
            assert q.records == 3  # its room stays taken until it is delivered
            q.done(got)
            await q.wait_idle()
            await q.close()

        run(scenario())

    def test_second_process_on_same_directory_is_refused(self, tmp_path: Path) -> None:
        """Two processes on one queue would send everything twice: the second is refused."""

        async def scenario() -> None:
            q = DiskQueue(str(tmp_path), max_bytes=1 << 20)
            with pytest.raises(QueueDirError, match="another otlp-triage process"):
                DiskQueue(str(tmp_path), max_bytes=1 << 20)
            await q.close()

        run(scenario())

    def test_corrupt_database_is_refused_with_the_fix(self, tmp_path: Path) -> None:
        """A file that is not a queue database stops start-up with a message naming it."""
        (tmp_path / "queue.sqlite").write_bytes(b"this is not sqlite" * 100)

        async def scenario() -> None:
            DiskQueue(str(tmp_path), max_bytes=1 << 20)

        with pytest.raises(QueueDirError, match="move it aside"):
            run(scenario())


@pytest.mark.parametrize("merge_limit_bytes", [0, None], ids=["queued-apart", "queued-together"])
def test_released_records_go_when_their_requests_caller_gives_up(tmp_path: Path, merge_limit_bytes) -> None:
    """A request's evidence releases an error held earlier (acknowledged then); the request's caller
    gives up while its batch is written. The request may be retried, but the released error has no
    one to retry it: queued apart, it was lost (the handler was cancelled before it was queued).
    Queued together with the request, it goes with it, once."""
    from processor.intake import PROTOBUF, Intake
    from processor.metrics import Metrics

    from .conftest import attributes, export_request, log_record
    from .helpers import AUTH0, pipeline, records

    trace = bytes(range(16))
    error = export_request(log_record(AUTH0, 17, trace, test__id=1)).SerializeToString()
    monitor = export_request(
        log_record("GET /dashboard 401", 9, trace, user_agent__original="Datadog/Synthetics", test__id=2)
    ).SerializeToString()

    async def scenario() -> list[tuple[int, int]]:
        q = DiskQueue(str(tmp_path), max_bytes=1 << 20)
        intake = Intake(pipeline(), q, Metrics(), 1 << 30, merge_limit_bytes=merge_limit_bytes)
        assert (await intake.accept(error, PROTOBUF, "grpc")).held == 1
        other = sqlite3.connect(q.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the queue's writes wait
        accepting = asyncio.create_task(intake.accept(monitor, PROTOBUF, "grpc"))
        await asyncio.sleep(0.2)
        assert not accepting.done()
        accepting.cancel()
        await asyncio.sleep(0.1)
        other.execute("COMMIT")
        other.close()
        with pytest.raises(asyncio.CancelledError):  # once the released error is queued
            await accepting
        seen = []
        while len(seen) < 2:
            batch = await asyncio.wait_for(q.get(), 10)
            seen += [(attributes(r)["test.id"], r.severity_number) for r in records(batch.payload)]
            q.done(batch)
        await q.wait_idle()
        assert q.records == 0  # nothing queued twice
        await q.close()
        return sorted(seen)

    assert run(scenario()) == [(1, 5), (2, 9)]  # the error, downgraded by the monitor's evidence; the monitor
