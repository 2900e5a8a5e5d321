"""Named presets: read from ``presets.toml`` (data, not code), resolved here and only here.

Users add their own in a TOML file of the same shape (``--preset-file my.toml``); each of its
presets may start from a built-in one with ``base = "NAME"``. A user file is validated as a whole
before any work (:func:`load_file`): every key known, every plugin name registered. The command
line knobs ``--max-keypoints`` / ``--resize-max`` override ``[features]``
(:class:`PresetChoice`); they become part of the preset, so of every configuration recorded
from it, and a re-run with other values never resumes into old features.

A preset is a name (``omniglue``, ``aliked+lightglue``) or a dict of the same shape. Every stage
takes either and calls :func:`resolve`. Its :func:`pipeline` kind says which SfM pipeline runs
it: ``learned`` (extract -> pairs -> match -> sfm, the default) or ``colmap-sift`` (COLMAP's own
SIFT extraction and matching inside its database, preset key ``pipeline = "colmap-sift"``).
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path

PRESETS_FILE = Path(__file__).with_name("presets.toml")


@cache
def _load() -> dict[str, dict]:
    with open(PRESETS_FILE, "rb") as f:
        return tomllib.load(f)

MIN_RESIZE_MAX = 64  # px: the smallest long side features are extracted at (--resize-max)


def names(aliases: bool = True) -> list[str]:
    """Every accepted preset name, canonical names and (``aliases``) their other spellings
    (``aliked+lightglue``), which are accepted but not listed in help and messages."""
    out = []
    for name, preset in _load().items():
        out.append(name)
        if aliases:
            out.extend(preset.get("aliases", []))
    return out


def canonical_name(name: str) -> str:
    for canonical, preset in _load().items():
        if name == canonical or name in preset.get("aliases", []):
            return canonical
    raise KeyError(f"unknown preset {name!r}; choose one of: {', '.join(names(aliases=False))}")


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


# --------------------------------------------------------------------------------------------
# user presets (--preset-file) and command-line overrides

# keys of a user preset (no aliases: a user preset is named by its table)
PRESET_KEYS = frozenset({"description", "pipeline", "features", "guidance", "matcher", "rotation", "base"})
SECTION_KINDS = {"features": "extractor", "guidance": "guidance", "matcher": "matcher"}
# keys a section holds besides its plugin's own: the plugin name, and extract's image size
STAGE_KEYS = {"features": {"name", "resize_max"}, "guidance": {"name"}, "matcher": {"name"}}
COLMAP_SIFT_FEATURES = frozenset({"name", "max_keypoints", "resize_max"})


def load_file(path: Path | str) -> dict[str, dict]:
    """The presets of a user TOML file, resolved (``base`` merged) and validated; ``ValueError``
    (one line naming the file, the preset and the key) on the first problem."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    if not data:
        raise ValueError(f"{path} defines no preset: write [NAME] tables as in omniglue_sfm/presets.toml")
    out = {}
    for name, body in data.items():
        where = f"{path}: preset [{name}]"
        if not isinstance(body, dict):
            raise ValueError(f"{where} must be a table ([{name}] with its keys below it)")
        if name in names():
            raise ValueError(f"{where} has the name of a built-in preset; give it another name "
                             f"(use base = {name!r} to start from the built-in one)")
        out[name] = _resolve_user(name, body, where)
    return out


def _resolve_user(name: str, body: dict, where: str) -> dict:
    unknown = sorted(set(body) - PRESET_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(PRESET_KEYS))}")
    body = dict(body)
    base = body.pop("base", None)
    if base is not None:
        if base not in names():
            raise ValueError(f"{where}: base = {base!r} is not a built-in preset; choose one of: "
                             f"{', '.join(names(aliases=False))}")
        body = merge_overrides(get(base), body)
    body["name"] = name
    validate(body, where)
    return body


def validate(preset: Mapping, where: str) -> None:
    """Every section known, every plugin registered, every key of a section one its plugin reads."""
    from . import registry

    try:
        kind = pipeline(preset)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    features = preset.get("features")
    if not isinstance(features, Mapping) or "name" not in features:
        raise ValueError(f"{where}: needs a [features] table with a name")
    if kind is Pipeline.COLMAP_SIFT:
        for section in ("guidance", "matcher"):
            if preset.get(section):
                raise ValueError(f"{where}: COLMAP's SIFT pipeline has no [{section}]")
        unknown = sorted(set(features) - COLMAP_SIFT_FEATURES)
        if unknown:
            raise ValueError(f"{where}: [features] key(s) {', '.join(unknown)} unknown to COLMAP SIFT; "
                             f"known: {', '.join(sorted(COLMAP_SIFT_FEATURES))}")
        _check_sizes(features, where)
        return
    _check_rotation(preset, where)
    if not isinstance(preset.get("matcher"), Mapping):
        raise ValueError(f"{where}: needs a [matcher] table with a name")
    for section, plugin_kind in SECTION_KINDS.items():
        conf = preset.get(section)
        if conf is None and section == "guidance":
            continue
        if not isinstance(conf, Mapping) or "name" not in conf:
            raise ValueError(f"{where}: [{section}] must be a table with a name")
        try:
            known = registry.config_keys(plugin_kind, str(conf["name"])) | STAGE_KEYS[section]
        except KeyError as err:
            raise ValueError(f"{where}: [{section}] {err.args[0]}") from None
        unknown = sorted(set(conf) - known)
        if unknown:
            raise ValueError(f"{where}: [{section}] key(s) {', '.join(unknown)} unknown to {plugin_kind} "
                             f"{conf['name']!r}; known: {', '.join(sorted(known))}")
    _check_sizes(features, where)


def _check_rotation(preset: Mapping, where: str) -> None:
    """``rotation`` is "auto", "off" or a table of the orientation pass's options."""
    from .rotation import options_from_preset

    try:
        options_from_preset(preset)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def _check_sizes(features: Mapping, where: str) -> None:
    """max_keypoints a whole number (its plugin decides what <= 0 means), resize_max one >=
    ``MIN_RESIZE_MAX`` (a smaller picture holds no keypoints worth matching)."""
    for key, least in (("max_keypoints", None), ("resize_max", MIN_RESIZE_MAX)):
        value = features.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or (least is not None and value < least):
            bound = f" >= {least}" if least is not None else ""
            raise ValueError(f"{where}: [features] {key} must be a whole number{bound}, got {value!r}")


def feature_overrides(max_keypoints: int | None, resize_max: int | None) -> dict | None:
    """``--max-keypoints`` / ``--resize-max`` as preset overrides (None when neither is given)."""
    feats = {k: v for k, v in (("max_keypoints", max_keypoints), ("resize_max", resize_max)) if v}
    _check_sizes(feats, "--max-keypoints / --resize-max")
    return {"features": feats} if feats else None


@dataclass(frozen=True)
class PresetChoice:
    """What the command line says about the preset: a name (built-in, or from ``preset_file``) and
    overrides of its ``[features]``, its ``rotation`` setting and its mask folder. :meth:`resolve`
    gives the preset dict every stage takes."""

    name: str = "omniglue"
    preset_file: Path | None = None
    max_keypoints: int | None = None
    resize_max: int | None = None
    rotation: str | None = None  # --rotation auto|off (None: the preset's own setting)
    masks: Path | None = None  # --masks DIR: part of the features' configuration

    def overrides(self) -> dict | None:
        out = feature_overrides(self.max_keypoints, self.resize_max) or {}
        if self.rotation is not None:
            out["rotation"] = self.rotation
        if self.masks is not None:
            out["masks"] = str(self.masks)
        return out or None

    def resolve(self) -> dict:
        """The preset with the overrides merged in; unknown names and bad files raise one line."""
        user = load_file(self.preset_file) if self.preset_file is not None else {}
        if self.name in user:
            return resolve(user[self.name], self.overrides())
        if self.name not in names():
            extra = f" or one of {self.preset_file}: {', '.join(user)}" if user else ""
            raise ValueError(f"unknown preset {self.name!r}; choose one of: "
                             f"{', '.join(names(aliases=False))}{extra}")
        return resolve(self.name, self.overrides())
