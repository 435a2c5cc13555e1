"""OTLP/JSON decoding alone, in this process: the bench's workload as one JSON request, decoded by
the fast path and by json_format alone, CPU seconds (best of ``--repeat``) and per record.

    .venv/bin/python tests/bench/json_decode.py --records 20000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest  # noqa: E402

from processor import otlp_json  # noqa: E402
from tests.bench import workload  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    request = ExportLogsServiceRequest()
    for payload in workload.generate(args.records, processes=1).payloads:
        request.MergeFromString(payload)
    records = sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
    document = otlp_json.encode(request)
    fast = otlp_json._fast
    for name, path in (("fast path", fast), ("json_format", lambda document, message: False)):
        otlp_json._fast = path  # json_format: the fast path declines every document
        best = float("inf")
        for _ in range(args.repeat):
            started = time.process_time()
            decoded = otlp_json.decode(document, ExportLogsServiceRequest())
            best = min(best, time.process_time() - started)
        assert decoded == request
        print(f"{name:12} {best:6.2f} CPU-s for {records:,} records ({len(document):,} bytes): {1e6 * best / records:6.1f} µs/record")
    otlp_json._fast = fast


if __name__ == "__main__":
    main()
