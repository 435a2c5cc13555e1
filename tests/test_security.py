"""TLS, mTLS, bearer tokens and per-record limits on both receivers, with real processes.

Certificates come from a CA made inside the test; nothing leaves loopback.
"""

from __future__ import annotations

import datetime
import gzip
import http.client
import ipaddress
import json
import os
import signal
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from .conftest import EXPORT_METHOD, export_request, log_record, wait_for

EMPTY = export_request().SerializeToString()


@dataclass
class Pki:
    directory: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    def issue(self, name: str, serial: int, server: bool) -> tuple[Path, Path]:
        """A certificate and key signed by the CA (for 127.0.0.1 when ``server``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False,
            )
        cert = builder.sign(self.ca_key, hashes.SHA256())
        cert_file, key_file = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return cert_file, key_file


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "otlp-triage test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path / "pki"
    directory.mkdir()
    pki = Pki(directory, key, cert)
    pki.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pki


def https_post(port: int, context: ssl.SSLContext, headers: dict[str, str] | None = None, body: bytes = EMPTY):
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("POST", "/v1/logs", body=body, headers={"Content-Type": "application/x-protobuf", **(headers or {})})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def client_context(pki: Pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if cert:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def grpc_call(endpoint: str, credentials: grpc.ChannelCredentials | None, metadata=(), payload: bytes = EMPTY):
    channel = grpc.secure_channel(endpoint, credentials) if credentials else grpc.insecure_channel(endpoint)
    try:
        call = channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
        response = call(payload, metadata=metadata, timeout=10)
        return grpc.StatusCode.OK, response
    except grpc.RpcError as error:
        return error.code(), error.details()
    finally:
        channel.close()


def served_serial(port: int, pki: Pki) -> int:
    context = client_context(pki)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def http_port(proc) -> int:
    return int(proc.http_url.split(":")[2].split("/")[0])


class TestTls:
    def test_tls_on_both_receivers(self, processor, pki: Pki) -> None:
        """A client trusting the CA gets through on HTTPS and gRPC-over-TLS; plaintext does not."""
        cert, key = pki.issue("server", 10, server=True)
        proc = processor(TRIAGE_TLS_CERT_FILE=str(cert), TRIAGE_TLS_KEY_FILE=str(key))
        assert https_post(http_port(proc), client_context(pki))[0] == 200
        tls = grpc.ssl_channel_credentials(root_certificates=pki.ca_file.read_bytes())
        assert grpc_call(proc.grpc_endpoint, tls)[0] == grpc.StatusCode.OK
        assert grpc_call(proc.grpc_endpoint, None)[0] == grpc.StatusCode.UNAVAILABLE  # plaintext refused

    def test_mtls_refuses_clients_without_a_certificate(self, processor, pki: Pki) -> None:
        """With TRIAGE_TLS_CLIENT_CA_FILE, only clients with a certificate from that CA are served."""
        cert, key = pki.issue("server", 11, server=True)
        client = pki.issue("client", 12, server=False)
        proc = processor(
            TRIAGE_TLS_CERT_FILE=str(cert), TRIAGE_TLS_KEY_FILE=str(key), TRIAGE_TLS_CLIENT_CA_FILE=str(pki.ca_file)
        )
        port = http_port(proc)
        assert https_post(port, client_context(pki, client))[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            https_post(port, client_context(pki))
        ca = pki.ca_file.read_bytes()
        with_cert = grpc.ssl_channel_credentials(ca, client[1].read_bytes(), client[0].read_bytes())
        assert grpc_call(proc.grpc_endpoint, with_cert)[0] == grpc.StatusCode.OK
        assert grpc_call(proc.grpc_endpoint, grpc.ssl_channel_credentials(ca))[0] == grpc.StatusCode.UNAVAILABLE

    @pytest.mark.parametrize("trigger", ["file change", "SIGHUP"])
    def test_certificate_reload(self, processor, pki: Pki, trigger: str) -> None:
        """New handshakes get the new certificate after the files change (or on SIGHUP); no restart."""
        cert, key = pki.issue("server", 20, server=True)
        proc = processor(TRIAGE_TLS_CERT_FILE=str(cert), TRIAGE_TLS_KEY_FILE=str(key))
        port = http_port(proc)
        assert served_serial(port, pki) == 20
        # A connection made before the reload keeps working after it.
        kept = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(pki), timeout=10)
        kept.request("POST", "/v1/logs", body=EMPTY, headers={"Content-Type": "application/x-protobuf"})
        first = kept.getresponse()
        assert first.status == 200
        first.read()
        new_cert, new_key = pki.issue("server-rotated", 21, server=True)
        os.replace(new_key, key)
        os.replace(new_cert, cert)
        if trigger == "SIGHUP":
            os.kill(proc.pid, signal.SIGHUP)
        wait_for(lambda: served_serial(port, pki) == 21, 10, "the rotated certificate to be served")
        tls = grpc.ssl_channel_credentials(root_certificates=pki.ca_file.read_bytes())
        assert grpc_call(proc.grpc_endpoint, tls)[0] == grpc.StatusCode.OK
        kept.request("POST", "/v1/logs", body=EMPTY, headers={"Content-Type": "application/x-protobuf"})
        assert kept.getresponse().status == 200
        kept.close()


class TestTokens:
    def test_http_and_grpc_accept_refuse_rotate(self, processor, tmp_path: Path) -> None:
        """Right token: served; missing or wrong: 401 / UNAUTHENTICATED and counted; rotation by file."""
        tokens = tmp_path / "tokens"
        tokens.write_text("# current and next, during rotation\nold-token\nnew-token\n")
        proc = processor(TRIAGE_AUTH_TOKEN_FILE=str(tokens))
        from .conftest import http_post

        def http(token: str | None) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return http_post(proc.http_url, EMPTY, headers=headers)[0]

        def grpc_status(token: str | None) -> grpc.StatusCode:
            metadata = (("authorization", f"Bearer {token}"),) if token else ()
            return grpc_call(proc.grpc_endpoint, None, metadata)[0]

        assert (http("old-token"), http("new-token")) == (200, 200)
        status, headers, _ = http_post(proc.http_url, EMPTY, headers={"Authorization": "Bearer wrong"})
        assert status == 401 and headers.get("WWW-Authenticate") == "Bearer"
        assert http(None) == 401
        assert grpc_status("new-token") == grpc.StatusCode.OK
        assert grpc_status("wrong") == grpc.StatusCode.UNAUTHENTICATED
        assert grpc_status(None) == grpc.StatusCode.UNAUTHENTICATED
        metrics = proc.metrics()
        assert metrics['triage_requests_rejected_total{reason="unauthenticated",transport="http"}'] == 2
        assert metrics['triage_requests_rejected_total{reason="unauthenticated",transport="grpc"}'] == 2

        tokens.write_text("new-token\n")  # rotation done: the old token is retired
        os.kill(proc.pid, signal.SIGHUP)
        wait_for(lambda: http("old-token") == 401, 10, "the retired token to be refused")
        assert http("new-token") == 200 and grpc_status("old-token") == grpc.StatusCode.UNAUTHENTICATED

    def test_unauthenticated_body_is_not_read(self, processor, tmp_path: Path) -> None:
        """Without a token, even a malformed or oversized body gets 401, not a parse error."""
        tokens = tmp_path / "tokens"
        tokens.write_text("t\n")
        proc = processor(TRIAGE_AUTH_TOKEN_FILE=str(tokens))
        from .conftest import http_post

        assert http_post(proc.http_url, b"\xff garbage")[0] == 401
        assert proc.metrics().get('triage_requests_rejected_total{reason="invalid",transport="http"}', 0) == 0


class TestLimits:
    def test_over_limit_records_rejected_with_partial_success(self, processor, sink) -> None:
        """Records over the attribute-count or size limit are rejected whole; the rest are forwarded."""
        proc = processor(sink, TRIAGE_MAX_ATTRIBUTES_PER_RECORD="4", TRIAGE_MAX_RECORD_BYTES="2000")
        ok = log_record("fine", **{"test.id": 1})
        wide = log_record("wide", **{"test.id": 2, "a": 1, "b": 2, "c": 3, "d": 4})
        big = log_record("x" * 5000, **{"test.id": 3})
        request = export_request(ok, wide, big).SerializeToString()
        from .conftest import http_post

        status, _, body = http_post(proc.http_url, request)
        partial = ExportLogsServiceResponse.FromString(body).partial_success
        assert status == 200 and partial.rejected_log_records == 2
        assert "more than 4 attributes" in partial.error_message and "larger than 2000 bytes" in partial.error_message
        code, response = grpc_call(proc.grpc_endpoint, None, payload=request)
        assert code == grpc.StatusCode.OK
        assert ExportLogsServiceResponse.FromString(response).partial_success.rejected_log_records == 2
        wait_for(lambda: len(sink.ids()) >= 2, 10, "both accepted records at the sink")
        assert sink.ids() == [1, 1]  # the rejected records (2, 3) were not forwarded
        assert proc.metrics()['triage_records_rejected_total{reason="limits"}'] == 4

    def test_too_many_records_refused(self, processor) -> None:
        """A request over TRIAGE_MAX_RECORDS_PER_REQUEST is refused whole with 400 / INVALID_ARGUMENT."""
        proc = processor(TRIAGE_MAX_RECORDS_PER_REQUEST="3")
        request = export_request(*(log_record(str(n)) for n in range(4))).SerializeToString()
        from .conftest import http_post

        status, _, body = http_post(proc.http_url, request)
        assert status == 400 and b"limit is 3" in body
        assert grpc_call(proc.grpc_endpoint, None, payload=request)[0] == grpc.StatusCode.INVALID_ARGUMENT


class TestJsonBodies:
    def test_json_body_too_large_to_decode_is_refused_and_the_rest_still_flows(self, processor) -> None:
        """An OTLP/JSON body whose parsed document would not fit in TRIAGE_MEMORY_LIMIT_MIB gets 413
        naming it (orjson's document costs up to ~40 times the body: a 32 MiB body of tiny objects
        took over a gigabyte); a body of the same records that fits is accepted next to it."""
        from processor import otlp_json

        from .conftest import http_post

        proc = processor(TRIAGE_MEMORY_LIMIT_MIB="4")
        record = log_record("ok")
        # One record whose body is an array of 60,000 empty AnyValues: 180 KB of JSON, ~7 MiB decoded.
        record.body.array_value.values.add()
        small = otlp_json.encode(export_request(record))
        big = small.replace(b'"values":[{}]', b'"values":[' + b",".join([b"{}"] * 60_000) + b"]")
        assert len(big) < 200_000 and otlp_json.parsed_size(big) > 4 << 20

        status, _, body = http_post(proc.http_url, big, content_type="application/json")
        assert status == 413
        assert b"TRIAGE_MEMORY_LIMIT_MIB" in body
        assert http_post(proc.http_url, small, content_type="application/json")[0] == 200
        assert proc.metrics()['triage_requests_rejected_total{reason="too_large",transport="http"}'] == 1

    def test_health_checks_answer_while_a_large_json_body_decodes(self, processor) -> None:
        """Building an OTLP/JSON request's messages is Python (~40 µs per record, ~300 with json_format):
        a 16,000-record request must not hold the event loop, and with it /healthz and other clients,
        for its duration."""
        import threading
        import time

        from processor import otlp_json

        from .conftest import http_get, http_post

        proc = processor(TRIAGE_MEMORY_LIMIT_MIB="256")  # its document is ~190 MiB
        attributes = {f"app.attribute_{n}": f"value {n}" for n in range(8)}
        records = (log_record(f"record {i}", **attributes) for i in range(16_000))
        payload = otlp_json.encode(export_request(*records))
        gzipped = gzip.compress(payload, 1)
        answered: list[float] = []
        done = threading.Event()
        result = []

        def post() -> None:
            try:
                headers = {"Content-Encoding": "gzip"}
                status, _, _ = http_post(proc.http_url, gzipped, "application/json", headers, timeout=120)
                result.append(status)
            finally:
                done.set()

        started = time.monotonic()
        poster = threading.Thread(target=post)
        poster.start()
        while not done.is_set():
            assert http_get(proc.admin_url + "/healthz", timeout=60)[0] == 200
            answered.append(time.monotonic())
        finished = time.monotonic()
        poster.join()
        assert result == [200]
        gaps = [later - earlier for earlier, later in zip([started, *answered], [*answered, finished])]
        # Before, one gap was the whole decode (most of the request's time); now health checks go on.
        assert max(gaps) < 0.5 * (finished - started), (max(gaps), finished - started, len(answered))
