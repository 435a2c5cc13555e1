"""Golden cases: OTLP/JSON input -> the pipeline -> exactly the expected OTLP/JSON.

Regenerate after an intended change with UPDATE_GOLDEN=1, then review the diff like code.
"""

from __future__ import annotations

import os

import orjson
import pytest

from processor import otlp_json

from .helpers import TESTDATA, load_request, pipeline

GOLDEN = TESTDATA / "golden"
CASES = sorted(p.stem for p in (GOLDEN / "input").glob("*.json"))


@pytest.mark.parametrize("with_payload", [False, True], ids=["scan", "payload-prefilter"])
@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, with_payload: bool) -> None:
    """The processed request equals the reviewed expected output, with or without the payload prefilter."""
    request = load_request(GOLDEN / "input" / f"{case}.json")
    payload = request.SerializeToString() if with_payload else None
    # One request on its own: nothing is held (holding across requests has its own tests).
    pipeline(TRIAGE_CORRELATION_WINDOW="0").process(request, payload=payload)
    actual = otlp_json.to_dict(request)
    expected_path = GOLDEN / "expected" / f"{case}.json"
    if os.environ.get("UPDATE_GOLDEN") and not with_payload:
        expected_path.write_bytes(orjson.dumps(actual, option=orjson.OPT_INDENT_2) + b"\n")
    assert actual == orjson.loads(expected_path.read_bytes())


def test_every_input_has_an_expected_file() -> None:
    """A new input without a reviewed expectation fails instead of passing vacuously."""
    expected = sorted(p.stem for p in (GOLDEN / "expected").glob("*.json"))
    assert CASES and expected == CASES
