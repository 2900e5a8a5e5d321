"""Plugin registry: preset ``name`` -> class, imported lazily (heavy deps load only when used).

Each plugin class takes its config dict (the preset section) in ``__init__``.
"""

from __future__ import annotations

import importlib

EXTRACTORS = {
    "aliked": "omniglue_sfm.features.aliked:ALIKEDExtractor",
    "disk": "omniglue_sfm.features.disk:DISKExtractor",
    "superpoint": "omniglue_sfm.features.superpoint:SuperPointExtractor",
    "superpoint-official": "omniglue_sfm.features.superpoint_official:SuperPointOfficial",
}

GUIDANCE = {
    "aliked-grid": "omniglue_sfm.guidance.aliked_grid:ALIKEDGridGuidance",
    "dinov2_vits14": "omniglue_sfm.guidance.dinov2:DINOv2Guidance",
    "dinov2_vitb14": "omniglue_sfm.guidance.dinov2:DINOv2Guidance",
    "dinov2-official": "omniglue_sfm.guidance.dinov2_official:DINOv2Official",
}

MATCHERS = {
    "omniglue": "omniglue_sfm.matchers.omniglue_plugin:OmniGlueMatcher",
    "lightglue": "omniglue_sfm.matchers.lightglue:LightGlueMatcher",
    "superglue": "omniglue_sfm.matchers.superglue:SuperGlueMatcher",
    "mnn": "omniglue_sfm.matchers.mnn:MutualNearestNeighbour",
    "omniglue-official": "omniglue_sfm.matchers.omniglue_official:OmniGlueOfficial",
}


def _load(table: dict[str, str], name: str, kind: str) -> type:
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}")
    module_name, cls_name = table[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def extractor(conf: dict):
    return _load(EXTRACTORS, conf["name"], "extractor")(conf)


def guidance(conf: dict):
    return _load(GUIDANCE, conf["name"], "guidance")(conf)


def matcher(conf: dict):
    return _load(MATCHERS, conf["name"], "matcher")(conf)


TABLES = {"extractor": EXTRACTORS, "guidance": GUIDANCE, "matcher": MATCHERS}


def config_keys(kind: str, name: str) -> frozenset[str]:
    """The config keys a plugin reads (its ``config_keys()``, else its ``default_conf``), for
    validating presets; ``KeyError`` for an unregistered name."""
    cls = _load(TABLES[kind], name, kind)
    keys = cls.config_keys() if hasattr(cls, "config_keys") else getattr(cls, "default_conf", {})
    return frozenset(keys)


def reads_original(preset: dict) -> bool:
    """Whether the preset's extractor reads the original uint8 image itself (``reads_original``:
    the released OmniGlue's front end), rather than the resized float image ``extract`` gives."""
    name = (preset.get("features") or {}).get("name")
    return name in EXTRACTORS and bool(getattr(_load(EXTRACTORS, name, "extractor"), "reads_original", False))


def check_installed(preset: dict) -> None:
    """Every plugin of the preset that needs optional packages checks that they are there (its
    ``check_installed()``: one error with the install command), before any work."""
    for section, kind in (("features", "extractor"), ("guidance", "guidance"), ("matcher", "matcher")):
        name = (preset.get(section) or {}).get("name")
        if name in TABLES[kind]:
            check = getattr(_load(TABLES[kind], name, kind), "check_installed", None)
            if check is not None:
                check()
