"""Named presets: read from ``presets.toml`` (data, not code)."""

from __future__ import annotations

import copy
import tomllib
from functools import cache
from pathlib import Path

PRESETS_FILE = Path(__file__).with_name("presets.toml")


@cache
def _load() -> dict[str, dict]:
    with open(PRESETS_FILE, "rb") as f:
        return tomllib.load(f)


def names() -> list[str]:
    """Every accepted preset name, canonical names and aliases (``aliked+lightglue``)."""
    out = []
    for name, preset in _load().items():
        out.append(name)
        out.extend(preset.get("aliases", []))
    return out


def canonical_name(name: str) -> str:
    for canonical, preset in _load().items():
        if name == canonical or name in preset.get("aliases", []):
            return canonical
    raise KeyError(f"unknown preset {name!r}; choose one of: {', '.join(names())}")


def get(name: str) -> dict:
    """A deep copy of one preset, with its canonical ``name`` filled in."""
    canonical = canonical_name(name)
    preset = copy.deepcopy(_load()[canonical])
    preset["name"] = canonical
    preset.pop("aliases", None)
    return preset
