"""Named presets: read from ``presets.toml`` (data, not code), resolved here and only here.

A preset is a name (``omniglue``, ``aliked+lightglue``) or a dict of the same shape. Every stage
takes either and calls :func:`resolve`. Its :func:`pipeline` kind says which SfM pipeline runs
it: ``learned`` (extract -> pairs -> match -> sfm, the default) or ``colmap-sift`` (COLMAP's own
SIFT extraction and matching inside its database, preset key ``pipeline = "colmap-sift"``).
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from enum import StrEnum
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


class Pipeline(StrEnum):
    """Which SfM pipeline a preset runs."""

    LEARNED = "learned"  # extract -> pairs -> match -> sfm, files features.h5 / matches.h5
    COLMAP_SIFT = "colmap-sift"  # COLMAP's SIFT extraction and matching, features only in database.db


def pipeline(preset: Mapping) -> Pipeline:
    """The pipeline kind of a resolved preset."""
    kind = preset.get("pipeline", Pipeline.LEARNED.value)
    try:
        return Pipeline(kind)
    except ValueError:
        raise ValueError(f"preset {preset.get('name', '?')!r}: unknown pipeline {kind!r}; choose one of "
                         f"{', '.join(p.value for p in Pipeline)}") from None


def require_learned(preset: Mapping, why: str) -> None:
    """Raise ``ValueError`` (with ``why``) unless ``preset`` runs the learned pipeline."""
    if pipeline(preset) is not Pipeline.LEARNED:
        raise ValueError(f"preset {preset.get('name', '?')!r} uses COLMAP's own SIFT (pipeline "
                         f"{pipeline(preset).value!r}): {why}")


def merge_overrides(preset: Mapping, overrides: Mapping | None) -> dict:
    """A copy of ``preset`` with ``overrides`` merged in, section by section."""
    out = copy.deepcopy(dict(preset))
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_overrides(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve(preset: str | Mapping, overrides: Mapping | None = None) -> dict:
    """A preset name or dict -> a fresh dict, with ``overrides`` merged in."""
    return merge_overrides(get(preset) if isinstance(preset, str) else preset, overrides)
