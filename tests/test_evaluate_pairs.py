"""``evaluate-pairs``: two-view pose AUC and epipolar precision of raw matches, on a synthetic scene."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from omniglue_sfm import cli
from omniglue_sfm.evaluation import comparison
from omniglue_sfm.evaluation.reconstruction import relative_pose
from omniglue_sfm.evaluation.two_view import (
    RESULT_KEYS,
    evaluate_pairs,
    fundamental_matrix,
    pinhole_camera,
    pose_error_deg,
    symmetric_epipolar_distance,
)
from omniglue_sfm.formats import matches_h5, sharded
from omniglue_sfm.geometry.scenes import CameraPose, write_strecha_camera

NAMES = ("a.jpg", "b.jpg", "c.jpg")
NUM_POINTS = 300


def _camera(center: np.ndarray, f: float) -> CameraPose:
    z = -center / np.linalg.norm(center)  # looking at the origin
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    K = np.array([[f, 0, 320.0], [0, f * 1.01, 240.0], [0, 0, 1]])
    return CameraPose(R=R, t=-R @ center, K=K, size=(640, 480))


def _project(pose: CameraPose, X: np.ndarray) -> np.ndarray:
    x = (pose.K @ (pose.R @ X.T + pose.t[:, None])).T
    return x[:, :2] / x[:, 2:]


def make_scene(root: Path, wrong: dict[tuple[str, str], float] | None = None,
               missing: tuple[str, str] | None = None, noise_px: float = 0.2,
               gt_shift: dict[str, np.ndarray] | None = None,
               keep: dict[tuple[str, str], int] | None = None, scale: float = 1.0) -> tuple[Path, Path]:
    """GT folder and OUT (features.h5, matches.h5) of 3 cameras seeing NUM_POINTS points.

    ``wrong[(a, b)]`` is the fraction of that pair's matches replaced by random wrong indices;
    ``missing`` is a pair left out of matches.h5; ``gt_shift[name]`` moves that camera's centre
    in the GT file only (same rotation); ``keep[(a, b)]`` keeps only that many matches of a pair.
    ``scale`` < 1: the features come from resized copies of the GT images. Returns (out_dir, gt_dir).
    """
    rng = np.random.default_rng(0)
    gt_dir, out = root / "gt", root / "out"
    gt_dir.mkdir(parents=True)
    cams = {n: _camera(np.array([6 * math.sin(a), 0.5 * i, -6 * math.cos(a)]), f)
            for i, (n, a, f) in enumerate(zip(NAMES, (-0.35, 0.0, 0.4), (700.0, 800.0, 750.0), strict=True))}
    X = rng.uniform(-1.5, 1.5, size=(NUM_POINTS, 3))
    # each image stores the projections in its own order: point j is keypoint index_of[n][j]
    index_of, keypoints = {}, {}
    with sharded.ShardedH5(out / "features.h5", "features", {"test": 1}) as store:
        for n, pose in cams.items():
            shift = (gt_shift or {}).get(n, np.zeros(3))
            write_strecha_camera(gt_dir / f"{n}.camera",
                                 CameraPose(R=pose.R, t=pose.t - pose.R @ shift, K=pose.K, size=pose.size))
            perm = rng.permutation(NUM_POINTS)
            kpts = np.empty((NUM_POINTS, 2))
            kpts[perm] = ((_project(pose, X) + 0.5) * scale - 0.5  # pixel centres at integers
                          + rng.normal(scale=noise_px, size=(NUM_POINTS, 2)))
            index_of[n], keypoints[n] = perm, kpts
            store.add(n, {"keypoints": kpts.astype(np.float32),
                          "scores": np.ones(NUM_POINTS, np.float32),
                          "descriptors": rng.normal(size=(8, NUM_POINTS)).astype(np.float32),
                          "image_size": np.array([round(640 * scale), round(480 * scale)])})
    with sharded.ShardedH5(out / "matches.h5", "matches", {"test": 1}) as store:
        for a, b in itertools.combinations(NAMES, 2):
            if (a, b) == missing:
                continue
            if a == "a.jpg" and b == "c.jpg":
                a, b = b, a  # one pair computed in the non-canonical order, stored like match.py
            m0 = np.full(NUM_POINTS, -1, dtype=np.int32)
            m0[index_of[a]] = index_of[b]
            frac = (wrong or {}).get(tuple(sorted((a, b))), 0.0)
            bad = rng.choice(NUM_POINTS, size=round(frac * NUM_POINTS), replace=False)
            m0[bad] = m0[np.roll(bad, 1)]  # a derangement: still one-to-one, each one wrong
            if tuple(sorted((a, b))) in (keep or {}):
                m0[rng.permutation(NUM_POINTS)[keep[tuple(sorted((a, b)))]:]] = -1
            mc, sc, (c0, c1) = matches_h5.orient_matches(a, b, m0, np.ones(NUM_POINTS, np.float32),
                                                         NUM_POINTS)
            item, attrs = matches_h5.write_match_item(mc, sc, NUM_POINTS)
            store.add(matches_h5.pair_key(c0, c1), item, attrs)
    return out, gt_dir


def _run(out: Path, gt: Path, **kw) -> dict:
    return evaluate_pairs(out / "features.h5", out / "matches.h5", gt, **kw)


def test_epipolar_distance_is_pixels_to_the_gt_epipolar_line():
    # image 0 zoomed in 2.5x more than image 1: 3 px in one image are not 3 px in the other
    cams = [_camera(np.array([-2.0, 0.0, -6.0]), 2000.0), _camera(np.array([2.0, 0.3, -6.0]), 800.0)]
    X = np.random.default_rng(1).uniform(-0.3, 0.3, size=(20, 3))
    x0, x1 = _project(cams[0], X), _project(cams[1], X)
    R, t = relative_pose(*cams)
    F = fundamental_matrix(cams[0].K, cams[1].K, R, t)
    assert np.max(symmetric_epipolar_distance(F, x0, x1)) < 1e-6
    # x1 moved 3 px off its epipolar line F x0: 3 px in image 1, more in image 0 -> the larger
    line1 = np.hstack([x0, np.ones((20, 1))]) @ F.T
    normal1 = line1[:, :2] / np.linalg.norm(line1[:, :2], axis=1, keepdims=True)
    d = symmetric_epipolar_distance(F, x0, x1 + 3 * normal1)
    assert np.all(d > 5) and np.all(d < 10)
    # x0 moved 3 px off its epipolar line F^T x1: 3 px in image 0, about 1.2 px in image 1
    line0 = np.hstack([x1, np.ones((20, 1))]) @ F
    normal0 = line0[:, :2] / np.linalg.norm(line0[:, :2], axis=1, keepdims=True)
    d = symmetric_epipolar_distance(F, x0 + 3 * normal0, x1)
    np.testing.assert_allclose(d, 3.0, rtol=1e-6)


def test_translation_sign_is_not_an_error():
    """An essential matrix fixes t up to sign: a GT with -t scores like +t (SuperGlue protocol)."""
    cams = [_camera(np.array([-2.0, 0.0, -6.0]), 700.0), _camera(np.array([2.0, 0.3, -6.0]), 800.0)]
    X = np.random.default_rng(2).uniform(-1, 1, size=(50, 3))
    x0, x1 = _project(cams[0], X), _project(cams[1], X)
    pin = [pinhole_camera(c.K, c.size) for c in cams]
    R, t = relative_pose(*cams)
    assert pose_error_deg(x0, x1, *pin, R, t, 1.0) < 0.1
    assert pose_error_deg(x0, x1, *pin, R, -t, 1.0) < 0.1
    assert pose_error_deg(x0, x1, *pin, R.T, t, 1.0) > 10
    assert pose_error_deg(x0[:4], x1[:4], *pin, R, t, 1.0) is None  # < 5 matches: no pose


def test_exact_matches_score_one_and_wrong_matches_show(tmp_path):
    out, gt = make_scene(tmp_path / "clean")
    clean = _run(out, gt)
    assert set(clean) == set(RESULT_KEYS)
    assert clean["pairs"] == 3 and clean["failed_pairs"] == 0
    assert clean["auc5"] > 0.95
    assert clean["epipolar_precision"] == 1.0 and clean["epipolar_precision_mean_pair"] == 1.0
    assert clean["mean_matches"] == NUM_POINTS
    assert _run(out, gt) == clean  # seeded RANSAC: the same numbers again

    # half of (a, b) wrong: RANSAC still finds the pose, precision of that pair ~0.5
    out, gt = make_scene(tmp_path / "half", wrong={("a.jpg", "b.jpg"): 0.5})
    half = _run(out, gt)
    assert half["mean_matches"] == NUM_POINTS
    assert half["auc5"] > 0.9
    # a random keypoint lies within 2 px of the epipolar line now and then (~1 %)
    assert half["epipolar_precision"] == pytest.approx(2.5 / 3, abs=0.02)
    assert half["epipolar_precision_mean_pair"] == pytest.approx(2.5 / 3, abs=0.02)

    # all of (a, c) wrong (the pair stored flipped): no right pose for it
    out, gt = make_scene(tmp_path / "bad", wrong={("a.jpg", "c.jpg"): 1.0})
    bad = _run(out, gt)
    assert bad["epipolar_precision"] == pytest.approx(2 / 3, abs=0.02)
    assert bad["auc20"] < 0.7  # one pair in three has an error above 20 degrees
    assert bad["auc5"] > 0.6  # the two good pairs stay good


def test_translation_direction_error_counts(tmp_path):
    # the GT says camera b sits 0.3 higher: rotations still agree, translation directions do not
    out, gt = make_scene(tmp_path, gt_shift={"b.jpg": np.array([0.0, 0.3, 0.0])})
    result = _run(out, gt)
    assert result["failed_pairs"] == 0
    assert result["auc5"] < 0.5  # 2 of 3 pairs are ~8 degrees off
    assert result["auc20"] > 0.6


def test_features_of_resized_images_use_scaled_intrinsics(tmp_path):
    out, gt = make_scene(tmp_path, scale=0.5, noise_px=0.1)
    result = _run(out, gt)
    assert result["auc5"] > 0.95
    assert result["epipolar_precision"] == 1.0


def test_missing_pair_counts_as_failed(tmp_path):
    out, gt = make_scene(tmp_path, missing=("b.jpg", "c.jpg"))
    result = _run(out, gt)
    assert result["pairs"] == 3 and result["failed_pairs"] == 1
    assert result["mean_matches"] == pytest.approx(2 * NUM_POINTS / 3)
    assert result["auc20"] < 0.7
    assert result["epipolar_precision"] == 1.0

    out, gt = make_scene(tmp_path / "few", keep={("a.jpg", "b.jpg"): 4})
    result = _run(out, gt)
    assert result["failed_pairs"] == 1  # 4 matches: no essential matrix, 180 degrees
    assert result["auc20"] < 0.7
    assert result["mean_matches"] == pytest.approx((4 + 2 * NUM_POINTS) / 3)


def test_cli_json_and_clean_errors(tmp_path, capsys):
    out, gt = make_scene(tmp_path)
    assert cli.main(["evaluate-pairs", str(out), "--gt", str(gt), "--json", "--ransac-px", "1.5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    parsed = json.loads(lines[0])
    assert tuple(parsed) == RESULT_KEYS
    assert parsed["pairs"] == 3 and parsed["epipolar_precision"] == 1.0

    assert cli.main(["evaluate-pairs", str(out), "--gt", str(gt)]) == 0
    assert "AUC@5/10/20" in capsys.readouterr().out

    empty = tmp_path / "empty"
    empty.mkdir()
    other_gt = tmp_path / "other_gt"
    other_gt.mkdir()
    write_strecha_camera(other_gt / "zzz.jpg.camera", _camera(np.array([0.0, 0.0, -5.0]), 700.0))
    for argv, message in [
        ([str(tmp_path / "nope"), "--gt", str(gt)], "does not exist"),
        ([str(empty), "--gt", str(gt)], "features.h5"),
        ([str(out), "--gt", str(tmp_path / "no_gt")], "does not exist"),
        ([str(out), "--gt", str(other_gt)], "no ground-truth image"),
    ]:
        assert cli.main(["evaluate-pairs", *argv]) == 1
        captured = capsys.readouterr()
        assert message in captured.err and "Traceback" not in captured.err
        assert captured.out == ""


def test_compare_rows_get_two_view_metrics(tmp_path):
    out, gt = make_scene(tmp_path)
    metrics = comparison.two_view_metrics(out, gt)
    assert metrics["pair_auc5"] > 0.95 and metrics["epipolar_precision"] == 1.0
    (tmp_path / "sift").mkdir()
    assert comparison.two_view_metrics(tmp_path / "sift", gt) == {}  # no h5 files: "-" in the table
