"""Evaluation against ground truth: Strecha files, pose AUC, Sim3-aligned centre error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from omniglue_sfm import cli
from omniglue_sfm.evaluation.reconstruction import center_error, evaluate, evaluate_poses, pose_auc, umeyama
from omniglue_sfm.geometry.scenes import (
    CameraPose,
    read_strecha_camera,
    read_strecha_dir,
    write_strecha_camera,
)

SAMPLE_GT = Path(__file__).resolve().parents[1] / "datasets" / "herzjesu_p8_small" / "gt"


def _rotation(axis: np.ndarray, deg: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(deg)
    return np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * K @ K


def _look_at(center: np.ndarray, target: np.ndarray) -> CameraPose:
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])  # rows: camera axes in world coordinates
    K = np.array([[800.0, 0, 320], [0, 800, 240], [0, 0, 1]])
    return CameraPose(R=R, t=-R @ center, K=K, size=(640, 480))


def synthetic_gt(n: int = 6) -> dict[str, CameraPose]:
    """Cameras on an arc, all looking at the origin."""
    poses = {}
    for i in range(n):
        a = math.radians(-40 + 80 * i / (n - 1))
        center = np.array([8 * math.sin(a), 0.3 * i, -8 * math.cos(a)])
        poses[f"{i:04d}.jpg"] = _look_at(center, np.zeros(3))
    return poses


def similarity(poses: dict[str, CameraPose], s: float, R: np.ndarray, t: np.ndarray) -> dict[str, CameraPose]:
    """The same cameras in another frame x' = s R x + t (what an SfM model looks like)."""
    out = {}
    for name, p in poses.items():
        R_new = p.R @ R.T
        c_new = s * R @ p.center + t
        out[name] = CameraPose(R=R_new, t=-R_new @ c_new)
    return out


def test_pose_auc_known_values():
    assert pose_auc(np.array([0.0, 0.0]), [5.0]) == pytest.approx([1.0])
    assert pose_auc(np.array([0.0, math.inf]), [5.0]) == pytest.approx([0.5])
    # one pair at 2.5 deg: recall 0 on [0, 2.5), 1 on [2.5, 5) -> area 0.5
    assert pose_auc(np.array([2.5]), [5.0, 10.0]) == pytest.approx([0.5, 0.75])
    assert pose_auc(np.array([]), [5.0]) == [0.0]


def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(10, 3))
    R = _rotation(np.array([1.0, 2.0, 3.0]), 40)
    dst = (2.5 * R @ src.T).T + np.array([1.0, -2.0, 0.5])
    s, R_est, t_est = umeyama(src, dst)
    assert s == pytest.approx(2.5)
    assert np.allclose(R_est, R, atol=1e-9)
    assert np.allclose(t_est, [1.0, -2.0, 0.5])


def test_strecha_roundtrip_and_convention(tmp_path):
    gt = synthetic_gt(3)
    for name, pose in gt.items():
        write_strecha_camera(tmp_path / f"{name}.camera", pose)
    back = read_strecha_dir(tmp_path)
    assert sorted(back) == sorted(gt)
    for name in gt:
        assert np.allclose(back[name].R, gt[name].R)
        assert np.allclose(back[name].center, gt[name].center)
    # the file stores R camera-to-world: its rows 5-7 are the transpose of our world-to-camera R
    lines = (tmp_path / "0000.jpg.camera").read_text().splitlines()
    stored = np.array([[float(v) for v in lines[i].split()] for i in (4, 5, 6)])
    assert np.allclose(stored, gt["0000.jpg"].R.T)


def test_sample_gt_is_readable():
    cam = read_strecha_camera(SAMPLE_GT / "0000.jpg.camera")
    assert cam.size == (1024, 683)
    assert cam.K[0, 0] == pytest.approx(919.83, abs=0.01)
    assert len(read_strecha_dir(SAMPLE_GT)) == 8


def test_perfect_model_in_another_frame_scores_one():
    gt = synthetic_gt()
    est = similarity(gt, 0.3, _rotation(np.array([0.2, 1.0, -0.4]), 70), np.array([5.0, 1.0, -2.0]))
    result = evaluate_poses(est, gt)
    assert result["registered"] == result["total"] == 6
    assert result["auc5"] == pytest.approx(1.0)
    assert result["center_error"] == pytest.approx(0.0, abs=1e-9)


def test_rotation_error_lowers_auc5_but_not_auc20():
    gt = synthetic_gt()
    est = dict(gt)
    p = gt["0002.jpg"]
    R_bad = _rotation(np.array([0.0, 1.0, 0.0]), 3.0) @ p.R  # 3 degrees off, same centre
    est["0002.jpg"] = CameraPose(R=R_bad, t=-R_bad @ p.center)
    result = evaluate_poses(est, gt)
    assert 0.6 < result["auc5"] < 0.95  # 5 of 15 pairs have about 3 degrees of error
    assert result["auc20"] > 0.9
    assert result["center_error"] == pytest.approx(0.0, abs=1e-9)


def test_unregistered_images_count_as_failures():
    gt = synthetic_gt()
    est = {k: v for k, v in gt.items() if k != "0005.jpg"}
    result = evaluate_poses(est, gt)
    assert result["registered"] == 5 and result["total"] == 6
    # 5 of 15 pairs involve the missing image: at most 10/15 can be right
    assert result["auc5"] == pytest.approx(10 / 15)
    assert result["auc20"] == pytest.approx(10 / 15)
    assert center_error({k: gt[k] for k in list(gt)[:2]}, gt) == math.inf


def test_moved_centre_shows_in_centre_error():
    gt = synthetic_gt()
    est = dict(gt)
    p = gt["0001.jpg"]
    moved = p.center + np.array([0.0, 0.0, 2.0])
    est["0001.jpg"] = CameraPose(R=p.R, t=-p.R @ moved)
    assert evaluate_poses(est, gt)["center_error"] > 0.01
    assert evaluate_poses(gt, gt)["center_error"] < 1e-9


def _write_model(path: Path, poses: dict[str, CameraPose]) -> None:
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera.create_from_model_name(1, "SIMPLE_PINHOLE", 800.0, 640, 480)
    rec.add_camera_with_trivial_rig(cam)
    for i, (name, p) in enumerate(sorted(poses.items()), 1):
        image = pycolmap.Image(name=name, camera_id=1, image_id=i)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(np.hstack([p.R, p.t[:, None]])))
    path.mkdir(parents=True)
    rec.write(path)


def test_evaluate_cli_on_a_written_model(tmp_path, capsys):
    gt = synthetic_gt()
    for name, pose in gt.items():
        write_strecha_camera(tmp_path / f"{name}.camera", pose)
    est = similarity({k: v for k, v in gt.items() if k != "0003.jpg"}, 2.0, np.eye(3), np.ones(3))
    _write_model(tmp_path / "model", est)
    result = evaluate(tmp_path / "model", tmp_path)
    assert result["registered"] == 5
    assert cli.main(["evaluate", str(tmp_path / "model"), "--gt", str(tmp_path), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    parsed = json.loads(lines[0])
    assert set(parsed) == {"registered", "total", "auc5", "auc10", "auc20", "center_error"}
    assert parsed["auc5"] == pytest.approx(10 / 15, abs=1e-4)  # poses went through float storage


def test_evaluate_cli_missing_gt_is_a_clean_error(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path), "--gt", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
