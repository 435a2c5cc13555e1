"""The persistent queue: acknowledged means on disk; replayed after a restart; bounded."""

from __future__ import annotations

import asyncio
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
