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

from ..evaluation.reconstruction import pose_auc
from .data import collate_records, gt_matches_from_homography
from .homography import patch_corners, warp_points
from .losses import match_counts, precision_recall

MatchFn = Callable[[dict], torch.Tensor]  # padded batch of one pair -> matches0 (N,)


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
    auc = [100.0 * a for a in pose_auc(errors, (1.0, 3.0, 5.0))]  # in %
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


def lightglue_fn(features: str = "aliked") -> MatchFn:
    """LightGlue with the official weights (no early stopping or pruning: best accuracy)."""
    from ..matchers.lightglue import LightGlueMatcher

    lg = LightGlueMatcher({"features": features, "depth_confidence": -1, "width_confidence": -1}).eval()

    @torch.inference_mode()
    def fn(data: dict) -> torch.Tensor:
        return lg(data)["matches0"][0].long()

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
