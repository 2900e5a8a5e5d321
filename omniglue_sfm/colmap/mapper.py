"""Mapping and outputs, shared by ``sfm`` (learned features) and ``colmap_sift``.

A verified database -> the mapper (incremental COLMAP or global GLOMAP) -> ``sparse/`` (largest
model, COLMAP binary), ``sparse_models/<i>/`` (the other models, if any), ``model.ply`` and
``stats.json``. The mapping result is reused when ``stats.json`` records the same input
fingerprint, so a re-run skips finished work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from ..formats import outputs
from ..geometry.cameras import CameraOptions
from ..runtime.devices import num_threads
from .database import database_ok

log = logging.getLogger(__name__)

MAPPERS = ("incremental", "global")
# RANSAC settings for geometric verification (hloc's choice: learned matchers give many matches
# with a lower inlier ratio than SIFT ratio-test matches)
VERIFY_MAX_TRIALS = 20000
VERIFY_MIN_INLIER_RATIO = 0.1
STATS_VERSION = 1
# beside database.db: what built it; COLMAP SIFT writes it, every other writer of the database
# removes it first
DB_STAMP = "database.json"
MIN_MODEL_SIZE = 3


@dataclass(frozen=True)
class SfMOptions:
    """How a scene is mapped, whichever pipeline made its database."""

    camera: CameraOptions = field(default_factory=CameraOptions)
    mapper: str = "incremental"  # see MAPPERS
    verbose: bool = False  # COLMAP's log on the terminal too (always in OUT/colmap.log)
    progress: bool = True  # a progress bar while mapping
    prior_position: bool = True  # the incremental mapper uses GPS pose priors when the database has them

    def __post_init__(self) -> None:
        if self.mapper not in MAPPERS:
            raise ValueError(f"unknown mapper {self.mapper!r}; choose one of {MAPPERS}")


class ReconstructionError(RuntimeError):
    """The scene did not reconstruct; the message says why."""


@dataclass
class SfMResult:
    reconstruction: pycolmap.Reconstruction
    stats: dict
    output_dir: Path
    skipped: bool = False  # True when a previous run's result was reused
    models: list[pycolmap.Reconstruction] = field(default_factory=list)
    failed_images: dict[str, str] = field(default_factory=dict)  # image name -> why it was left out
    stage_seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage run


# Verification and mapping draw from seeded generators: the result of a stage does not depend on
# what ran before it in the process (a resumed run skips the orientation pass's RANSAC, say).
RANDOM_SEED = 0


def two_view_options() -> pycolmap.TwoViewGeometryOptions:
    options = pycolmap.TwoViewGeometryOptions()
    options.ransac.random_seed = RANDOM_SEED
    options.ransac.max_num_trials = VERIFY_MAX_TRIALS
    options.ransac.min_inlier_ratio = VERIFY_MIN_INLIER_RATIO
    return options


def pair_statistics(db_path: Path) -> dict:
    """Matched / verified pairs and the best pair's inlier count, to explain a failure."""
    with pycolmap.Database.open(db_path) as db:
        num_images = db.num_images()
        matched = db.num_matched_image_pairs()
        _, geometries = db.read_two_view_geometries()
    inliers = [len(g.inlier_matches) for g in geometries]
    verified = sum(1 for n in inliers if n > 0)
    return {
        "num_images": num_images,
        "matched_pairs": int(matched),
        "verified_pairs": int(verified),
        "max_inliers": int(max(inliers, default=0)),
    }


def explain_failure(pair_stats: dict, min_inliers: int) -> str:
    if pair_stats["num_images"] < 2:
        return f"only {pair_stats['num_images']} image(s): SfM needs at least two"
    if pair_stats["matched_pairs"] == 0:
        return "no image pair has any match: the images probably do not overlap"
    if pair_stats["verified_pairs"] == 0:
        return (f"none of the {pair_stats['matched_pairs']} matched pairs passed geometric "
                "verification (no consistent two-view geometry): the images probably do not overlap")
    if pair_stats["max_inliers"] < min_inliers:
        return (f"too few inliers: the best verified pair has {pair_stats['max_inliers']} inlier matches, "
                f"the mapper needs {min_inliers} to start a model")
    return ("no initial image pair: verified pairs exist but none has enough baseline "
            "(triangulation angle) or enough triangulated points to start a model, or every model "
            f"stayed under {MIN_MODEL_SIZE} images")


class _MappingProgress:
    """A tqdm bar of registered images, driven by the incremental mapper's callbacks."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="mapping", unit="img", disable=not enabled)
        self.models = 0

    def initial_pair(self) -> None:
        self.models += 1
        self.bar.set_postfix(model=self.models)
        self.bar.update(2)

    def next_image(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@dataclass(frozen=True)
class MappingInputs:
    """What the database holds beyond images and matches: pose priors (used when ``use_priors``)
    and rigs of known geometry (``fixed_rigs``: sensor poses and intrinsics are not refined)."""

    use_priors: bool = False
    fixed_rigs: bool = False


def run_mapping(
    db_path: Path, image_dir: Path, work_dir: Path, mapper: str, num_images: int, progress: bool = True,
    inputs: MappingInputs | None = None,
) -> list[pycolmap.Reconstruction]:
    """Run the mapper; models sorted by registered images, largest first."""
    inputs = inputs or MappingInputs()
    if mapper not in MAPPERS:
        raise ValueError(f"unknown mapper {mapper!r}; choose one of {MAPPERS}")
    work_dir.mkdir(parents=True, exist_ok=True)
    if mapper == "global":
        if not hasattr(pycolmap, "global_mapping"):
            raise RuntimeError(f"pycolmap {pycolmap.__version__} has no global_mapping (needs >= 4.0)")
        options = pycolmap.GlobalPipelineOptions()
        options.num_threads = num_threads()
        options.random_seed = RANDOM_SEED
        models = pycolmap.global_mapping(db_path, image_dir, work_dir, options)
    else:
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = num_threads()
        options.random_seed = RANDOM_SEED
        options.extract_colors = False  # colours come from EXIF-oriented images below
        # COLMAP drops models under min(0.8 * images, 10) images; keep fragments of 3 and more
        # (the largest becomes sparse/, the rest sparse_models/)
        options.min_model_size = MIN_MODEL_SIZE
        # GPS priors: bundle adjustment keeps the cameras near them (the model comes out in their frame)
        options.use_prior_position = inputs.use_priors
        if inputs.fixed_rigs:  # panorama views: their relative poses and intrinsics are exact
            options.ba_refine_sensor_from_rig = False
            options.ba_refine_focal_length = False
            options.ba_refine_extra_params = False
        bar = _MappingProgress(num_images, progress)
        try:
            models = pycolmap.incremental_mapping(
                db_path, image_dir, work_dir, options,
                initial_image_pair_callback=bar.initial_pair, next_image_callback=bar.next_image,
            )
        finally:
            bar.close()
    return sorted(models.values(), key=lambda r: r.num_reg_images(), reverse=True)


COLOR_MAX_SIDE = 4000


def extract_colors(rec: pycolmap.Reconstruction, image_dir: Path) -> None:
    """Mean RGB of every 3D point over its observations, sampled in the EXIF-oriented images."""
    from ..formats.images import read_image_sized

    sums = {pid: np.zeros(3) for pid in rec.point3D_ids()}
    counts = dict.fromkeys(sums, 0)
    for image in rec.images.values():
        if not image.has_pose:
            continue
        # a colour needs no more than a few thousand pixels: huge images are decoded reduced
        pixels, (full_w, full_h) = read_image_sized(image_dir / image.name, max_side=COLOR_MAX_SIDE)
        h, w = pixels.shape[:2]
        sx, sy = w / full_w, h / full_h
        for p2d in image.points2D:
            if p2d.point3D_id in sums:
                # COLMAP coordinates: pixel (i, j) covers [j, j+1) x [i, i+1)
                x = min(max(int(p2d.xy[0] * sx), 0), w - 1)
                y = min(max(int(p2d.xy[1] * sy), 0), h - 1)
                sums[p2d.point3D_id] += pixels[y, x]
                counts[p2d.point3D_id] += 1
    for pid, total in sums.items():
        if counts[pid]:
            rec.point3D(pid).color = np.round(total / counts[pid]).astype(np.uint8)


def model_stats(rec: pycolmap.Reconstruction, total_images: int) -> dict:
    registered = sorted(rec.images[i].name for i in rec.reg_image_ids())
    return {
        "registered": len(registered),
        "total": total_images,
        "num_points3D": rec.num_points3D(),
        "mean_track_length": float(rec.compute_mean_track_length()) if rec.num_points3D() else 0.0,
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error())
        if rec.num_points3D() else 0.0,
        "mean_observations_per_image": float(rec.compute_mean_observations_per_reg_image())
        if registered else 0.0,
        "num_cameras": rec.num_cameras(),
    }


def write_outputs(
    models: list[pycolmap.Reconstruction],
    image_dir: Path,
    output_dir: Path,
    all_names: Sequence[str],
    stats: dict,
) -> SfMResult:
    """sparse/ (largest), sparse_models/<i>/ (others), model.ply, stats.json."""
    for sub in ("sparse", "sparse_models"):
        shutil.rmtree(output_dir / sub, ignore_errors=True)
    best = models[0]
    t0 = time.perf_counter()
    extract_colors(best, image_dir)
    sparse = output_dir / "sparse"
    sparse.mkdir(parents=True)
    best.write(sparse)
    for i, rec in enumerate(models[1:], 1):
        (output_dir / "sparse_models" / str(i)).mkdir(parents=True)
        rec.write(output_dir / "sparse_models" / str(i))
    best.export_PLY(output_dir / "model.ply")
    stats["seconds"]["export"] = time.perf_counter() - t0
    registered = {best.images[i].name for i in best.reg_image_ids()}
    stats.update(model_stats(best, len(all_names)))
    stats["unregistered"] = [n for n in all_names if n not in registered]
    stats["num_models"] = len(models)
    stats["other_models_registered"] = [m.num_reg_images() for m in models[1:]]
    outputs.write_stats(output_dir, stats)
    return SfMResult(best, stats, output_dir, models=models)


def map_and_write(
    db_path: Path,
    image_dir: Path,
    output_dir: Path,
    all_names: Sequence[str],
    mapper: str,
    stats: dict,
    progress: bool = True,
    inputs: MappingInputs | None = None,
) -> SfMResult:
    """Mapping + outputs, or a :class:`ReconstructionError` that says why nothing came out."""
    pair_stats = pair_statistics(db_path)
    stats["pairs"] = pair_stats
    work_dir = output_dir / "mapping.tmp"
    shutil.rmtree(work_dir, ignore_errors=True)
    t0 = time.perf_counter()
    models = [] if pair_stats["verified_pairs"] == 0 else run_mapping(
        db_path, image_dir, work_dir, mapper, pair_stats["num_images"], progress, inputs)
    stats["seconds"]["mapping"] = time.perf_counter() - t0
    shutil.rmtree(work_dir, ignore_errors=True)
    models = [m for m in models if m.num_reg_images() >= 2]
    if not models:
        min_inliers = pycolmap.IncrementalPipelineOptions().mapper.init_min_num_inliers
        reason = explain_failure(pair_stats, min_inliers)
        stats["error"] = reason
        outputs.write_stats(output_dir, stats)
        raise ReconstructionError(f"the scene did not reconstruct: {reason}")
    return write_outputs(models, image_dir, output_dir, all_names, stats)


def fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_signature(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def load_previous(output_dir: Path, key: str) -> SfMResult | None:
    """A finished result with the same input fingerprint, or None (also when ``database.db`` is
    missing or damaged: the run rebuilds it, as every run but a reused one does)."""
    sparse = output_dir / "sparse"
    if not (sparse / "images.bin").exists():
        return None
    if not database_ok(output_dir / "database.db"):
        log.warning("%s is missing or damaged: rebuilding it and the model", output_dir / "database.db")
        return None
    stats = outputs.read_stats(output_dir)
    if stats is None or stats.get("fingerprint") != key or "error" in stats:
        return None
    rec = pycolmap.Reconstruction(sparse)
    return SfMResult(rec, stats, output_dir, skipped=True, models=[rec])


def configure_colmap_logging(output_dir: Path, verbose: bool) -> None:
    """COLMAP's glog output goes to OUT/colmap.log; only warnings reach the terminal unless verbose."""
    pycolmap.logging.set_log_destination(pycolmap.logging.INFO, output_dir / "colmap.log")
    pycolmap.logging.stderrthreshold = pycolmap.logging.INFO if verbose else pycolmap.logging.ERROR
    pycolmap.logging.alsologtostderr = bool(verbose)
