"""`make bench`: one reproducible load through otlp-triage, a bytes relay and the naive SDK pipeline.

How it works:
1. The workload (``workload.py``, fixed seed) is generated and serialized before anything is timed:
   500 records per request (``--records-per-request``), the normal mix, and the ``flood`` variant
   (every user agent and trace id unique).
2. Per scenario: a fresh sink (``sink.py``) and the server under test start as child processes on
   127.0.0.1; a few warm-up requests go through; then the bench (this process) sends every
   request with a few in flight and waits until the sink has them all (or, for a pipeline that
   drops, until nothing more arrives).
3. The server's CPU time (user + system, all threads, from /proc) is read before and after; wall
   time runs from the first send to the sink's receipt of the last record. So the figures are the
   server's own: the sender, the sink and this script run in other processes.
4. Checks per scenario: every record sent was delivered; for otlp-triage, every record arrives
   enriched and exactly the monitor-caused Auth0 errors arrive downgraded.
5. Latency: the same server then gets requests open loop at half the rate it just reached, each
   timed from leaving the sender to its marked record arriving at the sink (one monotonic clock).

Columns: records/s end to end; tail s: last acknowledgement to last record at the sink (records
queued, held for trace evidence, or waiting in the SDK's batch); CPU-seconds per million records
sent; CPU and rate relative to the relay (the floor: same gRPC stack, no decode/process/encode);
p50/p99 latency at half rate; peak RSS of the server process. Below the table, ratios of two
scenarios' CPU within each round (otlp-triage to the relay, the flood to the normal mix, ...): the
rounds interleave the scenarios, so these move less with the machine's drift than two medians do.

Usage: python tests/bench/run.py [--records N] [--records-per-request N] [--quick] [--only NAME ...]
                                 [--seed S] [--json FILE]
                                 [--profile DIR] [--soak SECONDS [--soak-scenario NAME]]
                                 (see README.md beside this file)
Exit status: 0 when every check passed (the naive pipeline's drops are reported, not checked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import client
import pyspy
import workload
from procs import HOST, PYTHON, Child, Usage, free_port, helper_argv, slug, wait_until

DEFAULT_RECORDS = 1_000_000
# This machine's speed drifts by tens of percent within minutes: every scenario runs this many times,
# interleaved, and the table reports the median round (and the spread). The naive pipeline runs once:
# it costs ~50x the others, which no drift changes.
DEFAULT_ROUNDS = 5
QUICK_RECORDS = 20_000
WARMUP_REQUESTS = 4
CONCURRENCY = 4  # requests in flight from the sender
SEND_TIMEOUT_S = 600.0
DRAIN_TIMEOUT_S = 120.0  # after the last acknowledgement, for the sink to receive everything
SETTLE_S = 3.0  # a pipeline that drops is done when nothing arrived for this long (SDK schedule: 1 s)
# Latency: after the throughput pass, requests are sent open loop at this share of the rate just
# measured, for about LATENCY_WINDOW_S, and timed from leaving the sender to arriving at the sink.
LATENCY_RATE_SHARE = 0.5
LATENCY_WINDOW_S = 5.0
QUICK_LATENCY_WINDOW_S = 1.0
LATENCY_MIN_REQUESTS = 10
LATENCY_CONCURRENCY = 32  # enough that the open-loop schedule never waits for an answer
SOAK_SAMPLE_S = 10.0  # --soak: how often the server's RSS is read

TRIAGE, RELAY, NAIVE = "otlp-triage", "relay", "naive SDK"


@dataclass(frozen=True)
class Scenario:
    name: str
    server: str  # TRIAGE | RELAY | NAIVE
    protocol: str  # client.GRPC | client.HTTP: into the server, and from it to the sink
    variant: str  # workload variant
    note: str
    env: tuple[tuple[str, str], ...] = ()  # extra processor settings


SCENARIOS = (
    Scenario("relay grpc", RELAY, client.GRPC, workload.NORMAL, "floor: forwards request bytes unparsed"),
    Scenario("otlp-triage grpc", TRIAGE, client.GRPC, workload.NORMAL, "normal mix"),
    # Right after the normal mix: their ratio is the one with the tightest target (< 5 %), and the
    # machine drifts less between two scenarios in a row than across the round.
    Scenario(
        "otlp-triage grpc flood", TRIAGE, client.GRPC, workload.FLOOD, "every user agent and trace id unique"
    ),
    Scenario("otlp-triage http/protobuf", TRIAGE, client.HTTP, workload.NORMAL, "normal mix"),
    Scenario(
        "otlp-triage grpc no-correlation",
        TRIAGE,
        client.GRPC,
        workload.NORMAL,
        "normal mix, cross-request correlation off (TRIAGE_CORRELATION_TTL=0): its cost is the difference",
        (("TRIAGE_CORRELATION_TTL", "0"),),
    ),
    Scenario(
        "naive SDK grpc",
        NAIVE,
        client.GRPC,
        workload.NORMAL,
        "SDK LogRecord + BatchLogRecordProcessor + OTLPLogExporter, defaults",
    ),
)
BASELINE = "relay grpc"


@dataclass
class Latency:
    """End to end (sender to sink) per request, at a fixed share of the scenario's own throughput."""

    target_rate: float  # records/s asked for
    achieved_rate: float  # records/s the open-loop schedule actually sent
    samples: int
    missing: int  # requests whose marked record never arrived (dropped)
    p50_s: float
    p99_s: float
    # Held records, apart: per request whose Auth0 errors were held for their trace's evidence (they
    # arrived after the rest of the request), sender to the last of them at the sink.
    held_samples: int = 0
    held_p50_s: float | None = None
    held_p99_s: float | None = None


def percentile(ordered: list[float], q: float) -> float:
    """Nearest rank."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Result:
    scenario: Scenario
    sent: int  # records sent and acknowledged
    delivered: int  # records the sink received
    wall_s: float
    tail_s: float  # from the last acknowledgement to the last record at the sink (queued, held, batched)
    cpu_s: float
    peak_rss_bytes: int
    retries: int
    problems: list[str]
    latency: Latency | None = None
    cpu_rounds: list[float] = field(default_factory=list)  # CPU-s/1M of every round, in order

    @property
    def rate(self) -> float:
        return self.delivered / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_per_million(self) -> float:
        return self.cpu_s / self.sent * 1e6 if self.sent else float("nan")

    def as_dict(self) -> dict:
        return {
            "scenario": self.scenario.name,
            "server": self.scenario.server,
            "protocol": self.scenario.protocol,
            "variant": self.scenario.variant,
            "sent": self.sent,
            "delivered": self.delivered,
            "wall_s": round(self.wall_s, 4),
            "tail_s": round(self.tail_s, 4),
            "cpu_s": round(self.cpu_s, 3),
            "records_per_s": round(self.rate, 1),
            "cpu_s_per_million": round(self.cpu_per_million, 3),
            "cpu_s_per_million_rounds": [round(c, 3) for c in self.cpu_rounds],
            "peak_rss_bytes": self.peak_rss_bytes,
            "retries": self.retries,
            "problems": self.problems,
            "latency": None
            if self.latency is None
            else {k: v if v is None else round(v, 6) for k, v in vars(self.latency).items()},
        }


# --- processes ----------------------------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """This environment without OTEL_* / TRIAGE_* settings that would change what is measured."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRIAGE_"))}


def start_sink(log_dir: Path) -> tuple[Child, dict[str, int]]:
    sink = Child("sink", helper_argv("sink.py"), clean_env(), log_dir)
    return sink, sink.read_announcement()


def start_server(scenario: Scenario, sink_ports: dict[str, int], log_dir: Path) -> tuple[Child, str]:
    """The server under test, ready for traffic; returns it and the host:port to send to."""
    name = scenario.name
    if scenario.server == RELAY:
        child = Child(name, helper_argv("relay.py", f"{HOST}:{sink_ports['grpc']}"), clean_env(), log_dir)
        return child, f"{HOST}:{child.read_announcement()['grpc']}"
    if scenario.server == NAIVE:
        child = Child(name, helper_argv("naive_sdk.py", f"{HOST}:{sink_ports['grpc']}"), clean_env(), log_dir)
        return child, f"{HOST}:{child.read_announcement()['grpc']}"

    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    env = clean_env() | {
        "TRIAGE_GRPC_ENDPOINT": f"{HOST}:{grpc_port}",
        "TRIAGE_HTTP_ENDPOINT": f"{HOST}:{http_port}",
        "TRIAGE_ADMIN_ENDPOINT": f"{HOST}:{admin_port}",
        "TRIAGE_LOG_LEVEL": "warning",
    } | dict(scenario.env)
    if scenario.protocol == client.GRPC:
        env |= {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{sink_ports['grpc']}",
        }
    else:
        env |= {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{sink_ports['http']}",
        }
    child = Child(name, [PYTHON, "-m", "processor", "serve"], env, log_dir)

    def ready() -> bool:
        child.check_alive()
        try:
            with urllib.request.urlopen(f"http://{HOST}:{admin_port}/readyz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until(ready, 30, what=f"{name} /readyz")
    return child, f"{HOST}:{grpc_port if scenario.protocol == client.GRPC else http_port}"


def sink_stats(sink_ports: dict[str, int]) -> dict:
    with urllib.request.urlopen(f"http://{HOST}:{sink_ports['http']}/stats", timeout=5) as response:
        return json.load(response)


def wait_delivered(
    sink_ports: dict[str, int], base: dict, expected: int, server: Child, settle_s: float | None
) -> dict:
    """Sink stats once ``expected`` more records arrived, or nothing arrived for ``settle_s`` (if given)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    last_records, last_change = -1, time.monotonic()
    while True:
        stats = sink_stats(sink_ports)
        records = stats["records"] - base["records"]
        now = time.monotonic()
        if records >= expected:
            return stats
        if records != last_records:
            last_records, last_change = records, now
        elif (settle_s is not None and now - last_change > settle_s) or now > deadline or not server.alive():
            return stats
        time.sleep(0.02)


# --- one scenario -------------------------------------------------------------------------------------------


def run_scenario(
    scenario: Scenario,
    load: workload.Workload,
    log_dir: Path,
    profile_dir: Path | None,
    latency_window_s: float,
) -> Result:
    sink, sink_ports = start_sink(log_dir)
    server = sampler = None
    try:
        server, endpoint = start_server(scenario, sink_ports, log_dir)
        warmup = load.payloads[:WARMUP_REQUESTS]
        asyncio.run(client.send(scenario.protocol, endpoint, warmup, CONCURRENCY, SEND_TIMEOUT_S))
        # Only the naive pipeline may drop: for the others, wait for every record (up to DRAIN_TIMEOUT_S).
        settle_s = SETTLE_S if scenario.server == NAIVE else None
        base = wait_delivered(
            sink_ports, {"records": 0}, len(warmup) * load.per_request, server, settle_s
        )

        sampler = (
            pyspy.Sampler(server.pid, profile_dir / f"{slug(scenario.name)}.txt") if profile_dir else None
        )
        before: Usage = server.usage()
        sent = asyncio.run(
            client.send(scenario.protocol, endpoint, load.payloads, CONCURRENCY, SEND_TIMEOUT_S)
        )
        records_sent = sent.acknowledged * load.per_request
        stats = wait_delivered(sink_ports, base, records_sent, server, settle_s)
        after: Usage = server.usage()
        if sampler is not None:
            sampler.stop()
            sampler = None

        delivered = stats["records"] - base["records"]
        problems = [f"{n}× {reason}" for reason, n in sent.failures.items()]
        if not server.alive():
            problems.append(f"server exited with {server.popen.returncode}")
        if scenario.server != NAIVE and delivered != load.records:
            problems.append(f"delivered {delivered} of {load.records} records")
        if scenario.server == TRIAGE:
            enriched = stats["enriched"] - base["enriched"]
            downgraded = stats["downgraded"] - base["downgraded"]
            if enriched != delivered:
                problems.append(f"{delivered - enriched} records arrived without triage.source")
            if downgraded != load.expected_downgrades:
                problems.append(f"downgraded {downgraded}, expected {load.expected_downgrades}")
        end = stats["last_at"] if delivered else time.monotonic()
        result = Result(
            scenario=scenario,
            sent=records_sent,
            delivered=delivered,
            wall_s=end - sent.started_at,
            tail_s=max(0.0, end - sent.finished_at),
            cpu_s=after.cpu_s - before.cpu_s,
            peak_rss_bytes=after.peak_rss_bytes,
            retries=sent.retries,
            problems=problems,
        )
        if latency_window_s > 0 and result.rate > 0:
            result.latency = measure_latency(
                scenario, endpoint, load, result.rate, sink_ports, server, settle_s, latency_window_s
            )
        return result
    finally:
        if sampler is not None:
            sampler.stop()
        if server is not None:
            server.stop()
        sink.stop()


def soak(scenario: Scenario, load: workload.Workload, rate: float, seconds: float, log_dir: Path) -> list[tuple[float, int]]:
    """Steady load at ``LATENCY_RATE_SHARE`` of ``rate`` for ``seconds`` on a fresh server: (elapsed s, RSS) samples."""
    sink, sink_ports = start_sink(log_dir)
    server = None
    samples: list[tuple[float, int]] = []
    try:
        server, endpoint = start_server(scenario, sink_ports, log_dir)
        per_s = rate * LATENCY_RATE_SHARE / load.per_request
        payloads = [load.payloads[i % load.requests] for i in range(int(per_s * seconds))]
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not stop.wait(SOAK_SAMPLE_S):
                samples.append((time.monotonic() - started, server.usage().rss_bytes))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        asyncio.run(client.send(scenario.protocol, endpoint, payloads, LATENCY_CONCURRENCY, SEND_TIMEOUT_S, interval_s=1 / per_s))
        stop.set()
        sampler.join()
        samples.append((time.monotonic() - started, server.usage().rss_bytes))
        return samples
    finally:
        if server is not None:
            server.stop()
        sink.stop()


def measure_latency(
    scenario: Scenario,
    endpoint: str,
    load: workload.Workload,
    max_rate: float,
    sink_ports: dict[str, int],
    server: Child,
    settle_s: float | None,
    window_s: float,
) -> Latency:
    per_s = max_rate * LATENCY_RATE_SHARE / load.per_request  # requests per second
    n = min(load.requests, max(LATENCY_MIN_REQUESTS, int(per_s * window_s)))
    base = sink_stats(sink_ports)
    payloads = load.payloads[:n]
    sent = asyncio.run(
        client.send(
            scenario.protocol, endpoint, payloads, LATENCY_CONCURRENCY, SEND_TIMEOUT_S, interval_s=1 / per_s
        )
    )
    wait_delivered(sink_ports, base, sent.acknowledged * load.per_request, server, settle_s)
    with urllib.request.urlopen(f"http://{HOST}:{sink_ports['http']}/arrivals", timeout=5) as response:
        arrivals = json.load(response)
    latencies, held = [], []
    for i, at in sent.sent_at.items():
        key = workload.request_id(i).decode()
        arrived = arrivals["requests"].get(key)
        if arrived is not None and arrived >= at:  # an older arrival is the throughput pass's
            latencies.append(arrived - at)
        # Only otlp-triage holds; the naive SDK's batches split requests too, which is not holding.
        released = arrivals["held"].get(key) if scenario.server == TRIAGE else None
        if released is not None and released >= at:
            held.append(released - at)
    latencies.sort()
    held.sort()
    span = max(sent.sent_at.values()) - min(sent.sent_at.values()) if len(sent.sent_at) > 1 else 0.0
    return Latency(
        target_rate=per_s * load.per_request,
        achieved_rate=(len(sent.sent_at) - 1) * load.per_request / span if span else 0.0,
        samples=len(latencies),
        missing=n - len(latencies),
        p50_s=percentile(latencies, 0.50) if latencies else float("nan"),
        p99_s=percentile(latencies, 0.99) if latencies else float("nan"),
        held_samples=len(held),
        held_p50_s=percentile(held, 0.50) if held else None,
        held_p99_s=percentile(held, 0.99) if held else None,
    )


# --- report -------------------------------------------------------------------------------------------------

COLUMNS = (
    ("scenario", "<"),
    ("records", ">"),
    ("wall s", ">"),
    ("tail s", ">"),
    ("records/s", ">"),
    ("CPU-s/1M", ">"),
    ("rounds min–max", ">"),
    ("CPU ×relay", ">"),
    ("rate ×relay", ">"),
    ("p50 ms", ">"),
    ("p99 ms", ">"),
    ("held p50/p99 s", ">"),
    ("peak RSS MiB", ">"),
    ("delivered/sent", ">"),
    ("checks", "<"),
)


def median_round(runs: list[Result]) -> Result:
    """The round with the median CPU cost, carrying every round's CPU figure, the first round's
    latency and every round's problems (one failed round fails the scenario)."""
    ordered = sorted(runs, key=lambda r: r.cpu_per_million)
    median = ordered[(len(ordered) - 1) // 2]
    return dataclasses.replace(
        median,
        latency=runs[0].latency,
        cpu_rounds=[r.cpu_per_million for r in runs],
        problems=[f"round {i}: {p}" for i, r in enumerate(runs, 1) for p in r.problems] if len(runs) > 1 else median.problems,
    )


# Same-round comparisons. The rounds interleave the scenarios, so one round's two figures were taken
# a minute or two apart, in the same phase of a machine whose speed drifts: their ratio moves less
# than the ratio of two medians taken from different rounds. (name, divided by name, what it says)
PAIRS = (
    ("otlp-triage grpc", BASELINE, "otlp-triage gRPC ÷ relay"),
    ("otlp-triage http/protobuf", BASELINE, "otlp-triage HTTP/protobuf ÷ relay"),
    ("otlp-triage grpc flood", "otlp-triage grpc", "flood ÷ normal mix"),
    ("otlp-triage grpc no-correlation", "otlp-triage grpc", "correlation off ÷ on"),
)


def paired(results: list[Result]) -> list[tuple[str, list[float]]]:
    """Per pair in PAIRS that ran the same rounds: (what it says, the CPU ratio of each round)."""
    rounds = {r.scenario.name: r.cpu_rounds for r in results}
    out = []
    for name, by, label in PAIRS:
        a, b = rounds.get(name, []), rounds.get(by, [])
        if len(a) > 1 and len(a) == len(b) and all(b):
            out.append((label, [x / y for x, y in zip(a, b)]))
    return out


def table(results: list[Result]) -> str:
    floor = next((r for r in results if r.scenario.name == BASELINE), None)
    rows = []
    for r in results:
        cpu_ratio = (
            f"{r.cpu_per_million / floor.cpu_per_million:.1f}" if floor and floor.cpu_per_million else "-"
        )
        rate_ratio = f"{r.rate / floor.rate:.2f}" if floor and floor.rate else "-"
        rows.append(
            (
                r.scenario.name,
                f"{r.sent:,}",
                f"{r.wall_s:.2f}",
                f"{r.tail_s:.2f}",
                f"{r.rate:,.0f}",
                f"{r.cpu_per_million:.2f}",
                f"{min(r.cpu_rounds):.2f}–{max(r.cpu_rounds):.2f}" if len(r.cpu_rounds) > 1 else "-",
                cpu_ratio,
                rate_ratio,
                f"{r.latency.p50_s * 1e3:.1f}" if r.latency else "-",
                f"{r.latency.p99_s * 1e3:.1f}" if r.latency else "-",
                f"{r.latency.held_p50_s:.2f}/{r.latency.held_p99_s:.2f}" if r.latency and r.latency.held_samples else "-",
                f"{r.peak_rss_bytes / 2**20:.0f}",
                f"{r.delivered:,}/{r.sent:,}"
                + (f" ({100 * r.delivered / r.sent:.1f}%)" if r.delivered != r.sent else ""),
                "; ".join(r.problems) or "ok",
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, (h, _) in enumerate(COLUMNS)]

    def line(cells) -> str:
        return " | ".join(f"{c:{align}{w}}" for c, (_, align), w in zip(cells, COLUMNS, widths)).rstrip()

    out = [line(h for h, _ in COLUMNS), "-+-".join("-" * w for w in widths)]
    out += [line(row) for row in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--records", type=int, default=None, help=f"records per scenario (default {DEFAULT_RECORDS:,})"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_RECORDS:,} records per scenario"
    )
    parser.add_argument(
        "--records-per-request",
        type=int,
        default=workload.RECORDS_PER_REQUEST,
        metavar="N",
        help=f"records in each request (default {workload.RECORDS_PER_REQUEST}; a Collector's default batch is"
        f" 8192; at least {workload.MIN_PER_REQUEST})",
    )
    parser.add_argument("--seed", type=int, default=workload.DEFAULT_SEED)
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"times each scenario runs, interleaved; the median is reported (default {DEFAULT_ROUNDS}, 1 with --quick)",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only scenarios whose name contains NAME"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample each server with py-spy while measured; raw stacks in DIR",
    )
    parser.add_argument(
        "--soak",
        type=float,
        metavar="SECONDS",
        help="then run --soak-scenario at half its rate for SECONDS on a fresh server and report its RSS over time",
    )
    parser.add_argument(
        "--soak-scenario",
        default="otlp-triage grpc",
        metavar="NAME",
        help='the scenario --soak runs (default: otlp-triage grpc; e.g. "otlp-triage grpc flood")',
    )
    args = parser.parse_args(argv)
    records = args.records or (QUICK_RECORDS if args.quick else DEFAULT_RECORDS)
    latency_window_s = QUICK_LATENCY_WINDOW_S if args.quick else LATENCY_WINDOW_S
    if args.profile:
        if pyspy.py_spy() is None:
            parser.error("--profile needs py-spy: .venv/bin/pip install py-spy")
        args.profile.mkdir(parents=True, exist_ok=True)
    scenarios = [s for s in SCENARIOS if not args.only or any(o in s.name for o in args.only)]
    if not scenarios:
        parser.error(f"--only matches no scenario; scenarios: {', '.join(s.name for s in SCENARIOS)}")
    if args.soak and not any(s.name == args.soak_scenario and s.server == TRIAGE for s in scenarios):
        parser.error(f"--soak-scenario {args.soak_scenario!r} is not an otlp-triage scenario this run measures")

    started = time.monotonic()
    loads: dict[str, workload.Workload] = {}
    for variant in dict.fromkeys(s.variant for s in scenarios):
        t = time.monotonic()
        try:
            load = loads[variant] = workload.generate(records, args.seed, variant, per_request=args.records_per_request)
        except ValueError as e:  # the request size: the workload says what it takes
            parser.error(f"--records-per-request: {e}")
        print(
            f"workload {variant}: {load.records:,} records in {load.requests:,} requests of "
            f"{load.per_request}, {load.bytes / load.records:.0f} B/record, seed {load.seed}, "
            f"digest {load.digest}, {load.expected_downgrades:,} downgrades expected "
            f"(generated in {time.monotonic() - t:.1f}s)",
            flush=True,
        )

    rounds = args.rounds or (1 if args.quick else DEFAULT_ROUNDS)
    by_scenario: dict[str, list[Result]] = {s.name: [] for s in scenarios}
    broken: list[str] = []
    with tempfile.TemporaryDirectory(prefix="otlp-triage-bench-") as tmp:
        log_dir = Path(tmp)
        for round_ in range(1, rounds + 1):
            for scenario in scenarios:
                if scenario.name in broken or (round_ > 1 and scenario.server == NAIVE):
                    continue
                try:
                    result = run_scenario(
                        scenario,
                        loads[scenario.variant],
                        log_dir,
                        args.profile if round_ == 1 else None,
                        latency_window_s if round_ == 1 else 0.0,  # latency once: it is not a CPU figure
                    )
                except (RuntimeError, TimeoutError, OSError) as error:
                    print(f"  {scenario.name}: FAILED: {error}", file=sys.stderr, flush=True)
                    broken.append(scenario.name)
                    continue
                by_scenario[scenario.name].append(result)
                print(
                    f"  round {round_}/{rounds} {scenario.name}: {result.rate:,.0f} records/s, "
                    f"{result.cpu_per_million:.2f} CPU-s/1M, {result.delivered:,}/{result.sent:,} delivered, "
                    f"{result.retries} retries",
                    flush=True,
                )
        results = [median_round(runs) for name, runs in by_scenario.items() if runs and name not in broken]
        soaked: list[tuple[float, int]] = []
        soaking = next((r for r in results if r.scenario.name == args.soak_scenario), None)
        if args.soak and soaking is not None:
            print(
                f"  soak: {soaking.scenario.name} at {LATENCY_RATE_SHARE:.0%} of {soaking.rate:,.0f} records/s "
                f"for {args.soak:.0f}s",
                flush=True,
            )
            soaked = soak(soaking.scenario, loads[soaking.scenario.variant], soaking.rate, args.soak, log_dir)

    print()
    print(table(results))
    comparisons = paired(results)
    if comparisons:
        print("\nCPU-s/1M ratios within each round:")
        for label, ratios in comparisons:
            print(f"  {label}: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")
    if soaked:
        print("\nsoak, RSS of the otlp-triage process (MiB) over time: " + ", ".join(f"{t:.0f}s {rss / 2**20:.0f}" for t, rss in soaked))
        half = [rss for t, rss in soaked if t >= soaked[-1][0] / 2]
        print(
            f"soak: peak {max(r for _, r in soaked) / 2**20:.0f} MiB; second half {min(half) / 2**20:.0f}–{max(half) / 2**20:.0f} MiB, "
            f"end {soaked[-1][1] / 2**20:.0f} MiB"
        )
    print()
    for s in scenarios:
        print(f"  {s.name}: {s.note}")
    if args.profile:
        for r in results:
            raw = args.profile / f"{slug(r.scenario.name)}.txt"
            print(f"\nprofile of {r.scenario.name} ({raw}):")
            print(pyspy.summarize(raw))
    print(
        f"\nrecords/s: end to end (first send to last record at the sink), {CONCURRENCY} requests in flight; "
        "tail s: last acknowledgement to last record at the sink;\n"
        f"CPU-s/1M: the server process's user+sys CPU "
        f"per million records sent; p50/p99: sender to sink per request, open loop at "
        f"{LATENCY_RATE_SHARE:.0%} of that scenario's records/s, held records excluded;\n"
        "held p50/p99 s: the same requests, sender to the arrival of their held records (Auth0 errors "
        "whose trace's evidence was not in their request: released when it comes or the window ends);\n"
        f"{os.cpu_count()} cores; "
        f"total {time.monotonic() - started:.0f}s"
    )
    if args.json:
        document = {
            "seed": args.seed,
            "records": records,
            "workloads": {
                v: {
                    "records": w.records,
                    "requests": w.requests,
                    "records_per_request": w.per_request,
                    "digest": w.digest,
                    "expected_downgrades": w.expected_downgrades,
                }
                for v, w in loads.items()
            },
            "cores": os.cpu_count(),
            "concurrency": CONCURRENCY,
            "results": [r.as_dict() for r in results],
            "paired": {label: ratios for label, ratios in paired(results)},
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    failed = [r.scenario.name for r in results if r.problems and r.scenario.server != NAIVE] + broken
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
