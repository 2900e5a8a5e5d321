"""benchmarks/growth_mapper.py: synthetic features and matches with known truth, mapped by the
real ``sfm`` stage and scored (issue #19, the mapper alone)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from omniglue_sfm import sfm
from omniglue_sfm.colmap.mapper import SfMOptions
from omniglue_sfm.evaluation import reconstruction as evaluate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mapper_bench():
    if "growth_mapper" in sys.modules:
        return sys.modules["growth_mapper"]
    spec = importlib.util.spec_from_file_location("growth_mapper", REPO / "benchmarks" / "growth_mapper.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["growth_mapper"] = module
    spec.loader.exec_module(module)
    return module


def test_synthetic_scene_maps_and_scores_locally(mapper_bench, tmp_path):
    data = tmp_path / "data"
    inputs = mapper_bench.make_inputs(data, 40, seed=0)
    assert inputs["pairs"] > 40 and inputs["matches_per_pair"] > 50
    out = tmp_path / "sfm"
    result = sfm.main(data / "images", data / "features.h5", data / "matches.h5", out, data / "pairs.txt",
                      SfMOptions(progress=False))
    assert result.stats["registered"] == 40
    metrics = evaluate.evaluate(out / "sparse", data / "gt")
    assert metrics["auc5"] > 0.8, metrics  # exact matches plus 10% wrong ones: an accurate model
    near = mapper_bench.local_auc(out / "sparse", data / "gt", radius=10.0)
    assert 0 < near["pairs"] < 40 * 39 // 2  # a strict subset of the pairs
    assert near["auc5"] > 0.8


def test_a_series_never_resumes_onto_inputs_of_another_density(mapper_bench, tmp_path):
    base = tmp_path / "n40"
    base.mkdir()
    (base / "results.json").write_text(json.dumps({"steps": {"inputs": {"density": 1.0}}}))
    args = argparse.Namespace(root=tmp_path, seed=0, density=0.3, mappers=["global"], timeout=60)
    with pytest.raises(SystemExit, match="--density 1.0, not 0.3"):
        mapper_bench.run_size(40, args)
