"""The benchmark's load: a deterministic stream of OTLP ExportLogsServiceRequests, pre-serialized.

Every request holds ``RECORDS_PER_REQUEST`` records (``generate``'s ``per_request`` sets another
count) of ~300 bytes with ~8 attributes, grouped as an exporter or collector batch would group
them: a few ``ResourceLogs`` (one per service), one ``ScopeLogs`` each. The mix follows one web
shop behind an ingress:

1. Traces of one HTTP request each: an access log (INFO) carrying ``user_agent.original``,
   ``url.path``, ``http.request.method``, ``http.response.status_code``, ``client.address``;
   before it, zero to two app logs of the same trace without a user agent. Most clients are real
   browsers; the rest are Datadog Synthetics (API and browser tests), kube-probe, Googlebot, curl.
2. The Auth0 error at ERROR, sharing ``trace_id`` with its access log: a Datadog Synthetics test
   hitting a protected route without a session (downgrade expected), and now and then a real
   user whose session expired (never downgraded). Its body is what Node's ``console.error`` prints
   for the error, or pino's JSON line.
3. Other errors and warnings of real users, and background app logs with no trace at all.

``flood`` keeps the mix but makes every user agent and every trace id unique: the worst case for
the classifier's user-agent cache and the per-request trace table. No record shares a trace then,
so no error can inherit a monitor's verdict and nothing is downgraded.

Same seed, same bytes: ``Workload.digest`` fingerprints the whole load.
"""

from __future__ import annotations

import hashlib
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

RECORDS_PER_REQUEST = 500
MIN_PER_REQUEST = 10  # a trace's records (up to five) never span two requests, and each request has an access log
CHUNK_REQUESTS = 20  # requests per independently seeded chunk (the unit of parallel generation)
# Each request carries its index on one record, so the sink can tell when that request arrived.
REQUEST_ID = "bench.request.id"
# ... and on each of its Auth0 errors, which are held when their trace's evidence is not in the
# request (the flood): the sink times those that arrive without the request's marked record.
ERROR_REQUEST_ID = "bench.error.request.id"
REQUEST_ID_DIGITS = 8


def request_id(index: int) -> bytes:
    return b"%0*d" % (REQUEST_ID_DIGITS, index)


def request_id_marker(key: str = REQUEST_ID) -> bytes:
    """How the id attribute ``key`` starts on the wire; the id's digits follow it.

    KeyValue: 0x0a len key, 0x12 len AnyValue; AnyValue: 0x0a len string_value.
    """
    encoded = key.encode()
    return bytes((0x0A, len(encoded))) + encoded + bytes((0x12, REQUEST_ID_DIGITS + 2, 0x0A, REQUEST_ID_DIGITS))


DEFAULT_SEED = 20240611
NORMAL = "normal"
FLOOD = "flood"
VARIANTS = (NORMAL, FLOOD)

# Fixed clock: 2024-06-11T08:00:00Z, one record every ~2 ms.
_EPOCH_NS = 1_718_092_800_000_000_000

# Severity numbers (OTLP data model).
DEBUG, INFO, WARN, ERROR = 5, 9, 13, 17
_SEVERITY_TEXT = {DEBUG: "DEBUG", INFO: "INFO", WARN: "WARN", ERROR: "ERROR"}

# --- clients ------------------------------------------------------------------------------------------------
# (kind, weight, user agents). Kinds: browser (a real user), synthetic (Datadog API/browser test),
# probe, bot, cli. Weights are shares of traces.
BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:126.0) Gecko/20100101 Firefox/126.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36 Edg/125.0.0.0",
)
DATADOG_SYNTHETICS = (
    "Datadog/Synthetics",  # API tests
    # Browser tests: a headless Chrome that appends the marker.
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.155 Safari/537.36 DatadogSynthetics",
)
KUBE_PROBES = ("kube-probe/1.29", "kube-probe/1.30")
GOOGLEBOT = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    (
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/125.0.6422.141 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    ),
)
CURL = ("curl/8.5.0", "curl/7.88.1")
CLIENTS = (
    ("browser", 72, BROWSERS),
    ("synthetic", 8, DATADOG_SYNTHETICS),
    ("probe", 12, KUBE_PROBES),
    ("bot", 5, GOOGLEBOT),
    ("cli", 3, CURL),
)
_CLIENT_KINDS = tuple(kind for kind, _, _ in CLIENTS)
_CLIENT_WEIGHTS = tuple(weight for _, weight, _ in CLIENTS)
_CLIENT_AGENTS = {kind: agents for kind, _, agents in CLIENTS}

# Routes: (method, route template, protected by Auth0). Monitors test the protected ones too.
ROUTES = (
    ("GET", "/", False),
    ("GET", "/products/{id}", False),
    ("GET", "/api/products", False),
    ("GET", "/api/orders", True),
    ("GET", "/api/orders/{id}", True),
    ("POST", "/api/cart", True),
    ("GET", "/account", True),
    ("GET", "/_next/static/chunks/{id}.js", False),
)
PROBE_ROUTES = (("GET", "/healthz", False), ("GET", "/readyz", False))

# Share of traces of a monitor on a protected route that log the Auth0 error (no session: always),
# and of real users on a protected route (their session expired).
SYNTHETIC_AUTH0_ERROR = 1.0
USER_AUTH0_ERROR = 0.02
USER_OTHER_ERROR = 0.02
USER_WARNING = 0.03

# --- the Auth0 error, as the app prints it ------------------------------------------------------------------
AUTH0_MESSAGE = "The user does not have a valid session."
_AUTH0_CONSOLE = (
    "AccessTokenError: The user does not have a valid session.\n"
    "    at Object.getAccessToken (/app/node_modules/@auth0/nextjs-auth0/dist/session/get-access-token.js:39:19)\n"
    "    at async handler (/app/.next/server/pages{route}.js:1:{col}) {{\n"
    "  code: 'ERR_MISSING_SESSION'\n"
    "}}"
)
_AUTH0_PINO = (
    '{{"level":50,"time":{ms},"pid":1,"hostname":"{host}","err":{{"type":"AccessTokenError",'
    '"message":"The user does not have a valid session.","stack":"AccessTokenError: The user does not have '
    "a valid session.\\n    at Object.getAccessToken (/app/node_modules/@auth0/nextjs-auth0/dist/session/"
    'get-access-token.js:39:19)","code":"ERR_MISSING_SESSION"}},"msg":"The user does not have a valid session."}}'
)
_OTHER_ERRORS = (
    "TypeError: Cannot read properties of undefined (reading 'items')\n    at CartSummary (/app/.next/server/chunks/812.js:1:4410)",
    "Error: connect ETIMEDOUT 10.0.3.17:5432\n    at TCPConnectWrap.afterConnect [as oncomplete] (node:net:1607:16)",
    "PrismaClientKnownRequestError: Unique constraint failed on the fields: (`email`)",
)
_WARNINGS = (
    "payment provider slow: 1840 ms for POST /v1/payment_intents",
    "retrying inventory lookup after 503 (attempt 2 of 3)",
    "feature flag 'new-checkout' evaluated with stale config (age 95 s)",
)
_APP_MESSAGES = (
    "cache miss for key product:{id}",
    "loaded {n} products from catalog in {ms} ms",
    "order {id} created for customer {n}",
    "session refreshed for user {n}",
    "rendered /products/{id} in {ms} ms",
    "enqueued email job {id}",
)
_BACKGROUND_MESSAGES = (
    "flushed {n} metrics to statsd",
    "connection pool: {n} idle, {ms} busy",
    "cron: reindexed {n} products in {ms} ms",
)

# --- resources ----------------------------------------------------------------------------------------------
# (service.name, scope name, share of a trace's records it logs). The web app logs access and Auth0 errors.
_SERVICES = ("shop-web", "shop-api", "shop-worker")
_SCOPES = {"shop-web": "next-app", "shop-api": "pino", "shop-worker": "pino"}


def _s(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _i(key: str, value: int) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(int_value=value))


def _resource(service: str, pod: str) -> Resource:
    return Resource(
        attributes=[
            _s("service.name", service),
            _s("service.namespace", "shop"),
            _s("service.version", "2.14.3"),
            _s("deployment.environment.name", "production"),
            _s("k8s.namespace.name", "shop"),
            _s("k8s.pod.name", pod),
            _s("host.name", pod),
            _s("telemetry.sdk.language", "nodejs"),
            _s("telemetry.sdk.name", "opentelemetry"),
            _s("telemetry.sdk.version", "1.25.1"),
        ]
    )


@dataclass
class Workload:
    """The serialized requests and what the processor is expected to do with them."""

    variant: str
    seed: int
    payloads: list[bytes]
    records: int
    expected_downgrades: int  # records the built-in Auth0 rule must downgrade (monitor-caused)
    mix: dict[str, int] = field(default_factory=dict)  # record kind -> count
    per_request: int = RECORDS_PER_REQUEST  # records in every request

    @property
    def requests(self) -> int:
        return len(self.payloads)

    @property
    def bytes(self) -> int:
        return sum(len(p) for p in self.payloads)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for p in self.payloads:
            h.update(p)
        return h.hexdigest()[:16]


class _Generator:
    """One chunk of requests, from its own seeded stream: chunks can be made in parallel."""

    def __init__(self, seed: int, variant: str, chunk: int, per_request: int):
        if variant not in VARIANTS:
            raise ValueError(f"unknown workload variant {variant!r}; one of {', '.join(VARIANTS)}")
        self.rng = random.Random(f"{seed}/{variant}/{chunk}")  # str seeds are stable across runs and builds
        self.flood = variant == FLOOD
        self.chunk = chunk
        self.per_request = per_request
        self.unique = 0  # counter behind every unique user agent of the flood
        self.clock = _EPOCH_NS + chunk * CHUNK_REQUESTS * per_request * 2_000_000
        self.mix: dict[str, int] = {}
        pods = random.Random(f"{seed}/pods")
        self.pods = {s: [f"{s}-7f9c{pods.randrange(16**4):04x}-{n}" for n in range(3)] for s in _SERVICES}

    # ids
    def trace_id(self) -> bytes:
        return self.rng.getrandbits(128).to_bytes(16, "big")

    def span_id(self) -> bytes:
        return self.rng.getrandbits(64).to_bytes(8, "big")

    def tick(self) -> int:
        self.clock += self.rng.randrange(200_000, 4_000_000)
        return self.clock

    def user_agent(self, kind: str) -> str:
        agent = self.rng.choice(_CLIENT_AGENTS[kind])
        if self.flood:
            # Unique but still recognisable: signatures match on substrings.
            self.unique += 1
            return f"{agent} bench/{self.chunk}.{self.unique}"
        return agent

    def client_address(self, kind: str) -> str:
        rng = self.rng
        if kind == "probe":
            return f"10.42.{rng.randrange(4)}.1"
        if kind == "synthetic":
            return f"3.{rng.randrange(208, 240)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        return f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"

    # records
    def record(self, severity: int, body: str, attributes: list[KeyValue], trace: bytes | None) -> LogRecord:
        t = self.tick()
        record = LogRecord(
            time_unix_nano=t,
            observed_time_unix_nano=t + 1_500_000,
            severity_number=severity,
            severity_text=_SEVERITY_TEXT[severity],
            body=AnyValue(string_value=body),
            attributes=attributes,
        )
        if trace is not None:
            record.trace_id = self.trace_id() if self.flood else trace
            record.span_id = self.span_id()
            record.flags = 1
        return record

    def access_log(self, kind: str, method: str, path: str, status: int, trace: bytes) -> LogRecord:
        ms = self.rng.randrange(2, 400)
        return self.record(
            INFO,
            f"{method} {path} {status} {ms}ms",
            [
                _s("user_agent.original", self.user_agent(kind)),
                _s("url.path", path),
                _s("http.request.method", method),
                _i("http.response.status_code", status),
                _s("client.address", self.client_address(kind)),
                _s("http.route", path.split("?")[0]),
                _i("http.server.request.duration_ms", ms),
            ],
            trace,
        )

    def app_log(self, trace: bytes | None, route: str = "") -> LogRecord:
        rng = self.rng
        template = rng.choice(_APP_MESSAGES if trace is not None else _BACKGROUND_MESSAGES)
        body = template.format(id=rng.randrange(10**6), n=rng.randrange(1, 500), ms=rng.randrange(1, 900))
        severity = DEBUG if rng.random() < 0.2 else INFO
        return self.record(
            severity,
            body,
            [
                _s("code.function", rng.choice(("handler", "loadCatalog", "createOrder", "render", "flush"))),
                _s(
                    "code.filepath",
                    rng.choice(("src/pages/api/orders.ts", "src/lib/catalog.ts", "src/jobs/mail.ts")),
                ),
                _s("logger.name", rng.choice(("http", "db", "cache", "jobs"))),
                _i("thread.id", rng.randrange(1, 9)),
                _s("http.route", route or "-"),
                _s("app.tenant", f"tenant-{rng.randrange(40)}"),
                _s("app.region", rng.choice(("eu-west-1", "us-east-1"))),
            ],
            trace,
        )

    def auth0_error(self, route: str, trace: bytes) -> LogRecord:
        rng = self.rng
        if rng.random() < 0.6:  # console.error(err) in the Next.js app
            body = _AUTH0_CONSOLE.format(route=route.replace("{id}", "[id]"), col=rng.randrange(900, 9000))
        else:  # pino logger.error({ err }) written as one JSON line
            body = _AUTH0_PINO.format(ms=self.clock // 1_000_000, host=rng.choice(self.pods["shop-web"]))
        return self.record(
            ERROR,
            body,
            [_s("http.route", route), _s("logger.name", "auth"), _i("process.pid", 1)],
            trace,
        )

    def other_error(self, route: str, trace: bytes, severity: int) -> LogRecord:
        rng = self.rng
        body = rng.choice(_OTHER_ERRORS if severity == ERROR else _WARNINGS)
        return self.record(
            severity,
            body,
            [
                _s("http.route", route),
                _s("logger.name", "http"),
                _s("app.tenant", f"tenant-{rng.randrange(40)}"),
            ],
            trace,
        )

    def trace_group(self) -> tuple[list[tuple[str, str, LogRecord]], int]:
        """One HTTP request's records, (service, mix kind, record) in log order; how many to downgrade."""
        rng = self.rng
        kind = rng.choices(_CLIENT_KINDS, _CLIENT_WEIGHTS)[0]
        method, template, protected = rng.choice(PROBE_ROUTES if kind == "probe" else ROUTES)
        path = template.replace("{id}", str(rng.randrange(1, 50_000)))
        trace = self.trace_id()
        out: list[tuple[str, str, LogRecord]] = []
        downgrades = 0
        for _ in range(rng.choice((0, 1, 1, 2)) if kind != "probe" else 0):
            out.append((rng.choice(("shop-web", "shop-api")), "app", self.app_log(trace, template)))
        status = 200
        if protected and kind in ("synthetic", "bot", "cli"):
            # No session: the page handler's getAccessToken throws, the app logs it and answers 401/500.
            if kind == "synthetic" and rng.random() < SYNTHETIC_AUTH0_ERROR:
                out.append(("shop-web", "auth0_error:synthetic", self.auth0_error(template, trace)))
                # Inherits the monitor's verdict through the trace, unless every trace id is unique.
                downgrades += 0 if self.flood else 1
            status = 401
        elif protected and kind == "browser":
            roll = rng.random()
            if roll < USER_AUTH0_ERROR:
                out.append(("shop-web", "auth0_error:user", self.auth0_error(template, trace)))
                status = 401
            elif roll < USER_AUTH0_ERROR + USER_OTHER_ERROR:
                out.append(("shop-api", "error:user", self.other_error(template, trace, ERROR)))
                status = 500
            elif roll < USER_AUTH0_ERROR + USER_OTHER_ERROR + USER_WARNING:
                out.append(("shop-api", "warn:user", self.other_error(template, trace, WARN)))
        elif kind != "probe" and rng.random() < 0.02:
            status = 404
        # The access log is written when the response is done: after the trace's other records.
        out.append(("shop-web", f"access:{kind}", self.access_log(kind, method, path, status, trace)))
        return out, downgrades

    def request(self, index: int) -> tuple[ExportLogsServiceRequest, int, int]:
        by_service: dict[str, list[LogRecord]] = {s: [] for s in _SERVICES}
        n = downgrades = 0
        errors: list[LogRecord] = []
        while True:
            group, group_downgrades = self.trace_group()
            if n + len(group) > self.per_request:
                break  # a trace is never split across requests: its verdict is decided within one
            for service, kind, record in group:
                by_service[service].append(record)
                self.mix[kind] = self.mix.get(kind, 0) + 1
                if kind.startswith("auth0_error"):
                    errors.append(record)
            n += len(group)
            downgrades += group_downgrades
        # The request's id for latency matching, on its first access log (it has evidence: never held).
        marked = next(r for r in by_service["shop-web"] if r.attributes[0].key == "user_agent.original")
        marked.attributes.append(_s(REQUEST_ID, request_id(index).decode()))
        for record in errors:
            record.attributes.append(_s(ERROR_REQUEST_ID, request_id(index).decode()))
        while n < self.per_request:  # top up with background logs of no trace
            by_service["shop-worker"].append(self.app_log(None))
            self.mix["app:background"] = self.mix.get("app:background", 0) + 1
            n += 1
        request = ExportLogsServiceRequest()
        for service, records in by_service.items():
            if not records:
                continue
            request.resource_logs.append(
                ResourceLogs(
                    resource=_resource(service, self.rng.choice(self.pods[service])),
                    scope_logs=[
                        ScopeLogs(scope=InstrumentationScope(name=_SCOPES[service]), log_records=records)
                    ],
                    schema_url="https://opentelemetry.io/schemas/1.26.0",
                )
            )
        return request, n, downgrades


def _chunk(seed: int, variant: str, chunk: int, requests: int, per_request: int) -> tuple[list[bytes], int, dict[str, int]]:
    generator = _Generator(seed, variant, chunk, per_request)
    payloads = []
    expected = 0
    for i in range(requests):
        request, _, downgrades = generator.request(chunk * CHUNK_REQUESTS + i)
        payloads.append(request.SerializeToString())
        expected += downgrades
    return payloads, expected, generator.mix


def generate(
    records: int, seed: int = DEFAULT_SEED, variant: str = NORMAL, processes: int = 0, per_request: int = RECORDS_PER_REQUEST
) -> Workload:
    """At least ``records`` records (whole requests of ``per_request``), serialized before any timing starts.

    The load is cut into chunks of ``CHUNK_REQUESTS`` requests, each from its own seeded stream, so the
    bytes are the same however many ``processes`` (0: all cores) make them.
    """
    if per_request < MIN_PER_REQUEST:
        raise ValueError(f"at least {MIN_PER_REQUEST} records per request (a trace's records share one), not {per_request}")
    requests = -(-records // per_request)
    sizes = [min(CHUNK_REQUESTS, requests - start) for start in range(0, requests, CHUNK_REQUESTS)]
    jobs = [(seed, variant, i, n, per_request) for i, n in enumerate(sizes)]
    workers = min(len(jobs), processes or os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            chunks = list(pool.map(_chunk, *zip(*jobs)))
    else:
        chunks = [_chunk(*job) for job in jobs]
    payloads: list[bytes] = []
    expected = 0
    mix: dict[str, int] = {}
    for chunk_payloads, chunk_expected, chunk_mix in chunks:
        payloads += chunk_payloads
        expected += chunk_expected
        for kind, n in chunk_mix.items():
            mix[kind] = mix.get(kind, 0) + n
    return Workload(
        variant, seed, payloads, len(payloads) * per_request, expected, dict(sorted(mix.items())), per_request
    )


if __name__ == "__main__":  # a quick look at the mix: python tests/bench/workload.py [records] [variant]
    import sys
    import time

    started = time.perf_counter()
    w = generate(
        int(sys.argv[1]) if len(sys.argv) > 1 else 50_000,
        variant=sys.argv[2] if len(sys.argv) > 2 else NORMAL,
    )
    took = time.perf_counter() - started
    print(
        f"{w.variant}: {w.records} records in {w.requests} requests, {w.bytes / w.records:.0f} B/record, "
        f"{w.expected_downgrades} downgrades expected, digest {w.digest}, generated in {took:.1f}s"
    )
    for kind, n in w.mix.items():
        print(f"  {kind:24} {n:8} {100 * n / w.records:5.1f}%")
