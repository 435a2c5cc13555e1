"""The one configuration object, built from the environment once at start-up.

Every setting is an environment variable declared in ``VARIABLES`` with its
default and a one-line meaning (the README table is checked against it).
``Config.from_env`` reports every problem at once, naming the variable and
what would be valid, instead of silently falling back to a default.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlparse

from opentelemetry.util.re import parse_env_headers

from .redact import parse_attributes as parse_redact_attributes
from .redact import parse_patterns as parse_redact_patterns

SOURCES = ("user", "synthetic", "probe", "bot", "service", "unknown")
MiB = 1024 * 1024
# The largest export call by default: gRPC's default largest message a server accepts.
DEFAULT_EXPORT_MAX_BYTES = 4 * MiB
# The user-agent cache keeps each entry's user agent, 256 bytes per entry on average at most: a
# million entries may hold 256 MiB.
MAX_UA_CACHE_SIZE = 1_000_000


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    meaning: str


VARIABLES: tuple[Variable, ...] = (
    Variable("TRIAGE_GRPC_ENDPOINT", "0.0.0.0:4317", "OTLP/gRPC receiver address (host:port); empty disables it."),
    Variable("TRIAGE_HTTP_ENDPOINT", "0.0.0.0:4318", "OTLP/HTTP receiver address (host:port); empty disables it."),
    Variable("TRIAGE_ADMIN_ENDPOINT", "0.0.0.0:8888", "Admin address: /healthz, /readyz, /metrics."),
    Variable(
        "TRIAGE_DOWNGRADE_SOURCES",
        "synthetic,probe",
        "Sources whose matching errors are downgraded (comma list of synthetic, probe, bot, service).",
    ),
    Variable("TRIAGE_RULES_FILE", "", "JSON file with extra downgrade rules and built-in rules to switch off."),
    Variable("TRIAGE_SIGNATURES_FILE", "", "JSON file with extra source signatures (checked before the built-in catalog)."),
    Variable("TRIAGE_MODE", "enforce", "enforce: downgrade; shadow: only mark triage.would_downgrade."),
    Variable(
        "TRIAGE_DOWNGRADE_CONFIDENCE",
        "certain",
        "certain: rules fire only on direct or trace-correlated evidence; likely: weak evidence too.",
    ),
    Variable(
        "TRIAGE_CORRELATION_TTL",
        "60",
        "Seconds a trace's verdict is remembered across requests; 0: correlate within one request only.",
    ),
    Variable("TRIAGE_CORRELATION_MAX_TRACES", "100000", "Traces remembered at most (oldest forgotten first)."),
    Variable(
        "TRIAGE_CORRELATION_WINDOW",
        "2",
        "Seconds a record a rule matches waits for its trace's evidence; 0: never hold.",
    ),
    Variable(
        "TRIAGE_TRACES_AS_EVIDENCE",
        "false",
        "true: accept OTLP traces (gRPC TraceService, POST /v1/traces) as evidence only; spans are not forwarded.",
    ),
    Variable(
        "TRIAGE_MONITOR_CIDRS",
        "",
        "Monitor address ranges: name=cidr cidr;name2=cidr (name: a catalog signature, else synthetic).",
    ),
    Variable(
        "TRIAGE_HEALTH_PATHS",
        "/healthz,/readyz,/livez,/health,/ping",
        "Exact request paths that are weak evidence of a probe (never enough alone to downgrade).",
    ),
    Variable("TRIAGE_TLS_CERT_FILE", "", "Server certificate (PEM) for TLS on both receivers; reloaded on change or SIGHUP."),
    Variable("TRIAGE_TLS_KEY_FILE", "", "Private key (PEM) of TRIAGE_TLS_CERT_FILE."),
    Variable(
        "TRIAGE_TLS_CLIENT_CA_FILE",
        "",
        "CA bundle (PEM): require client certificates signed by it (mTLS); needs TRIAGE_TLS_CERT_FILE.",
    ),
    Variable(
        "TRIAGE_AUTH_TOKEN_FILE",
        "",
        "File of accepted bearer tokens, one per line (several for rotation); unset: no token required.",
    ),
    Variable(
        "TRIAGE_REDACT_ATTRIBUTES",
        "default",
        "Attributes whose values are replaced by [REDACTED]: default, none, extra keys, -key to remove.",
    ),
    Variable(
        "TRIAGE_REDACT_PATTERNS",
        "default",
        'Secrets replaced inside strings: default (jwt, auth0-appsession, bearer, bearer-lowercase), none, or JSON {"name": "regex"}.',
    ),
    Variable("TRIAGE_MAX_REQUEST_BYTES", str(8 * MiB), "Largest request body accepted as sent (compressed)."),
    Variable("TRIAGE_MAX_DECOMPRESSED_BYTES", str(32 * MiB), "Largest request accepted after decompression."),
    Variable(
        "TRIAGE_MAX_RECORDS_PER_REQUEST",
        "100000",
        "Requests with more log records, or more ResourceLogs and ScopeLogs together, are refused (400).",
    ),
    Variable(
        "TRIAGE_MAX_ATTRIBUTES_PER_RECORD",
        "256",
        "Records with more attributes are rejected (partial success), not truncated.",
    ),
    Variable(
        "TRIAGE_MAX_RECORD_BYTES",
        str(MiB),
        "Records larger than this (so any attribute value or body longer) are rejected (partial success).",
    ),
    Variable("TRIAGE_MAX_CONCURRENT_STREAMS", "64", "gRPC: concurrent requests per client connection."),
    Variable(
        "TRIAGE_MEMORY_LIMIT_MIB",
        "128",
        "Bound on requests queued in memory for export; above it receivers answer with backpressure.",
    ),
    Variable(
        "TRIAGE_QUEUE_DIR",
        "",
        "Directory of the persistent queue (SQLite): acknowledge only once on disk, replay on start. Unset: memory.",
    ),
    Variable("TRIAGE_QUEUE_MAX_BYTES", str(1024 * MiB), "Bound on the persistent queue's size on disk."),
    Variable(
        "TRIAGE_QUEUE_FSYNC",
        "always",
        "always: fsync each commit (survives power loss); never: leave it to the OS (survives a killed process).",
    ),
    Variable("TRIAGE_EXPORT_CONCURRENCY", "2", "Export calls in flight to the backend at once."),
    Variable(
        "TRIAGE_EXPORT_MAX_BYTES",
        str(DEFAULT_EXPORT_MAX_BYTES),
        "Largest export call: requests waiting for a free export worker go out together up to this size,"
        " and a larger request goes as several calls. Lower it if the backend accepts less.",
    ),
    Variable(
        "TRIAGE_EXPORT_LINGER",
        "0",
        "Seconds a free export worker waits for more requests to join its call, unless a full call is"
        " already waiting; 0: send at once. At most 1.",
    ),
    Variable("TRIAGE_RETRY_MAX_INTERVAL", "30", "Longest wait in seconds between export retries (backoff cap)."),
    Variable("TRIAGE_SHUTDOWN_TIMEOUT", "20", "Seconds to drain the queue to the backend after SIGTERM."),
    Variable(
        "TRIAGE_UA_CACHE_SIZE",
        "10000",
        f"User agents whose classification is kept, at most {MAX_UA_CACHE_SIZE} (bounded in count and in bytes, 256 per"
        " entry on average; a user agent over 1 KiB is classified every time; the cache starts over when full; a new plain-ASCII"
        " user agent is kept the second time it is seen).",
    ),
    Variable("TRIAGE_LOG_LEVEL", "info", "The processor's own log level on stderr (debug, info, warning, error)."),
    Variable(
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
        "",
        "Backend URL for logs, used as is; unset with OTEL_EXPORTER_OTLP_ENDPOINT unset: print to stdout.",
    ),
    Variable(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "", "Backend base URL; http/protobuf appends /v1/logs (OTel convention)."
    ),
    Variable("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "grpc or http/protobuf."),
    Variable("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "", "Overrides OTEL_EXPORTER_OTLP_PROTOCOL for logs."),
    Variable("OTEL_EXPORTER_OTLP_HEADERS", "", "Headers sent to the backend: key1=value1,key2=value2."),
    Variable("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "", "Overrides OTEL_EXPORTER_OTLP_HEADERS for logs."),
    Variable("OTEL_EXPORTER_OTLP_COMPRESSION", "", "gzip or none."),
    Variable("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "", "Overrides OTEL_EXPORTER_OTLP_COMPRESSION for logs."),
    Variable("OTEL_EXPORTER_OTLP_TIMEOUT", "10000", "Timeout of one export attempt, in milliseconds."),
    Variable("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "", "Overrides OTEL_EXPORTER_OTLP_TIMEOUT for logs."),
    Variable("OTEL_EXPORTER_OTLP_CERTIFICATE", "", "CA bundle (PEM) to verify the backend's TLS certificate."),
    Variable("OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE", "", "Overrides OTEL_EXPORTER_OTLP_CERTIFICATE for logs."),
    Variable("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "", "Client certificate (PEM) for mTLS to the backend."),
    Variable("OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE", "", "Overrides OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE."),
    Variable("OTEL_EXPORTER_OTLP_CLIENT_KEY", "", "Client private key (PEM) for mTLS to the backend."),
    Variable("OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY", "", "Overrides OTEL_EXPORTER_OTLP_CLIENT_KEY for logs."),
    Variable("OTEL_EXPORTER_OTLP_INSECURE", "", "grpc only: true for plaintext to an endpoint without a scheme."),
    Variable("OTEL_EXPORTER_OTLP_LOGS_INSECURE", "", "Overrides OTEL_EXPORTER_OTLP_INSECURE for logs."),
)
KNOWN_VARIABLES = frozenset(v.name for v in VARIABLES)
_DEFAULTS = {v.name: v.default for v in VARIABLES}


class ConfigError(Exception):
    """Raised with every configuration problem found, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class ExporterConfig:
    """Where and how forwarded requests go. ``protocol == "stdout"`` when no endpoint is set."""

    protocol: str  # "grpc" | "http/protobuf" | "stdout"
    endpoint: str = ""  # http: full URL; grpc: host:port
    insecure: bool = True  # grpc only
    headers: tuple[tuple[str, str], ...] = ()
    compression: str = "none"  # "gzip" | "none"
    timeout_s: float = 10.0
    reconnect_max_s: float = 30.0  # grpc: longest wait between connection attempts (TRIAGE_RETRY_MAX_INTERVAL)
    certificate_file: str = ""
    client_certificate_file: str = ""
    client_key_file: str = ""


@dataclass(frozen=True)
class Config:
    grpc_endpoint: str
    http_endpoint: str
    admin_endpoint: str
    downgrade_sources: frozenset[str]
    rules_file: str
    signatures_file: str
    mode: str
    downgrade_confidence: str
    correlation_ttl_s: float
    correlation_max_traces: int
    correlation_window_s: float
    traces_as_evidence: bool
    monitor_cidrs: tuple[tuple[str, tuple[str, ...]], ...]
    health_paths: tuple[str, ...]
    tls_cert_file: str
    tls_key_file: str
    tls_client_ca_file: str
    auth_token_file: str
    redact_attributes: tuple[str, ...]
    redact_patterns: tuple[tuple[str, str], ...]
    max_request_bytes: int
    max_decompressed_bytes: int
    max_records_per_request: int
    max_attributes_per_record: int
    max_record_bytes: int
    max_concurrent_streams: int
    memory_limit_bytes: int
    queue_dir: str
    queue_max_bytes: int
    queue_fsync: str
    export_concurrency: int
    export_max_bytes: int
    export_linger_s: float
    retry_max_interval_s: float
    shutdown_timeout_s: float
    ua_cache_size: int
    log_level: str
    exporter: ExporterConfig = field(default_factory=lambda: ExporterConfig("stdout"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        config = cls(
            grpc_endpoint=reader.get("TRIAGE_GRPC_ENDPOINT", _address, empty=""),
            http_endpoint=reader.get("TRIAGE_HTTP_ENDPOINT", _address, empty=""),
            admin_endpoint=reader.get("TRIAGE_ADMIN_ENDPOINT", _address),
            downgrade_sources=reader.get("TRIAGE_DOWNGRADE_SOURCES", _downgrade_sources, empty=frozenset()),
            rules_file=reader.get("TRIAGE_RULES_FILE", _readable_file, empty=""),
            signatures_file=reader.get("TRIAGE_SIGNATURES_FILE", _readable_file, empty=""),
            mode=reader.get("TRIAGE_MODE", _one_of("enforce", "shadow")),
            downgrade_confidence=reader.get("TRIAGE_DOWNGRADE_CONFIDENCE", _one_of("certain", "likely")),
            correlation_ttl_s=reader.get("TRIAGE_CORRELATION_TTL", _non_negative_float),
            correlation_max_traces=reader.get("TRIAGE_CORRELATION_MAX_TRACES", _positive_int),
            correlation_window_s=reader.get("TRIAGE_CORRELATION_WINDOW", _non_negative_float),
            traces_as_evidence=reader.get("TRIAGE_TRACES_AS_EVIDENCE", _boolean),
            monitor_cidrs=reader.get("TRIAGE_MONITOR_CIDRS", _monitor_cidrs, empty=()),
            health_paths=reader.get("TRIAGE_HEALTH_PATHS", _paths, empty=()),
            tls_cert_file=reader.get("TRIAGE_TLS_CERT_FILE", _readable_file, empty=""),
            tls_key_file=reader.get("TRIAGE_TLS_KEY_FILE", _readable_file, empty=""),
            tls_client_ca_file=reader.get("TRIAGE_TLS_CLIENT_CA_FILE", _readable_file, empty=""),
            auth_token_file=reader.get("TRIAGE_AUTH_TOKEN_FILE", _readable_file, empty=""),
            redact_attributes=reader.get("TRIAGE_REDACT_ATTRIBUTES", _via(parse_redact_attributes), empty=()),
            redact_patterns=reader.get("TRIAGE_REDACT_PATTERNS", _via(parse_redact_patterns), empty=()),
            max_request_bytes=reader.get("TRIAGE_MAX_REQUEST_BYTES", _positive_int),
            max_records_per_request=reader.get("TRIAGE_MAX_RECORDS_PER_REQUEST", _positive_int),
            max_attributes_per_record=reader.get("TRIAGE_MAX_ATTRIBUTES_PER_RECORD", _positive_int),
            max_record_bytes=reader.get("TRIAGE_MAX_RECORD_BYTES", _positive_int),
            max_concurrent_streams=reader.get("TRIAGE_MAX_CONCURRENT_STREAMS", _positive_int),
            max_decompressed_bytes=reader.get("TRIAGE_MAX_DECOMPRESSED_BYTES", _positive_int),
            memory_limit_bytes=reader.get("TRIAGE_MEMORY_LIMIT_MIB", _positive_int) * MiB,
            queue_dir=reader.get("TRIAGE_QUEUE_DIR", _directory, empty=""),
            queue_max_bytes=reader.get("TRIAGE_QUEUE_MAX_BYTES", _positive_int),
            queue_fsync=reader.get("TRIAGE_QUEUE_FSYNC", _one_of("always", "never")),
            export_concurrency=reader.get("TRIAGE_EXPORT_CONCURRENCY", _positive_int),
            export_max_bytes=reader.get("TRIAGE_EXPORT_MAX_BYTES", _positive_int),
            export_linger_s=reader.get("TRIAGE_EXPORT_LINGER", _linger),
            retry_max_interval_s=reader.get("TRIAGE_RETRY_MAX_INTERVAL", _positive_float),
            shutdown_timeout_s=reader.get("TRIAGE_SHUTDOWN_TIMEOUT", _positive_float),
            ua_cache_size=reader.get("TRIAGE_UA_CACHE_SIZE", _positive_int_at_most(MAX_UA_CACHE_SIZE)),
            log_level=reader.get("TRIAGE_LOG_LEVEL", _one_of("debug", "info", "warning", "error")),
            exporter=_exporter_config(reader),
        )
        config = replace(config, exporter=replace(config.exporter, reconnect_max_s=config.retry_max_interval_s))
        if config.max_decompressed_bytes < config.max_request_bytes:
            reader.problems.append(
                "TRIAGE_MAX_DECOMPRESSED_BYTES must be at least TRIAGE_MAX_REQUEST_BYTES "
                f"({config.max_request_bytes}), got {config.max_decompressed_bytes}"
            )
        if bool(config.tls_cert_file) != bool(config.tls_key_file):
            reader.problems.append("TRIAGE_TLS_CERT_FILE and TRIAGE_TLS_KEY_FILE: set both for TLS, or neither")
        if config.tls_client_ca_file and not config.tls_cert_file:
            reader.problems.append("TRIAGE_TLS_CLIENT_CA_FILE needs TRIAGE_TLS_CERT_FILE and TRIAGE_TLS_KEY_FILE (mTLS is TLS)")
        if reader.problems:
            raise ConfigError(reader.problems)
        return config


# --- parsing -----------------------------------------------------------------------------------------------

class _Invalid(ValueError):
    """A value's problem, phrased as what would be valid."""


class _Reader:
    """Reads variables, collecting every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.problems: list[str] = []

    def raw(self, name: str) -> str:
        return self.env.get(name, _DEFAULTS[name]).strip()

    def get(self, name: str, parse: Callable[[str], Any], empty: Any = None) -> Any:
        """The parsed value; ``empty`` (when given) is what an empty value means."""
        value = self.raw(name)
        if value == "" and empty is not None:
            return empty
        try:
            return parse(value)
        except _Invalid as why:
            self.problems.append(f"{name}={value!r}: {why}")
            return parse(_DEFAULTS[name]) if _DEFAULTS[name] else empty

    def signal(self, name: str) -> tuple[str, str]:
        """The logs-specific variable if set, else the generic one: (value, the name it came from)."""
        specific = name.replace("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_LOGS_")
        if self.env.get(specific, "").strip():
            return self.raw(specific), specific
        return self.raw(name), name


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _Invalid("expected host:port, e.g. 0.0.0.0:4317 or [::]:4317")
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _Invalid("expected a whole number greater than 0") from None
    if number <= 0:
        raise _Invalid("expected a whole number greater than 0")
    return number


def _positive_int_at_most(limit: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = _positive_int(value)
        if number > limit:
            raise _Invalid(f"expected a whole number from 1 to {limit}")
        return number

    return parse


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise _Invalid("expected a number of seconds greater than 0") from None
    if not number > 0 or number == float("inf"):
        raise _Invalid("expected a number of seconds greater than 0")
    return number


def _via(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser whose ValueError message becomes the variable's problem."""

    def checked(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as e:
            raise _Invalid(str(e)) from None

    return checked


def _non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise _Invalid("expected a number of seconds, 0 or more") from None
    if not number >= 0 or number == float("inf"):
        raise _Invalid("expected a number of seconds, 0 or more")
    return number


MAX_EXPORT_LINGER_S = 1.0  # a worker waiting longer holds every lone request that long, for calls that gain little


def _linger(value: str) -> float:
    number = _non_negative_float(value)
    if number > MAX_EXPORT_LINGER_S:
        raise _Invalid(f"at most {MAX_EXPORT_LINGER_S:g} (seconds; a few milliseconds let requests under load share a call)")
    return number


def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise _Invalid("expected true or false")
    return value.lower() == "true"


def _monitor_cidrs(value: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    monitors = []
    for part in value.split(";"):
        if not part.strip():
            continue
        name, sep, ranges = part.partition("=")
        cidrs = tuple(c for c in ranges.replace(",", " ").split() if c)
        if not sep or not name.strip() or not cidrs:
            raise _Invalid("expected name=cidr cidr;name2=cidr, e.g. datadog-synthetics=3.18.172.189/32 3.18.197.0/24")
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise _Invalid(f"{cidr!r} is not an address range, e.g. 203.0.113.0/24 or 2001:db8::/32") from None
        monitors.append((name.strip(), cidrs))
    return tuple(monitors)


def _paths(value: str) -> tuple[str, ...]:
    paths = tuple(p.strip() for p in value.split(",") if p.strip())
    wrong = [p for p in paths if not p.startswith("/")]
    if wrong:
        raise _Invalid(f"paths must start with '/': {', '.join(wrong)}")
    return paths


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in choices:
            raise _Invalid("expected one of " + ", ".join(choices))
        return value.lower()

    return parse


def _downgrade_sources(value: str) -> frozenset[str]:
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    allowed = ("synthetic", "probe", "bot", "service")
    wrong = [n for n in names if n not in allowed]
    if wrong:
        # "user" and "unknown" are refused on purpose: a real user's error is never downgraded.
        raise _Invalid(f"unknown or forbidden source(s) {', '.join(wrong)}; choose from " + ", ".join(allowed))
    return frozenset(names)


def _directory(value: str) -> str:
    parent = value if os.path.isdir(value) else os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise _Invalid("expected a writable directory (or a new one inside a writable directory)")
    return value


def _readable_file(value: str) -> str:
    if not os.path.isfile(value) or not os.access(value, os.R_OK):
        raise _Invalid("no readable file at that path")
    return value


def _exporter_config(reader: _Reader) -> ExporterConfig:
    problems = reader.problems
    logs_endpoint = reader.raw("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
    base_endpoint = reader.raw("OTEL_EXPORTER_OTLP_ENDPOINT")
    protocol, protocol_var = reader.signal("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol not in ("grpc", "http/protobuf"):
        problems.append(f"{protocol_var}={protocol!r}: expected grpc or http/protobuf")
        protocol = "http/protobuf"
    if not logs_endpoint and not base_endpoint:
        return ExporterConfig("stdout")

    endpoint_var = "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT" if logs_endpoint else "OTEL_EXPORTER_OTLP_ENDPOINT"
    url = logs_endpoint or base_endpoint
    parsed = urlparse(url if "://" in url else f"//{url}")
    insecure_value, insecure_var = reader.signal("OTEL_EXPORTER_OTLP_INSECURE")
    insecure = False
    if insecure_value.lower() not in ("", "true", "false"):
        problems.append(f"{insecure_var}={insecure_value!r}: expected true or false")
    if protocol == "grpc":
        if not parsed.hostname or parsed.port is None:
            problems.append(f"{endpoint_var}={url!r}: expected a URL with host and port, e.g. http://backend:4317")
        endpoint = parsed.netloc
        # Same rule as the OTel SDK: the scheme decides; without one, OTEL_EXPORTER_OTLP_INSECURE does.
        insecure = parsed.scheme == "http" or (parsed.scheme == "" and insecure_value.lower() == "true")
    else:
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            problems.append(f"{endpoint_var}={url!r}: expected an http:// or https:// URL, e.g. http://backend:4318")
        endpoint = url if logs_endpoint else url.rstrip("/") + "/v1/logs"

    headers_value, headers_var = reader.signal("OTEL_EXPORTER_OTLP_HEADERS")
    headers: tuple[tuple[str, str], ...] = ()
    if headers_value:
        parsed_headers = parse_env_headers(headers_value, liberal=True)
        if not parsed_headers:
            problems.append(f"{headers_var}: expected key1=value1,key2=value2")
        headers = tuple(parsed_headers.items())

    compression, compression_var = reader.signal("OTEL_EXPORTER_OTLP_COMPRESSION")
    compression = compression.lower() or "none"
    if compression not in ("gzip", "none"):
        problems.append(f"{compression_var}={compression!r}: expected gzip or none")

    timeout_value, timeout_var = reader.signal("OTEL_EXPORTER_OTLP_TIMEOUT")
    try:
        timeout_s = float(timeout_value) / 1000.0
        if not timeout_s > 0:
            raise ValueError
    except ValueError:
        problems.append(f"{timeout_var}={timeout_value!r}: expected milliseconds greater than 0, e.g. 10000")
        timeout_s = 10.0

    files = {}
    for var in ("OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_KEY"):
        path, name = reader.signal(var)
        if path and not os.path.isfile(path):
            problems.append(f"{name}={path!r}: no readable file at that path")
        files[var] = path
    if bool(files["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"]) != bool(files["OTEL_EXPORTER_OTLP_CLIENT_KEY"]):
        problems.append(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY: set both for mTLS, or neither"
        )

    return ExporterConfig(
        protocol=protocol,
        endpoint=endpoint,
        insecure=insecure,
        headers=headers,
        compression=compression,
        timeout_s=timeout_s,
        certificate_file=files["OTEL_EXPORTER_OTLP_CERTIFICATE"],
        client_certificate_file=files["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"],
        client_key_file=files["OTEL_EXPORTER_OTLP_CLIENT_KEY"],
    )
