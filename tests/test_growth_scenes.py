"""The growth scenes (benchmarks/growth_scene.py): deterministic, exact ground truth in the format
``evaluate`` reads, and a small one reconstructs with every image registered."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from omniglue_sfm import pairs, reconstruct
from omniglue_sfm.colmap.mapper import SfMOptions
from omniglue_sfm.config import presets
from omniglue_sfm.evaluation import reconstruction as evaluate
from omniglue_sfm.geometry import scenes

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return _load("growth_scene")


def test_same_arguments_same_bytes_and_exact_cameras(gen, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        gen.generate(out, 6, seed=3, laps=2, size=(96, 72), textures="procedural", quiet=True)
    names = sorted(p.name for p in (a / "images").iterdir())
    assert names == [f"{i:05d}.jpg" for i in range(6)]
    for name in names:
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()
    assert (a / "overlaps.txt").read_text() == (b / "overlaps.txt").read_text()
    record = json.loads((a / "scene.json").read_text())
    assert record["textures"] == "procedural" and record["laps_of"]["00005.jpg"] == 1
    # ground truth in Strecha's format: the views' own poses, and a K in the features' pixel frame
    gt = scenes.read_strecha_dir(a / "gt")
    views, _, _ = gen.make_views(6, 2, 1.0, 3)
    for view in views:
        pose = gt[view.name]
        assert np.allclose(pose.R, view.R, atol=1e-9) and np.allclose(pose.center, view.center, atol=1e-9)
        assert pose.size == (96, 72) and np.isclose(pose.K[0, 2], 47.5)
    # a resumed run keeps the images and rewrites nothing that differs
    (a / "scene.json").unlink()
    gen.generate(a, 6, seed=3, laps=2, size=(96, 72), textures="procedural", quiet=True)
    assert (a / "images" / names[0]).read_bytes() == (b / "images" / names[0]).read_bytes()


def test_rendered_point_lands_where_the_camera_projects_it(gen):
    """The ray caster and the written K and pose agree: the 3D point hit by a pixel's ray
    projects back onto that pixel."""
    views, A, B = gen.make_views(8, 1, 1.0, 0)
    scene = gen.build_scene(A, B, 0, [])
    K = gen.intrinsics((64, 48))
    renderer = gen.Renderer(scene, K, (64, 48), 0)
    view = views[2]
    z, index, _, _, d = renderer.trace(view.R, view.center)
    hit = np.flatnonzero(index >= 0)
    assert len(hit) > 0.5 * len(z)  # mostly facades
    points = view.center + z[hit, None] * d[hit]
    cam = (points - view.center) @ view.R.T
    uv = cam[:, :2] / cam[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
    pixels = np.stack([hit % 64, hit // 64], 1)
    assert np.abs(uv - pixels).max() < 1e-6


def test_overlap_truth_has_neighbours_and_revisits(gen, tmp_path):
    gen.generate(tmp_path, 40, seed=0, laps=2, size=(64, 48), textures="procedural", quiet=True)
    truth = gen.read_overlaps(tmp_path, 0.3)
    laps = json.loads((tmp_path / "scene.json").read_text())["laps_of"]
    assert any(laps[a] == laps[b] for a, b in truth)
    assert any(laps[a] != laps[b] for a, b in truth)  # the second lap revisits the first


def test_small_growth_scene_reconstructs_every_image(gen, tmp_path):
    """The generator's small size, end to end: 40 views on one lap of the smallest courtyard
    (18 x 18 m, a view every 0.6 m), retrieval pairs, all registered and accurate against the
    exact ground truth. Procedural textures, so that it runs the same without ../shared."""
    scene = tmp_path / "scene"
    gen.generate(scene, 40, seed=0, laps=1, step=0.5, size=(320, 240), textures="procedural", quiet=True)
    out = tmp_path / "out"
    preset = presets.resolve("omniglue", {"features": {"max_keypoints": 320, "resize_max": 320},
                                          "rotation": "off"})
    result = reconstruct.main(scene / "images", out, preset,
                              pair_options=pairs.PairsOptions("retrieval", num_matched=6),
                              sfm_options=SfMOptions(progress=False))
    assert result.stats["registered"] == 40, result.stats.get("unregistered")
    assert (out / "vlad.h5").exists()  # retrieval compared VLAD of the scene's own features
    metrics = evaluate.evaluate(out / "sparse", scene / "gt")
    assert metrics["registered"] == 40
    assert metrics["auc5"] > 0.5, metrics
