"""Nothing acknowledged is lost: a long backend outage, kill -9 mid-load, and sustained overload.

Real processes over loopback: load generators (threads sending over gRPC and HTTP), the processor,
the sink. Every record carries a unique ``test.id``; what the processor acknowledged (200 / OK) must
reach the sink, at least once. The other two scenarios of issue 4 (retryable-then-permanent
backend errors; SIGTERM under load) are in test_e2e_faults.py.

Each test prints its figures (run with -s to see them).
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import grpc

from .conftest import GrpcClient, Processor, Sink, export_request, http_post, log_record, wait_for

_ids = itertools.count(1)
_ids_lock = threading.Lock()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Load:
    """Senders that keep exporting until stopped; they remember what was acknowledged."""

    def __init__(self, proc: Processor, records_per_request: int, body_bytes: int, pause_s: float):
        self.proc = proc
        self.records_per_request = records_per_request
        self.body = "x" * body_bytes
        self.pause_s = pause_s
        self.acknowledged: set[int] = set()
        self.refused = 0
        self.sent = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, transports: tuple[str, ...] = ("http", "grpc")) -> Load:
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in transports]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _request(self) -> tuple[list[int], bytes]:
        with _ids_lock:
            ids = [next(_ids) for _ in range(self.records_per_request)]
        records = [log_record(self.body, **{"test.id": i}) for i in ids]
        return ids, export_request(*records).SerializeToString()

    def _run(self, transport: str) -> None:
        client = GrpcClient(self.proc.grpc_endpoint) if transport == "grpc" else None
        deadline = time.monotonic() + 300  # bounded whatever happens
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                ids, payload = self._request()
                self.sent += len(ids)
                try:
                    if client is not None:
                        ok = client.call(payload, timeout=10)[0] == grpc.StatusCode.OK
                    else:
                        ok = http_post(self.proc.http_url, payload, timeout=10)[0] == 200
                except OSError:  # connection refused while the processor is down
                    ok = False
                if ok:
                    self.acknowledged.update(ids)
                else:
                    self.refused += len(ids)  # a Collector would retry these later; here they are new ids
                self._stop.wait(self.pause_s if ok else max(self.pause_s, 0.2))
        finally:
            if client is not None:
                client.close()


def delivered(sink: Sink) -> Counter:
    return Counter(sink.ids("test.id"))


def assert_all_arrive(sink: Sink, acknowledged: set[int], timeout: float) -> Counter:
    wait_for(lambda: acknowledged <= set(delivered(sink)), timeout, f"{len(acknowledged)} acknowledged records")
    return delivered(sink)


def test_backend_down_30s_under_steady_load(sink_factory, processor) -> None:
    """The backend refuses everything for 30 s while ~1,000 records/s keep coming: all acknowledged arrive."""
    sink = sink_factory()
    proc = processor(sink=sink, TRIAGE_RETRY_MAX_INTERVAL="2")
    load = Load(proc, records_per_request=50, body_bytes=200, pause_s=0.1).start()
    try:
        wait_for(lambda: len(load.acknowledged) >= 500, 10, "steady traffic")
        sink.control.touch()  # the backend goes down: every export answered UNAVAILABLE / 503
        outage_started = time.monotonic()
        time.sleep(30)
        queued = proc.metrics()["triage_queue_records"]
        sink.recover()
        time.sleep(3)  # keep the load on through the recovery
    finally:
        load.stop()
    counts = assert_all_arrive(sink, load.acknowledged, timeout=60)
    metrics = proc.metrics()
    duplicates = sum(n - 1 for i, n in counts.items() if n > 1)
    print(
        f"\noutage {time.monotonic() - outage_started:.0f}s: sent {load.sent}, acknowledged {len(load.acknowledged)}, "
        f"refused {load.refused}, queued at the end of the outage {queued:.0f}, delivered {len(counts)} "
        f"(+{duplicates} duplicates), retries {metrics['triage_export_retries_total']:.0f}"
    )
    assert queued > 0  # the outage was real: records waited in the queue
    assert metrics["triage_export_retries_total"] > 0
    assert metrics.get('triage_records_dropped_total{reason="permanent_error"}', 0) == 0


def test_kill_9_mid_load_with_persistent_queue(sink_factory, processor, tmp_path: Path) -> None:
    """SIGKILL while requests are flowing (backend slowed by failures): a restart delivers every acknowledged record."""
    sink = sink_factory(fail_first=30)  # the first exports fail, so the queue holds data when the kill comes
    queue_dir = tmp_path / "queue"
    settings = {"TRIAGE_QUEUE_DIR": str(queue_dir), "TRIAGE_RETRY_MAX_INTERVAL": "0.5"}
    first = processor(sink=sink, **settings)
    load = Load(first, records_per_request=50, body_bytes=200, pause_s=0.02).start()
    try:
        wait_for(lambda: len(load.acknowledged) >= 3000, 30, "load before the kill")
        queued = first.metrics()["triage_queue_records"]
        first.proc.send_signal(signal.SIGKILL)
        first.expected_exit = -signal.SIGKILL
        assert first.wait(5) == -signal.SIGKILL
    finally:
        load.stop()
    second = processor(sink=sink, **settings)
    counts = assert_all_arrive(sink, load.acknowledged, timeout=60)
    wait_for(lambda: second.metrics()["triage_queue_batches"] == 0, 20, "the replayed queue to drain")
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    print(
        f"\nkill -9 mid-load: acknowledged {len(load.acknowledged)}, in the queue at the kill {queued:.0f}, "
        f"delivered {len(counts)} (+{duplicates} duplicates)"
    )


def test_overload_60s_backpressure_and_bounded_memory(sink_factory, processor) -> None:
    """A minute of more load than the backend takes: clients get 503 / UNAVAILABLE, RSS stays bounded,
    and everything acknowledged arrives once the backend catches up.

    Bound: RSS <= baseline (after start) + TRIAGE_MEMORY_LIMIT_MIB (queued data) + 64 MiB for requests
    being received and decoded and allocator slack; the limit bounds queued data, not the interpreter.
    """
    limit_mib = 32
    sink = sink_factory(failing=True)  # the backend takes nothing for the first minute
    proc = processor(sink=sink, TRIAGE_MEMORY_LIMIT_MIB=str(limit_mib), TRIAGE_RETRY_MAX_INTERVAL="1")
    baseline = rss_mib(proc.pid)
    load = Load(proc, records_per_request=100, body_bytes=1000, pause_s=0.0).start(("http", "http", "grpc", "grpc"))
    peak = baseline
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            peak = max(peak, rss_mib(proc.pid))
            time.sleep(0.5)
        metrics = proc.metrics()
        sink.recover()
        time.sleep(2)
    finally:
        load.stop()
    counts = assert_all_arrive(sink, load.acknowledged, timeout=60)
    overloaded = sum(v for k, v in metrics.items() if k.startswith("triage_requests_rejected_total") and "overloaded" in k)
    bound = baseline + limit_mib + 64
    print(
        f"\noverload 60s: sent {load.sent}, acknowledged {len(load.acknowledged)}, refused {load.refused} "
        f"({overloaded:.0f} requests answered 503/UNAVAILABLE); RSS baseline {baseline:.0f} MiB, "
        f"peak {peak:.0f} MiB, bound {bound:.0f} MiB; delivered {len(counts)}"
    )
    assert overloaded > 0 and load.refused > 0
    assert peak <= bound
