"""The scoring of ``compare``: a preset's row against ground truth, and the side-by-side table."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

from .reconstruction import evaluate
from .two_view import evaluate_pairs

log = logging.getLogger(__name__)

STAGES = ("extract", "pairs", "match", "sfm")


def gt_metrics(out_dir: Path, gt_dir: Path) -> dict:
    """The SfM pose AUC and centre error of ``OUT/sparse``, and the two-view metrics of the raw
    matches (:func:`two_view_metrics`), as row keys."""
    row = {k: v for k, v in evaluate(out_dir / "sparse", gt_dir).items()
           if k in ("auc5", "auc10", "auc20", "center_error")}
    row.update(two_view_metrics(out_dir, gt_dir))
    return row


def two_view_metrics(out_dir: Path, gt_dir: Path) -> dict:
    """``evaluate_pairs`` of the raw matches, as row keys; {} without features.h5/matches.h5 (sift)."""
    features, matches = out_dir / "features.h5", out_dir / "matches.h5"
    if not (features.is_file() and matches.is_file()):
        return {}
    try:
        result = evaluate_pairs(features, matches, gt_dir)
    except ValueError as err:  # e.g. no GT image among the features: keep the SfM row
        log.warning("two-view evaluation of %s skipped: %s", out_dir.name, err)
        return {}
    return {"pair_auc5": result["auc5"], "pair_auc10": result["auc10"], "pair_auc20": result["auc20"],
            "epipolar_precision": result["epipolar_precision"], "mean_matches": result["mean_matches"]}


def _fmt(value: object, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def markdown_table(rows: Mapping[str, dict], with_gt: bool) -> str:
    head = ["preset", "registered", "3D points", "track length", "reproj. error (px)"]
    head += [f"s {s}" for s in STAGES] + ["s total"]
    if with_gt:
        head += ["AUC@5", "AUC@10", "AUC@20", "centre error", "pair AUC@5", "epi prec"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for name, r in rows.items():
        if r["status"] != "ok":
            notes.append(f"- **{name}** {r['status']}: {r['reason']}")
            cells = [name, r["status"]] + ["-"] * (len(head) - 2)
        else:
            secs = r["seconds"]
            extract_cell = _fmt(secs.get("extract"), ".1f")
            if r.get("features_shared_with"):
                extract_cell += f" (shared: {r['features_shared_with']})"
            cells = [name, f"{r['registered']}/{r['total']}", str(r["num_points3D"]),
                     _fmt(r["mean_track_length"], ".2f"), _fmt(r["mean_reprojection_error"], ".3f"),
                     extract_cell, *[_fmt(secs.get(s), ".1f") for s in STAGES[1:]],
                     _fmt(r["seconds_total"], ".1f")]
            if with_gt:
                cells += [_fmt(r.get(k), ".3f") for k in ("auc5", "auc10", "auc20")]
                cells.append(_fmt(r.get("center_error"), ".4f"))
                cells += [_fmt(r.get("pair_auc5"), ".3f"), _fmt(r.get("epipolar_precision"), ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + notes
    lines += ["", "Seconds are this run's: a stage resumed from an earlier run in the same OUT counts "
                  "about 0 s (re-run with a new OUT to time every stage)."]
    return "\n".join(lines)
