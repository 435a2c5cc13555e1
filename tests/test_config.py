"""The config is read once from the environment and refuses bad values with every problem named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from processor.config import VARIABLES, Config, ConfigError

README = Path(__file__).parent.parent / "README.md"


class TestDefaults:
    def test_empty_environment_is_the_embedded_default(self) -> None:
        """No variables at all: standard ports, stdout exporter, enforce mode."""
        config = Config.from_env({})
        assert (config.grpc_endpoint, config.http_endpoint, config.admin_endpoint) == (
            "0.0.0.0:4317",
            "0.0.0.0:4318",
            "0.0.0.0:8888",
        )
        assert config.exporter.protocol == "stdout"
        assert config.downgrade_sources == {"synthetic", "probe"}
        assert config.mode == "enforce"


class TestExporter:
    def test_base_endpoint_gets_signal_path_for_http(self) -> None:
        """OTEL_EXPORTER_OTLP_ENDPOINT is a base URL: /v1/logs is appended (OTel convention)."""
        config = Config.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://backend:4318/"})
        assert (config.exporter.protocol, config.exporter.endpoint) == ("http/protobuf", "http://backend:4318/v1/logs")

    def test_logs_endpoint_is_used_as_is(self) -> None:
        """The signal-specific variable wins and is not modified."""
        config = Config.from_env(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://b/custom"}
        )
        assert config.exporter.endpoint == "https://b/custom"

    def test_grpc_endpoint_scheme_decides_tls(self) -> None:
        """grpc: http:// means plaintext, https:// means TLS, as in the OTel SDK."""
        plain = Config.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://b:4317"})
        tls = Config.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://b:4317"})
        assert (plain.exporter.endpoint, plain.exporter.insecure) == ("b:4317", True)
        assert (tls.exporter.endpoint, tls.exporter.insecure) == ("b:4317", False)

    def test_headers_timeout_compression(self) -> None:
        """Headers are parsed like the SDK does; timeout is milliseconds."""
        config = Config.from_env(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://b:4318",
                "OTEL_EXPORTER_OTLP_HEADERS": "api-key=secret,x-tenant=a%20b",
                "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION": "gzip",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
            }
        )
        assert dict(config.exporter.headers) == {"api-key": "secret", "x-tenant": "a b"}
        assert config.exporter.compression == "gzip"
        assert config.exporter.timeout_s == 2.5


class TestRefusals:
    @pytest.mark.parametrize(
        ("name", "value", "says"),
        [
            ("TRIAGE_GRPC_ENDPOINT", "nonsense", "host:port"),
            ("TRIAGE_ADMIN_ENDPOINT", "", "host:port"),  # the admin endpoint cannot be switched off
            ("TRIAGE_DOWNGRADE_SOURCES", "synthetic,user", "forbidden"),  # users are never downgraded
            ("TRIAGE_MODE", "yolo", "enforce, shadow"),
            ("TRIAGE_MEMORY_LIMIT_MIB", "-1", "greater than 0"),
            ("TRIAGE_SHUTDOWN_TIMEOUT", "soon", "seconds"),
            ("TRIAGE_RULES_FILE", "/no/such/file.json", "no readable file"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "grpc or http/protobuf"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "gzip or none"),
        ],
    )
    def test_bad_value_names_variable_and_fix(self, name: str, value: str, says: str) -> None:
        """Each bad value is refused with the variable's name and what would be valid."""
        env = {name: value}
        if name.startswith("OTEL_"):
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://backend:4318"
        with pytest.raises(ConfigError) as caught:
            Config.from_env(env)
        assert len(caught.value.problems) == 1
        assert name in caught.value.problems[0] and says in caught.value.problems[0]

    def test_all_problems_reported_at_once(self) -> None:
        """A user fixes every problem in one go."""
        with pytest.raises(ConfigError) as caught:
            Config.from_env({"TRIAGE_GRPC_ENDPOINT": "x", "TRIAGE_MODE": "y", "TRIAGE_EXPORT_CONCURRENCY": "0"})
        text = str(caught.value)
        assert all(n in text for n in ("TRIAGE_GRPC_ENDPOINT", "TRIAGE_MODE", "TRIAGE_EXPORT_CONCURRENCY"))

    def test_config_is_immutable(self) -> None:
        """One object, read once: nothing mutates it afterwards."""
        config = Config.from_env({})
        with pytest.raises(AttributeError):
            config.mode = "shadow"  # type: ignore[misc]


def test_readme_documents_every_variable() -> None:
    """The README's variable table lists exactly the variables the config reads, with their defaults."""
    table = {
        m.group(1): m.group(2).strip().strip("`")
        for m in re.finditer(r"^\| `([A-Z_]+)` \| ([^|]*) \|", README.read_text(), re.MULTILINE)
    }
    assert set(table) == {v.name for v in VARIABLES}
    for variable in VARIABLES:
        assert table[variable.name] == (variable.default or "(unset)"), variable.name
