"""A request larger than one export call may be, cut into requests that are not (``export.split``).

Checked on the decoded parts: the same records in the same order, each with the resource and scope
it came with; each part within the limit unless one record alone is larger; the counts right.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from processor.export.split import split


def flat(payload: bytes) -> list[tuple[bytes, bytes, str, bytes]]:
    """Every record with what it came in: (resource, scope, ScopeLogs schema url, record), in order."""
    return [
        (rl.resource.SerializeToString(), sl.scope.SerializeToString(), sl.schema_url, record.SerializeToString())
        for rl in ExportLogsServiceRequest.FromString(payload).resource_logs
        for sl in rl.scope_logs
        for record in sl.log_records
    ]


def scope_logs(n: int, sizes: list[int]) -> ScopeLogs:
    return ScopeLogs(
        scope=InstrumentationScope(name=f"scope-{n}"),
        schema_url=f"https://example.com/{n}",
        log_records=[
            LogRecord(severity_number=9, body=AnyValue(string_value=f"{n}/{i} " + "x" * size))
            for i, size in enumerate(sizes)
        ],
    )


requests = st.lists(  # ResourceLogs
    st.lists(st.lists(st.integers(0, 600), max_size=30), max_size=4),  # its ScopeLogs: their records' body sizes
    min_size=1,
    max_size=4,
).map(
    lambda resources: ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=f"svc-{r}"))]),
                scope_logs=[scope_logs(10 * r + s, sizes) for s, sizes in enumerate(scopes)],
                schema_url="https://opentelemetry.io/schemas/1.26.0",
            )
            for r, scopes in enumerate(resources)
        ]
    ).SerializeToString()
)


@settings(max_examples=300, deadline=None)
@given(requests, st.integers(64, 20_000))
def test_parts_hold_every_record_in_order_with_its_resource_and_scope(payload: bytes, max_bytes: int) -> None:
    parts = split(payload, max_bytes)
    assert [record for part, _ in parts for record in flat(part)] == flat(payload)
    for part, count in parts:
        records = flat(part)
        assert count == len(records)
        assert len(part) <= max_bytes or len(records) <= 1, (len(part), max_bytes, len(records))
    if len(payload) <= max_bytes:
        assert [part for part, _ in parts] == [payload]


def test_resource_logs_that_fit_pass_as_they_came() -> None:
    """Cut between ResourceLogs: each part is whole ResourceLogs of the request, byte for byte,
    their order kept (a ResourceLogs without ScopeLogs too)."""
    resource_logs = [
        ResourceLogs(resource=Resource(attributes=[KeyValue(key="k", value=AnyValue(string_value=str(r)))]),
                     scope_logs=[scope_logs(r, [300] * 10)] if r != 1 else [])
        for r in range(4)
    ]
    payload = ExportLogsServiceRequest(resource_logs=resource_logs).SerializeToString()
    largest = max(len(rl.SerializeToString()) for rl in resource_logs)
    parts = split(payload, largest + 40)
    assert b"".join(part for part, _ in parts) == payload
    assert len(parts) == 3  # the empty ResourceLogs rides with its neighbour
    assert [count for _, count in parts] == [10, 10, 10]


def test_a_record_larger_than_the_limit_goes_alone() -> None:
    payload = ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[scope_logs(0, [10, 5000, 10])])]).SerializeToString()
    parts = split(payload, 1000)
    assert [len(flat(part)) for part, _ in parts] == [1, 1, 1]
    assert [len(part) > 1000 for part, _ in parts] == [False, True, False]


def test_scope_logs_without_records_are_cut_too() -> None:
    """Even ScopeLogs with no records count against the limit (a request can be all of them)."""
    empty = [ScopeLogs(scope=InstrumentationScope(name=f"s{n}")) for n in range(10_000)]
    payload = ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=empty)]).SerializeToString()
    parts = split(payload, 1000)
    assert all(len(part) <= 1000 and count == 0 for part, count in parts)
    names = [sl.scope.name for part, _ in parts for rl in ExportLogsServiceRequest.FromString(part).resource_logs for sl in rl.scope_logs]
    assert names == [f"s{n}" for n in range(10_000)]
