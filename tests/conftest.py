"""Fixtures for the end-to-end tests: a real sink process, real processor processes, and their plumbing.

Everything binds 127.0.0.1; every wait polls against a deadline and fails with what it was waiting for.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
SINK = Path(__file__).resolve().with_name("sink.py")
EXPORT_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 30.0

T = TypeVar("T")


# --- waiting -----------------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy (returned), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    """The test runner's environment without any OTEL_* or TRIAGE_* setting that could leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRIAGE_"))}


# --- building and reading OTLP -----------------------------------------------------------------------------


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, (list, tuple)):
        result = AnyValue()
        result.array_value.values.extend(any_value(v) for v in value)
        return result
    return AnyValue(string_value=str(value))


def log_record(body: str, severity: int = 9, trace_id: bytes = b"", **attributes: Any) -> LogRecord:
    """A LogRecord; attribute keys use ``__`` for ``.`` (``url__path`` -> ``url.path``)."""
    text = {9: "INFO", 13: "WARN", 17: "ERROR"}.get(severity, "")
    record = LogRecord(
        time_unix_nano=time.time_ns(),
        severity_number=severity,
        severity_text=text,
        trace_id=trace_id,
        body=AnyValue(string_value=body),
    )
    record.attributes.extend(
        KeyValue(key=k.replace("__", "."), value=any_value(v)) for k, v in attributes.items()
    )
    return record


def export_request(*records: LogRecord) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.add(key="service.name", value=AnyValue(string_value="e2e-web"))
    resource_logs.scope_logs.add().log_records.extend(records)
    return request


def records_of(request: ExportLogsServiceRequest) -> Iterator[LogRecord]:
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            yield from scope_logs.log_records


def attributes(record: LogRecord) -> dict[str, Any]:
    """A record's attributes as plain Python values (the last one wins for a repeated key)."""
    out: dict[str, Any] = {}
    for kv in record.attributes:
        kind = kv.value.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = [getattr(v, v.WhichOneof("value")) for v in kv.value.array_value.values]
        else:
            out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


# --- clients -----------------------------------------------------------------------------------------------


def http_post(
    url: str,
    body: bytes,
    content_type: str = "application/x-protobuf",
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], bytes]:
    """POST and return (status, headers, body), for error statuses too."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


class GrpcClient:
    """Raw-bytes LogsService/Export calls, so that a test can send anything, malformed or not."""

    def __init__(self, endpoint: str):
        self.channel = grpc.insecure_channel(endpoint, options=[("grpc.max_send_message_length", -1)])
        self.export = self.channel.unary_unary(
            EXPORT_METHOD, request_serializer=None, response_deserializer=None
        )

    def call(
        self, payload: bytes, compression: grpc.Compression | None = None, timeout: float = 30.0
    ) -> tuple[grpc.StatusCode, str, tuple]:
        """(status code, details, trailing metadata)."""
        try:
            _, call = self.export.with_call(payload, timeout=timeout, compression=compression)
            return call.code(), call.details() or "", tuple(call.trailing_metadata() or ())
        except grpc.RpcError as error:
            return error.code(), error.details() or "", tuple(error.trailing_metadata() or ())

    def close(self) -> None:
        self.channel.close()


def scrape(admin_url: str) -> dict[str, float]:
    """/metrics as {'name{label="value",...}': value}, labels sorted; unlabelled series as plain names."""
    status, body = http_get(admin_url + "/metrics")
    assert status == 200, f"/metrics answered {status}"
    series: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            series[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return series


# --- the sink process --------------------------------------------------------------------------------------


class Sink:
    """A running tests/sink.py and what it has recorded."""

    def __init__(
        self,
        directory: Path,
        fail_first: int = 0,
        failing: bool = False,
        ports: tuple[int, int] | None = None,
        max_message_bytes: int | None = None,
    ):
        """``ports`` (gRPC, HTTP): listen there, as a backend coming back at its old address.
        ``max_message_bytes``: refuse larger requests, as a Collector does (4 MiB over gRPC)."""
        self.out = directory / "sink.jsonl"
        self.control = directory / "sink-failing"
        ready = directory / "sink-ready.json"
        if failing:
            self.control.touch()
        self.stderr_path = directory / "sink.stderr"
        command = [sys.executable, str(SINK), "--out", str(self.out), "--ready", str(ready)]
        command += ["--fail-first", str(fail_first), "--fail-while", str(self.control)]
        if ports is not None:
            command += ["--grpc-port", str(ports[0]), "--http-port", str(ports[1])]
        if max_message_bytes is not None:
            command += ["--max-message-bytes", str(max_message_bytes)]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=err, env=_clean_env(), cwd=ROOT
            )

        def listening() -> dict | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"sink exited with {self.proc.returncode}: {self.stderr_text()}")
            return json.loads(ready.read_text()) if ready.exists() else None

        listening_on = wait_for(listening, START_TIMEOUT_S, "the sink to listen")
        self.grpc_port, self.http_port = listening_on["grpc_port"], listening_on["http_port"]
        assert ports is None or (self.grpc_port, self.http_port) == ports

    def recover(self) -> None:
        """From now on, answer normally (ends ``failing``)."""
        self.control.unlink(missing_ok=True)

    def entries(self) -> list[dict]:
        """One dict per request the sink answered (a partly written last line is left for next time)."""
        if not self.out.exists():
            return []
        text = self.out.read_text()
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def stored(self) -> list[ExportLogsServiceRequest]:
        """The requests the sink kept (accepted records only), in arrival order."""
        return [
            ExportLogsServiceRequest.FromString(base64.b64decode(e["stored"]))
            for e in self.entries()
            if e["stored"]
        ]

    def records(self) -> list[LogRecord]:
        return [r for request in self.stored() for r in records_of(request)]

    def wait_records(
        self, count: int, where: Callable[[LogRecord], bool] = lambda r: True, timeout: float = 15.0
    ) -> list[LogRecord]:
        """Wait until at least ``count`` kept records satisfy ``where``; returns them all."""

        def enough() -> list[LogRecord] | None:
            found = [r for r in self.records() if where(r)]
            return found if len(found) >= count else None

        return wait_for(enough, timeout, f"{count} matching records at the sink")

    def wait_ids(self, ids: set[Any], key: str = "test.id", timeout: float = 15.0) -> list[Any]:
        """Wait until every one of ``ids`` was kept; returns all kept ids (duplicates included)."""

        def arrived() -> list[Any] | None:
            kept = self.ids(key)
            return kept if ids <= set(kept) else None

        try:
            return wait_for(arrived, timeout, f"{len(ids)} ids at the sink")
        except AssertionError:
            missing = ids - set(self.ids(key))
            raise AssertionError(
                f"{len(missing)} of {len(ids)} ids never arrived, e.g. {sorted(missing)[:5]}"
            ) from None

    def ids(self, key: str = "test.id") -> list[Any]:
        """The ``key`` attribute of every record kept, duplicates included."""
        return [attributes(r)[key] for r in self.records() if key in attributes(r)]

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


# --- the processor process ---------------------------------------------------------------------------------


class Processor:
    """A running ``python -m processor serve``, its addresses, and its output."""

    def __init__(self, directory: Path, env: dict[str, str]):
        self.directory = directory
        self.stdout_path = directory / "stdout"
        self.stderr_path = directory / "stderr"
        self.expected_exit: int | None = 0  # checked at teardown; None: the test checked it itself
        ports = [free_port() for _ in range(3)]
        self.grpc_endpoint = f"127.0.0.1:{ports[0]}"
        self.http_url = f"http://127.0.0.1:{ports[1]}/v1/logs"
        self.admin_url = f"http://127.0.0.1:{ports[2]}"
        full_env = {
            **_clean_env(),
            "TRIAGE_GRPC_ENDPOINT": self.grpc_endpoint,
            "TRIAGE_HTTP_ENDPOINT": f"127.0.0.1:{ports[1]}",
            "TRIAGE_ADMIN_ENDPOINT": f"127.0.0.1:{ports[2]}",
            **env,
        }
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "processor", "serve"], stdout=out, stderr=err, env=full_env, cwd=ROOT
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self) -> bool:
        try:
            return http_get(self.admin_url + "/readyz", timeout=1.0)[0] == 200
        except OSError:
            return False

    def readyz_status(self) -> int | None:
        """/readyz's status, or None when the admin endpoint does not answer."""
        try:
            return http_get(self.admin_url + "/readyz", timeout=1.0)[0]
        except OSError:
            return None

    def wait_ready(self) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"processor exited with {self.proc.returncode}:\n{self.stderr()}")
            return self.ready()

        wait_for(up, START_TIMEOUT_S, "the processor's /readyz")

    def metrics(self) -> dict[str, float]:
        return scrape(self.admin_url)

    def status(self, field: str) -> int:
        """A /proc/<pid>/status memory field in bytes: VmRSS now, VmHWM the peak."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
        raise AssertionError(f"{field} not in /proc/{self.pid}/status")

    def stdout_lines(self) -> list[str]:
        return [
            line for line in self.stdout_path.read_text().splitlines(keepends=True) if line.endswith("\n")
        ]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"processor did not exit within {timeout:.0f}s:\n{self.stderr()}") from None


def sink_env(sink: Sink, protocol: str) -> dict[str, str]:
    """The OTEL_EXPORTER_OTLP_* settings that point a processor at ``sink`` over ``protocol``."""
    port = sink.grpc_port if protocol == "grpc" else sink.http_port
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
    }


class Launcher:
    """Starts sinks and processors under one directory and stops them all at the end.

    ``close()`` sends SIGTERM to each and checks its exit code: sinks must exit 0, processors with
    their ``expected_exit`` (0 unless a test changed it).
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.sinks: list[Sink] = []
        self.processors: list[Processor] = []
        self._started_sinks = 0  # names each sink's directory: sinks can leave ``sinks`` (killed)

    def sink(self, **options: Any) -> Sink:
        """A started sink. ``fail_first=N``: the first N requests get UNAVAILABLE/503;
        ``failing=True``: every request does until ``sink.recover()``."""
        directory = self.directory / f"sink{self._started_sinks}"
        self._started_sinks += 1
        directory.mkdir()
        sink = Sink(directory, **options)
        self.sinks.append(sink)
        return sink

    def processor(
        self, sink: Sink | None = None, protocol: str = "http/protobuf", wait: bool = True, **env: str
    ) -> Processor:
        """A processor forwarding to ``sink`` over ``protocol`` (to stdout without a sink), ready to serve."""
        settings = {"TRIAGE_SHUTDOWN_TIMEOUT": "10", **(sink_env(sink, protocol) if sink else {}), **env}
        for attempt in range(3):  # a free port can be taken between choosing and binding it
            directory = self.directory / f"processor{len(self.processors)}"
            directory.mkdir()
            proc = Processor(directory, settings)
            self.processors.append(proc)
            if not wait:
                return proc
            try:
                proc.wait_ready()
                return proc
            except AssertionError:
                port_taken = "in use" in proc.stderr() or "bind" in proc.stderr().lower()
                if proc.proc.poll() is None or not port_taken or attempt == 2:
                    raise
                proc.expected_exit = None
        raise AssertionError("unreachable")

    def close(self) -> None:
        problems = []
        for proc in self.processors:  # processors first: they may still be delivering to a sink
            try:
                code = proc.terminate()
            except AssertionError as hung:  # killed; carry on stopping the others
                problems.append(str(hung))
                continue
            if proc.expected_exit is not None and code != proc.expected_exit:
                problems.append(
                    f"processor exited with {code}, expected {proc.expected_exit}:\n{proc.stderr()[-3000:]}"
                )
        for sink in self.sinks:
            if sink.stop() != 0:
                problems.append(f"sink exited with {sink.proc.returncode}: {sink.stderr_text()}")
        assert not problems, "\n".join(problems)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    running = Launcher(tmp_path)
    yield running
    running.close()


@pytest.fixture
def sink_factory(launcher: Launcher) -> Callable[..., Sink]:
    """``sink_factory(fail_first=N, failing=True)`` starts a sink; it must exit 0 at teardown."""
    return launcher.sink


@pytest.fixture
def sink(launcher: Launcher) -> Sink:
    return launcher.sink()


@pytest.fixture
def processor(launcher: Launcher) -> Callable[..., Processor]:
    """``processor(sink=sink, protocol="grpc", TRIAGE_X="...")`` starts a processor, ready to serve."""
    return launcher.processor
