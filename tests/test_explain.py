"""`otlp-triage explain` as a user runs it: golden outputs for a corpus file, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .helpers import TESTDATA

EXPLAIN = TESTDATA / "explain"


def explain(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIAGE_", "OTEL_"))}
    return subprocess.run(
        [sys.executable, "-m", "processor", "explain", *args], input=stdin, capture_output=True, env=env, timeout=60
    )


@pytest.mark.parametrize(("args", "expected"), [((), "records.txt"), (("--summary",), "summary.txt")])
def test_golden_output(args: tuple[str, ...], expected: str) -> None:
    """Per-record and summary output for a file of one request per line match the reviewed output."""
    result = explain(*args, str(EXPLAIN / "input.jsonl"))
    assert result.returncode == 0, result.stderr.decode()
    path = EXPLAIN / expected
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_bytes(result.stdout)
    assert result.stdout.decode() == path.read_text()


def test_summary_names_the_monitor_path_and_rule() -> None:
    """The summary tells which monitor to point elsewhere: monitor → path → rule: count."""
    out = explain("--summary", str(EXPLAIN / "input.jsonl")).stdout.decode()
    assert "uptimerobot → /dashboard → auth0-missing-session: 2 records" in out


def test_single_pretty_printed_request_from_stdin() -> None:
    """A whole (multi-line) request on stdin works too; evidence later in the file still counts."""
    request = (TESTDATA / "golden" / "input" / "auth0_v4_json_text_kube_probe.json").read_bytes()
    result = explain("-", stdin=request)
    assert result.returncode == 0
    assert "DOWNGRADE by auth0-missing-session" in result.stdout.decode()
    assert "probe/kube-probe (certain)" in result.stdout.decode()


@pytest.mark.parametrize("content", [b"{not json", b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"zz"}]}]}]}'])
def test_bad_file_is_refused_with_a_message(content: bytes) -> None:
    """Malformed input: exit 2 and a message saying what is wrong, no traceback."""
    result = explain("-", stdin=content)
    assert result.returncode == 2
    assert result.stderr.startswith(b"otlp-triage explain:") and b"Traceback" not in result.stderr
