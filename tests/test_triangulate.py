"""``triangulate``: the sample's ground-truth cameras and poses held fixed, our matches -> 3D points."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from conftest import resized_sample, small_preset
from PIL import Image

from omniglue_sfm import cli, triangulate
from omniglue_sfm.formats import h5io
from omniglue_sfm.formats.images import list_images
from omniglue_sfm.geometry import scenes

SAMPLE_GT = Path(__file__).resolve().parents[1] / "datasets" / "herzjesu_p8_small" / "gt"


def _gt_model(image_dir: Path, model_dir: Path) -> pycolmap.Reconstruction:
    """The Strecha ground truth as a COLMAP model, intrinsics scaled to the resized images."""
    poses = {}
    for name, pose in scenes.read_strecha_dir(SAMPLE_GT).items():
        with Image.open(image_dir / name) as img:
            w, h = img.size
        K = np.diag([w / pose.size[0], h / pose.size[1], 1.0]) @ pose.K
        poses[name] = replace(pose, K=K, size=(w, h))
    rec = scenes.poses_to_reconstruction(poses)
    model_dir.mkdir(parents=True)
    rec.write(model_dir)
    return rec


PRESET = small_preset("mnn", max_keypoints=512, resize_max=480)


@pytest.fixture(scope="module")
def gt_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("triangulate")
    images = resized_sample((root / "images").mkdir() or root / "images", 8, 480)
    _gt_model(images, root / "gt_model")
    return images, root / "gt_model"


@pytest.fixture(scope="module")
def gt_run(gt_scene: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    images, gt_model = gt_scene
    out = tmp_path_factory.mktemp("triangulate_run") / "out"
    result = triangulate.main(images, out, gt_model, PRESET)
    return out, result.stats


def test_gt_poses_stay_fixed_and_points_reproject(gt_scene: tuple[Path, Path],
                                                  gt_run: tuple[Path, dict]) -> None:
    images, gt_model = gt_scene
    out, stats = gt_run
    rec = pycolmap.Reconstruction(out / "sparse")
    reference = pycolmap.Reconstruction(gt_model)
    assert rec.num_reg_images() == 8
    for image in reference.images.values():
        got = rec.find_image_with_name(image.name)
        assert got.image_id == image.image_id
        # unchanged up to the quaternion's renormalisation (the Strecha rotations have 6 digits)
        np.testing.assert_allclose(got.cam_from_world().matrix(), image.cam_from_world().matrix(), atol=1e-6)
        np.testing.assert_array_equal(rec.cameras[got.camera_id].params,
                                      reference.cameras[image.camera_id].params)
    assert rec.num_points3D() > 300
    assert rec.compute_mean_reprojection_error() < 1.0
    assert stats["mean_track_length"] > 2.5
    for name in ("features.h5", "matches.h5", "pairs.txt", "database.db", "model.ply", "stats.json"):
        assert (out / name).exists(), name
    assert stats["image_dir"] == str(images.resolve())


def test_wrong_poses_triangulate_less(gt_scene: tuple[Path, Path], gt_run: tuple[Path, dict],
                                      tmp_path: Path) -> None:
    """The poses are used, not re-estimated: the cameras turned by 20 degrees about their optical
    axis (every other one) keep their wrong pose and see few points (features and matches reused)."""
    images, gt_model = gt_scene
    rec = pycolmap.Reconstruction(gt_model)
    half = np.radians(10)
    turn = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.0, 0.0, np.sin(half), np.cos(half)])),
                            np.zeros(3))
    turned = [image.name for image in rec.images.values() if image.image_id % 2 == 0]
    for image in rec.images.values():
        if image.name in turned:
            rec.frames[image.frame_id].rig_from_world = turn * rec.frames[image.frame_id].rig_from_world
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    rec.write(wrong)
    out = tmp_path / "out"
    _reuse_matches(gt_run, out)
    triangulate.main(images, out, wrong, PRESET)
    got = pycolmap.Reconstruction(out / "sparse")
    good = pycolmap.Reconstruction(gt_run[0] / "sparse")
    for name in turned:
        np.testing.assert_allclose(got.find_image_with_name(name).cam_from_world().matrix(),
                                   rec.find_image_with_name(name).cam_from_world().matrix(), atol=1e-6)
        seen = got.find_image_with_name(name).num_points3D
        seen_good = good.find_image_with_name(name).num_points3D
        assert seen < 0.2 * seen_good, (name, seen, seen_good)


def _reuse_matches(gt_run: tuple[Path, dict], out: Path) -> None:
    out.mkdir()
    for name in ("features.h5", "global.h5", "matches.h5", "pairs.txt"):
        shutil.copy(gt_run[0] / name, out / name)


def test_reference_with_its_own_keypoints(gt_scene: tuple[Path, Path], gt_run: tuple[Path, dict],
                                          tmp_path: Path) -> None:
    """An earlier model as reference: its images' 2D points (other keypoints) are replaced by ours."""
    images, gt_model = gt_scene
    rec = pycolmap.Reconstruction(gt_model)
    with_points = pycolmap.Reconstruction()
    for camera in rec.cameras.values():
        with_points.add_camera_with_trivial_rig(camera)
    rng = np.random.default_rng(0)
    for image in rec.images.values():
        cam = rec.cameras[image.camera_id]
        keypoints = rng.uniform(0, [cam.width, cam.height], size=(17, 2))
        with_points.add_image_with_trivial_frame(
            pycolmap.Image(name=image.name, keypoints=keypoints, camera_id=image.camera_id,
                           image_id=image.image_id), image.cam_from_world())
    reference = tmp_path / "reference"
    reference.mkdir()
    with_points.write(reference)
    out = tmp_path / "out"
    _reuse_matches(gt_run, out)
    stats = triangulate.main(images, out, reference, PRESET).stats
    assert abs(stats["num_points3D"] - gt_run[1]["num_points3D"]) < 0.05 * gt_run[1]["num_points3D"]
    got = pycolmap.Reconstruction(out / "sparse")
    for image in got.images.values():
        kps = h5io.read_keypoints(out / "features.h5", image.name)
        np.testing.assert_allclose(np.array([p.xy for p in image.points2D]), kps + 0.5, atol=1e-4)


def test_reference_errors(gt_scene: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, gt_model = gt_scene
    # the reference describes images at another size than the folder holds
    small = resized_sample((tmp_path / "small").mkdir() or tmp_path / "small", 8, 240)
    assert cli.main(["triangulate", str(small), str(tmp_path / "o1"), "--reference", str(gt_model),
                     "--preset", "aliked+mnn"]) == 1
    assert "reference camera" in capsys.readouterr().err
    # an image of the reference is not in the folder
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in list_images(images)[:3]:
        (partial / name).write_bytes((images / name).read_bytes())
    assert cli.main(["triangulate", str(partial), str(tmp_path / "o2"), "--reference", str(gt_model)]) == 1
    assert "are not in" in capsys.readouterr().err
    assert cli.main(["triangulate", str(images), str(tmp_path / "o3"), "--reference", str(tmp_path)]) == 1
    assert "no COLMAP model" in capsys.readouterr().err
