"""``make fuzz``: every atheris target for a bounded time, then a table of executions and crashes.

    python tests/fuzz/run.py --seconds 300 [--targets proto,json] [--json results.json]

``--seconds`` is split evenly across the targets, run one after the other, each in its own process
(libFuzzer ``-max_total_time``), seeded with a corpus built from the golden inputs in a temporary
directory. A crash (an exception, a broken invariant, a timeout of one input, running out of
memory) stops that process: its input is saved under ``tests/fuzz/crashes/`` and the target is
started again from its grown corpus for the rest of its time, up to ``MAX_CRASHES`` times.
Exit status 1 if any target crashed or never ran.

A crash file is not committed as is: reproduce it with ``python tests/fuzz/targets.py TARGET FILE``
and turn it into a regression test.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TARGETS_PY = HERE / "targets.py"
CRASH_DIR = HERE / "crashes"
MAX_CRASHES = 3  # per target: then its remaining time goes to the others' report, not to the same bug
INPUT_TIMEOUT_S = 10  # one input running longer is a hang (libFuzzer -timeout)
RSS_LIMIT_MB = 2048  # libFuzzer -rss_limit_mb: above it, an out-of-memory crash
STARTUP_S = 1  # taken off each process's -max_total_time so a target's wall time stays near its share
GRACE_S = 120  # start-up and shutdown allowance over -max_total_time before the process is killed

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fuzz import corpus  # noqa: E402

_EXECUTED = (
    re.compile(r"^stat::number_of_executed_units:\s*(\d+)", re.MULTILINE),
    re.compile(r"^Done (\d+) runs in", re.MULTILINE),
    re.compile(r"^#(\d+)\s+DONE", re.MULTILINE),
)
_PROGRESS = re.compile(r"^#(\d+)\s", re.MULTILINE)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass
class Crash:
    artifact: str  # the input that crashed ("" if libFuzzer wrote none)
    summary: str  # the exception or libFuzzer's error line


@dataclass
class Result:
    target: str
    seconds: float = 0.0
    executions: int = 0
    runs: int = 0  # processes started
    crashes: list[Crash] = field(default_factory=list)


def executions(log: str) -> int:
    """Inputs run, from libFuzzer's final stats ("stat::number_of_executed_units", "Done N runs",
    "#N DONE"), or its last progress line if it was killed before printing them."""
    for pattern in _EXECUTED:
        found = pattern.findall(log)
        if found:
            return int(found[-1])
    progress = _PROGRESS.findall(log)
    return int(progress[-1]) if progress else 0


def crash_summary(log: str) -> str:
    """The Python exception (atheris prints it after "Uncaught Python exception"), else libFuzzer's error."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "Uncaught Python exception" in line:
            exception = lines[i + 1].strip() if i + 1 < len(lines) else "?"
            trace = [ln.strip() for ln in lines[i + 2 :] if ln.strip().startswith("File ")]
            where = trace[-1] if trace else ""
            return f"{exception} ({where})" if where else exception
    for line in lines:
        if "ERROR: libFuzzer:" in line:
            return line.split("ERROR: ", 1)[1].strip()
    return "the target process failed: " + (lines[-1].strip() if lines else "no output")


def run_target(target: str, seconds: float, workdir: Path) -> Result:
    result = Result(target)
    seeds = workdir / target
    corpus.write(target, seeds)
    log_path = workdir / f"{target}.log"
    started = time.monotonic()
    deadline = started + seconds
    while True:
        # libFuzzer stops only once a whole second past -max_total_time, and Python needs one to start.
        remaining = max(1, int(deadline - time.monotonic()) - STARTUP_S)
        command = [
            sys.executable,
            str(TARGETS_PY),
            target,
            f"-max_total_time={remaining}",
            f"-timeout={INPUT_TIMEOUT_S}",
            f"-rss_limit_mb={RSS_LIMIT_MB}",
            f"-max_len={corpus.MAX_LEN[target]}",
            f"-artifact_prefix={CRASH_DIR}/{target}-",
            "-print_final_stats=1",
            str(seeds),
        ]
        with open(log_path, "w") as log_file:
            try:
                process = subprocess.run(
                    command,
                    check=False,  # a crash is a non-zero exit, read below
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    timeout=remaining + GRACE_S,
                )
                code = process.returncode
            except subprocess.TimeoutExpired:
                code = None
        log = log_path.read_text(errors="replace")
        result.runs += 1
        ran = executions(log)
        result.executions += ran
        if code == 0:
            break
        artifacts = _ARTIFACT.findall(log)
        summary = "killed: no answer within -max_total_time + grace" if code is None else crash_summary(log)
        crash = Crash(artifacts[-1] if artifacts else "", summary)
        if crash in result.crashes:
            break  # the same input again: it is in the corpus (a seed), every restart would replay it
        result.crashes.append(crash)
        if ran == 0 or len(result.crashes) >= MAX_CRASHES or time.monotonic() >= deadline - 1:
            break  # a target that cannot start, the same bug again and again, or time is up
    result.seconds = time.monotonic() - started
    return result


def table(results: list[Result]) -> str:
    rows = [("target", "seconds", "executions", "exec/s", "crashes")]
    for r in results:
        rate = r.executions / r.seconds if r.seconds else 0
        rows.append((r.target, f"{r.seconds:.0f}", str(r.executions), f"{rate:.0f}", str(len(r.crashes))))
    total_s = sum(r.seconds for r in results)
    total_x = sum(r.executions for r in results)
    rows.append(("total", f"{total_s:.0f}", str(total_x), "", str(sum(len(r.crashes) for r in results))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=300, help="total fuzzing time, split across the targets"
    )
    parser.add_argument("--targets", default=",".join(corpus.SEEDS), help="comma list of targets")
    parser.add_argument("--json", type=Path, help="also write the results here, as JSON")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(corpus.SEEDS))
    if unknown or not targets:
        parser.error(f"unknown target(s) {unknown}; targets: {', '.join(corpus.SEEDS)}")
    per_target = max(1.0, args.seconds / len(targets))
    CRASH_DIR.mkdir(exist_ok=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="otlp-triage-fuzz-") as tmp:
        for target in targets:
            print(f"fuzzing {target} for {per_target:.0f}s ...", file=sys.stderr, flush=True)
            results.append(run_target(target, per_target, Path(tmp)))

    print(table(results))
    failed = False
    for r in results:
        if r.executions == 0:
            failed = True
            print(f"\n{r.target}: no input was run (the target did not start)")
        for crash in r.crashes:
            failed = True
            print(f"\n{r.target}: CRASH {crash.summary}")
            if crash.artifact:
                print(f"  input:     {crash.artifact}")
                print(
                    f"  reproduce: {sys.executable} {TARGETS_PY.relative_to(ROOT)} {r.target} "
                    f"{crash.artifact}"
                )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
