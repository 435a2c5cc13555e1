"""The atheris targets' names and seed corpora, built from the golden inputs (no atheris import here,
so ``run.py`` can write the corpora without instrumenting anything)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

from .invariants import golden_json, golden_protobuf, golden_records

GZIP_LIMIT = 4096  # the gzip target's decompressed-size limit: small, so the limit path is hit often

# Rules target input: mode byte, severity byte, payload (see targets.rules).
RULES_PROTOBUF, RULES_TEXT, RULES_JSON_MAP = 0, 1, 2


def _gzip(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _rules_seeds() -> list[bytes]:
    seeds = []
    for record in golden_records():
        severity = bytes([record.severity_number & 0xFF])
        seeds.append(bytes([RULES_PROTOBUF]) + severity + record.SerializeToString())
        if record.body.WhichOneof("value") == "string_value":
            text = record.body.string_value.encode()
            seeds.append(
                bytes([RULES_JSON_MAP if text.lstrip().startswith(b"{") else RULES_TEXT]) + severity + text
            )
    return seeds


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "proto": lambda: golden_protobuf() + [b""],
    "json": golden_json,
    "gzip": lambda: [_gzip(p) for p in golden_protobuf() + golden_json()],
    "rules": _rules_seeds,
}

# libFuzzer -max_len per target: room for a golden request several times over.
MAX_LEN = {"proto": 16384, "json": 16384, "gzip": 16384, "rules": 8192}


def write(target: str, directory: Path) -> int:
    """Write ``target``'s seeds into ``directory``; returns how many."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[target]()
    for i, seed in enumerate(seeds):
        (directory / f"seed-{i:03d}").write_bytes(seed)
    return len(seeds)
