"""Two-view pose accuracy of the raw matches against ground-truth cameras.

Why: the pose AUC of a finished reconstruction (``evaluate``) saturates on well-textured scenes:
any decent matcher registers every image and bundle adjustment then polishes all poses to
about the same accuracy, so the SfM numbers no longer tell matchers apart. The pose estimated
from one pair's raw matches does: it depends directly on how many of those matches are right
and how precisely they are placed. This is the protocol of the MegaDepth-1500 relative-pose
table of the LightGlue and OmniGlue papers (after SuperGlue), applied to an output folder.

What, from ``OUT/features.h5`` and ``OUT/matches.h5`` (the matcher's output, before any
geometric verification) and a folder of Strecha ``.camera`` files:

* Every GT pair: all unordered pairs (sorted names, ``itertools.combinations``) of the images
  present both in the ground truth and in ``features.h5``.
* Pose error of a pair: an essential matrix is estimated with pycolmap's LO-RANSAC from the raw
  matches and the GT intrinsics (PINHOLE cameras, ``max_error`` = ``--ransac-px`` pixels,
  fixed random seed, so re-runs give the same numbers) and decomposed (cheirality check) into
  ``R_est, t_est`` with ``x1 = R x0 + t``. Keypoints and K share one pixel frame; features
  extracted from resized copies of the GT images get K scaled to their ``image_size``. The error is
  ``max(e_R, e_t)`` in degrees, where ``e_R`` is the angle of ``R_est^T R_gt`` and
  ``e_t = min(a, 180 - a)`` with ``a`` the angle between ``t_est`` and ``t_gt``: an essential
  matrix fixes the translation only up to sign.
  A pair scores 180 degrees (and counts in ``failed_pairs``) when it is missing from
  ``matches.h5``, has fewer than 5 matches, or RANSAC finds no model.
* Pose AUC@5/10/20 over those errors (``evaluate.pose_auc``).
* ``mean_matches``: raw matches per GT pair (a pair missing from ``matches.h5`` counts 0).
* Epipolar precision: with the GT fundamental matrix ``F = K1^-T [t]x R K0^-1`` (so that
  ``x1^T F x0 = 0``), the symmetric epipolar distance of a match is
  ``max(d(x1, F x0), d(x0, F^T x1))``, d being the point-to-line distance in pixels. A match is
  correct when that distance is below ``--epipolar-px``. ``epipolar_precision`` pools all
  matches of all pairs; ``epipolar_precision_mean_pair`` averages the per-pair fractions over
  the pairs that have at least one match. GT pairs without a baseline (no epipolar geometry)
  are left out of both.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..formats import h5io, hloc, matches_h5
from ..geometry.scenes import CameraPose, read_strecha_dir
from .reconstruction import pose_auc, relative_pose, rotation_angle_deg, vector_angle_deg

log = logging.getLogger(__name__)

MIN_MATCHES = 5
FAILED_ERROR = 180.0
RANSAC_SEED = 0
RESULT_KEYS = ("pairs", "auc5", "auc10", "auc20", "mean_matches", "epipolar_precision",
               "epipolar_precision_mean_pair", "failed_pairs")


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def fundamental_matrix(K0: np.ndarray, K1: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``F = K1^-T [t]x R K0^-1`` for the relative pose ``x1 = R x0 + t``: ``x1^T F x0 = 0``."""
    return np.linalg.inv(K1).T @ _skew(t) @ R @ np.linalg.inv(K0)


def symmetric_epipolar_distance(F: np.ndarray, pts0: np.ndarray, pts1: np.ndarray) -> np.ndarray:
    """Per match, ``max(d(x1, F x0), d(x0, F^T x1))`` in pixels; pts (N, 2)."""
    h0 = np.hstack([pts0, np.ones((len(pts0), 1))])
    h1 = np.hstack([pts1, np.ones((len(pts1), 1))])
    lines1 = h0 @ F.T  # F x0: lines in image 1
    lines0 = h1 @ F  # F^T x1: lines in image 0
    algebraic = np.abs(np.sum(h1 * lines1, axis=1))  # |x1^T F x0|, the same for both lines
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = algebraic / np.linalg.norm(lines1[:, :2], axis=1)
        d0 = algebraic / np.linalg.norm(lines0[:, :2], axis=1)
    dist = np.maximum(d0, d1)
    return np.where(np.isnan(dist), np.inf, dist)  # a degenerate line proves nothing


def _translation_error_deg(t_est: np.ndarray, t_gt: np.ndarray) -> float:
    a = vector_angle_deg(t_est, t_gt)
    return FAILED_ERROR if math.isinf(a) else min(a, 180.0 - a)


def image_intrinsics(pose: CameraPose, image_size: np.ndarray | None) -> tuple[np.ndarray, tuple[int, int]]:
    """The GT K (and image size) in the pixel frame of the features.

    Features extracted from resized copies of the GT images (``image_size`` differs from the
    ``.camera`` size) get K scaled to that size, pixel centres kept: ``x' = (x + 0.5) s - 0.5``.
    """
    K = np.asarray(pose.K, dtype=np.float64)
    gt_size = pose.size if pose.size is not None and min(pose.size) > 0 else None
    size = tuple(int(v) for v in image_size[:2]) if image_size is not None else gt_size
    if size is None:
        return K, (round(2 * K[0, 2] + 1), round(2 * K[1, 2] + 1))
    if gt_size is None or tuple(gt_size) == size:
        return K, size
    sx, sy = size[0] / gt_size[0], size[1] / gt_size[1]
    if abs(sx / sy - 1.0) > 0.02:
        log.warning("image size %s is not a scaled copy of the ground truth's %s: K scaled per axis",
                    size, tuple(gt_size))
    S = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return S @ K, size


def pinhole_camera(K: np.ndarray, size: tuple[int, int]):
    import pycolmap

    return pycolmap.Camera(model="PINHOLE", width=int(size[0]), height=int(size[1]),
                           params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]])


def pose_error_deg(pts0: np.ndarray, pts1: np.ndarray, cam0, cam1, R_gt: np.ndarray, t_gt: np.ndarray,
                   ransac_px: float) -> float | None:
    """max(rotation error, unsigned translation-direction error); None when no pose is found."""
    import pycolmap

    if len(pts0) < MIN_MATCHES:
        return None
    options = pycolmap.RANSACOptions(max_error=float(ransac_px), random_seed=RANSAC_SEED)
    result = pycolmap.estimate_essential_matrix(pts0.astype(np.float64), pts1.astype(np.float64),
                                                cam0, cam1, options)
    if not result:
        return None
    pose = result["cam2_from_cam1"]
    R_est = np.asarray(pose.rotation.matrix())
    t_est = np.asarray(pose.translation)
    return max(rotation_angle_deg(R_est.T @ R_gt), _translation_error_deg(t_est, t_gt))


def _gt_to_feature_names(gt: Mapping[str, CameraPose], names: list[str]) -> dict[str, str]:
    """GT name -> features.h5 name: exact names, else (like ``evaluate``) unique basenames."""
    available = set(names)
    exact = {n: n for n in gt if n in available}
    if exact:
        return exact
    by_base: dict[str, list[str]] = {}
    for name in names:
        by_base.setdefault(Path(name).name, []).append(name)
    return {g: by_base[Path(g).name][0] for g in gt if len(by_base.get(Path(g).name, [])) == 1}


def evaluate_pairs(features_path: Path | str, matches_path: Path | str, gt_dir: Path | str,
                   ransac_px: float = 1.0, epipolar_px: float = 2.0) -> dict:
    """Two-view metrics of the raw matches (see the module docstring); keys ``RESULT_KEYS``.

    A GT pair absent from ``matches.h5`` is not an error: it scores 180 degrees, 0 matches, and
    counts in ``failed_pairs`` (with the pairs that have < 5 matches or no RANSAC model).
    Raises FileNotFoundError (missing file or folder) or ValueError (no GT image in features.h5).
    """
    features_path, matches_path = Path(features_path), Path(matches_path)
    for path, stage in ((features_path, "extract"), (matches_path, "match")):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (run '{stage}' first)")
    gt = read_strecha_dir(gt_dir)
    to_feature = _gt_to_feature_names(gt, h5io.list_names(features_path))
    if not to_feature:
        raise ValueError(f"no ground-truth image of {gt_dir} is in {features_path}")
    # our layout or hloc's (whose keys are decoded against the image names)
    names = h5io.list_names(features_path)
    stored = {matches_h5.canonical_pair(a, b) for a, b in hloc.stored_pairs(matches_path, names)}

    keypoints: dict[str, np.ndarray] = {}
    intrinsics: dict[str, np.ndarray] = {}
    cameras: dict[str, object] = {}
    for g, f in to_feature.items():
        feats = h5io.read_features(features_path, f)
        keypoints[g] = feats["keypoints"].astype(np.float64)
        intrinsics[g], size = image_intrinsics(gt[g], feats.get("image_size"))
        cameras[g] = pinhole_camera(intrinsics[g], size)

    errors, num_matches, per_pair_precision = [], [], []
    correct_total = counted_total = failed = 0
    for a, b in itertools.combinations(sorted(to_feature), 2):
        fa, fb = to_feature[a], to_feature[b]
        if matches_h5.canonical_pair(fa, fb) not in stored:
            errors.append(FAILED_ERROR)
            num_matches.append(0)
            failed += 1
            continue
        matches, _ = matches_h5.read_matches(matches_path, fa, fb)
        pts0, pts1 = keypoints[a][matches[:, 0]], keypoints[b][matches[:, 1]]
        num_matches.append(len(matches))
        R_gt, t_gt = relative_pose(gt[a], gt[b])
        error = pose_error_deg(pts0, pts1, cameras[a], cameras[b], R_gt, t_gt, ransac_px)
        if error is None:
            error = FAILED_ERROR
            failed += 1
        errors.append(error)
        if len(matches) and np.linalg.norm(t_gt) > 1e-12:
            F = fundamental_matrix(intrinsics[a], intrinsics[b], R_gt, t_gt)
            correct = int(np.sum(symmetric_epipolar_distance(F, pts0, pts1) < epipolar_px))
            correct_total += correct
            counted_total += len(matches)
            per_pair_precision.append(correct / len(matches))

    aucs = pose_auc(np.asarray(errors, dtype=np.float64))
    return {
        "pairs": len(errors),
        "auc5": aucs[0],
        "auc10": aucs[1],
        "auc20": aucs[2],
        "mean_matches": float(np.mean(num_matches)) if num_matches else 0.0,
        "epipolar_precision": correct_total / counted_total if counted_total else 0.0,
        "epipolar_precision_mean_pair": float(np.mean(per_pair_precision)) if per_pair_precision else 0.0,
        "failed_pairs": failed,
    }
