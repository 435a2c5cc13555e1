"""A labelled corpus of realistic traffic, generated from a fixed seed.

Each HTTP request (a trace) comes from an actor with a known ground truth (user, synthetic, probe,
bot, service). It produces an access-log record (from the ingress, with user agent / headers /
path / client address) and, on protected pages without a session, the Auth0 error record (from the
app, no user agent) — written up to 800 ms *before* or *after* the access log. Records are then
batched into export requests the way Collector agents do (per service, by time), so a trace's
records usually land in different requests and out of order.

Hard negatives: users who log the same Auth0 error (logged-out users on protected pages), users
whose in-app browser names sound like monitors, users on /health-insurance, users whose error
lands in the same batch as a probe's, and errors whose access log is never shipped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

SEED = 20261127
ID_KEY = "corpus.id"  # ground-truth key carried on every record

BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    # in-app browsers whose names sound like monitoring (hard negatives)
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36 HeartRateMonitor/3.2",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 UptimeTracker/1.4 HealthCheckApp/2.0",
]

# (ground truth, how the request shows itself): user agent, headers
MONITORS = [
    ("synthetic", "Datadog/Synthetics", {}),
    ("synthetic", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36 DatadogSynthetics",
     {"x-datadog-origin": "synthetics-browser"}),
    ("synthetic", "Mozilla/5.0 (compatible; Pingdom.com_bot_version_1.4_(http://www.pingdom.com/))", {}),
    ("synthetic", "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)", {}),
    ("synthetic", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
     {"x-abuse-info": "Request sent by a New Relic Synthetics Monitor (https://docs.newrelic.com/docs/synthetics/) - monitor id: 1"}),
    ("probe", "kube-probe/1.30", {}),
    ("probe", "ELB-HealthChecker/2.0", {}),
]
BOTS = ["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"]
SERVICES = ["curl/8.5.0", "python-requests/2.32.3", "Go-http-client/1.1"]

PROTECTED = ["/dashboard", "/settings", "/api/profile", "/billing"]
PUBLIC = ["/", "/pricing", "/health-insurance", "/blog/healthz-explained", "/login"]

AUTH0_V3 = ("Middleware error refreshing access token or session: AccessTokenError: The user does not have a valid "
            "session.\n    at getAccessToken (/app/node_modules/@auth0/nextjs-auth0/dist/session/get-access-token.js:41:19)"
            " {\n  code: 'ERR_MISSING_SESSION'\n}")
AUTH0_PINO = ('{"level":50,"err":{"type":"AccessTokenError","message":"The user does not have a valid session.",'
              '"code":"ERR_MISSING_SESSION"},"msg":"Middleware error refreshing access token or session"}')


@dataclass
class Truth:
    source: str  # ground truth of the request behind the record
    auth0_error: bool  # the record is the Auth0 error
    evidence_shipped: bool  # the trace's access log is exported at all


@dataclass
class Corpus:
    requests: list[tuple[float, ExportLogsServiceRequest]]  # (time it is sent, request)
    truth: dict[int, Truth]  # corpus.id -> ground truth


def _kv(key: str, value) -> KeyValue:
    if isinstance(value, list):
        return KeyValue(key=key, value=AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=v) for v in value])))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def generate(traces: int = 4000, seed: int = SEED) -> Corpus:
    rng = random.Random(seed)
    truth: dict[int, Truth] = {}
    emitted: list[tuple[float, str, LogRecord]] = []  # (time, service, record)
    next_id = 0

    def record(at: float, service: str, log: LogRecord, label: Truth) -> None:
        nonlocal next_id
        log.attributes.append(KeyValue(key=ID_KEY, value=AnyValue(int_value=next_id)))
        log.time_unix_nano = int((1_700_000_000 + at) * 1e9)
        truth[next_id] = label
        next_id += 1
        emitted.append((at, service, log))

    for _ in range(traces):
        at = rng.uniform(0, traces / 20)  # ~20 requests a second
        trace_id = rng.getrandbits(128).to_bytes(16, "big")
        roll = rng.random()
        headers: dict[str, str] = {}
        if roll < 0.55:
            source, user_agent = "user", rng.choice(BROWSERS)
            logged_in = rng.random() < 0.8
            path = rng.choice(PROTECTED if rng.random() < 0.6 else PUBLIC)
        elif roll < 0.85:
            source, user_agent, headers = rng.choice(MONITORS)
            logged_in, path = False, rng.choice(PROTECTED)  # monitors hit protected pages without a session
        elif roll < 0.93:
            source, user_agent, logged_in, path = "bot", rng.choice(BOTS), False, rng.choice(PUBLIC + PROTECTED)
        else:
            source, user_agent, logged_in, path = "service", rng.choice(SERVICES), False, rng.choice(PROTECTED)
        shipped = rng.random() > 0.03  # a few access logs are lost upstream: evidence never comes
        errors = path in PROTECTED and not logged_in
        label = Truth(source, False, shipped)
        if shipped:
            attributes = [_kv("user_agent.original", user_agent), _kv("url.path", path),
                          _kv("http.request.method", "GET"), _kv("client.address", f"203.0.113.{rng.randrange(256)}")]
            attributes += [_kv(f"http.request.header.{k}", [v]) for k, v in headers.items()]
            access = LogRecord(severity_number=9, severity_text="INFO", trace_id=trace_id,
                               span_id=rng.getrandbits(64).to_bytes(8, "big"),
                               body=AnyValue(string_value=f"GET {path} {307 if errors else 200}"), attributes=attributes)
            record(at + rng.uniform(0.0, 0.05), "ingress", access, label)
        if errors:
            # The app logs the error while handling the request; the access log is written at the end.
            error = LogRecord(severity_number=17, severity_text="ERROR", trace_id=trace_id,
                              span_id=rng.getrandbits(64).to_bytes(8, "big"),
                              body=AnyValue(string_value=AUTH0_V3 if rng.random() < 0.7 else AUTH0_PINO))
            record(at + rng.uniform(-0.8, 0.8), "web", error, Truth(source, True, shipped))
        if rng.random() < 0.3:  # unrelated app chatter in the same trace, no evidence of its own
            chatter = LogRecord(severity_number=9, trace_id=trace_id, body=AnyValue(string_value="rendered page"))
            record(at + rng.uniform(0, 0.2), "web", chatter, Truth(source, False, shipped))

    # Agents batch per service: every 200 ms, or 100 records, whichever first.
    emitted.sort(key=lambda e: e[0])
    requests: list[tuple[float, ExportLogsServiceRequest]] = []
    for service in ("ingress", "web"):
        batch: list[LogRecord] = []
        batch_start = None
        for at, svc, log in emitted:
            if svc != service:
                continue
            if batch and (at - batch_start >= 0.2 or len(batch) >= 100):
                requests.append((batch_start + 0.2 + rng.uniform(0, 0.1), _request(service, batch)))
                batch = []
            if not batch:
                batch_start = at
            batch.append(log)
        if batch:
            requests.append((batch_start + 0.2, _request(service, batch)))
    requests.sort(key=lambda r: r[0])
    return Corpus(requests, truth)


def _request(service: str, logs: list[LogRecord]) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(_kv("service.name", service))
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = service
    scope_logs.log_records.extend(logs)
    return request


def corpus_id(log: LogRecord) -> int:
    for kv in log.attributes:
        if kv.key == ID_KEY:
            return kv.value.int_value
    raise KeyError(ID_KEY)
