"""``triangulate``: known cameras and poses (a reference COLMAP model) + our features -> 3D points.

For users who already know where their cameras are (a survey, a robot, an earlier model): the
images of the reference model get our features and matches (the ``extract``, ``pairs`` and
``match`` stages, resumable as in ``reconstruct``), a COLMAP database with the reference's own
camera, rig, frame and image ids, geometric verification as in ``sfm``, then
``pycolmap.triangulate_points`` with every pose and camera held fixed (points only).

The reference's cameras must be in the image frame of :mod:`omniglue_sfm.images` (EXIF orientation
applied) with the images' full size; a size mismatch is an error. ``OUT`` receives what
``reconstruct`` writes (``features.h5`` ... ``sparse/``, ``model.ply``, ``stats.json``), so
``export``, ``localize`` and ``viz`` work on it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pycolmap

from . import extract, io, match, pairs, presets, sfm
from .images import none_readable
from .mapping import ReconstructionError, SfMResult, configure_colmap_logging, write_outputs
from .masks import add_masks_argument
from .reconstruct import check_weights, default_pairs_mode
from .runtime import check_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TriangulateOptions:
    pairs: pairs.PairsOptions = field(default_factory=pairs.PairsOptions)  # mode None: as reconstruct
    masks: Path | None = None
    overwrite: bool = False
    device: str | None = None


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


def check_sizes(ref: pycolmap.Reconstruction, features_path: Path) -> None:
    """Every reference camera has the (EXIF-oriented) size of its image."""
    with io.read_h5(features_path) as h5:
        for image_id in ref.reg_image_ids():
            image = ref.images[image_id]
            cam = ref.cameras[image.camera_id]
            w, h = (int(v) for v in h5[image.name]["image_size"][()])
            if (w, h) != (cam.width, cam.height):
                raise ValueError(
                    f"image {image.name} is {w}x{h} (EXIF orientation applied) but its reference camera "
                    f"{image.camera_id} is {cam.width}x{cam.height}; the reference must describe the "
                    "images at full size, upright")


def reference_database(db_path: Path, ref: pycolmap.Reconstruction, features_path: Path,
                       matches_path: Path, pair_list: list[tuple[str, str]]) -> Path:
    """A fresh database holding the reference's cameras, rigs, frames and images under their own
    ids (``triangulate_points`` pairs database and model by id), our keypoints and raw matches."""
    tmp = db_path.with_name(db_path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with pycolmap.Database.open(tmp) as db:
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
        counts = sfm.write_keypoints(db, features_path, posed)
        sfm.write_matches(db, matches_path, pair_list, image_ids, counts)
    tmp.replace(db_path)
    return db_path


def main(
    image_dir: Path | str,
    output_dir: Path | str,
    reference: Path | str,
    preset: str | Mapping = "omniglue",
    options: TriangulateOptions | None = None,
    preset_overrides: Mapping | None = None,
) -> SfMResult:
    """Features, matches and 3D points for the posed images of ``reference`` (poses held fixed)."""
    options = options or TriangulateOptions()
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    preset = presets.resolve(preset, preset_overrides)
    presets.require_learned(preset, "triangulate uses our features; COLMAP SIFT has its own tools")
    model_dir = io.find_model(reference)
    ref = pycolmap.Reconstruction(model_dir)
    names = reference_names(ref, image_dir)
    check_device(options.device)
    check_weights(preset)
    pair_options = options.pairs
    if pair_options.mode is None:
        pair_options = replace(pair_options, mode=default_pairs_mode(len(names)))
    io.check_output_dir(output_dir)
    with io.locked_output_dir(output_dir):
        return _run(image_dir, output_dir, model_dir, ref, names, preset, pair_options, options)


def _run(image_dir: Path, output_dir: Path, model_dir: Path, ref: pycolmap.Reconstruction, names: list[str],
         preset: dict, pair_options: pairs.PairsOptions, options: TriangulateOptions) -> SfMResult:
    features_path, matches_path = output_dir / "features.h5", output_dir / "matches.h5"
    pairs_path, global_path = output_dir / "pairs.txt", output_dir / "global.h5"
    stats: dict = {"seconds": {}, "reference": str(model_dir.resolve())}
    configure_colmap_logging(output_dir, verbose=False)
    t0 = time.perf_counter()
    summary = extract.main(image_dir, features_path, preset, image_names=names, global_path=global_path,
                           overwrite=options.overwrite, device=options.device, masks=options.masks)
    if summary.failed:  # a posed image without features would silently lose its observations
        raise none_readable(image_dir, summary.failed)
    check_sizes(ref, features_path)
    pair_list = pairs.main(None, pairs_path, pair_options, global_path=global_path, model_dir=model_dir,
                           names=names)
    match.main(features_path, pairs_path, matches_path, preset, overwrite=options.overwrite,
               device=options.device)
    stats["seconds"]["features_and_matches"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    canonical = [io.canonical_pair(a, b) for a, b in io.unique_pairs(pair_list)]
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
    result = write_outputs([rec], image_dir, output_dir, names, stats)
    result.stats.update(preset=preset, image_dir=str(image_dir.resolve()))
    io.write_stats(output_dir, result.stats)
    return result


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("triangulate", help="known poses (a reference model) + our matches -> points",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("images", type=Path, help="image folder (names as in the reference model)")
    p.add_argument("output", type=Path, help="output folder (re-run to resume)")
    p.add_argument("--reference", type=Path, required=True,
                   help="COLMAP model with the known cameras and poses (a folder with images.bin/.txt)")
    presets.add_arguments(p)  # --preset (learned features only), --preset-file, --max-keypoints, --resize-max
    p.add_argument("--pairs", choices=pairs.MODES, default=None,
                   help="pair selection (default: exhaustive up to 40 images, else retrieval; "
                        "covisibility uses the reference's points)")
    pairs.add_arguments(p)
    add_masks_argument(p)
    p.add_argument("--overwrite", action="store_true", help="discard existing features and matches")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    options = TriangulateOptions(pairs.PairsOptions.from_args(args, args.pairs), args.masks, args.overwrite,
                                 args.device)
    preset = presets.PresetChoice.from_args(args).resolve()  # validated before any work
    result = main(args.images, args.output, args.reference, preset, options)
    s = result.stats
    print(f"{s['num_points3D']} points triangulated in {s['registered']} posed images "
          f"(mean reprojection error {s['mean_reprojection_error']:.2f} px, mean track length "
          f"{s['mean_track_length']:.2f}) -> {result.output_dir / 'sparse'}")
    return 0
