"""What the catalog and rules loaders share: entries with unique names, every problem reported."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def entry_name(entry: Any, allowed: set[str], error: type[Exception]) -> str:
    """Check an entry is an object with only ``allowed`` keys and a non-empty ``name``; return the name."""
    if not isinstance(entry, dict):
        raise error("expected an object")
    unknown = set(entry) - allowed
    if unknown:
        raise error(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise error("'name' must be a non-empty string")
    return name


def parse_named(
    entries: list[Any], parse: Callable[[Any], T], where: Callable[[int], str], error: type[Exception]
) -> tuple[T, ...]:
    """Parse each entry (``parse`` raises ``error``); names must be unique. Raises ``error`` listing all problems."""
    problems: list[str] = []
    parsed: list[T] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        try:
            item = parse(entry)
        except error as e:
            problems.append(f"{where(i)}: {e}")
            continue
        name = item.name  # type: ignore[attr-defined]
        if name in seen:
            problems.append(f"{where(i)}: duplicate name {name!r}")
        seen.add(name)
        parsed.append(item)
    if problems:
        raise error("\n".join(problems))
    return tuple(parsed)
