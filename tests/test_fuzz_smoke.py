"""The coverage-guided fuzzing (atheris) in CI: every target for a few seconds, bounded.

``make fuzz`` runs the same thing for longer (``FUZZ_SECONDS``, default 300).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .fuzz import corpus

RUN = Path(__file__).parent / "fuzz" / "run.py"
SECONDS = 20
TIMEOUT_S = SECONDS + 60 * len(corpus.SEEDS)  # start-up per target, far above what it takes


def test_every_target_runs_without_a_crash(tmp_path: Path) -> None:
    """run.py --seconds 20 exits 0; every target ran inputs and none crashed."""
    results_file = tmp_path / "results.json"
    process = subprocess.run(
        [sys.executable, str(RUN), "--seconds", str(SECONDS), "--json", str(results_file)],
        check=False,  # asserted below, with the report
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    report = process.stdout + process.stderr
    assert process.returncode == 0, report
    results = {r["target"]: r for r in json.loads(results_file.read_text())}
    assert sorted(results) == sorted(corpus.SEEDS), report
    for target, result in results.items():
        assert result["executions"] > 0, f"{target} ran no input\n{report}"
        assert result["crashes"] == [], f"{target} crashed\n{report}"
    assert "executions" in process.stdout and "crashes" in process.stdout  # the table is printed
