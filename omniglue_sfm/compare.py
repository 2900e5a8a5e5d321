"""``compare``: reconstruct one image folder with several presets and put the results side by side.

Each preset runs ``reconstruct`` into ``OUT/<preset>/``. Presets that extract the same features
(e.g. ``aliked+lightglue`` and ``aliked+mnn``) share them: the first one's ``features.h5`` (and
``global.h5``) is linked into the others' folders, which then resume instead of extracting
again (their extraction time shows as ~0 and ``features_shared_with`` says from where).

Presets whose checkpoints are missing are listed as *skipped* (with the weights error), presets
whose scene does not reconstruct as *failed* (with the reason); the command succeeds when at
least one preset worked. With ``--gt`` the table also has the SfM pose AUC and, for presets
with ``features.h5``/``matches.h5`` (not ``sift``), the two-view pose AUC@5 and epipolar precision
of the raw matches (``evaluate-pairs``). Outputs: one markdown table on stdout, ``OUT/compare.md``,
``OUT/compare.json`` and ``OUT/compare.png`` (one 3D render per preset, tiled).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image

from . import extract, official_runtime, pairs, presets, reconstruct, sfm, weights
from .mapping import SfMOptions

log = logging.getLogger(__name__)

DEFAULT_PRESETS = ("omniglue", "aliked+lightglue", "disk+lightglue", "sift")
STAGES = ("extract", "pairs", "match", "sfm")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def share_features(source_dir: Path, target_dir: Path) -> None:
    """Give ``target_dir`` the features (and global descriptors) already made in ``source_dir``."""
    for fname in ("features.h5", "global.h5"):
        if (source_dir / fname).exists() and not (target_dir / fname).exists():
            _link_or_copy(source_dir / fname, target_dir / fname)


def _features_key(preset: dict) -> str | None:
    if presets.pipeline(preset) is not presets.Pipeline.LEARNED:
        return None
    return json.dumps(extract.features_config(preset), sort_keys=True, default=str)


def run_preset(image_dir: Path, out_dir: Path, preset: dict, gt_dir: Path | None, device: str | None,
               pairs_mode: str | None, verbose: bool) -> dict:
    """One row: reconstruct (and evaluate). Raises on failure; the caller classifies it."""
    t0 = time.perf_counter()
    result = reconstruct.main(image_dir, out_dir, preset, pairs.PairsOptions(pairs_mode),
                              SfMOptions(verbose=verbose, progress=False), run=reconstruct.RunOptions(device),
                              print_summary=False)
    stats = result.stats
    seconds = {k: float(v) for k, v in stats.get("stage_seconds", {}).items()}
    row = {
        "status": "ok",
        "registered": stats.get("registered"),
        "total": stats.get("total"),
        "num_points3D": stats.get("num_points3D"),
        "mean_track_length": stats.get("mean_track_length"),
        "mean_reprojection_error": stats.get("mean_reprojection_error"),
        "seconds": seconds,
        "seconds_total": time.perf_counter() - t0,
        "reused_previous_model": bool(result.skipped),
    }
    if gt_dir is not None:
        from .evaluate import evaluate

        row.update({k: v for k, v in evaluate(out_dir / "sparse", gt_dir).items()
                    if k in ("auc5", "auc10", "auc20", "center_error")})
        row.update(two_view_metrics(out_dir, gt_dir))
    return row


def two_view_metrics(out_dir: Path, gt_dir: Path) -> dict:
    """``evaluate_pairs`` of the raw matches, as row keys; {} without features.h5/matches.h5 (sift)."""
    from .evaluate_pairs import evaluate_pairs

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


def main(
    image_dir: Path | str,
    output_dir: Path | str,
    preset_names: Sequence[str | Mapping] = DEFAULT_PRESETS,  # names or resolved presets
    gt_dir: Path | str | None = None,
    preset_overrides: Mapping | None = None,
    device: str | None = None,
    pairs_mode: str | None = None,
    render: bool = True,
    verbose: bool = False,
) -> dict:
    """Run every preset; returns the ``compare.json`` content (``rows`` keyed by preset name)."""
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    gt_dir = Path(gt_dir) if gt_dir else None
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder does not exist: {image_dir}")
    output_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    features_done: dict[str, Path] = {}  # features config -> folder that holds it
    for name in preset_names:
        try:
            preset = presets.resolve(name, preset_overrides)
        except KeyError as err:
            rows[name] = {"status": "failed", "reason": str(err.args[0])}
            continue
        label = preset["name"]
        out_dir = output_dir / label
        print(f"==> compare: {label}", file=sys.stderr, flush=True)
        try:
            reconstruct.check_weights(preset)  # before any work: missing weights or extras -> skipped
        except (weights.WeightsNotFoundError, official_runtime.ExtraMissingError) as err:
            rows[label] = {"status": "skipped", "reason": str(err).splitlines()[0]}
            log.warning("%s skipped: %s", label, rows[label]["reason"])
            continue
        key = _features_key(preset)
        shared_from = features_done.get(key) if key else None
        out_dir.mkdir(parents=True, exist_ok=True)
        if shared_from is not None:
            share_features(shared_from, out_dir)
        try:
            rows[label] = run_preset(image_dir, out_dir, preset, gt_dir, device, pairs_mode, verbose)
        except sfm.ReconstructionError as err:
            rows[label] = {"status": "failed", "reason": str(err)}
        except weights.WeightsNotFoundError as err:
            rows[label] = {"status": "skipped", "reason": str(err).splitlines()[0]}
        except Exception as err:  # one broken preset must not hide the others' results
            log.debug("%s", traceback.format_exc())
            rows[label] = {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
        if rows[label]["status"] == "ok":
            if key and shared_from is None:
                features_done[key] = out_dir
            if shared_from is not None:
                rows[label]["features_shared_with"] = shared_from.name
        else:
            log.warning("%s %s: %s", label, rows[label]["status"], rows[label]["reason"])
    report = {"images": str(image_dir), "gt": str(gt_dir) if gt_dir else None, "rows": rows}
    if render:
        worked = [n for n, r in rows.items() if r["status"] == "ok"]
        report["picture"] = render_side_by_side(output_dir, worked)
    report["table"] = markdown_table(rows, with_gt=gt_dir is not None)
    (output_dir / "compare.json").write_text(json.dumps(_finite(report), indent=2, default=str))
    (output_dir / "compare.md").write_text(report["table"] + "\n")
    return report


def _finite(value: object) -> object:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


# --------------------------------------------------------------------------------------------
# outputs


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


def render_side_by_side(output_dir: Path, names: Sequence[str],
                        tile: tuple[int, int] = (800, 600)) -> str | None:
    """One 3D render per preset (``OUT/<preset>/render.png``) tiled into ``OUT/compare.png``."""
    from .viz import render_model, tile_images

    pictures = []
    for name in names:
        path = output_dir / name / "render.png"
        try:
            render_model(output_dir / name, path, size=tile, title=name)
        except Exception as err:  # a picture is a bonus: never fail the comparison for it
            log.warning("could not render %s: %s", name, err)
            continue
        with Image.open(path) as img:
            pictures.append(img.convert("RGB"))
    if not pictures:
        return None
    columns = min(len(pictures), 2 if len(pictures) == 4 else 3)
    out = output_dir / "compare.png"
    tile_images(pictures, columns=columns).save(out)
    return str(out)


# --------------------------------------------------------------------------------------------
# command line


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="reconstruct with several presets, one table",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", type=Path, help="image folder")
    p.add_argument("output", type=Path, help="output folder (one sub-folder per preset)")
    p.add_argument("--presets", default=",".join(DEFAULT_PRESETS),
                   help=f"comma-separated preset names (default: {','.join(DEFAULT_PRESETS)})")
    p.add_argument("--gt", type=Path, default=None, help="ground-truth folder (Strecha .camera files)")
    p.add_argument("--preset-file", type=Path, default=None, metavar="TOML",
                   help="your own presets (names usable in --presets), validated before any work")
    presets.add_knobs(p)  # --max-keypoints, --resize-max: for every preset
    p.add_argument("--pairs", choices=pairs.IMAGE_MODES, default=None, help="pair selection")
    p.add_argument("--no-render", action="store_true", help="skip the 3D renders")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    # every preset resolved (user file validated, overrides merged) before any work
    chosen = [presets.PresetChoice.from_args(args, name).resolve() for name in names]
    report = main(args.images, args.output, chosen, args.gt, None, args.device, args.pairs,
                  render=not args.no_render, verbose=args.verbose)
    print(report["table"])
    if report.get("picture"):
        print(f"\nrenders: {report['picture']}")
    return 0 if any(r["status"] == "ok" for r in report["rows"].values()) else 1
