"""The pipeline alone, in this process: what a change costs per request, without gRPC or drift.

The machine's speed drifts by tens of percent within minutes, so ``make bench`` compares scenarios
within rounds; a change to the pipeline is measured here instead, on the bench's workload (the
requests 4 ms apart, held records released as their window ends, as the server does):

- ``--time``: CPU microseconds per request (``time.process_time``), best of ``--repeat`` passes.
  Run two builds alternately: the spread between passes is the noise.
- ``--callgrind``: per request, instructions, L1 misses and last-level misses (simulated: a 2 MiB
  cache, this machine's L2 per core), and an estimate of cycles (Ir + 10 L1 + 100 LL misses). Two
  runs under valgrind (the warm-up alone, then with ``--requests`` more), differenced: start-up
  and warm-up cancel out. Deterministic to ±1 % (the tables' seeds are random). Needs valgrind.

    .venv/bin/python tests/bench/inprocess.py --mix flood --callgrind
    .venv/bin/python tests/bench/inprocess.py --mix normal --time

The workload is generated once and kept in ``--cache`` (a pickle of the serialized requests).
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

import workload  # noqa: E402

RECORDS = 800_000  # 1,600 requests: the warm-up and the measured ones, with no request sent twice
WARMUP = 1_100  # the flood's held records reach their steady state (2 s window, 4 ms apart) well before
SPACING_S = 0.004
LAST_LEVEL = "2097152,16,64"  # size, ways, line: the L2 of one core here; the L3 beyond it is shared


def payloads(mix: str, cache_dir: Path) -> list[bytes]:
    path = cache_dir / f"otlp-triage-inprocess-{mix}-{RECORDS}-{workload.DEFAULT_SEED}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    made = workload.generate(RECORDS, variant=mix).payloads
    path.write_bytes(pickle.dumps(made))
    return made


def run(load: list[bytes], warmup: int, requests: int) -> float:
    """The pipeline as the service builds it from the (default) environment; CPU seconds of the
    ``requests`` after ``warmup``."""
    from processor.config import Config
    from processor.intake import Limits
    from processor.redact import Redactor
    from processor.service import build_pipeline

    config = Config.from_env(dict(os.environ))
    pipeline = build_pipeline(config, Redactor(config.redact_attributes, config.redact_patterns))
    limits = Limits(config.max_records_per_request, config.max_attributes_per_record, config.max_record_bytes)
    now = 1000.0
    started = 0.0
    for i in range(warmup + requests):
        if i == warmup:
            started = time.process_time()
        pipeline.process_wire(load[i % len(load)], now, limits)
        pipeline.release_ready(now)
        now += SPACING_S
    return time.process_time() - started


def callgrind(mix: str, warmup: int, requests: int, cache_dir: Path) -> dict[str, float]:
    totals = []
    with tempfile.TemporaryDirectory() as out:
        for n in (0, requests):
            path = Path(out) / f"callgrind.{n}"
            subprocess.run(
                ["valgrind", "--tool=callgrind", "--cache-sim=yes", f"--LL={LAST_LEVEL}", f"--callgrind-out-file={path}",
                 sys.executable, __file__, "--mix", mix, "--warmup", str(warmup), "--requests", str(n),
                 "--cache", str(cache_dir), "--quiet"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONHASHSEED": "0"},
            )
            lines = path.read_text().splitlines()
            events = next(line for line in lines if line.startswith("events:")).split()[1:]
            summary = next(line for line in lines if line.startswith(("summary:", "totals:"))).split()[1:]
            totals.append(dict(zip(events, map(int, summary))))
    per = {event: (totals[1][event] - totals[0][event]) / requests for event in totals[0]}
    l1 = per["I1mr"] + per["D1mr"] + per["D1mw"]
    ll = per["ILmr"] + per["DLmr"] + per["DLmw"]
    return {"instructions": per["Ir"], "l1_misses": l1, "ll_misses": ll, "cycles_estimate": per["Ir"] + 10 * l1 + 100 * ll}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mix", choices=workload.VARIANTS, default=workload.NORMAL)
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="--time: passes (a fresh pipeline each)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--time", action="store_true")
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)  # the run valgrind watches
    args = parser.parse_args()
    load = payloads(args.mix, args.cache)
    if args.warmup + args.requests > len(load):
        parser.error(f"--warmup + --requests: at most {len(load)} (the workload's requests)")
    if args.callgrind:
        per = callgrind(args.mix, args.warmup, args.requests, args.cache)
        print(
            f"{args.mix}: per request of {workload.RECORDS_PER_REQUEST} records: {per['instructions'] / 1e6:.3f} M instructions, "
            f"{per['l1_misses'] / 1e3:.1f} K L1 misses, {per['ll_misses'] / 1e3:.2f} K LL misses, "
            f"~{per['cycles_estimate'] / 1e6:.3f} M cycles (Ir + 10 L1 + 100 LL)"
        )
    elif args.time:
        passes = sorted(run(load, args.warmup, args.requests) / args.requests * 1e6 for _ in range(args.repeat))
        print(f"{args.mix}: {passes[0]:.0f} µs CPU per request (best of {args.repeat}; all: {', '.join(f'{p:.0f}' for p in passes)})")
    else:
        run(load, args.warmup, args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
