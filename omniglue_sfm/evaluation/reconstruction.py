"""Reconstruction accuracy against ground-truth cameras (docs/design.md §5).

* Pose AUC@5/10/20 degrees over ALL image pairs of the ground truth: the error of a pair is the
  larger of the relative-rotation error and the angle between the relative translation
  directions (signed: a reconstruction fixes the direction, unlike an essential matrix). A pair
  with an unregistered image has infinite error, so missing images lower the AUC.
* Median camera-centre error (ground-truth units) after a similarity transform that aligns the
  registered centres to the ground truth (Umeyama, least squares).
* For a georegistered model (``georef.json`` beside ``sparse/``): the residual of its alignment to
  the photos' GPS positions (metres: mean, median, max, rmse), ``georef_residual_m``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..geometry.geo import read_georef
from ..geometry.scenes import CameraPose, model_poses, read_strecha_dir

THRESHOLDS = (5.0, 10.0, 20.0)


def rotation_angle_deg(R: np.ndarray) -> float:
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    return math.degrees(math.acos(cos))


def vector_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 or nb < 1e-12:
        return math.inf  # no baseline: the direction is undefined
    return math.degrees(math.acos(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0)))


def relative_pose(p0: CameraPose, p1: CameraPose) -> tuple[np.ndarray, np.ndarray]:
    """Pose of camera 1 relative to camera 0: x1 = R x0 + t."""
    R = p1.R @ p0.R.T
    return R, p1.t - R @ p0.t


def pair_errors(est: Mapping[str, CameraPose], gt: Mapping[str, CameraPose]) -> np.ndarray:
    """max(rotation error, translation-direction error) in degrees for every GT pair (inf if missing),
    in ``itertools.combinations(sorted(gt), 2)`` order; vectorised over the second image of each pair
    (a scene of N images has N (N - 1) / 2 pairs: 50 million at 10,000 images)."""
    names = sorted(gt)
    have = np.array([n in est for n in names])
    eye = CameraPose(np.eye(3), np.zeros(3))
    R_gt, t_gt = np.stack([gt[n].R for n in names]), np.stack([gt[n].t for n in names])
    R_est = np.stack([est.get(n, eye).R for n in names])
    t_est = np.stack([est.get(n, eye).t for n in names])
    out = []
    for i in range(len(names) - 1):
        rel = []
        for R, t in ((R_gt, t_gt), (R_est, t_est)):  # relative_pose of (i, j) for every j > i
            R_rel = R[i + 1:] @ R[i].T
            rel.append((R_rel, t[i + 1:] - R_rel @ t[i]))
        (Rg, tg), (Re, te) = rel
        cos = (np.einsum("kji,kji->k", Re, Rg) - 1.0) / 2.0  # trace(Re^T Rg)
        rot = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        ng, ne = np.linalg.norm(tg, axis=1), np.linalg.norm(te, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            dot = np.einsum("ki,ki->k", te, tg) / (ne * ng)
        trans = np.where((ng < 1e-12) | (ne < 1e-12), math.inf,
                         np.degrees(np.arccos(np.clip(dot, -1.0, 1.0))))
        out.append(np.where(have[i] & have[i + 1:], np.maximum(rot, trans), math.inf))
    return np.concatenate(out) if out else np.zeros(0)


def pose_auc(errors: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, normalised to [0, 1]."""
    errors = np.sort(np.asarray(errors, dtype=np.float64))
    n = len(errors)
    if n == 0:
        return [0.0 for _ in thresholds]
    aucs = []
    for t in thresholds:
        inside = errors[errors < t]
        # recall is a step function: k/n on [e_k, e_{k+1}), integrated exactly up to t
        edges = np.concatenate([inside, [t]])
        recall = np.arange(1, len(inside) + 1) / n
        aucs.append(float(np.sum(recall * np.diff(edges)) / t))
    return aucs


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising sum |s R src + t - dst|^2; src, dst (N, 3), N >= 3."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1.0
    R = U @ D @ Vt
    var_s = (xs**2).sum() / len(src)
    s = float(np.trace(np.diag(S) @ D) / var_s) if var_s > 0 else 1.0
    return s, R, mu_d - s * R @ mu_s


def center_error(est: Mapping[str, CameraPose], gt: Mapping[str, CameraPose]) -> float:
    """Median camera-centre distance after similarity alignment (inf with fewer than 3 images)."""
    common = sorted(set(est) & set(gt))
    if len(common) < 3:
        return math.inf
    src = np.stack([est[n].center for n in common])
    dst = np.stack([gt[n].center for n in common])
    s, R, t = umeyama(src, dst)
    return float(np.median(np.linalg.norm((s * (R @ src.T)).T + t - dst, axis=1)))


def evaluate_poses(est: Mapping[str, CameraPose], gt: Mapping[str, CameraPose]) -> dict:
    aucs = pose_auc(pair_errors(est, gt))
    return {
        "registered": sum(1 for n in gt if n in est),
        "total": len(gt),
        "auc5": aucs[0],
        "auc10": aucs[1],
        "auc20": aucs[2],
        "center_error": center_error(est, gt),
    }


def _match_names(est: dict[str, CameraPose], gt: Mapping[str, CameraPose]) -> dict[str, CameraPose]:
    """Model names may carry a folder prefix the GT lacks (or not): match by unique basename."""
    if set(est) & set(gt):
        return est
    by_base: dict[str, list[str]] = {}
    for name in est:
        by_base.setdefault(Path(name).name, []).append(name)
    return {Path(g).name: est[by_base[Path(g).name][0]] for g in gt
            if len(by_base.get(Path(g).name, [])) == 1} if by_base else est


def evaluate(model_dir: Path | str, gt_dir: Path | str) -> dict:
    """Keys: registered, total, auc5, auc10, auc20, center_error (and georef_residual_m for a
    georegistered model)."""
    gt = read_strecha_dir(gt_dir)
    est = _match_names(model_poses(model_dir), gt)
    result = evaluate_poses(est, gt)
    residual = georef_residual(model_dir)
    if residual is not None:
        result["georef_residual_m"] = residual
    return result


def georef_residual(model_dir: Path | str) -> dict | None:
    """The GPS alignment residual (metres) recorded in ``georef.json`` beside the model, if any."""
    model_dir = Path(model_dir)
    for folder in (model_dir, model_dir.parent):
        georef = read_georef(folder)
        if georef is not None:
            return georef.alignment.get("residual_m")
    return None
