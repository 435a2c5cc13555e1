"""The signature catalog: which user agents and marker headers identify which kind of client.

The catalog is data (``signatures.json`` beside this file, one entry per monitor,
probe, crawler or client library, each with the public source it came from).
Users add entries with ``TRIAGE_SIGNATURES_FILE``; theirs are checked first.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson

from ..data_files import entry_name, parse_named

SIGNATURE_SOURCES = ("synthetic", "probe", "bot", "service")
_KEYS = {"name", "source", "user_agent", "headers", "tracestate", "reference", "description"}


class CatalogError(ValueError):
    """A signature file that cannot be used, with the file and entry named."""


@dataclass(frozen=True)
class Signature:
    name: str
    source: str
    user_agent: tuple[str, ...]  # substrings, matched case-insensitively (kept as written, for evidence)
    headers: tuple[tuple[str, tuple[str, ...]], ...]  # (lowercase header, value substrings; empty = presence)
    reference: str
    tracestate: tuple[str, ...] = ()  # substrings of a span's W3C tracestate


def builtin_catalog() -> tuple[Signature, ...]:
    text = resources.files(__package__).joinpath("signatures.json").read_bytes()
    return parse_catalog(text, "built-in signatures.json")


def load_catalog(path: str) -> tuple[Signature, ...]:
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise CatalogError(f"{path}: cannot read: {e.strerror}") from None
    return parse_catalog(text, path)


def parse_catalog(text: bytes, origin: str) -> tuple[Signature, ...]:
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise CatalogError(f"{origin}: not valid JSON: {e}") from None
    if not isinstance(document, dict) or not isinstance(document.get("signatures"), list):
        raise CatalogError(f'{origin}: expected an object {{"signatures": [...]}}')
    return parse_named(document["signatures"], _signature, lambda i: f"{origin}: signatures[{i}]", CatalogError)


def _signature(entry: Any) -> Signature:
    name = entry_name(entry, _KEYS, CatalogError)
    source = entry.get("source")
    if source not in SIGNATURE_SOURCES:
        raise CatalogError(f"{name}: 'source' must be one of {', '.join(SIGNATURE_SOURCES)}")
    user_agent = entry.get("user_agent", [])
    if not isinstance(user_agent, list) or not all(isinstance(s, str) and s.strip() for s in user_agent):
        raise CatalogError(f"{name}: 'user_agent' must be a list of non-empty strings")
    headers = entry.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and k and isinstance(v, list) and all(isinstance(s, str) and s for s in v)
        for k, v in headers.items()
    ):
        raise CatalogError(f"{name}: 'headers' must map header names to lists of non-empty strings")
    tracestate = entry.get("tracestate", [])
    if not isinstance(tracestate, list) or not all(isinstance(s, str) and s for s in tracestate):
        raise CatalogError(f"{name}: 'tracestate' must be a list of non-empty strings")
    if not user_agent and not headers and not tracestate:
        raise CatalogError(f"{name}: give at least one of 'user_agent', 'headers' or 'tracestate'")
    reference = entry.get("reference", "")
    if not isinstance(reference, str):
        raise CatalogError(f"{name}: 'reference' must be a string (the public source of this entry)")
    return Signature(
        name=name,
        source=source,
        user_agent=tuple(user_agent),
        headers=tuple((k.lower(), tuple(v)) for k, v in headers.items()),
        reference=reference,
        tracestate=tuple(tracestate),
    )
