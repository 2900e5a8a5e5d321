"""SfM stage: ``features.h5`` + ``matches.h5`` -> COLMAP database -> sparse model (pycolmap 4.x).

Outputs in ``OUT``: ``database.db``, ``sparse/`` (largest model, COLMAP binary),
``sparse_models/<i>/`` (the other models, if any), ``model.ply`` and ``stats.json``.

Conventions
-----------
* Image frame: keypoints and cameras live in the EXIF-oriented frame, the one ``images.read_image``
  returns and ``features.h5``'s ``image_size`` records. COLMAP's own image reader ignores EXIF
  orientation (a portrait iPhone photo becomes a 1600x1200 camera), so cameras, rigs, frames and
  images are written here, not through ``pycolmap.import_images``. The focal-length prior still
  comes from COLMAP's EXIF reader (``infer_camera_from_image``: focal length in pixels does not
  change under a 90-degree rotation); without EXIF it is ``1.2 * max(W, H)`` as in COLMAP.
* Pixel coordinates: ``features.h5`` puts the centre of the top-left pixel at (0, 0); COLMAP puts
  it at (0.5, 0.5), so keypoints are written with +0.5.
* The database is rebuilt on every run (it is cheap); the mapping result is reused when
  ``stats.json`` records the same input fingerprint, so a re-run skips finished work.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pycolmap

from . import io

logger = logging.getLogger(__name__)

CAMERA_MODES = ("auto", "single", "per_image", "per_folder")
MAPPERS = ("incremental", "global")
# default focal length without an EXIF prior, as COLMAP's ImageReaderOptions
DEFAULT_FOCAL_FACTOR = 1.2
# RANSAC settings for geometric verification (hloc's choice: learned matchers give many matches
# with a lower inlier ratio than SIFT ratio-test matches)
VERIFY_MAX_TRIALS = 20000
VERIFY_MIN_INLIER_RATIO = 0.1
STATS_VERSION = 1
MIN_MODEL_SIZE = 3


class ReconstructionError(RuntimeError):
    """The scene did not reconstruct; the message says why."""


@dataclass
class SfMResult:
    reconstruction: pycolmap.Reconstruction
    stats: dict
    output_dir: Path
    skipped: bool = False  # True when a previous run's result was reused
    models: list[pycolmap.Reconstruction] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# cameras


@dataclass(frozen=True)
class ImageInfo:
    name: str
    width: int
    height: int


def _focal_prior(path: Path, model: str, width: int, height: int) -> float | None:
    """EXIF focal length in pixels for an image of (width, height), or None without EXIF."""
    try:
        cam = pycolmap.infer_camera_from_image(path, pycolmap.ImageReaderOptions(camera_model=model))
    except Exception as err:  # unreadable EXIF is not fatal: fall back to the default focal
        logger.debug("no EXIF camera for %s: %s", path, err)
        return None
    if not cam.has_prior_focal_length:
        return None
    focal = float(cam.mean_focal_length())
    # COLMAP reads the stored (un-rotated) frame; the long side is the same in both frames.
    raw_long = max(cam.width, cam.height)
    return focal * max(width, height) / raw_long if raw_long else focal


def _camera_key(info: ImageInfo, mode: str, focal: float | None) -> tuple:
    folder = os.path.dirname(info.name)
    if mode == "single":
        return ("single", info.width, info.height)
    if mode == "per_folder":
        return (folder, info.width, info.height)
    if mode == "per_image" or focal is None:
        return ("image", info.name)
    # auto: images of the same folder, size and EXIF focal length share a camera
    return (folder, info.width, info.height, round(focal, 3))


def make_cameras(
    image_dir: Path,
    infos: Sequence[ImageInfo],
    camera_mode: str = "auto",
    camera_model: str = "SIMPLE_RADIAL",
    camera_params: str | None = None,
) -> tuple[list[pycolmap.Camera], list[int]]:
    """Cameras (ids unset) and, for every image, the index of its camera."""
    if camera_mode not in CAMERA_MODES:
        raise ValueError(f"unknown camera mode {camera_mode!r}; choose one of {CAMERA_MODES}")
    if camera_mode == "single":
        sizes = {(i.width, i.height) for i in infos}
        if len(sizes) > 1:
            raise ValueError(f"--camera-mode single needs images of one size, found {sorted(sizes)}")
    cameras: list[pycolmap.Camera] = []
    index: dict[tuple, int] = {}
    assignment: list[int] = []
    for info in infos:
        focal = None if camera_params else _focal_prior(
            image_dir / info.name, camera_model, info.width, info.height)
        key = _camera_key(info, camera_mode, focal)
        if key not in index:
            index[key] = len(cameras)
            cameras.append(_new_camera(info, camera_model, camera_params, focal))
        assignment.append(index[key])
    return cameras, assignment


def _new_camera(info: ImageInfo, model: str, params: str | None, focal: float | None) -> pycolmap.Camera:
    prior = focal is not None
    f = focal if prior else DEFAULT_FOCAL_FACTOR * max(info.width, info.height)
    cam = pycolmap.Camera.create_from_model_name(0, model, f, info.width, info.height)
    if params:
        if not cam.set_params_from_string(params) or not cam.verify_params():
            raise ValueError(f"camera params {params!r} do not fit model {model} ({cam.params_info})")
        prior = True
    cam.has_prior_focal_length = prior
    return cam


# --------------------------------------------------------------------------------------------
# database


def read_image_infos(features_path: Path, names: Sequence[str]) -> list[ImageInfo]:
    infos = []
    with h5py.File(features_path, "r") as h5:
        for name in names:
            if name not in h5 or "keypoints" not in h5[name]:
                raise KeyError(f"no features for image {name!r} in {features_path}")
            w, h = (int(v) for v in h5[name]["image_size"][()])
            infos.append(ImageInfo(name, w, h))
    return infos


def write_images(
    db: pycolmap.Database,
    infos: Sequence[ImageInfo],
    cameras: Sequence[pycolmap.Camera],
    assignment: Sequence[int],
) -> dict[str, int]:
    """Cameras, one trivial rig per camera, one frame per image, the images. Returns name -> id."""
    rig_ids = []
    for cam in cameras:
        cam.camera_id = db.write_camera(cam)
        rig = pycolmap.Rig()
        rig.add_ref_sensor(cam.sensor_id)
        rig_ids.append(db.write_rig(rig))
    image_ids = {}
    for info, cam_idx in zip(infos, assignment, strict=True):
        image = pycolmap.Image(name=info.name, camera_id=cameras[cam_idx].camera_id)
        image.image_id = db.write_image(image)
        frame = pycolmap.Frame()
        frame.rig_id = rig_ids[cam_idx]
        frame.add_data_id(image.data_id)
        db.write_frame(frame)
        image_ids[info.name] = image.image_id
    return image_ids


def write_keypoints(db: pycolmap.Database, features_path: Path, image_ids: dict[str, int]) -> None:
    with h5py.File(features_path, "r") as h5:
        for name, image_id in image_ids.items():
            kps = h5[name]["keypoints"][()].astype(np.float32)
            db.write_keypoints(image_id, kps + 0.5)  # COLMAP: top-left pixel centre at (0.5, 0.5)


def select_pairs(
    matches_path: Path, names: Sequence[str], pairs_path: Path | None
) -> list[tuple[str, str]]:
    """The pairs to import: those of ``pairs_path`` or else every pair in ``matches.h5``."""
    allowed = set(names)
    if pairs_path is not None:
        pairs = io.unique_pairs(io.read_pairs(pairs_path))
    else:
        pairs = list(io.iter_match_keys(matches_path))
    return [io.canonical_pair(a, b) for a, b in pairs if a in allowed and b in allowed]


def write_matches(
    db: pycolmap.Database, matches_path: Path, pairs: Sequence[tuple[str, str]], image_ids: dict[str, int]
) -> int:
    """Raw matches of every pair (canonical order). Returns the number of pairs written."""
    missing = []
    written = 0
    with h5py.File(matches_path, "r") as h5:
        for a, b in pairs:
            key = io.pair_key(a, b)
            if key not in h5:
                missing.append((a, b))
                continue
            m0 = h5[key]["matches0"][()]
            idx0 = np.flatnonzero(m0 >= 0)
            if len(idx0) == 0:
                continue
            matches = np.stack([idx0, m0[idx0]], axis=1).astype(np.uint32)
            db.write_matches(image_ids[a], image_ids[b], matches)
            written += 1
    if missing:
        raise ReconstructionError(
            f"{len(missing)} of {len(pairs)} pairs have no matches in {matches_path} "
            f"(first: {missing[0]}); run the match stage on the same pairs first."
        )
    return written


def two_view_options() -> pycolmap.TwoViewGeometryOptions:
    options = pycolmap.TwoViewGeometryOptions()
    options.ransac.max_num_trials = VERIFY_MAX_TRIALS
    options.ransac.min_inlier_ratio = VERIFY_MIN_INLIER_RATIO
    return options


def verify(db_path: Path) -> None:
    """Geometric verification (E/F/H model selection with RANSAC) of every matched pair."""
    pycolmap.geometric_verification(
        db_path,
        pycolmap.GeometricVerifierOptions(num_threads=_num_threads()),
        pycolmap.ExistingMatchedPairingOptions(),
        two_view_options(),
    )


def _num_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# mapping and outputs (shared with colmap_sift)


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


def run_mapping(
    db_path: Path, image_dir: Path, work_dir: Path, mapper: str, num_images: int, progress: bool = True
) -> list[pycolmap.Reconstruction]:
    """Run the mapper; models sorted by registered images, largest first."""
    if mapper not in MAPPERS:
        raise ValueError(f"unknown mapper {mapper!r}; choose one of {MAPPERS}")
    work_dir.mkdir(parents=True, exist_ok=True)
    if mapper == "global":
        if not hasattr(pycolmap, "global_mapping"):
            raise RuntimeError(f"pycolmap {pycolmap.__version__} has no global_mapping (needs >= 4.0)")
        options = pycolmap.GlobalPipelineOptions()
        options.num_threads = _num_threads()
        models = pycolmap.global_mapping(db_path, image_dir, work_dir, options)
    else:
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = _num_threads()
        options.extract_colors = False  # colours come from EXIF-oriented images below
        # COLMAP drops models under min(0.8 * images, 10) images; keep fragments of 3 and more
        # (the largest becomes sparse/, the rest sparse_models/)
        options.min_model_size = MIN_MODEL_SIZE
        bar = _MappingProgress(num_images, progress)
        try:
            models = pycolmap.incremental_mapping(
                db_path, image_dir, work_dir, options,
                initial_image_pair_callback=bar.initial_pair, next_image_callback=bar.next_image,
            )
        finally:
            bar.close()
    return sorted(models.values(), key=lambda r: r.num_reg_images(), reverse=True)


def extract_colors(rec: pycolmap.Reconstruction, image_dir: Path) -> None:
    """Mean RGB of every 3D point over its observations, sampled in the EXIF-oriented images."""
    from .images import read_image

    sums = {pid: np.zeros(3) for pid in rec.point3D_ids()}
    counts = dict.fromkeys(sums, 0)
    for image in rec.images.values():
        if not image.has_pose:
            continue
        pixels = read_image(image_dir / image.name)
        h, w = pixels.shape[:2]
        for p2d in image.points2D:
            if p2d.point3D_id in sums:
                # COLMAP coordinates: pixel (i, j) covers [j, j+1) x [i, i+1)
                x = min(max(int(p2d.xy[0]), 0), w - 1)
                y = min(max(int(p2d.xy[1]), 0), h - 1)
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
    write_stats(output_dir, stats)
    return SfMResult(best, stats, output_dir, models=models)


def write_stats(output_dir: Path, stats: dict) -> None:
    tmp = output_dir / "stats.json.tmp"
    tmp.write_text(json.dumps(stats, indent=2, default=str))
    os.replace(tmp, output_dir / "stats.json")


def map_and_write(
    db_path: Path,
    image_dir: Path,
    output_dir: Path,
    all_names: Sequence[str],
    mapper: str,
    stats: dict,
    progress: bool = True,
) -> SfMResult:
    """Mapping + outputs, or a :class:`ReconstructionError` that says why nothing came out."""
    pair_stats = pair_statistics(db_path)
    stats["pairs"] = pair_stats
    work_dir = output_dir / "mapping.tmp"
    shutil.rmtree(work_dir, ignore_errors=True)
    t0 = time.perf_counter()
    models = [] if pair_stats["verified_pairs"] == 0 else run_mapping(
        db_path, image_dir, work_dir, mapper, pair_stats["num_images"], progress)
    stats["seconds"]["mapping"] = time.perf_counter() - t0
    shutil.rmtree(work_dir, ignore_errors=True)
    models = [m for m in models if m.num_reg_images() >= 2]
    if not models:
        min_inliers = pycolmap.IncrementalPipelineOptions().mapper.init_min_num_inliers
        reason = explain_failure(pair_stats, min_inliers)
        stats["error"] = reason
        write_stats(output_dir, stats)
        raise ReconstructionError(f"the scene did not reconstruct: {reason}")
    return write_outputs(models, image_dir, output_dir, all_names, stats)


def fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_signature(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def load_previous(output_dir: Path, key: str) -> SfMResult | None:
    """A finished result with the same input fingerprint, or None."""
    stats_path = output_dir / "stats.json"
    sparse = output_dir / "sparse"
    if not stats_path.exists() or not (sparse / "images.bin").exists():
        return None
    try:
        stats = json.loads(stats_path.read_text())
    except json.JSONDecodeError:
        return None
    if stats.get("fingerprint") != key or "error" in stats:
        return None
    rec = pycolmap.Reconstruction(sparse)
    return SfMResult(rec, stats, output_dir, skipped=True, models=[rec])


def configure_colmap_logging(output_dir: Path, verbose: bool) -> None:
    """COLMAP's glog output goes to OUT/colmap.log; only warnings reach the terminal unless verbose."""
    pycolmap.logging.set_log_destination(pycolmap.logging.INFO, output_dir / "colmap.log")
    pycolmap.logging.stderrthreshold = pycolmap.logging.INFO if verbose else pycolmap.logging.ERROR
    pycolmap.logging.alsologtostderr = bool(verbose)


# --------------------------------------------------------------------------------------------
# stage entry point


def main(
    image_dir: Path | str,
    features_path: Path | str,
    matches_path: Path | str,
    output_dir: Path | str,
    pairs_path: Path | str | None = None,
    camera_mode: str = "auto",
    camera_model: str = "SIMPLE_RADIAL",
    camera_params: str | None = None,
    mapper: str = "incremental",
    image_names: Sequence[str] | None = None,
    verbose: bool = False,
    progress: bool = True,
) -> SfMResult:
    image_dir, features_path, matches_path, output_dir = map(
        Path, (image_dir, features_path, matches_path, output_dir))
    pairs_path = Path(pairs_path) if pairs_path else None
    for path in (image_dir, features_path, matches_path) + ((pairs_path,) if pairs_path else ()):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
    if mapper not in MAPPERS:
        raise ValueError(f"unknown mapper {mapper!r}; choose one of {MAPPERS}")
    names = sorted(image_names) if image_names is not None else io.list_names(features_path)
    pairs = select_pairs(matches_path, names, pairs_path)
    key = fingerprint({
        "version": STATS_VERSION, "names": names, "pairs": pairs, "camera_mode": camera_mode,
        "camera_model": camera_model, "camera_params": camera_params, "mapper": mapper,
        "features": file_signature(features_path), "matches": file_signature(matches_path),
    })
    output_dir.mkdir(parents=True, exist_ok=True)
    previous = load_previous(output_dir, key)
    if previous is not None:
        logger.info("sfm: reusing the model in %s (same inputs)", output_dir / "sparse")
        return previous
    configure_colmap_logging(output_dir, verbose)
    stats: dict = {"fingerprint": key, "mapper": mapper, "camera_mode": camera_mode,
                   "camera_model": camera_model, "seconds": {}}
    t0 = time.perf_counter()
    db_path = build_database(output_dir / "database.db", image_dir, features_path, matches_path,
                             names, pairs, camera_mode, camera_model, camera_params)
    stats["seconds"]["database"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    verify(db_path)
    stats["seconds"]["verification"] = time.perf_counter() - t0
    return map_and_write(db_path, image_dir, output_dir, names, mapper, stats, progress)


def build_database(
    db_path: Path,
    image_dir: Path,
    features_path: Path,
    matches_path: Path,
    names: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    camera_mode: str,
    camera_model: str,
    camera_params: str | None,
) -> Path:
    """A fresh database (written under a temporary name, then renamed)."""
    infos = read_image_infos(features_path, names)
    cameras, assignment = make_cameras(image_dir, infos, camera_mode, camera_model, camera_params)
    tmp = db_path.with_name(db_path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with pycolmap.Database.open(tmp) as db:
        image_ids = write_images(db, infos, cameras, assignment)
        write_keypoints(db, features_path, image_ids)
        write_matches(db, matches_path, pairs, image_ids)
    os.replace(tmp, db_path)
    return db_path


# --------------------------------------------------------------------------------------------
# command line


def add_camera_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--camera-mode", choices=CAMERA_MODES, default="auto",
                        help="auto: images sharing folder, size and EXIF focal share a camera "
                             "(no EXIF: one camera per image)")
    parser.add_argument("--camera-model", default="SIMPLE_RADIAL", help="COLMAP camera model name")
    parser.add_argument("--camera-params", default=None,
                        help="known intrinsics, comma separated in the model's order (e.g. 'f,cx,cy,k')")
    parser.add_argument("--mapper", choices=MAPPERS, default="incremental",
                        help="incremental (COLMAP) or global (GLOMAP, pycolmap >= 4)")


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sfm", help="features + matches -> COLMAP model",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, help="image folder")
    parser.add_argument("features", type=Path, help="features.h5")
    parser.add_argument("matches", type=Path, help="matches.h5")
    parser.add_argument("output", type=Path, help="output folder")
    parser.add_argument("--pairs", type=Path, default=None,
                        help="pairs.txt (default: every pair in matches.h5)")
    add_camera_arguments(parser)
    parser.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    return run_cli_guarded(lambda: main(
        args.images, args.features, args.matches, args.output, args.pairs, args.camera_mode,
        args.camera_model, args.camera_params, args.mapper, verbose=args.verbose))


def run_cli_guarded(call: Callable[[], SfMResult], print_result: bool = True) -> int:
    """Run a stage for the CLI: known errors become one clear message and an exit code."""
    from . import weights

    try:
        result = call()
    except ReconstructionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (weights.WeightsNotFoundError, io.ConfigMismatchError, FileNotFoundError, KeyError,
            ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 1
    if print_result:
        from .summary import print_sfm_summary

        print_sfm_summary(result)
    return 0
