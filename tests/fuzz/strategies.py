"""Hypothesis strategies: OTLP logs requests of every shape, and mutations of real payloads.

Values are drawn from what the classifier and the rules look for (evidence keys, catalog user agents
and marker headers, rule words, JSON-text bodies) mixed with random and odd Unicode text, so that
generated records land on every branch, not only on "no evidence".
"""

from __future__ import annotations

import copy
import json
import random
import zlib
from typing import Any

import orjson
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from processor.classify import Classifier, builtin_catalog
from processor.classify.classifier import ADDRESS_KEYS, HEADER_PREFIX, PATH_KEYS, USER_AGENT_KEYS
from processor.classify.verdict import SOURCE, SYNTHETIC_TYPE
from processor.downgrade.rules import CODE_ATTRIBUTES, TEXT_ATTRIBUTES, TYPE_ATTRIBUTES

from .invariants import USER_AGENTS_FILE, fill_any

_CASES = orjson.loads(USER_AGENTS_FILE.read_bytes())
USER_AGENTS = tuple(c["user_agent"] for c in _CASES["cases"])
BROWSER_USER_AGENTS = tuple(c["user_agent"] for c in _CASES["cases"] if c["source"] == "user")
_CATALOG = builtin_catalog()
HEADER_KEYS = tuple(sorted({HEADER_PREFIX + header for s in _CATALOG for header, _ in s.headers}))
HEADER_VALUES = tuple(sorted({v for s in _CATALOG for _, values in s.headers for v in values}))
_CLASSIFIER = Classifier(_CATALOG)


def is_browser(user_agent: str) -> bool:
    """Whether the built-in catalog calls this user agent a browser (a real user)."""
    verdict = _CLASSIFIER.user_agent(USER_AGENT_KEYS[0], user_agent)
    return verdict is not None and verdict.source == "user"


# Words the built-in and the extra rules (tests/fuzz/extra_rules.json) look for.
RULE_WORDS = (
    "AccessTokenError",
    "ERR_MISSING_SESSION",
    "missing_session",
    "JWTSessionError",
    "SESSION_ERROR",
    "[next-auth][error]",
    "ECONNRESET",
    "E_FUZZ",
    "timeout after 30 ms",
    "upstream",
)
ODD_TEXT = (
    "",
    " ",
    "\x00",
    "\u202e",
    "\ufeff",
    "İ",
    "ß",
    "ﬃ",
    "Σ",
    "e\u0301",
    "\U0001f600",
    "\U0010ffff",
    "\ud7ff",
    "\\",
    '"',
    "{",
    "}",
    "[",
    "]",
    "\n",
    "\t",
    "..",
    "%",
    "?",
    "#",
    "Mozilla/",
    "mozilla/",
    "MOZILLA/",
)
EVIDENCE_KEYS = USER_AGENT_KEYS + HEADER_KEYS + PATH_KEYS + ADDRESS_KEYS
RULE_KEYS = tuple(sorted(TYPE_ATTRIBUTES | CODE_ATTRIBUTES | TEXT_ATTRIBUTES)) + ("http.route", "url.path")
OTHER_KEYS = (SOURCE, SYNTHETIC_TYPE, "triage.rule", "triage.source.name", "service.name", "msg", "message")
PATHS = (
    "/healthz",
    "/readyz",
    "/livez",
    "/health",
    "/ping",
    "/health/",
    "/healthz?x=1#f",
    "/",
    "/api/me",
    "/status",
)
ADDRESSES = (
    "192.0.2.7",
    "198.51.100.200",
    "[2001:db8::1]",
    " 192.0.2.1 ",
    "2001:db8::1%eth0",
    "10.0.0.1",
    "::1",
    "1.2.3",
)
SEVERITIES = (0, 1, 5, 9, 12, 13, 17, 21, 24, 25, -1, 2**31 - 1, -(2**31))
SEVERITY_TEXTS = ("", "ERROR", "error", "WARN", "Warning", "INFO", "DEBUG", "FATAL", "severe", "ＥＲＲＯＲ")

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT32 = st.integers(0, 2**32 - 1)
FIXED64 = st.integers(0, 2**64 - 1)

# Text: random (any code point but surrogates, which protobuf strings cannot hold), odd, and
# concatenations of the words everything looks for.
_pieces = st.one_of(
    st.text(max_size=12),
    st.sampled_from(ODD_TEXT),
    st.sampled_from(RULE_WORDS),
    st.sampled_from(USER_AGENTS),
    st.sampled_from(HEADER_VALUES),
    st.sampled_from((" ", ".", ":", "_", "-", "/", "\n", '"')),
)
texts = st.one_of(st.text(max_size=24), st.lists(_pieces, max_size=4).map("".join))
keys = st.one_of(
    st.sampled_from(EVIDENCE_KEYS),
    st.sampled_from(RULE_KEYS),
    st.sampled_from(OTHER_KEYS),
    st.text(max_size=12),
)


def string(text: str) -> AnyValue:
    return AnyValue(string_value=text)


def array(values: list[AnyValue]) -> AnyValue:
    return AnyValue(array_value=ArrayValue(values=values))


def kvlist(pairs: list[tuple[str, AnyValue]]) -> AnyValue:
    return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in pairs]))


_scalars = st.one_of(
    texts.map(string),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    INT64.map(lambda i: AnyValue(int_value=i)),
    st.floats().map(lambda d: AnyValue(double_value=d)),
    st.binary(max_size=16).map(lambda b: AnyValue(bytes_value=b)),
    st.just(AnyValue()),  # no value set
)
any_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(array),
        st.lists(st.tuples(keys, children), max_size=4).map(kvlist),
    ),
    max_leaves=6,
)

# JSON: documents shaped like structured logs (pino, winston), as objects and as text bodies.
_json_keys = st.one_of(
    st.sampled_from(("type", "name", "code", "message", "msg", "stack", "err", "error", "level", "cause")),
    st.text(max_size=6),
)
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    _json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_json_keys, children, max_size=4)
    ),
    max_leaves=16,
)


@st.composite
def json_text_bodies(draw) -> str:
    """A log body that is JSON text: generated, or nested ``depth`` levels (past every parser limit)."""
    kind = draw(st.sampled_from(("object", "deep-object", "deep-array", "broken")))
    if kind == "object":
        document = draw(st.dictionaries(_json_keys, json_values, max_size=5))
        return draw(st.sampled_from(("", " ", "\n\t"))) + orjson.dumps(document).decode()
    depth = draw(st.integers(0, 1200))
    leaf = orjson.dumps(draw(st.sampled_from(RULE_WORDS))).decode()
    if kind == "deep-object":
        key = orjson.dumps(draw(_json_keys)).decode()
        return f"{{{key}:" * depth + leaf + "}" * depth
    if kind == "deep-array":
        return '{"err":' + "[" * depth + leaf + "]" * depth + "}"
    text = orjson.dumps(draw(st.dictionaries(_json_keys, json_values, max_size=4))).decode()
    return text[: draw(st.integers(0, len(text)))]


def deep_kvlist(depth: int, key: str = "err", leaf: str = "AccessTokenError") -> AnyValue:
    """A map body nested ``depth`` levels, built in place: past about 30 levels no decoder lets it
    through (upb stops at 100 message levels), and protobuf's own MergeFrom refuses it too."""
    root = node = AnyValue()
    for _ in range(depth):
        child = node.kvlist_value.values.add(key=key)
        node.kvlist_value.values.add(key="type").value.string_value = leaf
        node = child.value
    node.string_value = leaf
    return root


def wide_kvlist(width: int) -> AnyValue:
    return kvlist([(f"k{i}", string(RULE_WORDS[i % len(RULE_WORDS)])) for i in range(width)])


AUTH0_BODIES = (
    'Middleware error refreshing access token or session: { code: "ERR_MISSING_SESSION", '
    'name: "AccessTokenError", message: "The user does not have a valid session." }',
    '{"err":{"type":"AccessTokenError","code":"missing_session"},"msg":"Middleware error"}',
)
# Bodies the rules fire on (built-in and tests/fuzz/extra_rules.json), as text, JSON text and maps.
RULE_BODIES = AUTH0_BODIES + (
    '{"level":50,"err":{"type":"AccessTokenError","message":"no session","code":"missing_session"}}',
    "[next-auth][error] JWTSessionError SESSION_ERROR",
    "upstream timeout after 30 ms",
    "read ECONNRESET",
)


def rule_body(text: str) -> AnyValue:
    """A rule body as a string, or (for JSON text) as the equivalent map."""
    if text.startswith("{"):
        return json_to_any(orjson.loads(text))
    return string(text)


WIRE_DEPTH = 28  # map levels a LogRecord body can have inside a request that still decodes

bodies = st.one_of(
    st.none(),
    st.sampled_from(RULE_BODIES).map(string),
    st.sampled_from(RULE_BODIES).map(rule_body),
    any_values,
    texts.map(string),
    json_text_bodies().map(string),
    st.dictionaries(_json_keys, json_values, max_size=5).map(lambda d: json_to_any(d)),
    st.builds(deep_kvlist, st.integers(0, WIRE_DEPTH), _json_keys),
    st.builds(wide_kvlist, st.integers(0, 1200)),
)


def json_to_any(value: Any) -> AnyValue:
    return fill_any(AnyValue(), value)


def _strings_value(values: st.SearchStrategy[str]) -> st.SearchStrategy[AnyValue]:
    """A header-like value: a string, an array of strings (semantic conventions), or anything."""
    return st.one_of(
        values.map(string), st.lists(values, max_size=3).map(lambda vs: array([string(v) for v in vs]))
    )


user_agents = st.one_of(
    st.sampled_from(USER_AGENTS),
    texts.map(lambda t: "Mozilla/5.0 " + t),
    texts,
)

attributes = st.one_of(
    st.tuples(st.sampled_from(USER_AGENT_KEYS), st.one_of(_strings_value(user_agents), any_values)),
    st.tuples(
        st.sampled_from(HEADER_KEYS),
        st.one_of(_strings_value(st.one_of(st.sampled_from(HEADER_VALUES), texts)), any_values),
    ),
    st.tuples(st.sampled_from(PATH_KEYS), st.one_of(st.sampled_from(PATHS), texts).map(string)),
    st.tuples(
        st.sampled_from(ADDRESS_KEYS),
        st.one_of(st.sampled_from(ADDRESSES), st.ip_addresses().map(str), texts).map(string),
    ),
    st.tuples(st.sampled_from(RULE_KEYS), st.one_of(st.sampled_from(RULE_WORDS).map(string), any_values)),
    st.tuples(st.sampled_from((SYNTHETIC_TYPE, "triage.rule", "service.name")), any_values),
    st.tuples(keys, any_values),
).map(lambda kv: KeyValue(key=kv[0], value=kv[1]))

# Rarely: a record triaged upstream (carries triage.source), which must pass untouched.
pretriaged = st.tuples(st.just(SOURCE), st.one_of(texts.map(string), any_values)).map(
    lambda kv: KeyValue(key=kv[0], value=kv[1])
)

trace_ids = st.one_of(st.binary(min_size=16, max_size=16), st.just(b""), st.binary(max_size=20))


@st.composite
def log_records(
    draw, traces: list[bytes] | None = None, attribute_lists=None, body_strategy=None
) -> LogRecord:
    record = LogRecord(
        time_unix_nano=draw(FIXED64),
        observed_time_unix_nano=draw(FIXED64),
        severity_number=draw(st.one_of(st.sampled_from(SEVERITIES), st.integers(-(2**31), 2**31 - 1))),
        severity_text=draw(st.one_of(st.sampled_from(SEVERITY_TEXTS), texts)),
        dropped_attributes_count=draw(UINT32),
        flags=draw(UINT32),
        trace_id=draw(st.sampled_from(traces) if traces else trace_ids),
        span_id=draw(st.sampled_from((b"", b"\x01" * 8)) | st.binary(max_size=9)),
        event_name=draw(st.one_of(st.just(""), texts)),
    )
    body = draw(bodies if body_strategy is None else body_strategy)
    if body is not None:
        record.body.CopyFrom(body)
    record.attributes.extend(
        draw(attribute_lists if attribute_lists is not None else st.lists(attributes, max_size=4))
    )
    if draw(st.integers(0, 15)) == 0:
        record.attributes.insert(draw(st.integers(0, len(record.attributes))), draw(pretriaged))
    return record


@st.composite
def requests(draw, max_resources: int = 2, max_records: int = 4) -> ExportLogsServiceRequest:
    """Requests whose records share a few traces, so correlation (and holding) happen."""
    traces = draw(st.lists(trace_ids, min_size=1, max_size=4))
    request = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(1, max_resources))):
        resource_logs = request.resource_logs.add(schema_url=draw(st.one_of(st.just(""), texts)))
        resource_logs.resource.attributes.extend(draw(st.lists(attributes, max_size=1)))
        resource_logs.resource.dropped_attributes_count = draw(UINT32)
        for _ in range(draw(st.integers(1, 2))):
            scope_logs = resource_logs.scope_logs.add(schema_url=draw(st.one_of(st.just(""), texts)))
            scope_logs.scope.name = draw(texts)
            scope_logs.scope.version = draw(texts)
            scope_logs.scope.attributes.extend(
                draw(
                    st.lists(st.tuples(keys, _scalars), max_size=1).map(
                        lambda kvs: [KeyValue(key=k, value=v) for k, v in kvs]
                    )
                )
            )
            scope_logs.log_records.extend(draw(st.lists(log_records(traces), max_size=max_records)))
    return request


evidence_attributes = st.one_of(
    st.tuples(st.sampled_from(USER_AGENT_KEYS), st.sampled_from(USER_AGENTS).map(string)),
    st.tuples(st.sampled_from(HEADER_KEYS), st.sampled_from(HEADER_VALUES).map(string)),
    st.tuples(st.sampled_from(PATH_KEYS), st.sampled_from(PATHS).map(string)),
    st.tuples(st.sampled_from(ADDRESS_KEYS), st.sampled_from(ADDRESSES).map(string)),
).map(lambda kv: KeyValue(key=kv[0], value=kv[1]))


@st.composite
def scenario_requests(draw, traces: list[bytes] | None = None) -> ExportLogsServiceRequest:
    """What correlation is for: errors a rule matches, without evidence, beside access logs with evidence
    (monitors, browsers, health checks), over a few shared traces. Errors get held; evidence frees them."""
    traces = traces or draw(
        st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=3, unique=True)
    )
    request = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        resource_logs = request.resource_logs.add()
        if draw(st.integers(0, 5)) == 0:
            resource_logs.resource.attributes.append(draw(evidence_attributes))
        scope_logs = resource_logs.scope_logs.add()
        for _ in range(draw(st.integers(1, 5))):
            record = scope_logs.log_records.add(trace_id=draw(st.sampled_from(traces)))
            if draw(st.booleans()):  # an error a rule matches, usually without evidence
                record.severity_number = draw(st.sampled_from((0, 13, 17, 21)))
                record.severity_text = draw(st.sampled_from(("", "ERROR", "warn")))
                record.body.CopyFrom(rule_body(draw(st.sampled_from(RULE_BODIES))))
                if draw(st.integers(0, 3)) == 0:
                    record.attributes.append(draw(evidence_attributes))
            else:  # an access log with evidence
                record.severity_number = 9
                record.body.string_value = "GET " + draw(st.sampled_from(PATHS))
                record.attributes.extend(draw(st.lists(evidence_attributes, min_size=1, max_size=2)))
    return request


@st.composite
def browser_and_monitor_requests(draw) -> tuple[ExportLogsServiceRequest, set[bytes]]:
    """Rule-matching errors whose only evidence is a browser user agent (theirs or their trace's), in
    requests full of monitors and monitor traces. Returns the request and the browser traces."""
    monitor_agents = [c["user_agent"] for c in _CASES["cases"] if c["source"] in ("synthetic", "probe")]
    request = ExportLogsServiceRequest()
    scope_logs = request.resource_logs.add().scope_logs.add()
    traces = draw(st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=3, unique=True))
    browser_traces = set()
    for trace in traces:
        browser = draw(
            st.one_of(
                st.sampled_from(BROWSER_USER_AGENTS),
                texts.map(lambda t: "Mozilla/5.0 " + t).filter(is_browser),
            )
        )
        ua_key = draw(st.sampled_from(USER_AGENT_KEYS))
        error = LogRecord(severity_number=draw(st.sampled_from((13, 17, 21))), trace_id=trace)
        error.body.string_value = draw(st.sampled_from(AUTH0_BODIES))
        access = LogRecord(
            severity_number=9, trace_id=trace, attributes=[KeyValue(key=ua_key, value=string(browser))]
        )
        own = draw(st.booleans())  # the error carries the browser user agent itself, or only its trace does
        if own:
            error.attributes.append(KeyValue(key=ua_key, value=string(browser)))
        monitor = LogRecord(
            severity_number=9,
            trace_id=trace,
            attributes=[
                KeyValue(
                    key=draw(st.sampled_from(USER_AGENT_KEYS)),
                    value=string(draw(st.sampled_from(monitor_agents))),
                )
            ],
        )
        records = draw(st.permutations([error, access, monitor] if draw(st.booleans()) else [error, access]))
        scope_logs.log_records.extend(records)
        browser_traces.add(trace)
    return request, browser_traces


# --- mutations ---------------------------------------------------------------------------------------------

_MUTATIONS = ("flip", "byte", "truncate", "delete", "insert", "splice", "duplicate", "interesting")
_INTERESTING_BYTES = (
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\xff\xff\xff\xff\x0f",
    b"\x80" * 10,
    b'"',
    b"{",
    b"[",
    b"9" * 30,
)


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed after 1-8 random edits: bit flips, byte changes, truncation, deletion, insertion,
    splicing in a piece of another seed, duplication of a piece, libFuzzer-style interesting bytes."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(_MUTATIONS))
        size = len(data)
        at = draw(st.integers(0, size))
        if op == "flip" and size:
            data[min(at, size - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and size:
            data[min(at, size - 1)] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            start = draw(st.integers(0, len(other)))
            data[at:at] = other[start : start + draw(st.integers(1, 256))]
        elif op == "duplicate" and size:
            start = draw(st.integers(0, size - 1))
            data[at:at] = data[start : start + draw(st.integers(1, 128))]
        elif op == "interesting":
            data[at : at + draw(st.integers(0, 4))] = draw(st.sampled_from(_INTERESTING_BYTES))
    return bytes(data)


_ODD_JSON = (
    None,
    True,
    0,
    -1,
    2**63,
    2**64,
    -(2**63) - 1,
    1.5,
    1e308,
    "",
    "zz",
    "0" * 31,
    "0" * 32,
    "0" * 34,
    "5b8efff798038103d269b633813fc60c",
    "eee19b7ec3c1b174",
    "5b 8e ff f7 98 03 81 03 d2 69 b6 33 81 3f c6 0c",
    "NaN",
    "Infinity",
    "-0",
    "1e5",
    "AAAA",
    "not base64!",
    [],
    {},
    [None],
    {"stringValue": 1},
    {"intValue": "x"},
    {"kvlistValue": {"values": "x"}},
    {"arrayValue": {"values": [{"kvlistValue": {}}]}},
    {"stringValue": "a", "intValue": "1"},
)
_ODD_KEYS = (
    "traceId",
    "trace_id",
    "spanId",
    "span_id",
    "severityNumber",
    "severity_number",
    "body",
    "attributes",
    "timeUnixNano",
    "logRecords",
    "scopeLogs",
    "resourceLogs",
    "value",
    "key",
    "stringValue",
    "bytesValue",
    "droppedAttributesCount",
    "flags",
    "eventName",
    "schemaUrl",
    "unknownField",
)


def _odd_json(draw) -> Any:
    return copy.deepcopy(draw(st.one_of(st.sampled_from(_ODD_JSON), json_values)))


def _positions(node: Any, out: list) -> list:
    if isinstance(node, dict):
        for key in list(node):
            out.append((node, key))
            _positions(node[key], out)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out.append((node, i))
            _positions(item, out)
    return out


@st.composite
def structurally_mutated_json(draw, seeds: list[bytes]) -> bytes:
    """A golden OTLP/JSON document with 1-4 of its values replaced, keys renamed or removed, or
    entries added: mutations that keep it JSON, so they reach the OTLP mapping behind the parser."""
    document = orjson.loads(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        positions = _positions(document, [])
        if not positions:
            break
        container, key = draw(st.sampled_from(positions))
        op = draw(st.sampled_from(("replace", "replace", "rename", "remove", "add")))
        if op == "replace":
            container[key] = _odd_json(draw)
        elif op == "remove":
            del container[key]
        elif op == "rename" and isinstance(container, dict):
            container[draw(st.one_of(st.sampled_from(_ODD_KEYS), st.text(max_size=8)))] = container.pop(key)
        elif op == "add" and isinstance(container, dict):
            container[draw(st.sampled_from(_ODD_KEYS))] = _odd_json(draw)
        elif op == "add":
            container.insert(key, _odd_json(draw))
    # The standard library writes integers of any size (orjson stops at 64 bits).
    return json.dumps(document, allow_nan=False).encode()


def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    else:
        compressor = zlib.compressobj(wbits=zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


# --- the same JSON, written differently ---------------------------------------------------------------------


def _escaped_string(text: str, rng: random.Random, rate: float) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\' or code < 0x20:
            out.append(json.dumps(char)[1:-1])  # escapes JSON requires
        elif rng.random() >= rate:
            out.append(char)
        elif code > 0xFFFF:  # a surrogate pair, as JSON writes characters outside the BMP
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04X}")
        else:
            out.append(f"\\u{code:04x}" if rng.random() < 0.5 else f"\\u{code:04X}")
    out.append('"')
    return "".join(out)


def escaped_json(value: Any, rng: random.Random, rate: float) -> str:
    """``value`` as JSON text with each string character escaped (``\\u00XX``) with probability ``rate``:
    the same document for every JSON parser, different bytes."""
    if isinstance(value, dict):
        items = (f"{_escaped_string(k, rng, rate)}:{escaped_json(v, rng, rate)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(escaped_json(v, rng, rate) for v in value) + "]"
    if isinstance(value, str):
        return _escaped_string(value, rng, rate)
    return json.dumps(value)


@st.composite
def escaped_variants(draw, payloads: list[bytes]) -> tuple[bytes, bytes]:
    """A JSON payload and the same document with some (or all) string characters escaped."""
    payload = draw(st.sampled_from(payloads))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    rate = draw(st.sampled_from((0.02, 0.3, 1.0)))
    return payload, escaped_json(orjson.loads(payload), rng, rate).encode()
