"""Atheris (coverage-guided, libFuzzer) targets; each checks the contract in ``invariants.py``.

    python tests/fuzz/targets.py TARGET [libFuzzer flags] [CORPUS_DIR ... | CRASH_FILE]

Targets:
  proto  bytes -> Intake.decode (protobuf) -> Pipeline.process (with the payload) in every configuration;
         wire.problem (the check the intake's walk makes) agrees with upb
  json   bytes -> Intake.decode (OTLP/JSON) -> Pipeline.process in every configuration
  gzip   bytes -> decompress (gzip, a 4 KiB limit) -> Intake.decode (protobuf)
  rules  a record built from the bytes -> RuleSet.match, Classifier.evidence

Normally started by ``run.py`` (``make fuzz``). Given a crash file instead of a corpus directory,
libFuzzer runs that one input: the way to reproduce a crash.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import inspect  # noqa: E402

import atheris  # noqa: E402
import orjson  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402
from opentelemetry.proto.common.v1.common_pb2 import AnyValue  # noqa: E402
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord  # noqa: E402

# Coverage guidance: every processor module, and protobuf's pure-Python JSON mapping behind otlp_json
# (instrument_imports' include works on top-level packages: all of google.* would cost seconds).
with atheris.instrument_imports(include=["processor"]):
    import processor.intake  # noqa: F401
    import processor.otlp_json  # noqa: F401
    import processor.pipeline  # noqa: F401
    import processor.service  # noqa: F401


def _instrument_module(module) -> None:
    for _, obj in inspect.getmembers(module):
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            atheris.instrument_func(obj)
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            for _, method in inspect.getmembers(obj, inspect.isfunction):
                if method.__module__ == module.__name__:
                    atheris.instrument_func(method)


_instrument_module(json_format)

from processor import wire  # noqa: E402
from tests.fuzz import corpus  # noqa: E402
from tests.fuzz.invariants import (  # noqa: E402
    Checker,
    build_pipelines,
    check_classifier,
    check_everywhere,
    check_rules,
    checked_decompress,
    fill_any,
    intake_decode,
)

PIPELINES = build_pipelines()
CHECKERS = {name: Checker(pipeline) for name, pipeline in PIPELINES.items()}
RULES_PIPELINE = PIPELINES["wide"]  # built-in and extra rules, every kind of evidence
EVIDENCE_KEYS = tuple(RULES_PIPELINE.classifier.evidence_keys)


def proto(data: bytes) -> None:
    request = intake_decode(data, "protobuf")
    # The intake's check without decoding (processor/_wire.c) refuses exactly what upb refuses.
    assert (wire.problem(data) is None) == (request is not None), wire.problem(data)
    try:
        counts = wire.record_counts(data)  # what the export's split reads: the framing alone
    except wire.Malformed:
        counts = None
    if request is not None:
        assert counts == [sum(len(sl.log_records) for sl in rl.scope_logs) for rl in request.resource_logs], counts
        check_everywhere(CHECKERS.values(), request, data)  # the payload too, as Intake.accept passes it


def json(data: bytes) -> None:
    request = intake_decode(data, "json")
    if request is not None:
        # Without the payload: with it, escaped keys are a known bug (TestJsonKeyEscapes), found at once.
        check_everywhere(CHECKERS.values(), request)


def gzip(data: bytes) -> None:
    inflated = checked_decompress(data, "gzip", corpus.GZIP_LIMIT)
    if inflated is not None:
        intake_decode(inflated, "protobuf")


def rules(data: bytes) -> None:
    """Byte 0: how to read the rest (a LogRecord's protobuf, a text body, a JSON map body); 1: severity."""
    if len(data) < 2:
        return
    mode, severity, payload = data[0] % 3, data[1], data[2:]
    record = LogRecord(severity_number=severity)
    if mode == corpus.RULES_PROTOBUF:
        try:
            record.ParseFromString(payload)
        except DecodeError:
            return
    else:
        text = payload.decode("utf-8", "replace")
        record.body.string_value = text
        record.attributes.add(key="exception.message").value.string_value = text
        if mode == corpus.RULES_JSON_MAP:
            try:
                document = orjson.loads(payload)
            except orjson.JSONDecodeError:
                document = None
            if document is not None:
                fill_any(record.body, document)
    check_rules(RULES_PIPELINE, record, (severity, 17))
    values = [record.body] + [kv.value for kv in record.attributes]
    check_classifier(RULES_PIPELINE, [(key, value) for key in EVIDENCE_KEYS for value in values])
    if record.body.WhichOneof("value") == "string_value":
        check_classifier(
            RULES_PIPELINE, [(key, AnyValue(string_value=record.body.string_value)) for key in EVIDENCE_KEYS]
        )


TARGETS = {"proto": proto, "json": json, "gzip": gzip, "rules": rules}
assert set(TARGETS) == set(corpus.SEEDS), "targets and seed corpora disagree"


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer flags] [corpus dir | crash file]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0]] + sys.argv[2:], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
