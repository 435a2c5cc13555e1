"""``otlp-triage explain``: what the processor would decide for each record of a file, and why.

Reads OTLP/JSON (one request, or one request per line — what the stdout exporter writes, or a
Collector's file exporter) and runs the same pipeline in shadow mode. The whole file is one
correlation scope: a first pass learns every trace's evidence, the second decides each record in
file order, so evidence that comes later in the file counts as it would within the window.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from . import otlp_json
from .config import Config
from .pipeline import WOULD_DOWNGRADE, effective_severity
from .service import build_pipeline

_PATH_KEYS = ("url.path", "http.target", "http.route")


@dataclass(frozen=True)
class Explained:
    request: int  # 1-based line (request) number in the file
    severity: str
    source: str
    name: str
    confidence: str
    evidence: str
    rule: str  # the rule that matches the record, or ""
    fires: bool  # whether it would be downgraded
    path: str  # the request path, from the record or its trace
    body: str


class ExplainError(ValueError):
    """A file that cannot be explained, with the line that is wrong."""


def read_requests(lines: Iterable[bytes]) -> list[ExportLogsServiceRequest]:
    """One request per non-empty line, or the whole input as one (pretty-printed) request."""
    data = list(lines)
    text = b"".join(data)
    candidates = [line for line in data if line.strip()]
    try:
        if len(candidates) > 1 and all(line.lstrip().startswith(b"{") for line in candidates):
            try:
                return [otlp_json.decode(line, ExportLogsServiceRequest()) for line in candidates]
            except otlp_json.JsonError:
                pass  # not one request per line: maybe one pretty-printed request
        return [otlp_json.decode(text, ExportLogsServiceRequest())]
    except otlp_json.JsonError as e:
        raise ExplainError(str(e)) from None


def explain(requests: list[ExportLogsServiceRequest], config: Config) -> list[Explained]:
    config = replace(config, mode="shadow", correlation_window_s=0.0, correlation_ttl_s=max(config.correlation_ttl_s, 1e9))
    pipeline = build_pipeline(config)
    paths: dict[bytes, str] = {}
    for request in requests:  # pass 1: learn every trace's evidence (and path) from a copy
        copy = ExportLogsServiceRequest()
        copy.CopyFrom(request)
        pipeline.process(copy, now=0.0)
        for record in _records(request):
            path = _path(record)
            if path and record.trace_id:
                paths.setdefault(record.trace_id, path)

    out: list[Explained] = []
    for number, request in enumerate(requests, 1):  # pass 2: decide, in file order
        rules = [pipeline.rules.match(r, effective_severity(r)) for r in _records(request)]
        pipeline.process(request, now=0.0)
        for record, rule in zip(_records(request), rules):
            attributes = {kv.key: kv.value for kv in record.attributes}
            text = lambda key: attributes[key].string_value if key in attributes else ""  # noqa: E731
            out.append(
                Explained(
                    request=number,
                    severity=record.severity_text or _severity_name(record.severity_number),
                    source=text("triage.source"),
                    name=text("triage.source.name"),
                    confidence=text("triage.source.confidence"),
                    evidence=text("triage.source.evidence"),
                    rule=rule.name if rule is not None else "",
                    fires=WOULD_DOWNGRADE in attributes,
                    path=_path(record) or paths.get(record.trace_id, ""),
                    body=_body(record),
                )
            )
    return out


def format_records(explained: list[Explained]) -> Iterator[str]:
    for e in explained:
        verdict = f"{e.source}" + (f"/{e.name}" if e.name else "") + (f" ({e.confidence})" if e.confidence else "")
        if e.rule:
            decision = f"DOWNGRADE by {e.rule}" if e.fires else f"keep: {e.rule} matches but source is {e.source}"
        else:
            decision = "keep"
        yield f"[{e.request}] {e.severity:<5} {verdict:<40} {decision}"
        if e.evidence:
            yield f"      evidence: {e.evidence}"
        yield f"      body: {e.body}"


def format_summary(explained: list[Explained], top: int = 10) -> Iterator[str]:
    by_source_rule = Counter((e.source, e.rule or "-", "downgrade" if e.fires else "keep") for e in explained)
    yield f"{len(explained)} records"
    yield ""
    yield f"{'source':<10} {'rule':<28} {'decision':<10} {'records':>8}"
    for (source, rule, decision), count in sorted(by_source_rule.items(), key=lambda kv: (-kv[1], kv[0])):
        yield f"{source:<10} {rule:<28} {decision:<10} {count:>8}"
    fired = Counter((e.name or e.source, e.path or "-", e.rule) for e in explained if e.fires)
    yield ""
    if not fired:
        yield "no record would be downgraded"
        return
    yield "top sources of downgraded noise (point these monitors at a health endpoint, or exclude them):"
    for (name, path, rule), count in fired.most_common(top):
        yield f"  {name} → {path} → {rule}: {count} record{'s' if count != 1 else ''}"


def _severity_name(number: int) -> str:
    if number <= 0:
        return "-"
    return ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")[min(number - 1, 23) // 4]


def _records(request: ExportLogsServiceRequest):
    return [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]


def _path(record) -> str:
    for kv in record.attributes:
        if kv.key in _PATH_KEYS and kv.value.string_value:
            return kv.value.string_value.split("?", 1)[0]
    return ""


def _body(record, width: int = 100) -> str:
    kind = record.body.WhichOneof("value")
    if kind == "string_value":
        text = record.body.string_value
    elif kind is None:
        text = ""
    else:
        text = str(otlp_json.to_dict(record.body))
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
