"""Homography benchmark on held-out photos: precision / recall and homography AUC.

Protocol (paper Table 2 and glue-factory's HPatches evaluation, on our synthetic pairs):

* pairs: view 0 = a crop of a held-out (``test`` split) photo, view 1 = the same crop with its
  corners moved by up to SH100 / SH200 (scaled to the crop size), photometric augmentation as in
  training, fixed seed; all matchers get the same cached ALIKED keypoints;
* precision = correct / (correct + wrong) with correct < 3 px and wrong > 5 px reprojection error
  (matches in between count for neither); recall = correct / ground-truth matches (mutual nearest
  < 3 px), micro-averaged over pairs;
* homography: LO-RANSAC (pycolmap, 3 px) on the matches; error = mean distance of the four crop
  corners mapped by the estimate vs the truth; failures (< 4 matches or no model) count as
  infinite; AUC of the error curve up to 1 / 3 / 5 px.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from .data import collate_records, gt_matches_from_homography
from .homography import patch_corners, warp_points
from .losses import match_counts, precision_recall

MatchFn = Callable[[dict], torch.Tensor]  # padded batch of one pair -> matches0 (N,)


def pose_auc(errors: list[float] | np.ndarray, thresholds: tuple[float, ...]) -> list[float]:
    """Area under the cumulative error curve up to each threshold, in % (SuperGlue's definition)."""
    errors = np.sort(np.asarray(errors, np.float64))
    if errors.size == 0:
        return [0.0 for _ in thresholds]
    recall = (np.arange(len(errors)) + 1) / len(errors)
    errors = np.r_[0.0, errors]
    recall = np.r_[0.0, recall]
    aucs = []
    for t in thresholds:
        last = np.searchsorted(errors, t)
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[errors[:last], t]
        aucs.append(100.0 * np.trapezoid(r, x=e) / t)
    return aucs


def estimate_homography(pts0: np.ndarray, pts1: np.ndarray, max_error: float = 3.0) -> np.ndarray | None:
    """Robust H (pts1 ~ H pts0) with pycolmap's LO-RANSAC, or None."""
    import pycolmap

    if len(pts0) < 4:
        return None
    opts = pycolmap.RANSACOptions()
    opts.max_error = max_error
    opts.random_seed = 0
    res = pycolmap.estimate_homography_matrix(pts0.astype(np.float64), pts1.astype(np.float64), opts)
    if not res or res.get("H") is None:
        return None
    return np.asarray(res["H"], np.float64)


def corner_error(h_est: np.ndarray | None, h_gt: np.ndarray, size: tuple[int, int]) -> float:
    if h_est is None or not np.all(np.isfinite(h_est)):
        return float("inf")
    c = torch.from_numpy(patch_corners(size))
    diff = warp_points(h_est, c) - warp_points(h_gt, c)
    return float(diff.norm(dim=1).mean())


def evaluate_matcher(match_fn: MatchFn, records: list[dict], with_guidance: bool) -> dict[str, float]:
    """Run ``match_fn`` on every pair; precision, recall, AUC@1/3/5, matches per pair, s/pair."""
    counts, errors, n_matches = [], [], []
    t0 = time.time()
    for r in records:
        if "gt0" not in r:
            r["gt0"], r["gt1"] = gt_matches_from_homography(
                r["view0"]["keypoints"], r["view1"]["keypoints"], r["H_0to1"])
        data = collate_records([r], with_guidance)
        m0 = match_fn(data)
        kp0, kp1 = r["view0"]["keypoints"], r["view1"]["keypoints"]
        counts.append(match_counts(m0, r["gt0"], kp0, kp1, r["H_0to1"], data["mask0"][0]))
        valid = (m0 >= 0).nonzero()[:, 0]
        n_matches.append(len(valid))
        h = estimate_homography(kp0[valid].numpy(), kp1[m0[valid]].numpy())
        size = tuple(int(v) for v in r["view0"]["image_size"].tolist())
        errors.append(corner_error(h, np.asarray(r["H_0to1"], np.float64), size))
    p, rc = precision_recall(counts)
    auc = pose_auc(errors, (1.0, 3.0, 5.0))
    return {"precision": p, "recall": rc, "auc@1": auc[0], "auc@3": auc[1], "auc@5": auc[2],
            "matches": float(np.mean(n_matches)) if n_matches else 0.0,
            "s_per_pair": (time.time() - t0) / max(1, len(records)), "pairs": len(records)}


# --------------------------------------------------------------------------------------------
# the matchers compared


def omniglue_fn(model) -> MatchFn:
    @torch.inference_mode()
    def fn(data: dict) -> torch.Tensor:
        return model(data)["matches0"][0]

    return fn


def lightglue_fn(weights_name: str = "aliked_lightglue", input_dim: int = 128) -> MatchFn:
    """kornia's LightGlue with the official weights (no early stopping or pruning: best accuracy)."""
    import kornia.feature as KF

    from .. import weights

    lg = KF.LightGlue(None, input_dim=input_dim, depth_confidence=-1, width_confidence=-1,
                      filter_threshold=0.1, flash=False)
    sd = weights.load_state_dict(weights.resolve_known(weights_name))
    missing = lg.load_state_dict(sd, strict=False).missing_keys
    if any(not k.startswith("confidence_thresholds") for k in missing):
        raise RuntimeError(f"LightGlue weights incomplete: {missing}")
    lg.eval()

    @torch.inference_mode()
    def fn(data: dict) -> torch.Tensor:
        out = lg({
            "image0": {"keypoints": data["keypoints0"], "descriptors": data["descriptors0"],
                       "image_size": data["image_size0"]},
            "image1": {"keypoints": data["keypoints1"], "descriptors": data["descriptors1"],
                       "image_size": data["image_size1"]},
        })
        return out["matches0"][0].long()

    return fn


def mnn_fn(min_similarity: float = 0.0) -> MatchFn:
    from ..matchers.base import mutual_matches

    @torch.inference_mode()
    def fn(data: dict) -> torch.Tensor:
        sim = torch.einsum("bnd,bmd->bnm", data["descriptors0"], data["descriptors1"])
        return mutual_matches(sim, min_similarity, data["mask0"], data["mask1"])[0][0]

    return fn


def markdown_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """results[method][subset] -> one markdown table."""
    lines = ["| method | set | pairs | precision % | recall % | H AUC@1px | @3px | @5px | matches/pair "
             "| s/pair |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, per_set in results.items():
        for subset, r in per_set.items():
            lines.append(
                f"| {method} | {subset} | {r['pairs']} | {r['precision']:.1f} | {r['recall']:.1f} | "
                f"{r['auc@1']:.1f} | {r['auc@3']:.1f} | {r['auc@5']:.1f} | {r['matches']:.0f} | "
                f"{r['s_per_pair']:.2f} |")
    return "\n".join(lines)
