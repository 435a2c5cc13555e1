"""Downgrade rules: where the built-in Auth0 rule recognises the error, and rules files."""

from __future__ import annotations

import json
import re
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from processor.downgrade import RulesError, builtin_rules, load_rule_set
from processor.downgrade.rules import RuleSet, found_word

from .fuzz import strategies as gen

AUTH0 = RuleSet(builtin_rules())


def text(body: str, severity: int = 17, **attributes: str) -> LogRecord:
    return LogRecord(
        severity_number=severity,
        body=AnyValue(string_value=body),
        attributes=[KeyValue(key=k.replace("_", "."), value=AnyValue(string_value=v)) for k, v in attributes.items()],
    )


def kvlist(**values) -> AnyValue:
    return AnyValue(
        kvlist_value=KeyValueList(
            values=[
                KeyValue(key=k, value=v if isinstance(v, AnyValue) else AnyValue(string_value=v))
                for k, v in values.items()
            ]
        )
    )


MATCHING = [
    # v3, console.error(msg, err): Node's util.inspect of the error
    text("Middleware error refreshing access token or session: AccessTokenError: The user does not have a valid "
         "session.\n    at getAccessToken (/app/x.js:1:1) {\n  code: 'ERR_MISSING_SESSION'\n}"),
    # the shape the issue quotes
    text('Middleware error refreshing access token or session: { code: "ERR_MISSING_SESSION", name: '
         '"AccessTokenError", message: "The user does not have a valid session." }'),
    # pino JSON text, v3 and v4 codes
    text('{"level":50,"err":{"type":"AccessTokenError","code":"ERR_MISSING_SESSION"},"msg":"refresh failed"}'),
    text('{"level":50,"err":{"type":"AccessTokenError","code":"missing_session"},"msg":"refresh failed"}'),
    # map body with a nested error object
    LogRecord(severity_number=17, body=kvlist(msg="x", error=kvlist(name="AccessTokenError", code="missing_session"))),
    # attributes only
    text("getAccessToken failed", exception_type="AccessTokenError", code="ERR_MISSING_SESSION"),
    text("failed", exception_message="AccessTokenError: The user does not have a valid session. (ERR_MISSING_SESSION)"),
    # WARN is enough
    text("AccessTokenError ERR_MISSING_SESSION", severity=13),
]

NOT_MATCHING = [
    text("AccessTokenError ERR_MISSING_SESSION", severity=9),  # INFO: not noise worth touching
    text("AccessTokenError: ERR_EXPIRED_ACCESS_TOKEN"),  # another Auth0 code: a real problem
    text("ERR_MISSING_SESSION without the error type"),
    text("NotAccessTokenError ERR_MISSING_SESSION"),  # whole words only
    text("AccessTokenError ERR_MISSING_SESSIONS"),
    text('{"err":{"type":"TypeError","code":"ERR_MISSING_SESSION"}}'),  # JSON: the type must match the key
    LogRecord(severity_number=17, body=AnyValue(int_value=1)),
]


@pytest.mark.parametrize("record", MATCHING)
def test_auth0_rule_recognises(record: LogRecord) -> None:
    """Each real-world shape of the Auth0 error matches the built-in rule."""
    rule = AUTH0.match(record, record.severity_number)
    assert rule is not None and rule.name == "auth0-missing-session"


@pytest.mark.parametrize("record", NOT_MATCHING)
def test_auth0_rule_ignores(record: LogRecord) -> None:
    """Near misses and low severities do not match."""
    assert AUTH0.match(record, record.severity_number) is None


EXTRA_RULES = Path(__file__).parent / "fuzz" / "extra_rules.json"


@settings(max_examples=400, deadline=None)
@given(gen.log_records())
def test_a_record_no_rule_can_match_is_told_from_its_bytes(record: LogRecord) -> None:
    """may_match (needles in the serialized record) is False only for records no rule matches:
    the built-in rule and the fuzz rules, on every body and attribute shape the fuzzers make."""
    payload = record.SerializeToString()
    for rules in (AUTH0, load_rule_set(str(EXTRA_RULES))):
        if not rules.may_match(b"xx" + payload + b"xx", 2, 2 + len(payload)):
            assert rules.match(record, 17) is None


@settings(max_examples=100, deadline=None)
@given(st.lists(gen.log_records(), max_size=6), st.data())
def test_may_match_among_is_may_match_of_each(records: list[LogRecord], data) -> None:
    """One C pass over a request's candidates: those in which, for some rule, one needle of each of
    its groups occurs, or a backslash (a plain search, here), in the order given."""
    payload, spans = b"", array("I")
    for record in records:
        serialized = record.SerializeToString()
        spans.extend((len(payload) + 1, len(payload) + 1 + len(serialized)))
        payload += b"x" + serialized
    asked = data.draw(st.lists(st.sampled_from(range(len(records))), unique=True)) if records else []
    for rules in (AUTH0, load_rule_set(str(EXTRA_RULES))):
        texts = {i: payload[spans[2 * i] : spans[2 * i + 1]] for i in asked}
        expected = [
            i
            for i in asked
            if b"\\" in texts[i]
            or any(all(any(n in texts[i] for n in group) for group in groups) for groups in rules._needles)
        ]
        assert rules.may_match_among(payload, spans, asked) == expected


@settings(max_examples=400, deadline=None)
@given(gen.log_records())
def test_a_record_read_without_decoding_it_matches_as_decoded(record: LogRecord) -> None:
    """record_text reads a record only when its body is one string and no attribute has a key a
    rule reads; match_text on what it read then answers as match on the decoded record."""
    payload = record.SerializeToString()
    for rules in (AUTH0, load_rule_set(str(EXTRA_RULES))):
        read = rules.record_text(payload)
        if read is None:
            continue
        assert read == (record.severity_number, record.severity_text, record.body.string_value)
        assert record.body.WhichOneof("value") == "string_value"
        for severity in (13, 17):
            assert rules.match_text(read[2], severity) == rules.match(record, severity)


def _field(number: int, content: bytes) -> bytes:
    return bytes(((number << 3) | 2, len(content))) + content


@pytest.mark.parametrize(
    "extra, why",
    [
        (b"", "a plain record is read"),
        (_field(5, _field(1, b"again")), "a body given twice is merged by protobuf"),
        (_field(6, _field(1, b"error.code") + _field(2, _field(1, b"E1"))), "an attribute a rule reads"),
        (_field(6, _field(1, b"note") + _field(1, b"code") + _field(2, _field(1, b"E1"))), "a key given twice"),
        (bytes((2 << 3 | 2, 1, 9)), "severity_number of another wire type"),
        (bytes((9 << 3, 1)), "trace_id of another wire type"),
    ],
)
def test_record_text_leaves_what_it_does_not_model_to_the_decoder(extra: bytes, why: str) -> None:
    record = text("AccessTokenError ERR_MISSING_SESSION", attributes_of_no_interest="x")
    payload = record.SerializeToString() + extra
    read = AUTH0.record_text(payload)
    assert (read is not None) is (extra == b""), why
    if read is not None:
        assert AUTH0.match_text(read[2], 17) == AUTH0.match(LogRecord.FromString(payload), 17) is not None


def test_may_match_among_refuses_what_is_not_a_record() -> None:
    with pytest.raises(ValueError):
        AUTH0.may_match_among(b"abc", array("I", (0, 9)), [0])
    with pytest.raises(ValueError):
        AUTH0.may_match_among(b"abc", array("I", (0, 3)), [1])


@pytest.mark.parametrize(
    "record, may",
    [
        (text("AccessTokenError ERR_MISSING_SESSION"), True),
        (text("TypeError: Cannot read properties of undefined"), False),
        (text("AccessTokenError without a code"), False),  # both conditions must be able to hold
        # JSON text may spell a value with escapes: looked at whenever the record has a backslash
        (text('{"err":{"type":"Access\\u0054okenError","code":"ERR_MISSING_SESSION"}}'), True),
    ],
)
def test_may_match(record: LogRecord, may: bool) -> None:
    payload = record.SerializeToString()
    assert AUTH0.may_match(payload, 0, len(payload)) is may
    assert (AUTH0.match(record, 17) is not None) is may


def test_numeric_codes_give_no_needle(tmp_path: Path) -> None:
    """An int attribute is read as its digits, which its bytes do not hold: a numeric code cannot prefilter."""
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": [{"name": "teapot", "code": ["418"]}]}))
    rules = load_rule_set(str(path))
    record = LogRecord(severity_number=17, attributes=[KeyValue(key="code", value=AnyValue(int_value=418))])
    payload = record.SerializeToString()
    assert rules.match(record, 17) is not None and rules.may_match(payload, 0, len(payload))


WORDS = ("AccessTokenError", "ERR_MISSING_SESSION", "x.y", "Ab")
# Text built around the words, with what decides a boundary: word characters (ASCII, other scripts'
# letters and digits, underscore), dots, and other punctuation.
_PIECES = st.sampled_from((*WORDS, "Access", "Error", "a", "Z", "7", "_", ".", " ", ":", "'", "\n", "é", "٣", "²", "-", "ß"))


@settings(max_examples=400, deadline=None)
@given(texts=st.lists(st.lists(_PIECES, max_size=12).map("".join), max_size=3), words=st.sets(st.sampled_from(WORDS), min_size=1))
def test_whole_words_are_found_as_the_regex_finds_them(texts: list[str], words: set[str]) -> None:
    """``found_word`` (str.find) agrees with the pattern it replaced, on every kind of boundary."""
    pattern = re.compile(r"(?<![\w.])(?:" + "|".join(map(re.escape, sorted(words))) + r")(?![\w])")
    assert found_word(tuple(sorted(words)), texts) == any(pattern.search(t) for t in texts)


@pytest.mark.parametrize(
    "text, found",
    [
        ("AccessTokenError: no session", True),
        ("code: 'ERR_MISSING_SESSION'\n}", True),
        ("errors.AccessTokenError", False),  # a qualified name is another type
        ("NotAccessTokenError AccessTokenError2", False),
        ("NotAccessTokenError then AccessTokenError", True),  # the second occurrence counts
        ("ÄAccessTokenError", False),  # a letter of another script is a word character too
    ],
)
def test_whole_words(text: str, found: bool) -> None:
    assert found_word(("AccessTokenError", "ERR_MISSING_SESSION"), [text]) is found


class TestRulesFile:
    def write(self, tmp_path: Path, document: dict) -> str:
        path = tmp_path / "rules.json"
        path.write_text(json.dumps(document))
        return str(path)

    def test_user_rule_and_disabled_builtin(self, tmp_path: Path) -> None:
        """A file adds a rule (body regex + attribute) and switches the built-in off."""
        path = self.write(
            tmp_path,
            {
                "disable_builtin": ["auth0-missing-session"],
                "rules": [
                    {
                        "name": "nextauth-no-session",
                        "min_severity_number": 17,
                        "body": ["\\[next-auth\\]\\[error\\]\\[SESSION_ERROR\\]"],
                        "attributes": {"http.route": "^/api/"},
                    }
                ],
            },
        )
        rules = load_rule_set(path)
        assert [r.name for r in rules.rules] == ["nextauth-no-session"]
        hit = text("[next-auth][error][SESSION_ERROR] boom", http_route="/api/me")
        miss = text("[next-auth][error][SESSION_ERROR] boom", http_route="/page")
        assert rules.match(hit, 17).name == "nextauth-no-session"
        assert rules.match(miss, 17) is None
        assert rules.match(MATCHING[0], 17) is None  # the built-in is off

    @pytest.mark.parametrize(
        ("document", "says"),
        [
            ({"rules": [{"name": "x"}]}, "at least one condition"),
            ({"rules": [{"name": "x", "body": ["("]}]}, "invalid regular expression"),
            ({"rules": [{"name": "x", "code": ["A"], "colour": "red"}]}, "unknown key"),
            ({"rules": [{"name": "x", "code": ["A"], "min_severity_number": 99}]}, "1..24"),
            ({"disable_builtin": ["no-such-rule"]}, "names no built-in rule"),
            ({"rules": [{"name": "auth0-missing-session", "code": ["A"]}]}, "clash"),
            ({"rulez": []}, "expected an object with keys"),
        ],
    )
    def test_bad_files_are_refused_with_the_reason(self, tmp_path: Path, document: dict, says: str) -> None:
        """A broken rules file stops start-up with the file and the problem named."""
        path = self.write(tmp_path, document)
        with pytest.raises(RulesError, match=says) as caught:
            load_rule_set(path)
        assert path in str(caught.value)
