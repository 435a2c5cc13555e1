"""Redaction: credential attributes and token-shaped text never leave the processor."""

from __future__ import annotations

import json
import logging
import string
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from processor.redact import (
    ATTRIBUTE_RULE,
    DEFAULT_ATTRIBUTES,
    DEFAULT_PATTERNS,
    MARKER,
    Redactor,
    _pattern_problem,
    parse_attributes,
    parse_patterns,
    required_literal,
)

from .conftest import attributes as attributes_of
from .conftest import wait_for

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
APPSESSION = "eyJ0eXAiOiJKV1Qi.some-session-value_123"
REDACTOR = Redactor()


def request_with(record: LogRecord) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.append(record)
    return request


def redacted(record: LogRecord, redactor: Redactor = REDACTOR) -> tuple[LogRecord, dict[str, int]]:
    request = request_with(record)
    counts: dict[str, int] = {}
    assert redactor.needed(request.SerializeToString())
    redactor.redact_request(request, counts)
    return request.resource_logs[0].scope_logs[0].log_records[0], counts


def text(value: str) -> AnyValue:
    return AnyValue(string_value=value)


def header(values: list[str]) -> AnyValue:
    return AnyValue(array_value=ArrayValue(values=[text(v) for v in values]))


class TestAttributes:
    @pytest.mark.parametrize(
        "key",
        [
            "http.request.header.cookie",
            "http.request.header.authorization",
            "http.request.header.proxy-authorization",
            "http.request.header.set-cookie",
            "http.response.header.set-cookie",
            "http.request.header.x-api-key",
        ],
    )
    @pytest.mark.parametrize("shape", ["string", "array"])
    def test_credential_headers_replaced(self, key: str, shape: str) -> None:
        """Each default credential attribute loses its value(s), keeping its shape."""
        value = text("secret-value") if shape == "string" else header(["secret-1", "secret-2"])
        record, counts = redacted(LogRecord(attributes=[KeyValue(key=key, value=value)]))
        out = record.attributes[0].value
        if shape == "string":
            assert out.string_value == MARKER
        else:
            assert [v.string_value for v in out.array_value.values] == [MARKER, MARKER]
        assert counts == {"attribute": 1}

    def test_enrichment_and_other_attributes_untouched(self) -> None:
        """Only the listed keys change: triage.*, user agent and the rest stay as they were."""
        record = LogRecord(
            attributes=[
                KeyValue(key="triage.source", value=text("synthetic")),
                KeyValue(key="user_agent.original", value=text("Datadog/Synthetics")),
                KeyValue(key="http.request.header.cookie", value=header(["appSession=abc"])),
            ]
        )
        out, _ = redacted(record)
        assert attributes_of(out)["triage.source"] == "synthetic"
        assert attributes_of(out)["user_agent.original"] == "Datadog/Synthetics"


class TestPatterns:
    @pytest.mark.parametrize(
        ("body", "expected", "rule"),
        [
            # a JWT anywhere in text
            (f"token={JWT} end", f"token={MARKER} end", "jwt"),
            # Auth0's session cookie: the value goes, the name stays
            (f"cookie: appSession={APPSESSION}; theme=dark", f"cookie: appSession={MARKER}; theme=dark", "auth0-appsession"),
            # chunked session cookies
            ("appSession.0=part-one-abcdef; appSession.1=part-two", f"appSession.0={MARKER}; appSession.1={MARKER}", "auth0-appsession"),
            # a bearer token in a log line
            ("Authorization: Bearer abcdefgh12345678", f"Authorization: Bearer {MARKER}", "bearer"),
        ],
    )
    def test_string_body(self, body: str, expected: str, rule: str) -> None:
        """Token-shaped text inside a string body is replaced; the text around it stays."""
        out, counts = redacted(LogRecord(body=text(body)))
        assert out.body.string_value == expected
        assert counts[rule] >= 1

    def test_nested_map_body_and_attribute_values(self) -> None:
        """Strings inside map/array bodies and inside ordinary attributes are redacted too."""
        body = AnyValue(kvlist_value=KeyValueList(values=[
            KeyValue(key="req", value=AnyValue(kvlist_value=KeyValueList(values=[
                KeyValue(key="headers", value=header([f"Bearer {JWT}"]))]))),
        ]))
        record = LogRecord(body=body, attributes=[KeyValue(key="note", value=text(f"jwt {JWT}"))])
        out, _ = redacted(record)
        assert JWT not in out.SerializeToString().decode("utf-8", "replace")
        assert attributes_of(out)["note"] == f"jwt {MARKER}"

    def test_nothing_to_redact_is_byte_for_byte_unchanged(self) -> None:
        """A request with nothing secret is not even looked at, and stays identical."""
        record = LogRecord(body=text("GET /dashboard 200"), attributes=[KeyValue(key="url.path", value=text("/x"))])
        request = request_with(record)
        before = request.SerializeToString()
        assert not REDACTOR.needed(before)
        REDACTOR.redact_request(request, {})
        assert request.SerializeToString() == before


class TestConfiguration:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("default", None),  # None: exactly the defaults
            ("none", ()),
            ("default,x.session", "x.session"),  # defaults plus one
            ("default,-http.request.header.cookie", "-cookie"),  # defaults minus one
        ],
    )
    def test_attribute_lists(self, value: str, expected) -> None:
        """default / none / additions / removals."""
        keys = parse_attributes(value)
        if expected is None:
            assert "http.request.header.cookie" in keys and len(keys) == 6
        elif expected == ():
            assert keys == ()
        elif expected == "-cookie":
            assert "http.request.header.cookie" not in keys and len(keys) == 5
        else:
            assert keys[-1] == expected

    def test_patterns_json_adds_and_removes(self) -> None:
        """A JSON object adds patterns; null removes a default one."""
        patterns = dict(parse_patterns('{"stripe": "sk_live_[0-9A-Za-z]{8,}", "bearer": null}'))
        assert "stripe" in patterns and "bearer" not in patterns and "jwt" in patterns
        out, counts = redacted(LogRecord(body=text("key sk_live_abcdefgh12")), Redactor((), tuple(patterns.items())))
        assert out.body.string_value == f"key {MARKER}" and counts == {"stripe": 1}

    @pytest.mark.parametrize("value", ['{"x": "("}', "[1]", "not json", '{"x": 3}'])
    def test_bad_patterns_refused(self, value: str) -> None:
        """A broken pattern list is refused with what would be valid."""
        with pytest.raises(ValueError):
            parse_patterns(value)


def kvlist(**values: AnyValue) -> AnyValue:
    return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in values.items()]))


def access_log() -> LogRecord:
    """A realistic record with nothing to redact: 8 attributes, a 200-character body, ids, enrichment."""
    record = LogRecord(
        time_unix_nano=1_700_000_000_000_000_000,
        severity_number=9,
        severity_text="INFO",
        trace_id=bytes(range(16)),
        span_id=bytes(range(8)),
        body=text("GET /dashboard/settings/billing?tab=invoices 200 in 35ms; rendered 3 components".ljust(200, ".")),
    )
    for key, value in [
        ("user_agent.original", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/124.0"),
        ("url.path", "/dashboard/settings/billing"),
        ("client.address", "203.0.113.7"),
        ("http.request.method", "GET"),
        ("http.route", "/dashboard/[...slug]"),
        ("http.request.header.x-datadog-origin", "synthetics"),
    ]:
        record.attributes.add(key=key, value=text(value))
    record.attributes.add(key="http.response.status_code", value=AnyValue(int_value=200))
    record.attributes.add(key="duration_ms", value=AnyValue(double_value=35.2))
    return record


JWE = "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..8YQ4bT2v1d3xg0E7.ZXhhbXBsZWNpcGhlcnRleHQ.dGFnLXZhbHVlLTEy"


class TestRecord:
    """``Redactor.redact``: one LogRecord in place, counts per rule."""

    def test_nothing_to_redact_is_byte_for_byte_unchanged(self) -> None:
        """A realistic record with no secret (but a monitor's header) comes out identical and uncounted."""
        record = access_log()
        before = record.SerializeToString()
        assert REDACTOR.redact(record) == {}
        assert record.SerializeToString() == before

    def test_counts_per_rule(self) -> None:
        """Each replaced secret counts once under its rule; a watched attribute counts once."""
        record = LogRecord(
            body=text(f"login appSession={APPSESSION}; appSession.1=second-chunk Bearer abcdefgh12345678 {JWT}"),
            attributes=[
                KeyValue(key="http.request.header.cookie", value=header(["a=1", "appSession=x"])),
                KeyValue(key="http.request.header.authorization", value=text(f"Bearer {JWT}")),
                KeyValue(key="url.full", value=text(f"https://x/cb?id_token={JWT}&state=1")),
            ],
        )
        counts = REDACTOR.redact(record)
        assert counts == {"auth0-appsession": 2, "bearer": 1, "jwt": 2, ATTRIBUTE_RULE: 2}
        assert record.body.string_value == (
            f"login appSession={MARKER}; appSession.1={MARKER} Bearer {MARKER} {MARKER}"
        )

    def test_counts_accumulate_into_the_given_dict(self) -> None:
        """Passing a dict adds to it (one dict per request, as the metrics want)."""
        counts = {"jwt": 3}
        assert REDACTOR.redact(LogRecord(body=text(JWT)), counts) is counts
        assert counts == {"jwt": 4}

    def test_second_pass_changes_and_counts_nothing(self) -> None:
        """Redacting a redacted record (a second processor in the path) is a no-op."""
        record = LogRecord(
            body=text(f"appSession={APPSESSION} Bearer abcdefgh12345678 {JWT}"),
            attributes=[KeyValue(key="http.request.header.cookie", value=header(["appSession=x"]))],
        )
        REDACTOR.redact(record)
        once = record.SerializeToString()
        assert REDACTOR.redact(record) == {}
        assert record.SerializeToString() == once

    def test_enrichment_ids_times_and_severity_untouched(self) -> None:
        """triage.* attributes are never rewritten, even if they quote a token; ids, times, severity stay."""
        record = access_log()
        record.severity_number, record.severity_text = 5, "DEBUG"
        record.attributes.add(key="triage.source", value=text("synthetic"))
        record.attributes.add(key="triage.source.evidence", value=text(f"user_agent.original contains 'Bearer {JWT}'"))
        record.attributes.add(key="triage.original_severity_number", value=AnyValue(int_value=17))
        record.attributes.add(key="note", value=text(JWT))
        enrichment = [kv.SerializeToString() for kv in record.attributes if kv.key.startswith("triage.")]
        fixed = (record.trace_id, record.span_id, record.time_unix_nano, record.severity_number, record.severity_text)
        # even a configuration naming an enrichment key does not reach it
        Redactor(("triage.source",), DEFAULT_PATTERNS).redact(record)
        assert [kv.SerializeToString() for kv in record.attributes if kv.key.startswith("triage.")] == enrichment
        assert (record.trace_id, record.span_id, record.time_unix_nano, record.severity_number, record.severity_text) == fixed
        assert attributes_of(record)["note"] == MARKER


class TestAttributeValues:
    @pytest.mark.parametrize(
        ("value", "expected", "counted"),
        [
            # a bytes value becomes the marker string: secrecy over type
            (AnyValue(bytes_value=b"secret"), text(MARKER), True),
            # numbers and booleans too (an API key can be numeric)
            (AnyValue(int_value=123456), text(MARKER), True),
            (AnyValue(bool_value=True), text(MARKER), True),
            # an array keeps its length; non-string elements become the marker as well
            (
                AnyValue(array_value=ArrayValue(values=[text("a"), AnyValue(int_value=1)])),
                AnyValue(array_value=ArrayValue(values=[text(MARKER), text(MARKER)])),
                True,
            ),
            # a map keeps its keys; every leaf goes
            (kvlist(scheme=text("Bearer"), token=text("abc")), kvlist(scheme=text(MARKER), token=text(MARKER)), True),
            # nothing to hide: an empty string, an empty array, an unset value
            (text(""), text(""), False),
            (AnyValue(array_value=ArrayValue()), AnyValue(array_value=ArrayValue()), False),
            (AnyValue(), AnyValue(), False),
            # already the marker: not a new redaction
            (header([MARKER]), header([MARKER]), False),
        ],
    )
    def test_watched_attribute_value_shapes(self, value: AnyValue, expected: AnyValue, counted: bool) -> None:
        """Every non-empty leaf of a watched attribute becomes the marker; shapes stay; no-ops are not counted."""
        record = LogRecord(attributes=[KeyValue(key="http.request.header.x-api-key", value=value)])
        counts = REDACTOR.redact(record)
        assert record.attributes[0].value == expected
        assert counts == ({ATTRIBUTE_RULE: 1} if counted else {})

    def test_cookie_header_with_attribute_rules_off(self) -> None:
        """With the attribute list at none, the patterns still take appSession chunks out of a Cookie header."""
        redactor = Redactor(parse_attributes("none"), DEFAULT_PATTERNS)
        cookie = "theme=dark; appSession.0=chunk-zero-value; appSession.1=chunk-one-value; lang=en"
        record = LogRecord(attributes=[KeyValue(key="http.request.header.cookie", value=header([cookie]))])
        assert redactor.redact(record) == {"auth0-appsession": 2}
        assert attributes_of(record)["http.request.header.cookie"] == [
            f"theme=dark; appSession.0={MARKER}; appSession.1={MARKER}; lang=en"
        ]

    def test_watched_key_inside_a_map_body(self) -> None:
        """A structured body entry under a watched key is replaced whole, like the attribute."""
        body = kvlist(req=kvlist(**{"http.request.header.cookie": text("sid=abc"), "url.path": text("/x")}))
        record = LogRecord(body=body)
        assert REDACTOR.redact(record) == {ATTRIBUTE_RULE: 1}
        assert record.body == kvlist(req=kvlist(**{"http.request.header.cookie": text(MARKER), "url.path": text("/x")}))


class TestTokenShapes:
    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            # JWE with an empty key part (alg dir): Auth0's session cookie format
            (f"session {JWE} end", f"session {MARKER} end"),
            # unsigned JWT (alg none): the trailing dot is part of it
            ("t=eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0. ok", f"t={MARKER} ok"),
            # a sentence ending right after a JWT keeps its full stop
            (f"token is {JWT}. Next", f"token is {MARKER}. Next"),
            # URL-encoded: %3D right before the token
            (f"redirect=%2Fcb%3Fid_token%3D{JWT}%26x", f"redirect=%2Fcb%3Fid_token%3D{MARKER}%26x"),
            # lowercase scheme, and a non-breaking space after it
            ("authorization: bearer abcdefgh12345678", f"authorization: bearer {MARKER}"),
            ("Bearer\u00a0abcdefgh12345678", f"Bearer\u00a0{MARKER}"),
            # a quoted cookie value, also JSON-escaped inside a JSON-text body
            ('appSession="quoted-value-123"', f'appSession="{MARKER}"'),
            ('{"cookie":"appSession=\\"quoted-value-123\\""}', f'{{"cookie":"appSession=\\"{MARKER}\\""}}'),
            # not secrets: short Bearer words, a cookie merely named like it, "eyJ" in prose
            ("missing Bearer null", "missing Bearer null"),
            ("appSession expired", "appSession expired"),
            ("heyJude.abcdef.ghijkl", "heyJude.abcdef.ghijkl"),
        ],
    )
    def test_shapes(self, body: str, expected: str) -> None:
        """Token shapes beyond the plain three-part JWT; and near misses that stay."""
        record = LogRecord(body=text(body))
        REDACTOR.redact(record)
        assert record.body.string_value == expected

    def test_deeply_nested_body(self) -> None:
        """A JWT thirty maps and arrays deep (about what protobuf decoding allows) is still found."""
        value = text(f"jwt {JWT}")
        for depth in range(30):
            value = kvlist(inner=value) if depth % 2 else AnyValue(array_value=ArrayValue(values=[text("x"), value]))
        record = LogRecord(body=value)
        assert REDACTOR.redact(record) == {"jwt": 1}
        assert JWT.encode() not in record.SerializeToString()

    @pytest.mark.parametrize("size", [64 * 1024, 1024 * 1024])
    def test_linear_time_on_adversarial_text(self, size: int) -> None:
        """A run of "eyJeyJ..." costs linear time (a backtracking pattern took minutes on 1 MiB)."""
        record = LogRecord(body=text("eyJ" * (size // 3)), attributes=[KeyValue(key="x", value=text("Bearer " * 1000))])
        request = request_with(record)
        started = time.perf_counter()
        assert REDACTOR.needed(request.SerializeToString())
        REDACTOR.redact_request(request, {})
        assert time.perf_counter() - started < 2.0


class TestPrefilter:
    @pytest.mark.parametrize(
        ("name", "regex", "secret"),
        [
            # \b and ^ next to the protobuf length byte: a regex over the bytes missed these
            ("stripe", r"\bsk_live_[0-9A-Za-z]{8,}", "sk_live_"),
            ("anchored", r"^token-[0-9a-f]{8,}$", "token-"),
            # a Unicode class: \s and \d mean more in text than in bytes
            ("spaced", r"key\s[0-9]{4,}", "key\u2003"),
        ],
    )
    @pytest.mark.parametrize("length", [20, 48, 57, 65, 90, 97, 122, 127, 200])
    def test_user_patterns_found_whatever_the_value_length(self, name: str, regex: str, secret: str, length: int) -> None:
        """The byte prefilter never hides a match, whatever byte encodes the string's length."""
        filler = "1" if name == "spaced" else "a"  # the string is ``length`` characters long
        value = secret + filler * (length - len(secret))
        redactor = Redactor((), parse_patterns(json.dumps({name: regex})))
        record = LogRecord(attributes=[KeyValue(key="note", value=text(value))])
        assert redactor.needed(request_with(record).SerializeToString())
        assert redactor.redact(record) == {name: 1}

    def test_pattern_without_literal_walks_every_request(self) -> None:
        """A pattern with no required literal (all under (?i)) is still applied: to every request."""
        redactor = Redactor((), (("basic", r"(?i)basic\s++(?P<secret>[A-Za-z0-9+/=]{8,}+)"),))
        assert redactor.needed(b"")
        record = LogRecord(body=text("Authorization: BASIC dXNlcjpwYXNzd29yZA=="))
        assert redactor.redact(record) == {"basic": 1}

    def test_nothing_configured_is_inactive(self) -> None:
        """none/none: inactive, nothing needed, records untouched."""
        redactor = Redactor(parse_attributes("none"), parse_patterns("none"))
        record = LogRecord(body=text(JWT))
        assert not redactor.active and not redactor.needed(record.SerializeToString())
        assert redactor.redact(record) == {} and record.body.string_value == JWT

    @pytest.mark.parametrize(
        ("regex", "literal"),
        [
            (r"eyJ[A-Za-z0-9_-]{5,}", "eyJ"),
            (r"(?:(?<![a-z])|(?<=%3D))appSession(?:\.[0-9]+)?=", "appSession"),  # lookarounds end a run
            (r"ab(?:cd)ef", "abcdef"),  # a plain group continues the run
            (r"(?:xy)+z", "xy"),  # a repetition that happens at least once contributes its own runs
            (r"a(?:bcdef)?g", "a"),  # an optional part does not
            (r"(?i:secret)-key", "-key"),  # a case-insensitive scope does not
            (r"(?i)secret", None),  # nor a case-insensitive pattern
            (r"abc|abd", "ab"),  # the parser factors out an alternation's common prefix
            (r"[a-z]+=\d+", "="),
            (r"\w+", None),
        ],
    )
    def test_required_literal(self, regex: str, literal: str | None) -> None:
        """The literal every match contains, found conservatively from the parse tree."""
        assert required_literal(regex) == literal

    def test_defaults_are_valid_and_have_literals(self) -> None:
        """Every default pattern passes the user-pattern checks and keeps the byte prefilter in use."""
        for name, regex in DEFAULT_PATTERNS:
            assert _pattern_problem(name, regex) == "", name
            assert required_literal(regex), name
        assert not Redactor()._always


class TestConfigurationErrors:
    @pytest.mark.parametrize(
        ("value", "words"),
        [
            # an enrichment key cannot be redacted
            ("default,triage.source", "triage.source"),
            # whitespace inside a key
            ("http.request.header.x token", "'http.request.header.x token'"),
            # both problems at once
            ("triage.rule,a b", "'a b'"),
        ],
    )
    def test_bad_attribute_lists(self, value: str, words: str) -> None:
        """A bad attribute list is refused naming the key and what would be valid."""
        with pytest.raises(ValueError, match="expected e.g. default") as error:
            parse_attributes(value)
        assert words in str(error.value)

    @pytest.mark.parametrize(
        ("value", "words"),
        [
            # cannot compile
            ('{"x": "("}', "invalid regular expression"),
            # matches nothing in particular: every position would be replaced
            ('{"x": "z*"}', "matches the empty string"),
            # matches the marker: each pass would redact its own output
            ('{"x": "[A-Z]+"}', "matches the marker"),
            # the metric label of the attribute rule, and a name that is no label
            ('{"attribute": "sk_[0-9]+"}', "a name is"),
            ('{"my key": "sk_[0-9]+"}', "a name is"),
            # not a string
            ('{"x": 3}', "expected a regular expression string or null"),
        ],
    )
    def test_bad_patterns_name_the_problem(self, value: str, words: str) -> None:
        """A broken pattern is refused with why, naming the entry."""
        with pytest.raises(ValueError, match="x|attribute|my key") as error:
            parse_patterns(value)
        assert words in str(error.value)

    def test_every_pattern_problem_reported_at_once(self) -> None:
        """Two broken entries: one message naming both."""
        with pytest.raises(ValueError) as error:
            parse_patterns('{"one": "(", "two": "q*"}')
        assert "one:" in str(error.value) and "two:" in str(error.value)

    def test_attribute_defaults(self) -> None:
        """default is exactly the documented list (proxy-authorization and the response Set-Cookie included)."""
        assert parse_attributes("default") == DEFAULT_ATTRIBUTES
        assert "http.request.header.proxy-authorization" in DEFAULT_ATTRIBUTES
        assert "http.response.header.set-cookie" in DEFAULT_ATTRIBUTES


_FRAGMENTS = st.sampled_from(
    ["eyJ", "eyJhbGciOi", ".", "..", "abc12", "appSession", ".0", "=", ";", " ", "\u00a0", "Bearer", "bearer",
     "%3D", '"', "\\", "abcdefgh12345678", "sk_live_", "é", "\n"]
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    lead=st.sampled_from(["", "sk_live_abcd", "eyJhbGciOi.x.", "appSession=", "Bearer "]),  # right after the length
    fragments=st.lists(_FRAGMENTS, max_size=20),
    pad=st.integers(0, 130),  # moves the length byte through digits and letters
    key=st.sampled_from(["note", "http.request.header.cookie", "x"]),
)
def test_property_prefilter_never_hides_a_secret(lead: str, fragments: list[str], pad: int, key: str) -> None:
    """Whenever needed() says no for a record's bytes, walking the record would have changed nothing."""
    redactor = Redactor(DEFAULT_ATTRIBUTES, (*DEFAULT_PATTERNS, ("stripe", r"\bsk_live_[0-9a-z]{4,}")))
    body = lead + "".join(fragments) + " " * pad
    record = LogRecord(body=text(body), attributes=[KeyValue(key=key, value=text(body))])
    if not redactor.needed(record.SerializeToString()):
        walked = LogRecord()
        walked.CopyFrom(record)
        redactor._record(walked, counts := {})
        assert counts == {} and walked == record


_ANY_TEXT = st.text(max_size=60).filter(lambda s: not any(w in s for w in ("eyJ", "appSession", "earer")))
_TOKEN_PART = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=5, max_size=30)
_NOT_TOKEN = "".join(set(string.printable) - set(string.ascii_letters + string.digits + "-_.%"))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    before=_ANY_TEXT,
    after=_ANY_TEXT,
    left=st.sampled_from(sorted(_NOT_TOKEN)),
    right=st.sampled_from(sorted(_NOT_TOKEN)),
    parts=st.tuples(_TOKEN_PART, _TOKEN_PART, _TOKEN_PART),
    where=st.sampled_from(["body", "attribute", "map body"]),
)
def test_property_jwt_gone_everything_else_kept(
    before: str, after: str, left: str, right: str, parts: tuple[str, str, str], where: str
) -> None:
    """Arbitrary text around a generated JWT, in a body, an attribute or a map: exactly the token is replaced."""
    token = "eyJ" + ".".join(parts)
    value = f"{before}{left}{token}{right}{after}"
    if where == "body":
        record = LogRecord(body=text(value))
    elif where == "attribute":
        record = LogRecord(attributes=[KeyValue(key="note", value=text(value))])
    else:
        record = LogRecord(body=kvlist(msg=text(value)))
    assert REDACTOR.redact(record) == {"jwt": 1}
    out = (
        record.body.string_value if where == "body"
        else record.attributes[0].value.string_value if where == "attribute"
        else record.body.kvlist_value.values[0].value.string_value
    )
    assert token not in out
    assert out == f"{before}{left}{MARKER}{right}{after}"


_SAFE_TEXT = st.text(alphabet=string.ascii_letters + string.digits + " :;,/", max_size=40)
_B64URL = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=5, max_size=30)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(before=_SAFE_TEXT, after=_SAFE_TEXT, parts=st.tuples(_B64URL, _B64URL, _B64URL))
def test_property_jwt_never_survives(before: str, after: str, parts: tuple[str, str, str]) -> None:
    """For any text around a JWT-shaped token, the token is gone and the text around it is kept."""
    token = "eyJ" + ".".join(parts)
    body = f"{before} {token} {after}"
    out, _ = redacted(LogRecord(body=text(body)))
    assert token not in out.body.string_value
    assert out.body.string_value.startswith(before) and out.body.string_value.endswith(after)


def test_sdk_records_arrive_redacted(processor, sink) -> None:
    """End to end with the OTel SDK as the client: the sink never sees the secrets, enrichment stays."""
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

    proc = processor(sink)
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=proc.http_url)))
    logger = logging.getLogger("redaction-e2e")
    logger.propagate = False
    logger.addHandler(LoggingHandler(logger_provider=provider))
    logger.warning(
        "request with session appSession=%s and %s",
        APPSESSION,
        JWT,
        extra={
            "http.request.header.cookie": [f"appSession={APPSESSION}"],
            "http.request.header.authorization": [f"Bearer {JWT}"],
            "user_agent.original": "Datadog/Synthetics",
        },
    )
    provider.shutdown()
    wait_for(lambda: sink.records(), 15, "the record at the sink")
    [record] = sink.records()
    wire = record.SerializeToString()
    assert JWT.encode() not in wire and APPSESSION.encode() not in wire
    got = attributes_of(record)
    assert got["triage.source"] == "synthetic"  # classified before redaction
    assert got["http.request.header.authorization"] == [MARKER]
    metrics = proc.metrics()
    assert metrics['triage_redactions_total{rule="attribute"}'] == 2
    assert metrics['triage_redactions_total{rule="jwt"}'] >= 1
