"""SfM stage on synthetic scenes (exact geometry, no neural network) and its camera conventions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from omniglue_sfm import cli, sfm
from omniglue_sfm.colmap.mapper import SfMOptions
from omniglue_sfm.evaluation.reconstruction import evaluate_poses
from omniglue_sfm.formats import matches_h5, sharded, textfiles
from omniglue_sfm.geometry.cameras import CameraOptions
from omniglue_sfm.geometry.scenes import CameraPose, model_poses

SHARED = Path(__file__).resolve().parents[2] / "shared"
W, H, F = 640, 480, 600.0


def _look_at(center: np.ndarray) -> CameraPose:
    z = -center / np.linalg.norm(center)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    return CameraPose(R=R, t=-R @ center)


def _write_features(path: Path, keypoints: dict[str, np.ndarray]) -> None:
    with sharded.ShardedH5(path, "features", {"synthetic": True}) as store:
        for name, kp in keypoints.items():
            n = len(kp)
            store.add(name, {"keypoints": kp.astype(np.float32), "scores": np.ones(n, np.float32),
                             "descriptors": np.zeros((4, n), np.float32),
                             "image_size": np.array([W, H])})


def _write_matches(path: Path, matches: dict[tuple[str, str], np.ndarray], sizes: dict[str, int]) -> None:
    with sharded.ShardedH5(path, "matches", {"synthetic": True}) as store:
        for (a, b), m in matches.items():
            m0 = np.full(sizes[a], -1, np.int32)
            m0[m[:, 0]] = m[:, 1]
            m0, s0, (ca, cb) = matches_h5.orient_matches(a, b, m0, np.ones(sizes[a], np.float32), sizes[b])
            item, attrs = matches_h5.write_match_item(m0, s0, sizes[b])
            store.add(matches_h5.pair_key(ca, cb), item, attrs)


def synthetic_scene(root: Path, n_images: int = 6, n_points: int = 800, noise: float = 0.3, seed: int = 0):
    """Cameras on an arc around random points; keypoints are exact projections plus noise."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(-2, 2, size=(n_points, 3))
    images = root / "images"
    images.mkdir(parents=True)
    gt, keypoints, point_ids = {}, {}, {}
    for i in range(n_images):
        a = math.radians(-40 + 80 * i / (n_images - 1))
        name = f"{i:03d}.jpg"
        pose = _look_at(np.array([8 * math.sin(a), 0.5 * math.sin(3 * a), -8 * math.cos(a)]))
        cam = (pose.R @ points.T).T + pose.t
        # COLMAP convention (pixel centre at 0.5) -> features.h5 convention (pixel centre at 0)
        uv = F * cam[:, :2] / cam[:, 2:] + np.array([W / 2, H / 2]) - 0.5
        uv += rng.normal(scale=noise, size=uv.shape)
        visible = np.flatnonzero((uv[:, 0] > 0) & (uv[:, 0] < W - 1) & (uv[:, 1] > 0) & (uv[:, 1] < H - 1))
        order = rng.permutation(visible)  # keypoint order unrelated to point ids
        gt[name], keypoints[name], point_ids[name] = pose, uv[order], order
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(images / name)
    matches = {}
    names = sorted(gt)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common, ia, ib = np.intersect1d(point_ids[a], point_ids[b], return_indices=True)
            matches[(a, b)] = np.stack([ia, ib], axis=1)
    _write_features(root / "features.h5", keypoints)
    _write_matches(root / "matches.h5", matches, {n: len(k) for n, k in keypoints.items()})
    return gt, keypoints


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene")
    gt, keypoints = synthetic_scene(root)
    result = sfm.main(root / "images", root / "features.h5", root / "matches.h5", root / "out",
                      options=SfMOptions(progress=False))
    return root, gt, keypoints, result


def test_synthetic_scene_reconstructs_accurately(scene):
    root, gt, _, result = scene
    out = root / "out"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["registered"] == stats["total"] == 6
    assert result.reconstruction.num_reg_images() == 6
    assert stats["mean_reprojection_error"] < 1.0
    assert stats["mean_track_length"] > 3
    for f in ("database.db", "model.ply", "sparse/images.bin", "sparse/points3D.bin"):
        assert (out / f).exists(), f
    metrics = evaluate_poses(model_poses(out / "sparse"), gt)
    assert metrics["auc5"] > 0.9
    assert metrics["center_error"] < 0.05  # scene is 8 units across


def test_keypoints_enter_colmap_with_half_pixel_offset(scene):
    root, _, keypoints, _ = scene
    with pycolmap.Database.open(root / "out" / "database.db") as db:
        image = db.read_image_with_name("002.jpg")
        stored = db.read_keypoints(image.image_id)[:, :2]
        camera = db.read_camera(image.camera_id)
    assert np.allclose(stored, keypoints["002.jpg"] + 0.5, atol=1e-4)
    assert (camera.width, camera.height) == (W, H)
    assert not camera.has_prior_focal_length  # no EXIF: COLMAP's default guess, refined by BA
    assert camera.focal_length == pytest.approx(1.2 * W)


def test_rerun_with_same_inputs_reuses_the_model(scene):
    root, _, _, first = scene
    again = sfm.main(root / "images", root / "features.h5", root / "matches.h5", root / "out",
                     options=SfMOptions(progress=False))
    assert again.skipped
    assert again.stats["registered"] == first.stats["registered"]
    # another camera mode is another configuration: mapped again, not reused
    other = sfm.main(root / "images", root / "features.h5", root / "matches.h5", root / "out",
                     options=SfMOptions(CameraOptions("single"), progress=False))
    assert not other.skipped
    assert other.stats["num_cameras"] == 1
    assert other.stats["registered"] == 6


def test_unrelated_images_exit_2_with_explanation(tmp_path, capsys):
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    keypoints = {}
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(tmp_path / "images" / name)
        keypoints[name] = rng.uniform([0, 0], [W - 1, H - 1], size=(300, 2))
    _write_features(tmp_path / "features.h5", keypoints)
    random_matches = np.stack([np.arange(200), rng.permutation(300)[:200]], axis=1)
    _write_matches(tmp_path / "matches.h5", {("a.jpg", "b.jpg"): random_matches},
                   {"a.jpg": 300, "b.jpg": 300})
    code = cli.main(["sfm", str(tmp_path / "images"), str(tmp_path / "features.h5"),
                     str(tmp_path / "matches.h5"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "did not reconstruct" in err
    # random matches either fail verification or leave far fewer inliers than a model needs
    assert "verification" in err or "too few inliers" in err
    assert "Traceback" not in err
    assert "error" in json.loads((tmp_path / "out" / "stats.json").read_text())


def test_pairs_file_restricts_the_pairs(scene, tmp_path):
    root = scene[0]
    pairs = [("000.jpg", "002.jpg"), ("002.jpg", "004.jpg"), ("004.jpg", "000.jpg"), ("000.jpg", "999.jpg")]
    textfiles.write_pairs(tmp_path / "pairs.txt", pairs)
    # 999.jpg is not among the images: the pair is ignored, not an error
    result = sfm.main(root / "images", root / "features.h5", root / "matches.h5", tmp_path / "out",
                      pairs_path=tmp_path / "pairs.txt", options=SfMOptions(progress=False))
    assert result.stats["pairs"]["matched_pairs"] == 3
    assert result.stats["registered"] == 3 and result.stats["total"] == 6
    assert result.stats["unregistered"] == ["001.jpg", "003.jpg", "005.jpg"]


# ------------------------------------------------------------------------------------------
# cameras


def test_global_mapper(tmp_path):
    gt, _ = synthetic_scene(tmp_path, n_images=5, n_points=500, seed=2)
    result = sfm.main(tmp_path / "images", tmp_path / "features.h5", tmp_path / "matches.h5",
                      tmp_path / "out", options=SfMOptions(mapper="global", progress=False))
    assert result.stats["registered"] == 5 and result.stats["mapper"] == "global"
    assert evaluate_poses(model_poses(tmp_path / "out" / "sparse"), gt)["auc5"] > 0.9


def test_a_stale_journal_is_not_rolled_into_a_rebuilt_database(scene, tmp_path):
    """A run killed while COLMAP wrote database.db leaves database.db-journal; the next run's new
    database must not get the old pages rolled into it when it is opened."""
    import shutil
    import sqlite3

    root = scene[0]
    db_path = tmp_path / "database.db"
    shutil.copyfile(root / "out" / "database.db", db_path)
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM keypoints")  # the journal now holds the old keypoint pages
    stale = (tmp_path / "database.db-journal").read_bytes()
    conn.execute("ROLLBACK")
    conn.close()
    (tmp_path / "database.db-journal").write_bytes(stale)  # as a kill -9 leaves it
    names = ["000.jpg", "001.jpg", "002.jpg"]  # another database than the old one
    pairs = [("000.jpg", "001.jpg"), ("001.jpg", "002.jpg")]
    sfm.build_database(db_path, root / "images", root / "features.h5", root / "matches.h5", names, pairs,
                       CameraOptions())
    assert not (tmp_path / "database.db-journal").exists()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM keypoints").fetchone()[0] == len(names)
    conn.close()
