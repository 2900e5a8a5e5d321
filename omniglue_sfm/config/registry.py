"""Plugin registry: preset ``name`` -> class, imported lazily (heavy deps load only when used).

Each plugin class takes its config dict (the preset section) in ``__init__``.
"""

from __future__ import annotations

import importlib

EXTRACTORS = {
    "aliked": "omniglue_sfm.features.aliked:ALIKEDExtractor",
    "disk": "omniglue_sfm.features.disk:DISKExtractor",
    "superpoint": "omniglue_sfm.features.superpoint:SuperPointExtractor",
}

GUIDANCE = {
    "aliked-grid": "omniglue_sfm.guidance.aliked_grid:ALIKEDGridGuidance",
    "dinov2_vits14": "omniglue_sfm.guidance.dinov2:DINOv2Guidance",
    "dinov2_vitb14": "omniglue_sfm.guidance.dinov2:DINOv2Guidance",
}

MATCHERS = {
    "omniglue": "omniglue_sfm.matchers.omniglue_plugin:OmniGlueMatcher",
    "lightglue": "omniglue_sfm.matchers.lightglue:LightGlueMatcher",
    "superglue": "omniglue_sfm.matchers.superglue:SuperGlueMatcher",
    "mnn": "omniglue_sfm.matchers.mnn:MutualNearestNeighbour",
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
