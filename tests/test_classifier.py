"""Table-driven classifier tests over tests/testdata/classify (real user agents and headers)."""

from __future__ import annotations

import ipaddress

import orjson
import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue

from processor.classify import Classifier, builtin_catalog
from processor.classify.classifier import MonitorCidrs

from .helpers import TESTDATA

TABLE = orjson.loads((TESTDATA / "classify" / "user_agents.json").read_bytes())
CATALOG = builtin_catalog()
CLASSIFIER = Classifier(
    CATALOG,
    health_paths=("/healthz", "/health"),
    monitor_cidrs=(
        MonitorCidrs("datadog-synthetics", "synthetic", (ipaddress.ip_network("192.0.2.0/24"),)),
        MonitorCidrs("acme-v6", "synthetic", (ipaddress.ip_network("2001:db8::/32"),)),
    ),
)


def string(value: str) -> AnyValue:
    return AnyValue(string_value=value)


@pytest.mark.parametrize("case", TABLE["cases"], ids=lambda c: c["user_agent"][:60])
def test_user_agent(case: dict) -> None:
    """Each real user agent maps to its expected source and signature (browsers to user/browser)."""
    verdict = CLASSIFIER.evidence("user_agent.original", string(case["user_agent"]))
    assert verdict is not None
    assert (verdict.source, verdict.name) == (case["source"], case["name"]), case.get("note")


@pytest.mark.parametrize("case", TABLE["headers_cases"], ids=lambda c: str(c["headers"])[:60])
def test_marker_headers(case: dict) -> None:
    """Monitor marker headers, recorded as http.request.header.* arrays, identify the monitor."""
    best = None
    for header, value in case["headers"].items():
        key = "http.request.header." + header
        if key not in CLASSIFIER.evidence_keys:
            continue
        verdict = CLASSIFIER.evidence(key, AnyValue(array_value=ArrayValue(values=[string(value)])))
        best = best or verdict
    assert (best.source if best else None, best.name if best else None) == (case["source"], case["name"])


def test_catalog_is_wide_and_sourced() -> None:
    """At least 40 monitors, probes and crawlers, each with a public source."""
    kinds = {s.source for s in CATALOG}
    assert len([s for s in CATALOG if s.source != "service"]) >= 40
    assert kinds == {"synthetic", "probe", "bot", "service"}
    assert all(s.reference.startswith(("https://", "http://")) for s in CATALOG)


def test_every_signature_is_exercised_by_the_table() -> None:
    """The table has a case for every user-agent signature, so no entry is untested."""
    named = {c["name"] for c in TABLE["cases"]}
    assert [s.name for s in CATALOG if s.user_agent and s.name not in named] == []


class TestWeakAndExtraSignals:
    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            ("/healthz", "probe"),
            ("/healthz?verbose=1", "probe"),  # query does not matter
            ("/health/", "probe"),  # trailing slash does not matter
            ("/health-insurance", None),  # a user's page that merely starts like a health path
            ("/api/healthz", None),
        ],
    )
    def test_health_paths_are_exact_and_only_likely(self, path: str, expected: str | None) -> None:
        """Health-check paths are weak evidence: probe at 'likely' confidence, exact paths only."""
        verdict = CLASSIFIER.evidence("http.target", string(path))
        assert (verdict.source if verdict else None) == expected
        if verdict:
            assert verdict.confidence == "likely"

    @pytest.mark.parametrize(
        ("address", "expected"),
        [("192.0.2.77", "datadog-synthetics"), ("198.51.100.1", None), ("2001:db8::1", "acme-v6"), ("nope", None)],
    )
    def test_monitor_address_ranges(self, address: str, expected: str | None) -> None:
        """client.address inside a monitor's configured ranges is certain evidence of that monitor."""
        verdict = CLASSIFIER.evidence("client.address", string(address))
        assert (verdict.name if verdict else None) == expected
        if verdict:
            assert verdict.confidence == "certain"

    def test_tracestate(self) -> None:
        """Datadog puts o:synthetics in the tracestate of synthetic tests' traces."""
        assert CLASSIFIER.tracestate("dd=s:1;o:synthetics;t.dm:-5").name == "datadog-synthetics"
        assert CLASSIFIER.tracestate("dd=s:1;o:rum") is None

    def test_within_a_record_the_strongest_kind_wins(self) -> None:
        """A marker header beats a browser user agent; a browser beats a health path."""
        from opentelemetry.proto.common.v1.common_pb2 import KeyValue

        def kv(key: str, value: str) -> KeyValue:
            return KeyValue(key=key, value=string(value))

        chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
        marked = CLASSIFIER.attributes([kv("user_agent.original", chrome), kv("http.request.header.x-datadog-origin", "synthetics")])
        user_on_health = CLASSIFIER.attributes([kv("url.path", "/healthz"), kv("user_agent.original", chrome)])
        assert marked.source == "synthetic"
        assert user_on_health.source == "user"
