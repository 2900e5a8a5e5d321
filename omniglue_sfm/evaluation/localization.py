"""Localization benchmark on a ground-truth scene (docs/design.md §5): leave K images out of the map,
localize them, and score them against the ground truth.

The map is built (``reconstruct``) from the other images; the held-out images are chosen
deterministically, evenly spaced through the sorted list and never among the first two (the
incremental mapper likes to start there). The map is aligned to the ground truth with the
similarity transform of its registered camera centres (Umeyama, the alignment of ``evaluate``),
and each localized query's position (ground-truth units: metres for Strecha scenes) and
rotation errors are measured. A query that is not localized counts as a miss at every threshold.
Recall is reported at (0.25 m, 2 deg), (0.5 m, 5 deg) and (5 m, 10 deg) as for Aachen Day-Night.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .. import localize, pairs, reconstruct
from ..colmap.mapper import SfMOptions
from ..config import presets
from ..config.options import RunOptions
from ..formats import outputs
from ..formats.images import list_images
from ..geometry.scenes import CameraPose, model_poses, read_strecha_dir
from .reconstruction import rotation_angle_deg, umeyama

THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


def choose_held_out(names: Sequence[str], k: int) -> list[str]:
    """``k`` names evenly spaced through ``names`` (sorted), never the first two."""
    names = sorted(names)
    n = len(names)
    if k < 1:
        raise ValueError("--leave-out must be at least 1")
    if n - k < 3:
        raise ValueError(f"leaving {k} of {n} images out leaves fewer than 3 for the map")
    if k > n - 2:
        raise ValueError(f"cannot leave out {k} of {n} images without touching the first two")
    picks: list[int] = []
    for i in range(k):
        idx = max(2, round((i + 1) * n / (k + 1)))
        while idx in picks:  # crowded: take the next free one
            idx += 1
        picks.append(min(idx, n - 1))
    if len(set(picks)) < k:  # fall back to the last k of the usable range
        picks = list(range(n - k, n))
    return [names[i] for i in sorted(set(picks))]


def link_images(src: Path, names: Sequence[str], dst: Path) -> Path:
    """A folder of symbolic links to ``names`` (sub-folders kept), so stages see only them."""
    dst.mkdir(parents=True, exist_ok=True)
    wanted = set(names)
    for existing in list_images(dst):
        if existing not in wanted:
            (dst / existing).unlink()
    for name in names:
        link = dst / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.resolve() == (src / name).resolve():
                continue
            link.unlink()
        os.symlink((src / name).resolve(), link)
    return dst


def similarity_to_gt(est: Mapping[str, CameraPose], gt: Mapping[str, CameraPose]) -> dict:
    """Umeyama alignment of the map's registered centres to the ground truth."""
    common = sorted(set(est) & set(gt))
    if len(common) < 3:
        raise ValueError(f"only {len(common)} map images have ground truth; alignment needs 3")
    src = np.stack([est[n].center for n in common])
    dst = np.stack([gt[n].center for n in common])
    s, R, t = umeyama(src, dst)
    residuals = np.linalg.norm((s * (R @ src.T)).T + t - dst, axis=1)
    # the map cameras' own rotation errors after the alignment: the floor of the query errors
    rot_errors = [rotation_angle_deg(est[n].R @ R.T @ gt[n].R.T) for n in common]
    return {"scale": s, "R": R, "t": t, "num_cameras": len(common),
            "median_residual": float(np.median(residuals)), "max_residual": float(residuals.max()),
            "median_rotation_error_deg": float(np.median(rot_errors))}


def query_errors(qvec: Sequence[float], tvec: Sequence[float], align: dict,
                 gt: CameraPose) -> tuple[float, float]:
    """(position error in GT units, rotation error in degrees) of a cam_from_world pose."""
    w, x, y, z = qvec
    R_q = _quat_to_matrix(np.array([w, x, y, z]))
    center = -R_q.T @ np.asarray(tvec, float)
    center_gt_frame = align["scale"] * align["R"] @ center + align["t"]
    R_in_gt = R_q @ align["R"].T  # gt world -> query camera
    return float(np.linalg.norm(center_gt_frame - gt.center)), rotation_angle_deg(R_in_gt @ gt.R.T)


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def recall(per_query: Mapping[str, dict], thresholds=THRESHOLDS) -> dict[str, float]:
    out = {}
    for dist, ang in thresholds:
        hits = sum(1 for r in per_query.values() if r["localized"]
                   and r["position_error"] <= dist and r["rotation_error_deg"] <= ang)
        out[f"{dist:g}m_{ang:g}deg"] = hits / len(per_query) if per_query else 0.0
    return out


def main(
    image_dir: Path | str,
    gt_dir: Path | str,
    output_dir: Path | str,
    preset: str | dict = "omniglue",
    run: RunOptions | None = None,
    *,
    leave_out: int = 2,
    localize_options: localize.LocalizeOptions | None = None,
    progress: bool = True,
) -> dict:
    """Leave ``leave_out`` images of a ground-truth scene out of the map, localize them, and
    report their recall at the thresholds (after a similarity alignment of the map to the truth)."""
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    preset = presets.resolve(preset)
    presets.require_learned(preset, "its features live only in database.db; localization needs a "
                                    "learned-feature preset")
    gt = read_strecha_dir(gt_dir)
    names = [n for n in list_images(image_dir) if n in gt]
    if not names:
        raise FileNotFoundError(f"no image of {image_dir} has a ground-truth camera in {gt_dir}")
    held_out = choose_held_out(names, leave_out)
    map_names = [n for n in names if n not in held_out]
    map_images = link_images(image_dir, map_names, output_dir / "map_images")
    query_images = link_images(image_dir, held_out, output_dir / "query_images")
    map_dir = output_dir / "map"
    # retrieval pairs equal exhaustive ones for a map this small, and give the map its global.h5
    pairs_mode = "retrieval" if len(map_names) <= pairs.DEFAULT_NUM_MATCHED + 1 else None
    result = reconstruct.main(map_images, map_dir, preset, run, pair_options=pairs.PairsOptions(pairs_mode),
                              sfm_options=SfMOptions(progress=progress))
    report = localize.main(map_dir, query_images, output_dir / "localize", localize_options, run)
    align = similarity_to_gt(model_poses(map_dir / "sparse"), gt)
    per_query = {}
    for name in held_out:
        r = report["queries"][name]
        entry = {"localized": r["localized"], "num_inliers": r["num_inliers"], "reason": r["reason"],
                 "focal_source": r["focal_source"], "position_error": math.inf,
                 "rotation_error_deg": math.inf}
        if r["localized"]:
            entry["position_error"], entry["rotation_error_deg"] = query_errors(r["qvec"], r["tvec"], align,
                                                                                gt[name])
        per_query[name] = entry
    out = {
        "preset": preset.get("name"),
        "images": str(image_dir),
        "map_images": map_names,
        "held_out": held_out,
        "map_registered": result.stats.get("registered"),
        "alignment": {k: v for k, v in align.items() if k not in ("R", "t")},
        "recall": recall(per_query),
        "per_query": per_query,
        "localize_seconds": report["seconds"],
    }
    (output_dir / "evaluate_localization.json").write_text(outputs.report_json(out))
    return out


def format_report(out: dict) -> str:
    lines = [f"Localization on {out['images']} (preset {out['preset']}): map of {len(out['map_images'])} "
             f"images ({out['map_registered']} registered), {len(out['held_out'])} held out",
             f"map-to-GT alignment: {out['alignment']['num_cameras']} cameras, scale "
             f"{out['alignment']['scale']:.4g}, median residual "
             f"{out['alignment']['median_residual']:.4f}, median map-camera rotation error "
             f"{out['alignment']['median_rotation_error_deg']:.3f} deg", "",
             "| query | localized | inliers | position error | rotation error (deg) |",
             "|---|---|---|---|---|"]
    for name, r in out["per_query"].items():
        if r["localized"]:
            lines.append(f"| {name} | yes | {r['num_inliers']} | {r['position_error']:.4f} | "
                         f"{r['rotation_error_deg']:.3f} |")
        else:
            lines.append(f"| {name} | NO: {r['reason']} | {r['num_inliers']} | - | - |")
    lines.append("")
    lines.append("recall: " + ", ".join(f"({k.replace('_', ', ')}) {v:.0%}"
                                        for k, v in out["recall"].items()))
    return "\n".join(lines)
