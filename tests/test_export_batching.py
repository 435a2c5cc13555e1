"""Requests waiting for export go out together: fewer calls, the same records, nothing lost.

The real Exporter on the real queues (memory and persistent), in process, against a backend that
records each call and can hold a call or refuse calls permanently.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

from processor.config import Config
from processor.disk_queue import DiskQueue
from processor.export import Exporter
from processor.export.transports import Permanent, Sent
from processor.metrics import Metrics
from processor.queue import Batch, BoundedQueue


def request(name: str, records: int = 3) -> Batch:
    """A serialized request of ``records`` records whose bodies are ``name/0``, ``name/1``, ..."""
    logs = [LogRecord(body=AnyValue(string_value=f"{name}/{n}")) for n in range(records)]
    payload = ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=logs)])])
    return Batch(payload.SerializeToString(), records)


def bodies(payload: bytes) -> list[str]:
    decoded = ExportLogsServiceRequest.FromString(payload)
    return [
        record.body.string_value
        for resource in decoded.resource_logs
        for scope in resource.scope_logs
        for record in scope.log_records
    ]


class Backend:
    """Records every call's records; holds calls while ``gate`` is clear; refuses permanently any call
    holding a record of a request named ``bad``."""

    description = "in-process"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.arrived = asyncio.Event()

    async def send(self, payload: bytes):
        self.arrived.set()
        await self.gate.wait()
        records = bodies(payload)
        self.calls.append(records)
        if any(body.startswith("bad/") for body in records):
            return Permanent("HTTP 400: bad record")
        return Sent()

    async def close(self) -> None:
        pass


def make_queue(kind: str, tmp_path: Path):
    return BoundedQueue(1 << 30) if kind == "memory" else DiskQueue(str(tmp_path / "queue"), 1 << 30, "never")


def delivered(backend: Backend) -> list[str]:
    """Records of the calls the backend accepted, in the order they arrived."""
    return [body for call in backend.calls if not any(b.startswith("bad/") for b in call) for body in call]


async def export(kind: str, tmp_path: Path, names: list[str], max_call_bytes: int) -> tuple[Backend, Metrics]:
    """``names[0]`` is queued and taken by the one worker, whose call the backend holds while the rest
    are queued behind it; then everything is delivered."""
    queue = make_queue(kind, tmp_path)
    backend = Backend()
    metrics = Metrics()
    exporter = Exporter(
        backend, queue, metrics, concurrency=1, max_interval_s=0.1, max_call_bytes=max_call_bytes
    )
    backend.gate.clear()
    exporter.start()
    try:
        await queue.put(request(names[0]))
        await asyncio.wait_for(backend.arrived.wait(), 5)
        for name in names[1:]:
            await queue.put(request(name))
        backend.gate.set()
        await asyncio.wait_for(queue.wait_idle(), 5)
    finally:
        await exporter.stop()
        await queue.close()
    return backend, metrics


QUEUES = ["memory", "persistent"]


@pytest.mark.parametrize("kind", QUEUES)
def test_requests_waiting_for_a_worker_go_out_in_one_call(kind: str, tmp_path: Path) -> None:
    backend, metrics = asyncio.run(export(kind, tmp_path, ["a", "b", "c", "d", "e"], 4 * 1024 * 1024))
    assert backend.calls == [
        ["a/0", "a/1", "a/2"],
        ["b/0", "b/1", "b/2", "c/0", "c/1", "c/2", "d/0", "d/1", "d/2", "e/0", "e/1", "e/2"],
    ]
    assert metrics.registry.get_sample_value("triage_records_forwarded_total") == 15
    assert metrics.registry.get_sample_value("triage_export_requests_total", {"outcome": "success"}) == 2


@pytest.mark.parametrize("kind", QUEUES)
def test_a_call_is_no_larger_than_the_limit(kind: str, tmp_path: Path) -> None:
    size = len(request("b").payload)
    backend, _ = asyncio.run(export(kind, tmp_path, ["a", "b", "c", "d", "e"], 2 * size + size // 2))
    assert [len(call) // 3 for call in backend.calls] == [1, 2, 2]
    assert delivered(backend) == [f"{name}/{n}" for name in "abcde" for n in range(3)]


@pytest.mark.parametrize("kind", QUEUES)
def test_a_call_refused_permanently_is_sent_again_request_by_request(kind: str, tmp_path: Path) -> None:
    """Only the refused request is dropped: its neighbours in the joined call still reach the backend."""
    backend, metrics = asyncio.run(export(kind, tmp_path, ["a", "b", "bad", "c"], 4 * 1024 * 1024))
    assert backend.calls[1] == ["b/0", "b/1", "b/2", "bad/0", "bad/1", "bad/2", "c/0", "c/1", "c/2"]
    assert backend.calls[2:] == [["b/0", "b/1", "b/2"], ["bad/0", "bad/1", "bad/2"], ["c/0", "c/1", "c/2"]]
    assert delivered(backend) == ["a/0", "a/1", "a/2", "b/0", "b/1", "b/2", "c/0", "c/1", "c/2"]
    sample = metrics.registry.get_sample_value
    assert sample("triage_records_dropped_total", {"reason": "permanent_error"}) == 3
    assert sample("triage_records_forwarded_total") == 9


def test_a_failed_read_of_the_waiting_batches_puts_them_back(tmp_path: Path) -> None:
    """The persistent queue's read of the batches behind one fails: they stay queued, in order."""

    async def scenario() -> list[list[str]]:
        queue = DiskQueue(str(tmp_path / "queue"), 1 << 30, "never")
        for name in "abc":
            await queue.put(request(name))
        first = await queue.get()
        read_many = queue._read_many
        queue._read_many = lambda row_ids: (_ for _ in ()).throw(OSError("disk I/O error"))
        with pytest.raises(OSError):
            await queue.get_waiting(1 << 20)
        queue._read_many = read_many
        rest = await queue.get_waiting(1 << 20)
        for batch in [first, *rest]:
            queue.done(batch)
        await queue.wait_idle()
        await queue.close()
        return [bodies(batch.payload) for batch in [first, *rest]]

    assert asyncio.run(scenario()) == [[f"{name}/{n}" for n in range(3)] for name in "abc"]


def test_defaults_and_the_variable() -> None:
    config = Config.from_env({})
    assert (config.export_concurrency, config.export_max_bytes) == (2, 4 * 1024 * 1024)
    assert Config.from_env({"TRIAGE_EXPORT_MAX_BYTES": "65536"}).export_max_bytes == 65536
    with pytest.raises(Exception, match="TRIAGE_EXPORT_MAX_BYTES"):
        Config.from_env({"TRIAGE_EXPORT_MAX_BYTES": "0"})


async def timed_calls(linger_s: float, concurrency: int, gaps_s: list[float]) -> list[list[str]]:
    """Requests a, b, ... queued ``gaps_s`` apart (the first at once) on an idle exporter: its calls."""
    queue = BoundedQueue(1 << 30)
    backend = Backend()
    exporter = Exporter(backend, queue, Metrics(), concurrency=concurrency, max_interval_s=0.1, linger_s=linger_s)
    exporter.start()
    try:
        for name, gap in zip("abcdefgh", [0.0, *gaps_s]):
            await asyncio.sleep(gap)
            await queue.put(request(name, records=1))
        await asyncio.wait_for(queue.wait_idle(), 5)
    finally:
        await exporter.stop()
    return backend.calls


def test_a_free_worker_lingers_for_requests_to_join_its_call() -> None:
    """With a linger, requests arriving close together share a call, even with a second worker free;
    without one, each idle worker sends what it takes at once."""
    assert asyncio.run(timed_calls(0.3, 2, [0.02, 0.02])) == [["a/0", "b/0", "c/0"]]
    assert asyncio.run(timed_calls(0.0, 2, [0.02, 0.02])) == [["a/0"], ["b/0"], ["c/0"]]
    # After its linger a worker sends what it has; what comes later goes in the next call.
    assert asyncio.run(timed_calls(0.05, 1, [0.01, 0.3])) == [["a/0", "b/0"], ["c/0"]]


@pytest.mark.parametrize("kind", QUEUES)
def test_no_linger_when_a_full_call_is_waiting(kind: str, tmp_path: Path) -> None:
    """A backlog goes at once, a full call at a time; a worker stopped while lingering counts what it
    took as undelivered."""

    async def scenario() -> tuple[list[list[str]], int]:
        queue = make_queue(kind, tmp_path)
        backend = Backend()
        size = len(request("a").payload)
        exporter = Exporter(
            backend, queue, Metrics(), concurrency=1, max_interval_s=0.1, max_call_bytes=2 * size + size // 2,
            linger_s=60.0,
        )
        for name in "abcd":
            await queue.put(request(name))
        exporter.start()
        try:
            await asyncio.wait_for(backend.arrived.wait(), 5)  # a and b: c does not fit, so no linger
            await asyncio.sleep(0.1)  # the worker takes c and lingers: d fits, with room for half a request more
        finally:
            undelivered = await exporter.stop()
            await queue.close()
        return backend.calls, undelivered

    calls, undelivered = asyncio.run(scenario())
    assert calls == [["a/0", "a/1", "a/2", "b/0", "b/1", "b/2"]]
    assert undelivered == 6


def test_linger_default_and_bounds() -> None:
    assert Config.from_env({}).export_linger_s == 0.0
    assert Config.from_env({"TRIAGE_EXPORT_LINGER": "0.005"}).export_linger_s == 0.005
    assert Config.from_env({"TRIAGE_EXPORT_LINGER": "0.2"}).export_linger_s == 0.2
    for bad in ("-1", "2", "soon", "nan"):
        with pytest.raises(Exception, match="TRIAGE_EXPORT_LINGER"):
            Config.from_env({"TRIAGE_EXPORT_LINGER": bad})
