"""A load-generating OTLP client for the reliability tests, and the bookkeeping that checks its data arrived.

``LoadGenerator`` keeps a steady stream of export requests going to one processor — several senders
(threads), each with one request in flight, over OTLP/gRPC (one shared channel, as a Collector's
exporter has) and OTLP/HTTP protobuf (one keep-alive connection per sender). Every record carries a
unique integer ``load.id``. A refusal OTLP calls retryable (gRPC UNAVAILABLE and friends, HTTP
429/502/503/504, a refused or broken connection, a timeout) is retried like a Collector's exporter
does — exponential backoff, the server's ``Retry-After`` / ``RetryInfo`` honoured, a bounded number
of attempts — and the request is abandoned after the last one. The generator remembers exactly which
records were **acknowledged** (HTTP 200 / gRPC OK): only those must arrive.

``Delivered`` reads what the sink processes stored (their JSON-lines files, incrementally) and
counts every ``load.id``, duplicates included. ``RssSampler`` samples a process's VmRSS. ``Throttle``
makes a sink alternate between refusing (503 / UNAVAILABLE) and answering, via its control file.

Everything binds or connects to 127.0.0.1 only; every loop is bounded in time and count.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

LOAD_ID = "load.id"
REJECT = "sink.reject"  # tests/sink.py answers a request holding such a record 400 / INVALID_ARGUMENT
EXPORT_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
GRPC, HTTP = "grpc", "http"

# OTLP: which answers a client retries. RESOURCE_EXHAUSTED only with a RetryInfo (handled below).
RETRYABLE_GRPC = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
    }
)
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
OK_LABELS = ("grpc OK", "http 200")

# A mix of what the processor classifies: browsers, a synthetic monitor, a probe, a bot, a script.
# All INFO, so no record is ever held for correlation: every one is forwarded at once.
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0",
    "Datadog/Synthetics",
    "kube-probe/1.30",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "python-requests/2.31.0",
)


@dataclass
class Request:
    """One export request: records ``first_id`` .. ``first_id + count - 1``."""

    first_id: int
    count: int
    poisoned: bool  # carries a sink.reject record: the backend will refuse it permanently
    payload: bytes
    attempts: int = 0
    outcome: str = ""  # acknowledged | abandoned | rejected

    @property
    def ids(self) -> range:
        return range(self.first_id, self.first_id + self.count)


@dataclass
class Answer:
    """One attempt's result: ok, retryable (with the server's hint, if any), or permanent."""

    kind: str  # ok | retry | permanent
    label: str  # e.g. "grpc OK", "http 503", "http connection error"
    hint_s: float | None = None


@dataclass
class LoadStats:
    requests: int = 0
    attempts: int = 0
    answers: Counter = field(default_factory=Counter)  # Answer.label -> count
    acknowledged: list[Request] = field(default_factory=list)
    abandoned: list[Request] = field(default_factory=list)  # retryable refusals until the last attempt
    rejected: list[Request] = field(default_factory=list)  # a non-retryable answer


def build_request(first_id: int, count: int, body_bytes: int, poisoned: bool) -> bytes:
    """``count`` access-log-like records with consecutive ``load.id``s (the first attribute of each)."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.add(key="service.name", value=AnyValue(string_value="load-web"))
    records = resource_logs.scope_logs.add().log_records
    padding = "x" * max(0, body_bytes - 40)
    now = time.time_ns()
    for i in range(first_id, first_id + count):
        record = LogRecord(
            time_unix_nano=now,
            severity_number=9,
            severity_text="INFO",
            body=AnyValue(string_value=f"GET /page/{i % 97} 200 {padding}"),
        )
        record.attributes.append(KeyValue(key=LOAD_ID, value=AnyValue(int_value=i)))
        user_agent = AnyValue(string_value=USER_AGENTS[i % len(USER_AGENTS)])
        record.attributes.append(KeyValue(key="user_agent.original", value=user_agent))
        record.attributes.append(KeyValue(key="url.path", value=AnyValue(string_value=f"/page/{i % 97}")))
        if poisoned and i == first_id:
            record.attributes.append(KeyValue(key=REJECT, value=AnyValue(bool_value=True)))
        records.append(record)
    return request.SerializeToString()


def _grpc_hint(trailers: Iterable[tuple[str, bytes]]) -> float | None:
    for key, value in trailers or ():
        try:
            if key == "google.rpc.retryinfo-bin":
                delay = error_details_pb2.RetryInfo.FromString(value).retry_delay
                return delay.seconds + delay.nanos / 1e9
            if key == "grpc-status-details-bin":
                for detail in status_pb2.Status.FromString(value).details:
                    info = error_details_pb2.RetryInfo()
                    if detail.Unpack(info):
                        return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        except Exception:  # a malformed hint is no hint
            continue
    return None


class _GrpcSender:
    def __init__(self, channel: grpc.Channel, timeout_s: float):
        self.export = channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
        self.timeout_s = timeout_s

    def send(self, payload: bytes) -> Answer:
        try:
            self.export(payload, timeout=self.timeout_s)
            return Answer("ok", "grpc OK")
        except grpc.RpcError as error:
            code = error.code()
            hint = _grpc_hint(error.trailing_metadata())
            label = f"grpc {code.name}"
            if code in RETRYABLE_GRPC or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and hint is not None):
                return Answer("retry", label, hint)
            return Answer("permanent", label)

    def close(self) -> None:
        pass


class _HttpSender:
    """One keep-alive connection, reopened after any connection error."""

    def __init__(self, url: str, timeout_s: float):
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port, parts.path
        self.timeout_s = timeout_s
        self.connection: http.client.HTTPConnection | None = None

    def send(self, payload: bytes) -> Answer:
        try:
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self.connection.request(
                "POST", self.path, payload, {"Content-Type": "application/x-protobuf"}
            )
            response = self.connection.getresponse()
            response.read()
            status, retry_after = response.status, response.getheader("Retry-After")
            if response.getheader("Connection", "").lower() == "close":
                self.close()
        except (OSError, http.client.HTTPException) as error:
            self.close()
            kind = "timeout" if isinstance(error, TimeoutError) else "connection error"
            return Answer("retry", f"http {kind}")
        if status == 200:
            return Answer("ok", "http 200")
        if status in RETRYABLE_HTTP:
            try:
                hint = float(retry_after) if retry_after is not None else None
            except ValueError:
                hint = None
            return Answer("retry", f"http {status}", hint)
        return Answer("permanent", f"http {status}")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class LoadGenerator:
    """Senders that keep exporting until ``stop()``; see the module docstring.

    ``requests_per_s``: the total rate over all senders (None: each sender as fast as it is answered).
    ``poison_every``: every n-th request carries one ``sink.reject`` record (0: none).
    Retry policy per request: up to ``max_attempts`` attempts, waiting ``initial_backoff_s`` doubled
    each time up to ``max_backoff_s``, or the server's hint if longer (capped at ``max_backoff_s``).
    """

    def __init__(
        self,
        grpc_endpoint: str,
        http_url: str,
        senders: tuple[str, ...] = (GRPC, GRPC, HTTP, HTTP),
        records_per_request: int = 100,
        body_bytes: int = 200,
        requests_per_s: float | None = None,
        poison_every: int = 0,
        max_attempts: int = 20,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 1.0,
        timeout_s: float = 5.0,
        max_duration_s: float = 240.0,
    ):
        self.grpc_endpoint = grpc_endpoint
        self.http_url = http_url
        self.senders = senders
        self.records_per_request = records_per_request
        self.body_bytes = body_bytes
        self.interval_s = len(senders) / requests_per_s if requests_per_s else 0.0
        self.poison_every = poison_every
        self.max_attempts = max_attempts
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.max_duration_s = max_duration_s
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._sequence = itertools.count()
        self._stop = threading.Event()  # no new requests
        self._abort = threading.Event()  # no more retries either
        self._threads: list[threading.Thread] = []
        self._channel: grpc.Channel | None = None
        self.started_at = 0.0

    # --- control -------------------------------------------------------------------------------------------

    def start(self) -> LoadGenerator:
        if GRPC in self.senders:
            # A short reconnect backoff (gRPC's default grows to 120 s): a restarted server is found at once.
            self._channel = grpc.insecure_channel(
                self.grpc_endpoint,
                options=[("grpc.max_send_message_length", -1), ("grpc.max_reconnect_backoff_ms", 1000)],
            )
        self.started_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._run, args=(kind, n), name=f"load-{kind}-{n}", daemon=True)
            for n, kind in enumerate(self.senders)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, finish_s: float = 15.0) -> LoadStats:
        """No new requests; requests being retried get ``finish_s`` seconds to finish, then are abandoned."""
        self._stop.set()
        deadline = time.monotonic() + finish_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._abort.set()
        for thread in self._threads:
            thread.join(10)
        if self._channel is not None:
            self._channel.close()
        assert not any(t.is_alive() for t in self._threads), "a load sender did not stop"
        return self.stats

    # --- results -------------------------------------------------------------------------------------------

    def acknowledged_count(self) -> int:
        with self._lock:
            return sum(r.count for r in self.stats.acknowledged)

    def answers(self) -> Counter:
        with self._lock:
            return Counter(self.stats.answers)

    def acknowledged_ids(self, poisoned: bool | None = None) -> set[int]:
        """Ids of acknowledged records; ``poisoned`` True/False: only those of (non-)poisoned requests."""
        with self._lock:
            requests = list(self.stats.acknowledged)
        return {i for r in requests if poisoned is None or r.poisoned == poisoned for i in r.ids}

    def sent_ids(self) -> set[int]:
        with self._lock:
            requests = self.stats.acknowledged + self.stats.abandoned + self.stats.rejected
        return {i for r in requests for i in r.ids}

    def summary(self) -> dict[str, int]:
        with self._lock:
            s = self.stats
            return {
                "requests": s.requests,
                "attempts": s.attempts,
                "records_sent": sum(r.count for r in s.acknowledged + s.abandoned + s.rejected),
                "acknowledged": sum(r.count for r in s.acknowledged),
                "refused_answers": sum(n for label, n in s.answers.items() if label not in OK_LABELS),
                "retried_requests": sum(1 for r in s.acknowledged if r.attempts > 1),
                "abandoned": sum(r.count for r in s.abandoned),
                "rejected": sum(r.count for r in s.rejected),
            }

    # --- the senders ---------------------------------------------------------------------------------------

    def _next_request(self) -> Request:
        with self._lock:
            n = next(self._sequence)
            self.stats.requests += 1
        first_id = n * self.records_per_request + 1
        poisoned = bool(self.poison_every) and n % self.poison_every == self.poison_every - 1
        payload = build_request(first_id, self.records_per_request, self.body_bytes, poisoned)
        return Request(first_id, self.records_per_request, poisoned, payload)

    def _run(self, kind: str, n: int) -> None:
        if kind == GRPC:
            assert self._channel is not None
            sender: _GrpcSender | _HttpSender = _GrpcSender(self._channel, self.timeout_s)
        else:
            sender = _HttpSender(self.http_url, self.timeout_s)
        end = self.started_at + self.max_duration_s
        next_at = time.monotonic() + self.interval_s * n / max(1, len(self.senders))  # spread the senders out
        try:
            while not self._stop.is_set() and time.monotonic() < end:
                if self.interval_s:
                    if self._stop.wait(max(0.0, next_at - time.monotonic())):
                        break
                    next_at = max(next_at + self.interval_s, time.monotonic())
                self._deliver(sender, self._next_request())
        finally:
            sender.close()

    def _deliver(self, sender: _GrpcSender | _HttpSender, request: Request) -> None:
        backoff = self.initial_backoff_s
        outcome = "abandoned"
        while request.attempts < self.max_attempts and not self._abort.is_set():
            request.attempts += 1
            answer = sender.send(request.payload)
            with self._lock:
                self.stats.attempts += 1
                self.stats.answers[answer.label] += 1
            if answer.kind == "ok":
                outcome = "acknowledged"
                break
            if answer.kind == "permanent":
                outcome = "rejected"
                break
            delay = min(self.max_backoff_s, max(backoff, answer.hint_s or 0.0))
            backoff = min(self.max_backoff_s, backoff * 2)
            if request.attempts < self.max_attempts and self._abort.wait(delay):
                break
        request.outcome = outcome
        request.payload = b""  # kept only while it may be sent again
        with self._lock:
            getattr(self.stats, outcome).append(request)


class Delivered:
    """Every ``load.id`` the sinks stored, with how often; read incrementally (complete lines only)."""

    def __init__(self, *outs: Path):
        self.offsets: dict[Path, int] = {}
        self.counts: Counter = Counter()
        self.requests = 0
        for out in outs:
            self.add(out)

    def add(self, out: Path) -> None:
        self.offsets.setdefault(out, 0)

    def refresh(self) -> Counter:
        for out, offset in self.offsets.items():
            if not out.exists():
                continue
            with open(out, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # a half-written last line waits for next time
            for line in chunk[:end].splitlines():
                stored = json.loads(line)["stored"]
                if not stored:
                    continue
                self.requests += 1
                request = ExportLogsServiceRequest.FromString(base64.b64decode(stored))
                for resource_logs in request.resource_logs:
                    for scope_logs in resource_logs.scope_logs:
                        for record in scope_logs.log_records:
                            for kv in record.attributes:
                                if kv.key == LOAD_ID:
                                    self.counts[kv.value.int_value] += 1
                                    break
            self.offsets[out] = offset + end
        return self.counts

    def total(self) -> int:
        return sum(self.counts.values())

    def duplicates(self) -> int:
        return self.total() - len(self.counts)

    def missing(self, ids: set[int]) -> set[int]:
        return ids - self.refresh().keys()

    def wait_all(self, ids: set[int], timeout: float) -> float:
        """Wait until every one of ``ids`` arrived; returns the seconds it took, else fails naming some."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            missing = self.missing(ids)
            if not missing:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(missing)} of {len(ids)} acknowledged records never arrived within {timeout:.0f}s, "
                    f"e.g. load.id {sorted(missing)[:5]}"
                )
            time.sleep(0.25)


class RssSampler:
    """Samples a process's VmRSS (MiB) every ``interval_s`` in a thread, for at most ``max_s`` seconds."""

    def __init__(self, pid: int, interval_s: float = 0.5, max_s: float = 300.0):
        self.pid = pid
        self.interval_s = interval_s
        self.max_s = max_s
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def field_mib(self, name: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024  # kB
        raise AssertionError(f"{name} not in /proc/{self.pid}/status")

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak(self) -> float:
        return max((mib for _, mib in self.samples), default=0.0)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - started < self.max_s:
            try:
                self.samples.append((time.monotonic() - started, self.field_mib("VmRSS")))
            except (OSError, AssertionError):  # the process is gone
                return
            self._stop.wait(self.interval_s)


class Throttle:
    """A backend with limited capacity: the sink refuses (503 / UNAVAILABLE) for ``down_s``, answers for
    ``up_s``, and again, by creating and removing its ``--fail-while`` control file.
    ``stop()`` leaves it answering."""

    def __init__(self, control: Path, down_s: float, up_s: float, max_s: float = 300.0):
        self.control = control
        self.down_s = down_s
        self.up_s = up_s
        self.max_s = max_s
        self.cycles = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="throttle", daemon=True)

    def start(self) -> Throttle:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.control.unlink(missing_ok=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - started < self.max_s:
            self.control.touch()
            if self._stop.wait(self.down_s):
                break
            self.control.unlink(missing_ok=True)
            self.cycles += 1
            if self._stop.wait(self.up_s):
                break
