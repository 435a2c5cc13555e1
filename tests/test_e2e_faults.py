"""End to end, when things go wrong: bad input, bombs, backpressure, a failing backend, SIGTERM, bad settings.

Real processes on loopback throughout; after every refusal the processor must still serve.
"""

from __future__ import annotations

import gzip
import itertools
import json
import signal
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from .conftest import (
    GrpcClient,
    Launcher,
    Processor,
    Sink,
    export_request,
    http_post,
    log_record,
    wait_for,
)

MiB = 1024 * 1024
PROTOBUF, JSON = "application/x-protobuf", "application/json"
_ids = itertools.count()


def new_id() -> str:
    return f"r{next(_ids)}"


def records_with_ids(count: int, body_bytes: int = 20, **attributes) -> tuple[set[str], list]:
    ids = [new_id() for _ in range(count)]
    return set(ids), [log_record("x" * body_bytes, **{"test.id": i}, **attributes) for i in ids]


def metric(proc: Processor, key: str) -> float:
    return proc.metrics().get(key, 0.0)


def rejected_key(reason: str, transport: str) -> str:
    return f'triage_requests_rejected_total{{reason="{reason}",transport="{transport}"}}'


def still_serves(proc: Processor, sink: Sink) -> None:
    """A good request over each transport is acknowledged and arrives."""
    http_ids, records = records_with_ids(1)
    status, _, body = http_post(proc.http_url, export_request(*records).SerializeToString())
    assert status == 200, body
    grpc_ids, records = records_with_ids(1)
    client = GrpcClient(proc.grpc_endpoint)
    try:
        code, details, _ = client.call(export_request(*records).SerializeToString())
    finally:
        client.close()
    assert code == grpc.StatusCode.OK, details
    sink.wait_ids(http_ids | grpc_ids)


def error_status(body: bytes, content_type: str) -> status_pb2.Status:
    """The google.rpc.Status an OTLP/HTTP error body carries, in the request's encoding."""
    if content_type == JSON:
        document = json.loads(body)
        return status_pb2.Status(code=document.get("code", 0), message=document.get("message", ""))
    return status_pb2.Status.FromString(body)


# --- bad input against one running processor -----------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Processor, Sink]]:
    """One processor (and sink) that every bad-input case below hits in turn."""
    launcher = Launcher(tmp_path_factory.mktemp("bad-input"))
    sink = launcher.sink()
    yield launcher.processor(sink=sink), sink
    launcher.close()


GOOD = export_request(log_record("GET / 200", user_agent__original="kube-probe/1.30")).SerializeToString()


def json_request(*records: dict) -> bytes:
    return json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": list(records)}]}]}).encode()


BAD_HEX_TRACE = json_request({"traceId": "zz" * 16, "body": {"stringValue": "bad id"}})

BAD_HTTP = [
    # (id, Content-Type, extra headers, body, expected status, expected metric reason)
    ("malformed-protobuf", PROTOBUF, {}, b"\x0a\xff\xff\xff\xff\x0f", 400, "invalid"),
    ("malformed-json", JSON, {}, b'{"resourceLogs": [', 400, "invalid"),
    ("json-bad-hex-trace-id", JSON, {}, BAD_HEX_TRACE, 400, "invalid"),
    ("json-not-an-object", JSON, {}, b"[1, 2]", 400, "invalid"),
    ("truncated-gzip", PROTOBUF, {"Content-Encoding": "gzip"}, gzip.compress(GOOD)[:-12], 400, "invalid"),
    ("text-plain", "text/plain", {}, b"GET / 200", 415, "unsupported"),
    ("unknown-content-encoding", PROTOBUF, {"Content-Encoding": "br"}, GOOD, 415, "unsupported"),
]


@pytest.mark.parametrize(
    ("content_type", "headers", "body", "expected", "reason"),
    [case[1:] for case in BAD_HTTP],
    ids=[case[0] for case in BAD_HTTP],
)
def test_http_bad_input_is_refused_and_serving_continues(
    served, content_type, headers, body, expected, reason
):
    """Each bad body gets its 4xx with a google.rpc.Status that says why; the next good request succeeds."""
    proc, sink = served
    before = metric(proc, rejected_key(reason, "http"))
    status, response_headers, response = http_post(proc.http_url, body, content_type, headers)
    assert status == expected, response
    assert "Retry-After" not in response_headers  # not retryable: the same bytes get the same answer
    refusal = error_status(response, content_type)
    assert refusal.message, "the error body must say what is wrong"
    if expected == 400:
        assert refusal.code == code_pb2.INVALID_ARGUMENT
    assert metric(proc, rejected_key(reason, "http")) == before + 1
    still_serves(proc, sink)


def test_bad_hex_trace_id_error_names_the_field(served):
    """The 400 for a bad id names the field, so the sender can find the bug."""
    proc, _ = served
    status, _, response = http_post(proc.http_url, BAD_HEX_TRACE, JSON)
    assert status == 400
    assert "traceId" in error_status(response, JSON).message


def test_grpc_malformed_protobuf_is_invalid_argument(served):
    proc, sink = served
    client = GrpcClient(proc.grpc_endpoint)
    try:
        code, details, _ = client.call(b"\x0a\xff\xff\xff\xff\x0f")
    finally:
        client.close()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details
    still_serves(proc, sink)


@pytest.mark.parametrize(
    ("transport", "content_type", "body"),
    [
        ("http", PROTOBUF, b""),
        ("http", JSON, b"{}"),
        ("grpc", PROTOBUF, b""),
    ],
)
def test_empty_request_succeeds(served, transport, content_type, body):
    """OTLP: an empty request is a valid one."""
    proc, sink = served
    received = metric(proc, f'triage_records_received_total{{transport="{transport}"}}')
    if transport == "http":
        status, _, response = http_post(proc.http_url, body, content_type)
        assert status == 200, response
    else:
        client = GrpcClient(proc.grpc_endpoint)
        try:
            code, details, _ = client.call(body)
        finally:
            client.close()
        assert code == grpc.StatusCode.OK, details
    assert metric(proc, f'triage_records_received_total{{transport="{transport}"}}') == received
    still_serves(proc, sink)


# --- compression bombs and oversized bodies ------------------------------------------------------------


def gzip_bomb(size: int) -> bytes:
    """A valid gzip stream of ``size`` zero bytes (a whole number of MiB), about 1000 times smaller.

    After a full flush the deflate state is reset, so every further MiB of zeros compresses to the
    same bytes: compress two MiB, repeat the second, and finish with the right CRC and length.
    """
    chunk = bytes(MiB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // MiB):
        crc = zlib.crc32(chunk, crc)
    final_empty_block = b"\x03\x00"
    return (
        first + repeated * (size // MiB - 1) + final_empty_block + struct.pack("<II", crc, size & 0xFFFFFFFF)
    )


def test_http_gzip_bomb_is_refused_without_inflating_it(sink: Sink, processor):
    """1 GiB of zeros in ~1 MiB of gzip: 413, and the processor's peak memory stays far below 1 GiB."""
    proc = processor(sink=sink)
    bomb_size = 1024 * MiB
    bomb = gzip_bomb(bomb_size)
    assert len(bomb) < 2 * MiB  # under TRIAGE_MAX_REQUEST_BYTES: only decompression can stop it
    status, _, response = http_post(proc.http_url, bomb, PROTOBUF, {"Content-Encoding": "gzip"})
    assert status == 413, response
    assert error_status(response, PROTOBUF).message
    peak = proc.status("VmHWM")
    assert peak < 300 * MiB, f"peak RSS {peak // MiB} MiB for a {bomb_size // MiB} MiB bomb"
    assert metric(proc, rejected_key("too_large", "http")) == 1
    still_serves(proc, sink)


def test_grpc_compressed_bomb_is_refused_without_inflating_it(sink: Sink, processor):
    """256 MiB of zeros, gzip-compressed by gRPC itself: RESOURCE_EXHAUSTED, peak memory well below it."""
    proc = processor(sink=sink)
    bomb_size = 256 * MiB
    client = GrpcClient(proc.grpc_endpoint)
    try:
        code, details, _ = client.call(bytes(bomb_size), compression=grpc.Compression.Gzip)
    finally:
        client.close()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    peak = proc.status("VmHWM")
    assert peak < bomb_size // 2, f"peak RSS {peak // MiB} MiB for a {bomb_size // MiB} MiB bomb"
    still_serves(proc, sink)


def _length_delimited(number: int, content: bytes) -> bytes:
    """A length-delimited protobuf field (field numbers up to 15)."""
    size, length = len(content), bytearray()
    while True:
        length.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            return bytes([number << 3 | 2]) + bytes(length) + content


def empty_messages(shape: str, count: int) -> bytes:
    """A request of ``count`` empty messages: ResourceLogs, ScopeLogs in one ResourceLogs, or
    LogRecords in one ScopeLogs (2 bytes each)."""
    empties = b"\x12\x00" * count if shape != "resource_logs" else b"\x0a\x00" * count
    if shape == "resource_logs":
        return empties
    if shape == "scope_logs":
        return _length_delimited(1, empties)
    return _length_delimited(1, _length_delimited(2, empties))


@pytest.mark.parametrize("shape", ["resource_logs", "scope_logs", "records"])
def test_millions_of_empty_messages_are_refused_before_they_are_indexed(sink: Sink, processor, shape: str):
    """15 million empty messages: 30 MiB (under TRIAGE_MAX_DECOMPRESSED_BYTES) in a 30 KiB gzip body.
    Refused with 400 / INVALID_ARGUMENT naming the limit, without a few dozen bytes kept per message
    (which took 1.7 GB and 5 s for ScopeLogs); the processor goes on serving."""
    proc = processor(sink=sink)
    body = empty_messages(shape, 15_000_000)
    assert 28 * MiB < len(body) < 32 * MiB
    bomb = gzip.compress(body)
    assert len(bomb) < 64 * 1024
    status, _, response = http_post(proc.http_url, bomb, PROTOBUF, {"Content-Encoding": "gzip"})
    assert status == 400, response
    assert "TRIAGE_MAX_RECORDS_PER_REQUEST" in error_status(response, PROTOBUF).message
    if shape == "scope_logs":
        client = GrpcClient(proc.grpc_endpoint)
        try:
            code, details, _ = client.call(body, compression=grpc.Compression.Gzip)
        finally:
            client.close()
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "TRIAGE_MAX_RECORDS_PER_REQUEST" in details
    peak = proc.status("VmHWM")
    assert peak < 400 * MiB, f"peak RSS {peak // MiB} MiB"
    still_serves(proc, sink)


LIMIT = 64 * 1024


def test_bodies_over_the_request_limit_are_refused(sink: Sink, processor):
    """With a 64 KiB limit: 413 (with or without Content-Length, or once inflated), RESOURCE_EXHAUSTED
    over gRPC; just under the limit is accepted."""
    proc = processor(sink=sink, TRIAGE_MAX_REQUEST_BYTES=str(LIMIT), TRIAGE_MAX_DECOMPRESSED_BYTES=str(LIMIT))
    _, records = records_with_ids(1, body_bytes=LIMIT + 1024)
    oversized = export_request(*records).SerializeToString()

    assert http_post(proc.http_url, oversized)[0] == 413
    halves = iter([oversized[: len(oversized) // 2], oversized[len(oversized) // 2 :]])
    assert http_post(proc.http_url, halves, headers={"Transfer-Encoding": "chunked"})[0] == 413
    inflates = gzip.compress(oversized)
    assert len(inflates) < LIMIT
    assert http_post(proc.http_url, inflates, headers={"Content-Encoding": "gzip"})[0] == 413
    client = GrpcClient(proc.grpc_endpoint)
    try:
        code, _, _ = client.call(oversized)
    finally:
        client.close()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert metric(proc, rejected_key("too_large", "http")) == 3

    under_ids, records = records_with_ids(1, body_bytes=LIMIT - 1024)
    status, _, response = http_post(proc.http_url, export_request(*records).SerializeToString())
    assert status == 200, response
    sink.wait_ids(under_ids)
    still_serves(proc, sink)


# --- backpressure --------------------------------------------------------------------------------------


def test_backpressure_refuses_with_retry_hints_and_loses_nothing_acknowledged(sink_factory, processor):
    """A 1 MiB queue and a backend that is down: 503 + Retry-After and UNAVAILABLE + RetryInfo once full;
    when the backend recovers, every acknowledged record arrives."""
    sink = sink_factory(failing=True)
    proc = processor(sink=sink, TRIAGE_MEMORY_LIMIT_MIB="1", TRIAGE_RETRY_MAX_INTERVAL="0.2")
    acknowledged: set[str] = set()

    def request_of_200_kib() -> tuple[set[str], bytes]:
        ids, records = records_with_ids(20, body_bytes=10 * 1024)
        return ids, export_request(*records).SerializeToString()

    for _ in range(40):  # 1 MiB holds about five; the bound only guards against a queue that never fills
        ids, payload = request_of_200_kib()
        status, headers, body = http_post(proc.http_url, payload)
        if status != 200:
            break
        acknowledged |= ids
    assert status == 503, body
    assert float(headers["Retry-After"]) >= 0
    refusal = status_pb2.Status.FromString(body)
    assert refusal.code == code_pb2.UNAVAILABLE
    hint = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(hint) for detail in refusal.details), "the 503 body carries no RetryInfo"

    client = GrpcClient(proc.grpc_endpoint)
    try:
        for _ in range(40):
            ids, payload = request_of_200_kib()
            code, details, trailers = client.call(payload)
            if code != grpc.StatusCode.OK:
                break
            acknowledged |= ids
    finally:
        client.close()
    assert code == grpc.StatusCode.UNAVAILABLE, details
    retry_info = dict(trailers).get("google.rpc.retryinfo-bin")
    assert retry_info is not None, f"no google.rpc.retryinfo-bin in {[k for k, _ in trailers]}"
    error_details_pb2.RetryInfo.FromString(retry_info)
    assert acknowledged, "nothing was acknowledged before the queue filled"
    assert any(e["answer"] == "unavailable" for e in sink.entries()), "the backend was never tried"
    assert metric(proc, rejected_key("overloaded", "http")) >= 1
    assert metric(proc, rejected_key("overloaded", "grpc")) >= 1

    sink.recover()
    kept = sink.wait_ids(acknowledged, timeout=20)
    assert set(kept) == acknowledged  # duplicates allowed, strangers not
    wait_for(lambda: metric(proc, "triage_queue_batches") == 0, 10, "an empty queue")
    assert metric(proc, "triage_records_forwarded_total") == len(acknowledged)
    still_serves(proc, sink)


# --- a failing backend: retries, permanent errors, partial success -------------------------------------

BACKENDS = ["grpc", "http/protobuf"]


def send_http(proc: Processor, records: list) -> None:
    status, _, body = http_post(proc.http_url, export_request(*records).SerializeToString())
    assert status == 200, body


@pytest.mark.parametrize("backend", BACKENDS)
def test_retryable_backend_failures_are_retried_until_delivered(backend, sink_factory, processor):
    """The backend answers the first requests UNAVAILABLE/503: all arrives, and the retries are counted."""
    sink = sink_factory(fail_first=3)
    proc = processor(sink=sink, protocol=backend, TRIAGE_RETRY_MAX_INTERVAL="0.2")
    sent: set[str] = set()
    for _ in range(4):
        ids, records = records_with_ids(2)
        send_http(proc, records)
        sent |= ids
    assert set(sink.wait_ids(sent)) == sent
    failed = sum(1 for e in sink.entries() if e["answer"] == "unavailable")
    assert failed > 0
    wait_for(lambda: metric(proc, "triage_records_forwarded_total") == len(sent), 10, "every record counted")
    metrics = proc.metrics()
    assert metrics["triage_export_retries_total"] == failed
    assert metrics['triage_export_requests_total{outcome="retryable_failure"}'] == failed
    assert not any(k.startswith("triage_records_dropped_total") and v for k, v in metrics.items())


@pytest.mark.parametrize("backend", BACKENDS)
def test_permanent_errors_and_partial_success_are_counted_not_retried(backend, sink: Sink, processor):
    """400/INVALID_ARGUMENT drops a request's records, partial success the refused ones; the rest arrive."""
    # No linger: each request is its own export call, so each call's outcome is counted once.
    proc = processor(sink=sink, protocol=backend, TRIAGE_RETRY_MAX_INTERVAL="0.2", TRIAGE_EXPORT_LINGER="0")
    good_ids, good = records_with_ids(2)
    rejected_ids, rejected = records_with_ids(1)
    _, flagged = records_with_ids(1, **{"sink.reject": True})
    partial_ok_ids, partial_ok = records_with_ids(2)
    refused_ids, refused = records_with_ids(1, **{"sink.partial": True})
    later_ids, later = records_with_ids(2)

    send_http(proc, good)
    send_http(proc, rejected + flagged)
    send_http(proc, partial_ok + refused)
    send_http(proc, later)
    total = len(good) + len(rejected + flagged) + len(partial_ok + refused) + len(later)

    def settled() -> dict | None:
        m = proc.metrics()
        done = m.get("triage_records_forwarded_total", 0) + sum(
            v for k, v in m.items() if k.startswith("triage_records_dropped_total")
        )
        return m if done == total and m.get("triage_queue_batches") == 0 else None

    metrics = wait_for(settled, 15, "every record delivered or dropped")
    assert metrics['triage_records_dropped_total{reason="permanent_error"}'] == len(rejected + flagged)
    assert metrics['triage_records_dropped_total{reason="partial_success"}'] == len(refused)
    assert metrics['triage_export_requests_total{outcome="permanent_failure"}'] == 1
    assert sum(1 for e in sink.entries() if e["answer"] == "invalid") == 1  # refused once, never retried
    kept = set(sink.ids())
    assert kept == good_ids | partial_ok_ids | later_ids
    assert not kept & (rejected_ids | refused_ids)
    still_serves(proc, sink)  # nothing wedged


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_request_larger_than_the_backend_takes_arrives_in_parts(backend, sink_factory, processor):
    """A backend that refuses messages over 4 MiB (the Collector's default over gRPC, and OTLP makes
    that permanent): a 6 MiB request, acknowledged, still arrives whole, in calls of at most
    TRIAGE_EXPORT_MAX_BYTES, none dropped."""
    sink = sink_factory(max_message_bytes=4 * MiB)
    proc = processor(sink=sink, protocol=backend)
    ids, records = records_with_ids(12_000, body_bytes=480)
    payload = export_request(*records).SerializeToString()
    assert len(payload) > 5 * MiB
    send_http(proc, records)
    assert set(sink.wait_ids(ids, timeout=60)) == ids
    calls = sink.entries()
    assert len(calls) >= 2 and all(e["answer"] == "ok" for e in calls)
    assert sum(e["records"] for e in calls) == len(ids)  # each record once
    metrics = wait_for(
        lambda: (m := proc.metrics()).get("triage_records_forwarded_total") == len(ids) and m, 10, "forwarded"
    )
    assert not any(k.startswith("triage_records_dropped_total") and v for k, v in metrics.items())
    still_serves(proc, sink)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_call_the_backend_refuses_as_too_large_is_sent_again_in_halves(backend, sink_factory, processor):
    """The backend's limit (1 MiB) is below TRIAGE_EXPORT_MAX_BYTES (4 MiB): the 3 MiB call it refuses
    (RESOURCE_EXHAUSTED / 413) is halved until it fits; nothing is dropped, and the log says what to set."""
    sink = sink_factory(max_message_bytes=1 * MiB)
    proc = processor(sink=sink, protocol=backend)
    ids, records = records_with_ids(6_000, body_bytes=480)
    send_http(proc, records)
    assert set(sink.wait_ids(ids, timeout=60)) == ids
    assert sum(e["records"] for e in sink.entries()) == len(ids)
    metrics = wait_for(
        lambda: (m := proc.metrics()).get("triage_records_forwarded_total") == len(ids) and m, 10, "forwarded"
    )
    assert not any(k.startswith("triage_records_dropped_total") and v for k, v in metrics.items())
    assert metrics['triage_export_requests_total{outcome="permanent_failure"}'] >= 1
    assert "set TRIAGE_EXPORT_MAX_BYTES below the backend's limit" in proc.stderr()


# --- SIGTERM with records still queued -----------------------------------------------------------------


def queue_behind_a_failing_backend(proc: Processor, sink: Sink) -> set[str]:
    """Acknowledged records that cannot be delivered yet (the sink has refused at least one attempt)."""
    acknowledged: set[str] = set()
    for _ in range(3):
        ids, records = records_with_ids(2)
        send_http(proc, records)
        acknowledged |= ids
    wait_for(
        lambda: any(e["answer"] == "unavailable" for e in sink.entries()), 10, "a refused export attempt"
    )
    return acknowledged


def test_sigterm_drains_the_queue_then_exits_0(sink_factory, processor):
    """SIGTERM while the backend is down: /readyz turns 503, and once the backend is back within the
    shutdown timeout, every acknowledged record arrives and the exit code is 0."""
    sink = sink_factory(failing=True)
    proc = processor(sink=sink, TRIAGE_RETRY_MAX_INTERVAL="0.2", TRIAGE_SHUTDOWN_TIMEOUT="20")
    acknowledged = queue_behind_a_failing_backend(proc, sink)

    proc.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: proc.readyz_status() == 503, 5, "/readyz to answer 503 while draining")
    assert proc.proc.poll() is None, "exited before the queue was drained"
    sink.recover()
    assert proc.wait(20) == 0, proc.stderr()
    assert set(sink.wait_ids(acknowledged, timeout=1)) == acknowledged


def test_sigterm_under_load_loses_nothing_acknowledged(sink: Sink, processor):
    """Clients keep sending over both transports while SIGTERM arrives: exit 0, and every request that
    was acknowledged (200 / OK) arrives; the rest were refused or cut off, for the client to retry."""
    proc = processor(sink=sink, TRIAGE_RETRY_MAX_INTERVAL="0.2")
    acknowledged: set[str] = set()
    answers: list[bool] = []
    stop = threading.Event()

    def send(transport: str) -> None:
        client = GrpcClient(proc.grpc_endpoint) if transport == "grpc" else None
        try:
            for _ in range(2000):  # bounded; the stop event ends it long before
                if stop.is_set():
                    return
                ids, records = records_with_ids(1, body_bytes=2000)
                payload = export_request(*records).SerializeToString()
                if client is not None:
                    ok = client.call(payload, timeout=5)[0] == grpc.StatusCode.OK
                else:
                    try:
                        ok = http_post(proc.http_url, payload, timeout=5)[0] == 200
                    except OSError:  # the port is closed once the receivers stopped
                        ok = False
                answers.append(ok)
                if ok:
                    acknowledged.update(ids)
                else:
                    time.sleep(0.01)
        finally:
            if client is not None:
                client.close()

    senders = [threading.Thread(target=send, args=(t,)) for t in ("http", "http", "grpc", "grpc")]
    for sender in senders:
        sender.start()
    try:
        wait_for(lambda: len(acknowledged) >= 100, 10, "traffic to flow")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stderr()
    finally:
        stop.set()
        for sender in senders:
            sender.join(10)
    assert not all(answers), "no request was refused: SIGTERM came after the traffic, not during it"
    missing = acknowledged - set(sink.ids())
    assert not missing, f"{len(missing)} acknowledged records lost"


def test_sigterm_delivers_records_held_for_their_trace(sink: Sink, processor):
    """An error held waiting for its trace's evidence is acknowledged data: SIGTERM sends it on, unchanged."""
    proc = processor(sink=sink, TRIAGE_CORRELATION_WINDOW="30")
    error = log_record(
        "AccessTokenError: The user does not have a valid session. { code: 'ERR_MISSING_SESSION' }",
        17,
        b"\x01" * 16,
        **{"test.id": new_id()},
    )
    send_http(proc, [error])
    wait_for(lambda: metric(proc, "triage_held_records") == 1, 5, "the error to be held")
    assert not sink.records()
    assert proc.terminate(timeout=15) == 0, proc.stderr()
    (arrived,) = sink.records()
    assert arrived.body == error.body and arrived.trace_id == error.trace_id
    assert arrived.severity_number == 17  # no evidence came: not downgraded


def test_sigterm_with_an_unreachable_backend_exits_1_after_the_timeout(sink_factory, processor):
    """When the drain cannot finish within TRIAGE_SHUTDOWN_TIMEOUT, the loss is reported with exit code 1."""
    sink = sink_factory(failing=True)
    proc = processor(sink=sink, TRIAGE_RETRY_MAX_INTERVAL="0.2", TRIAGE_SHUTDOWN_TIMEOUT="1")
    queue_behind_a_failing_backend(proc, sink)
    proc.expected_exit = None
    started = time.monotonic()
    assert proc.terminate(timeout=15) == 1
    assert time.monotonic() - started < 10


# --- bad settings --------------------------------------------------------------------------------------


def test_bad_settings_exit_2_naming_every_bad_variable(processor):
    """Two bad variables: exit code 2 at once, and stderr names both."""
    started = time.monotonic()
    proc = processor(wait=False, TRIAGE_GRPC_ENDPOINT="nonsense", TRIAGE_MEMORY_LIMIT_MIB="-1")
    proc.expected_exit = 2
    assert proc.wait(10) == 2
    assert time.monotonic() - started < 5
    stderr = proc.stderr()
    assert "TRIAGE_GRPC_ENDPOINT" in stderr
    assert "TRIAGE_MEMORY_LIMIT_MIB" in stderr
    assert not proc.ready()


# --- the persistent queue ---------------------------------------------------------------------------------


def test_persistent_queue_survives_kill_9(sink_factory, processor, tmp_path):
    """With TRIAGE_QUEUE_DIR, records acknowledged while the backend is down survive SIGKILL: the next
    process on the same directory delivers every one of them (at least once)."""
    sink = sink_factory(failing=True)
    queue = {"TRIAGE_QUEUE_DIR": str(tmp_path / "queue"), "TRIAGE_RETRY_MAX_INTERVAL": "0.2"}
    (tmp_path / "queue").mkdir()
    first = processor(sink=sink, **queue)
    acknowledged = queue_behind_a_failing_backend(first, sink)
    client = GrpcClient(first.grpc_endpoint)
    try:
        ids, records = records_with_ids(2)
        assert client.call(export_request(*records).SerializeToString())[0] == grpc.StatusCode.OK
        acknowledged |= ids
    finally:
        client.close()
    first.proc.send_signal(signal.SIGKILL)
    first.expected_exit = -signal.SIGKILL
    assert first.wait(5) == -signal.SIGKILL

    sink.recover()
    second = processor(sink=sink, **queue)
    assert set(sink.wait_ids(acknowledged)) == acknowledged
    wait_for(lambda: metric(second, "triage_queue_batches") == 0, 10, "the replayed queue to drain")


def test_sigterm_does_not_wait_for_a_stalled_http_request(sink: Sink, processor):
    """A client that sent headers and part of a body, then stalled, must not hold up the exit: the
    HTTP receiver gives requests in flight the receiver grace (here 1 s), not aiohttp's 60 s."""
    proc = processor(sink=sink, TRIAGE_SHUTDOWN_TIMEOUT="4")
    host, port = proc.http_url.split("//")[1].split("/")[0].split(":")
    stalled = socket.create_connection((host, int(port)), timeout=5)
    try:
        stalled.sendall(
            b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: 1000\r\n\r\n" + b"\x0a" * 10
        )
        time.sleep(0.3)  # the request is being read
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stderr()
        assert time.monotonic() - started < 8, "the exit waited for the stalled request"
    finally:
        stalled.close()
