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

import json
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from . import extract, pairs, reconstruct, sfm
from .colmap.mapper import SfMOptions
from .config import presets
from .config.options import RunOptions
from .evaluation.comparison import gt_metrics, markdown_table
from .formats import outputs
from .runtime import extras, weights

log = logging.getLogger(__name__)

DEFAULT_PRESETS = ("omniglue", "aliked+lightglue", "disk+lightglue", "sift")


@dataclass(frozen=True)
class CompareOptions:
    gt: Path | None = None  # ground-truth folder (Strecha .camera files): pose AUC columns
    pairs_mode: str | None = None  # as reconstruct's --pairs (None: chosen by image count)
    render: bool = True  # OUT/compare.png: one 3D render per preset
    verbose: bool = False  # COLMAP's log on the terminal


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


def run_preset(image_dir: Path, out_dir: Path, preset: dict, options: CompareOptions,
               run: RunOptions) -> dict:
    """One row: reconstruct (and evaluate). Raises on failure; the caller classifies it."""
    t0 = time.perf_counter()
    result = reconstruct.main(image_dir, out_dir, preset, run,
                              pair_options=pairs.PairsOptions(options.pairs_mode),
                              sfm_options=SfMOptions(verbose=options.verbose, progress=False))
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
    if options.gt is not None:
        row.update(gt_metrics(out_dir, options.gt))
    return row


def main(
    image_dir: Path | str,
    output_dir: Path | str,
    preset_names: Sequence[str | Mapping] = DEFAULT_PRESETS,  # names or resolved presets
    options: CompareOptions | None = None,
    run: RunOptions | None = None,
) -> dict:
    """Run every preset; returns the ``compare.json`` content (``rows`` keyed by preset name)."""
    options, run = options or CompareOptions(), run or RunOptions()
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    gt_dir = Path(options.gt) if options.gt else None
    options = replace(options, gt=gt_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder does not exist: {image_dir}")
    if not preset_names:
        raise ValueError("--presets names no preset: give a comma-separated list, e.g. omniglue,sift")
    output_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    features_done: dict[str, Path] = {}  # features config -> folder that holds it
    for name in preset_names:
        try:
            preset = presets.resolve(name)
        except KeyError as err:
            rows[name] = {"status": "failed", "reason": str(err.args[0])}
            continue
        label = preset["name"]
        out_dir = output_dir / label
        print(f"==> compare: {label}", file=sys.stderr, flush=True)
        try:
            reconstruct.check_weights(preset)  # before any work: missing weights or extras -> skipped
        except (weights.WeightsNotFoundError, extras.ExtraMissingError) as err:
            rows[label] = {"status": "skipped", "reason": str(err).splitlines()[0]}
            log.warning("%s skipped: %s", label, rows[label]["reason"])
            continue
        key = _features_key(preset)
        shared_from = features_done.get(key) if key else None
        out_dir.mkdir(parents=True, exist_ok=True)
        if shared_from is not None:
            share_features(shared_from, out_dir)
        try:
            rows[label] = run_preset(image_dir, out_dir, preset, options, run)
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
    if options.render:
        worked = [n for n, r in rows.items() if r["status"] == "ok"]
        report["picture"] = render_side_by_side(output_dir, worked)
    report["table"] = markdown_table(rows, with_gt=gt_dir is not None)
    (output_dir / "compare.json").write_text(outputs.report_json(report))
    (output_dir / "compare.md").write_text(report["table"] + "\n")
    return report


def render_side_by_side(output_dir: Path, names: Sequence[str],
                        tile: tuple[int, int] = (800, 600)) -> str | None:
    """One 3D render per preset (``OUT/<preset>/render.png``) tiled into ``OUT/compare.png``."""
    from .viz.draw import tile_images
    from .viz.render import render_model

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
