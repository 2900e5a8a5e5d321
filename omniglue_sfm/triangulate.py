"""``triangulate``: known cameras and poses (a reference COLMAP model) + our features -> 3D points.

For users who already know where their cameras are (a survey, a robot, an earlier model): the
images of the reference model get our features and matches (the ``extract``, ``pairs`` and
``match`` stages, resumable as in ``reconstruct``), a COLMAP database with the reference's own
camera, rig, frame and image ids, geometric verification as in ``sfm``, then
``pycolmap.triangulate_points`` with every pose and camera held fixed (points only).

The reference's cameras must be in the image frame of :mod:`omniglue_sfm.formats.images` (EXIF orientation
applied) with the images' full size; a size mismatch is an error. ``OUT`` receives what
``reconstruct`` writes (``features.h5`` ... ``sparse/``, ``model.ply``, ``stats.json``), so
``export``, ``localize`` and ``viz`` work on it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycolmap

from . import extract, match, pairs, sfm
from .colmap.database import check_database_path, fresh_database
from .colmap.mapper import ReconstructionError, SfMResult, configure_colmap_logging, write_outputs
from .config import presets
from .config.options import RunOptions
from .formats import h5io, matches_h5, outputs
from .formats.images import none_readable, oriented_size
from .reconstruct import check_weights, default_pairs_mode
from .runtime import locks

log = logging.getLogger(__name__)


def reference_names(ref: pycolmap.Reconstruction, image_dir: Path) -> list[str]:
    """The registered images of the reference, each of which must be in ``image_dir``."""
    names = sorted(ref.images[i].name for i in ref.reg_image_ids())
    if len(names) < 2:
        raise ValueError(f"the reference model has {len(names)} posed image(s); triangulation needs two")
    missing = [n for n in names if not (image_dir / n).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of the reference model are not in {image_dir} "
                                f"(first: {missing[0]}); image names must be paths relative to IMAGES")
    return names


FEW_POINTS_SHARE = 0.05  # of the median image's 3D points
FEW_POINTS_MIN = 3


def images_with_few_points(rec: pycolmap.Reconstruction) -> dict[str, int]:
    """Posed images with no 3D point, or next to none (fewer than ``FEW_POINTS_SHARE`` of the median
    image's, and than ``FEW_POINTS_MIN``): since poses are held fixed, their poses disagree with their
    matches (a wrong or swapped pose in the reference)."""
    counts = {rec.image(i).name: int(rec.image(i).num_points3D) for i in rec.reg_image_ids()}
    if not counts:
        return {}
    least = max(FEW_POINTS_MIN, FEW_POINTS_SHARE * float(np.median(list(counts.values()))))
    return {name: n for name, n in sorted(counts.items()) if n < least}


def check_sizes(ref: pycolmap.Reconstruction, features_path: Path) -> None:
    """Every reference camera has the (EXIF-oriented) size of its image."""
    with h5io.read_h5(features_path) as h5:
        for image_id in ref.reg_image_ids():
            image = ref.images[image_id]
            cam = ref.cameras[image.camera_id]
            w, h = (int(v) for v in h5[image.name]["image_size"][()])
            if (w, h) != (cam.width, cam.height):
                raise ValueError(
                    f"image {image.name} is {w}x{h} (EXIF orientation applied) but its reference camera "
                    f"{image.camera_id} is {cam.width}x{cam.height}; the reference must describe the "
                    "images at full size, upright")


def check_reference_sizes(ref: pycolmap.Reconstruction, image_dir: Path, names: list[str]) -> None:
    """:func:`check_sizes` from the images' headers, before any work (an unreadable image is left
    to extraction, which reports it)."""
    by_name = {ref.images[i].name: ref.images[i] for i in ref.reg_image_ids()}
    for name in names:
        try:
            (w, h), _ = oriented_size(image_dir / name)
        except (OSError, ValueError, SyntaxError):
            continue
        image = by_name[name]
        cam = ref.cameras[image.camera_id]
        if (w, h) != (cam.width, cam.height):
            raise ValueError(
                f"image {name} is {w}x{h} (EXIF orientation applied) but its reference camera "
                f"{image.camera_id} is {cam.width}x{cam.height}: another image size; the reference must "
                "describe the images at full size, upright")


def reference_database(db_path: Path, ref: pycolmap.Reconstruction, features_path: Path,
                       matches_path: Path, pair_list: list[tuple[str, str]]) -> Path:
    """A fresh database holding the reference's cameras, rigs, frames and images under their own
    ids (``triangulate_points`` pairs database and model by id), our keypoints and raw matches."""
    with fresh_database(db_path) as db:
        for camera in ref.cameras.values():
            db.write_camera(camera, use_camera_id=True)
        for rig in ref.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in ref.frames.values():
            db.write_frame(frame, use_frame_id=True)
        image_ids = {}
        for image in ref.images.values():
            bare = pycolmap.Image(name=image.name, camera_id=image.camera_id, image_id=image.image_id)
            image_ids[image.name] = db.write_image(bare, use_image_id=True)
        posed = {ref.images[i].name: i for i in ref.reg_image_ids()}
        stored = sfm.write_keypoints(db, features_path, posed)
        sfm.write_matches(db, matches_path, pair_list, image_ids, stored)
    return db_path


def main(
    image_dir: Path | str,
    output_dir: Path | str,
    reference: Path | str,
    preset: str | Mapping = "omniglue",
    run: RunOptions | None = None,
    *,
    pair_options: pairs.PairsOptions | None = None,
) -> SfMResult:
    """Features, matches and 3D points for the posed images of ``reference`` (poses held fixed).
    ``pair_options.mode`` None: as ``reconstruct`` chooses it."""
    run = run or RunOptions()
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    preset = presets.resolve(preset)
    presets.require_learned(preset, "triangulate uses our features; COLMAP SIFT has its own tools")
    model_dir = outputs.find_model(reference)
    ref = pycolmap.Reconstruction(model_dir)
    names = reference_names(ref, image_dir)
    check_reference_sizes(ref, image_dir, names)
    run.check(preset)
    check_weights(preset)
    pair_options = pair_options or pairs.PairsOptions()
    if pair_options.mode is None:
        pair_options = replace(pair_options, mode=default_pairs_mode(len(names)))
    locks.check_output_dir(output_dir)
    check_database_path(output_dir / "database.db")
    with locks.locked_output_dir(output_dir):
        return _run(image_dir, output_dir, model_dir, ref, names, preset, pair_options, run)


def _run(image_dir: Path, output_dir: Path, model_dir: Path, ref: pycolmap.Reconstruction, names: list[str],
         preset: dict, pair_options: pairs.PairsOptions, run: RunOptions) -> SfMResult:
    features_path, matches_path = output_dir / "features.h5", output_dir / "matches.h5"
    pairs_path, global_path = output_dir / "pairs.txt", output_dir / "global.h5"
    stats: dict = {"seconds": {}, "reference": str(model_dir.resolve())}
    configure_colmap_logging(output_dir, verbose=False)
    t0 = time.perf_counter()
    summary = extract.main(extract.ImageSet(image_dir, names), features_path, preset, run,
                           global_path=global_path)
    if summary.failed:  # a posed image without features would silently lose its observations
        raise none_readable(image_dir, summary.failed)
    check_sizes(ref, features_path)
    retrieval_path = pairs.retrieval_descriptors(pair_options, features_path, global_path, names)
    pair_list = pairs.main(None, pairs_path, pair_options, global_path=retrieval_path, model_dir=model_dir,
                           names=names)
    match.main(features_path, pairs_path, matches_path, preset, run)
    stats["seconds"]["features_and_matches"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    canonical = [matches_h5.canonical_pair(a, b) for a, b in matches_h5.unique_pairs(pair_list)]
    db_path = reference_database(output_dir / "database.db", ref, features_path, matches_path, canonical)
    sfm.verify(db_path)
    stats["seconds"]["database"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    work = output_dir / "triangulation.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    posed = pycolmap.Reconstruction(model_dir)
    # the reference's own 2D points (an earlier model's keypoints) would not be ours: the images
    # take their keypoints from the database instead
    posed.delete_all_points2D_and_points3D()
    rec = pycolmap.triangulate_points(posed, db_path, image_dir, work, clear_points=True,
                                      refine_intrinsics=False)
    shutil.rmtree(work, ignore_errors=True)
    stats["seconds"]["triangulation"] = time.perf_counter() - t0
    if rec.num_points3D() == 0:
        raise ReconstructionError("no 3D point was triangulated: the images' matches do not agree with "
                                  "the reference poses (wrong poses, or images that do not overlap)")
    few = images_with_few_points(rec)
    for name, count in few.items():
        log.warning("%s: posed in the reference, but only %d 3D point(s) were triangulated in it: is its "
                    "pose right?", name, count)
    result = write_outputs([rec], image_dir, output_dir, names, stats)
    result.stats.update(preset=preset, image_dir=str(image_dir.resolve()), images_with_few_points=few)
    outputs.write_stats(output_dir, result.stats)
    return result
