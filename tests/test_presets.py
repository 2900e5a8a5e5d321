"""Preset resolution and the pipeline kind."""

from __future__ import annotations

import pytest

from omniglue_sfm.config import presets


def test_resolve_names_dicts_and_overrides():
    merged = presets.merge_overrides({"features": {"name": "aliked", "max_keypoints": 2048}, "x": 1},
                                     {"features": {"max_keypoints": 512}})
    assert merged == {"features": {"name": "aliked", "max_keypoints": 512}, "x": 1}
    resolved = presets.resolve("aliked+lightglue", {"features": {"max_keypoints": 512}})
    assert resolved["name"] == "aliked-lightglue"
    assert resolved["features"]["max_keypoints"] == 512
    assert presets.get("aliked+lightglue")["features"]["max_keypoints"] == 2048  # never modified
    given = {"matcher": {"name": "mnn"}}
    assert presets.resolve(given) == given and presets.resolve(given) is not given


def test_pipeline_kind():
    assert presets.pipeline(presets.get("omniglue")) is presets.Pipeline.LEARNED
    assert presets.pipeline(presets.get("sift")) is presets.Pipeline.COLMAP_SIFT
    assert presets.pipeline({}) is presets.Pipeline.LEARNED
    with pytest.raises(ValueError, match="unknown pipeline"):
        presets.pipeline({"pipeline": "magic"})
    presets.require_learned(presets.get("omniglue"), "never raised")
    with pytest.raises(ValueError, match="COLMAP's own SIFT"):
        presets.require_learned(presets.get("sift"), "no features.h5")
