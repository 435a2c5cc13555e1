"""`make bench` still runs: a quick pass of tests/bench/run.py checked for correctness, never for speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).parent / "bench" / "run.py"
TIMEOUT_S = 600  # a quick run takes well under a minute on 2 cores; this only bounds a hang


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="the bench reads CPU time from /proc (Linux)"
)
class TestBenchQuick:
    @pytest.fixture(scope="class")
    def bench(self, tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
        out = tmp_path_factory.mktemp("bench") / "results.json"
        done = subprocess.run(
            [sys.executable, str(RUN), "--quick", "--rounds", "2", "--json", str(out)],
            check=False,  # the exit code is asserted with the output shown
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        return done, json.loads(out.read_text()) if out.exists() else {}

    def test_exits_zero(self, bench):
        """Every scenario ran and passed its checks: records delivered, enriched, downgraded as expected."""
        done, _ = bench
        assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    def test_every_kind_of_scenario_is_in_the_table(self, bench):
        """Relay floor, naive SDK, otlp-triage over gRPC and HTTP, and the flood all ran and are printed."""
        done, document = bench
        results = document["results"]
        kinds = {(r["server"], r["protocol"], r["variant"]) for r in results}
        assert {
            ("relay", "grpc", "normal"),
            ("naive SDK", "grpc", "normal"),
            ("otlp-triage", "grpc", "normal"),
            ("otlp-triage", "http/protobuf", "normal"),
            ("otlp-triage", "grpc", "flood"),
        } <= kinds
        table_rows = [line.split(" | ")[0].strip() for line in done.stdout.splitlines() if " | " in line]
        assert sorted(table_rows[1:]) == sorted(r["scenario"] for r in results)

    def test_ratios_within_each_round_are_printed(self, bench):
        """The flood to the normal mix and otlp-triage to the relay, per round, from the rounds' own figures."""
        done, document = bench
        rounds = {r["scenario"]: r["cpu_s_per_million_rounds"] for r in document["results"]}
        flood = document["paired"]["flood ÷ normal mix"]
        expected = [f / n for f, n in zip(rounds["otlp-triage grpc flood"], rounds["otlp-triage grpc"])]
        assert len(flood) == 2 and flood == pytest.approx(expected, rel=0.01)
        assert "otlp-triage gRPC ÷ relay" in document["paired"]
        assert any(line.strip().startswith("flood ÷ normal mix: ") for line in done.stdout.splitlines())

    def test_otlp_triage_delivers_every_record(self, bench):
        """No record sent to otlp-triage is lost on the way to the sink."""
        _, document = bench
        triage = [r for r in document["results"] if r["server"] == "otlp-triage"]
        assert triage
        for r in triage:
            assert r["sent"] >= 20_000, r
            assert r["delivered"] == r["sent"], r
            assert r["problems"] == [], r

    def test_every_scenario_but_the_naive_one_runs_each_round(self, bench):
        """The table's CPU figure is the median of the rounds; the naive pipeline runs once."""
        _, document = bench
        for r in document["results"]:
            rounds = r["cpu_s_per_million_rounds"]
            assert len(rounds) == (1 if r["server"] == "naive SDK" else 2), r
            assert r["cpu_s_per_million"] in rounds, r

    def test_held_records_are_timed_apart(self, bench):
        """The flood's Auth0 errors are held (no record ever teaches their trace) and reach the sink
        no earlier than the correlation window; the normal mix, whose traces are never split across
        requests, holds none."""
        _, document = bench
        latency = {r["scenario"]: r["latency"] for r in document["results"]}
        flood, normal = latency["otlp-triage grpc flood"], latency["otlp-triage grpc"]
        assert flood["held_samples"] > 0, flood
        assert flood["held_p50_s"] >= 2.0, flood  # TRIAGE_CORRELATION_WINDOW's default
        assert flood["held_p99_s"] >= flood["held_p50_s"], flood
        assert normal["held_samples"] == 0 and normal["held_p50_s"] is None, normal


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="the bench reads CPU time from /proc (Linux)"
)
def test_large_requests_go_through(tmp_path) -> None:
    """`--records-per-request`: requests of 5,000 records (~1.8 MB, processed in a worker thread by
    otlp-triage) through the relay and otlp-triage, every record delivered, enriched and downgraded
    as the workload expects."""
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--records-per-request", "5000", "--rounds", "1",
         "--only", "relay", "otlp-triage grpc", "--json", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    document = json.loads(out.read_text())
    for workload in document["workloads"].values():
        assert workload["records_per_request"] == 5000 and workload["records"] == 5000 * workload["requests"]
    results = document["results"]
    assert {"relay grpc", "otlp-triage grpc", "otlp-triage grpc flood"} <= {r["scenario"] for r in results}
    for r in results:
        assert r["sent"] >= 20_000 and r["delivered"] == r["sent"] and r["problems"] == [], r
    assert "of 5000," in done.stdout  # the workload line says the request size
