"""SfM stage: ``features.h5`` + ``matches.h5`` -> COLMAP database -> sparse model (pycolmap 4.x).

Outputs in ``OUT``: ``database.db``, ``sparse/`` (largest model, COLMAP binary),
``sparse_models/<i>/`` (the other models, if any), ``model.ply`` and ``stats.json``.

Conventions
-----------
* Image frame and cameras: see :mod:`omniglue_sfm.geometry.cameras` (EXIF-oriented frame, EXIF focal
  prior); cameras, rigs, frames and images are written here, not through ``pycolmap.import_images``.
* Pixel coordinates: ``features.h5`` puts the centre of the top-left pixel at (0, 0); COLMAP puts
  it at (0.5, 0.5), so keypoints are written with +0.5.
* The database is rebuilt on every run (it is cheap); mapping and outputs are
  :mod:`omniglue_sfm.colmap.mapper`'s, which reuses the result when ``stats.json`` records the same
  input fingerprint, so a re-run skips finished work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from .colmap.database import check_database_path, fresh_database
from .colmap.mapper import (
    DB_STAMP,
    STATS_VERSION,
    MappingInputs,
    ReconstructionError,
    SfMOptions,
    SfMResult,
    configure_colmap_logging,
    file_signature,
    fingerprint,
    load_previous,
    map_and_write,
    two_view_options,
)
from .formats import h5io, hloc, matches_h5, provenance, textfiles
from .geometry.cameras import CameraOptions, ImageInfo, make_cameras, read_image_infos
from .runtime import locks
from .runtime.devices import num_threads

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# database


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


@dataclass(frozen=True)
class StoredFeatures:
    """What the database import needs to know of one image's features beyond its keypoints."""

    num_keypoints: int
    source: str  # provenance.source_sha1 of the features group: what matches must have been made from


def write_keypoints(
    db: pycolmap.Database, features_path: Path, image_ids: dict[str, int]
) -> dict[str, StoredFeatures]:
    """Every image's keypoints; returns name -> their count and source."""
    stored = {}
    with h5io.read_h5(features_path) as h5:
        for name, image_id in image_ids.items():
            kps = h5[name]["keypoints"][()].astype(np.float32)  # hloc may store float16
            db.write_keypoints(image_id, kps + 0.5)  # COLMAP: top-left pixel centre at (0.5, 0.5)
            stored[name] = StoredFeatures(len(kps), provenance.source_sha1(dict(h5[name].attrs)))
    return stored


def select_pairs(
    matches_path: Path, names: Sequence[str], pairs_path: Path | None
) -> list[tuple[str, str]]:
    """The pairs to import: those of ``pairs_path`` or else every pair in ``matches.h5``."""
    allowed = set(names)
    if pairs_path is not None:
        pairs = matches_h5.unique_pairs(textfiles.read_pairs(pairs_path))
    else:
        pairs = matches_h5.unique_pairs(hloc.stored_pairs(matches_path, names))  # our layout or hloc's
    return [matches_h5.canonical_pair(a, b) for a, b in pairs if a in allowed and b in allowed]


def write_matches(
    db: pycolmap.Database, matches_path: Path, pairs: Sequence[tuple[str, str]], image_ids: dict[str, int],
    stored: Mapping[str, StoredFeatures],
) -> int:
    """Raw matches of every pair (canonical order; our layout or hloc's). Returns the number of pairs
    written. A pair matched from other features than ``features.h5`` now holds (an image replaced or
    re-extracted since ``match`` ran), or an index beyond an image's keypoints, is an error: COLMAP
    would import either without a word."""
    missing, stale = [], []
    written = 0
    with h5io.read_h5(matches_path) as h5:
        for a, b in pairs:
            try:
                matches, _ = matches_h5.read_pair(h5, a, b, matches_path)
            except KeyError:
                missing.append((a, b))
                continue
            recorded = matches_h5.recorded_sources(h5, a, b)
            if recorded is not None and recorded != (stored[a].source, stored[b].source):
                stale.append((a, b))
                continue
            if len(matches) == 0:
                continue
            for column, name in enumerate((a, b)):
                if matches[:, column].max() >= stored[name].num_keypoints:
                    raise ValueError(f"{matches_path}: pair ({a!r}, {b!r}) refers to keypoints that {name!r} "
                                     "does not have: these matches were not made from this features.h5")
            db.write_matches(image_ids[a], image_ids[b], matches.astype(np.uint32))
            written += 1
    if stale:
        raise ReconstructionError(
            f"{len(stale)} of {len(pairs)} pairs in {matches_path} were matched from other features than "
            f"the features.h5 now holds (first: {stale[0]}: an image replaced or re-extracted since); run "
            "the match stage again (it re-matches only those pairs)")
    if missing:
        raise ReconstructionError(
            f"{len(missing)} of {len(pairs)} pairs have no matches in {matches_path} "
            f"(first: {missing[0]}); run the match stage on the same pairs first."
        )
    return written


def write_pose_priors(
    db: pycolmap.Database, priors: Mapping[str, tuple[Sequence[float], Sequence[Sequence[float]]]],
    image_ids: dict[str, int],
) -> int:
    """Position priors (local ENU metres and their 3x3 covariance, see
    :mod:`omniglue_sfm.geometry.geo`) of the images that have one. Returns how many were written."""
    written = 0
    for name, (position, covariance) in sorted(priors.items()):
        if name not in image_ids:
            continue
        prior = pycolmap.PosePrior(position=np.asarray(position, dtype=np.float64),
                                   position_covariance=np.asarray(covariance, dtype=np.float64),
                                   coordinate_system=pycolmap.PosePriorCoordinateSystem.CARTESIAN)
        prior.corr_data_id = db.read_image(image_ids[name]).data_id
        db.write_pose_prior(prior)
        written += 1
    return written


def prior_key(priors: Mapping[str, tuple] | None) -> dict | None:
    """The priors as they enter the fingerprint (millimetres): a moved GPS tag changes it."""
    if not priors:
        return None
    return {n: [round(float(v), 3) for v in np.asarray(p, dtype=np.float64).ravel()]
            + [round(float(v), 3) for v in np.asarray(c, dtype=np.float64).ravel()]
            for n, (p, c) in sorted(priors.items())}


def verify(db_path: Path) -> None:
    """Geometric verification (E/F/H model selection with RANSAC) of every matched pair."""
    pycolmap.geometric_verification(
        db_path,
        pycolmap.GeometricVerifierOptions(num_threads=num_threads()),
        pycolmap.ExistingMatchedPairingOptions(),
        two_view_options(),
    )


# --------------------------------------------------------------------------------------------
# stage entry point


def main(
    image_dir: Path | str,
    features_path: Path | str,
    matches_path: Path | str,
    output_dir: Path | str,
    pairs_path: Path | str | None = None,
    options: SfMOptions | None = None,
    image_names: Sequence[str] | None = None,
    priors: Mapping[str, tuple] | None = None,
    rig: pycolmap.RigConfig | None = None,
) -> SfMResult:
    """Database, verification and mapping of the images of ``image_names`` (default: all features).

    ``priors``: name -> (ENU position, 3x3 covariance), written as pose priors and used by the
    incremental mapper unless ``options.prior_position`` is off; ``rig``: a rig of fixed geometry
    (panorama views), applied to the database and kept fixed while mapping."""
    options = options or SfMOptions()
    image_dir, features_path, matches_path, output_dir = map(
        Path, (image_dir, features_path, matches_path, output_dir))
    pairs_path = Path(pairs_path) if pairs_path else None
    for path in (image_dir, features_path, matches_path) + ((pairs_path,) if pairs_path else ()):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
    locks.check_output_dir(output_dir)
    check_database_path(output_dir / "database.db")
    inputs = hloc.check_matches_fit(features_path, matches_path)  # never matches of other features
    shard = h5io.read_config(matches_path).get("shard") if inputs["matches"] == "omniglue-sfm" else None
    if shard and pairs_path is None:  # a shard holds only part of the pairs: never mapped silently
        raise ValueError(f"{matches_path} is shard {shard['index']} of {shard['count']} (match --shard), "
                         f"with part of the pairs: merge all {shard['count']} shards first (omniglue-sfm "
                         "merge), or pass --pairs with the pairs it holds")
    camera = options.camera
    names = sorted(image_names) if image_names is not None else h5io.list_names(features_path)
    pairs = select_pairs(matches_path, names, pairs_path)
    key = fingerprint({
        "version": STATS_VERSION, "names": names, "pairs": pairs, "camera_mode": camera.mode,
        "camera_model": camera.model, "camera_params": camera.params, "mapper": options.mapper,
        "features": file_signature(features_path), "matches": file_signature(matches_path),
        **({"priors": prior_key(priors), "prior_position": options.prior_position} if priors else {}),
        **({"rig": str(rig.todict())} if rig is not None else {}),
    })
    with locks.locked_output_dir(output_dir):  # one run per output folder (a no-op under reconstruct)
        previous = load_previous(output_dir, key)
        if previous is not None:
            logger.info("sfm: reusing the model in %s (same inputs)", output_dir / "sparse")
            return previous
        configure_colmap_logging(output_dir, options.verbose)
        stats: dict = {"fingerprint": key, "mapper": options.mapper, "camera_mode": camera.mode,
                       "camera_model": camera.model, "inputs": inputs, "seconds": {}}
        t0 = time.perf_counter()
        db_path = build_database(output_dir / "database.db", image_dir, features_path, matches_path,
                                 names, pairs, camera, priors, rig)
        stats["seconds"]["database"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        verify(db_path)
        stats["seconds"]["verification"] = time.perf_counter() - t0
        inputs = MappingInputs(use_priors=bool(priors) and options.prior_position, fixed_rigs=rig is not None)
        if priors:
            stats["pose_priors"] = {"images": len(priors), "used_by_mapper": inputs.use_priors
                                    and options.mapper == "incremental"}
        return map_and_write(db_path, image_dir, output_dir, names, options.mapper, stats, options.progress,
                             inputs)


def build_database(
    db_path: Path,
    image_dir: Path,
    features_path: Path,
    matches_path: Path,
    names: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    camera: CameraOptions,
    priors: Mapping[str, tuple] | None = None,
    rig: pycolmap.RigConfig | None = None,
) -> Path:
    """A fresh database (written under a temporary name, then renamed); with ``priors`` (pose
    priors) and ``rig`` (applied with ``pycolmap.apply_rig_config``) when given."""
    infos = read_image_infos(features_path, names)
    cameras, assignment = make_cameras(image_dir, infos, camera)
    # the COLMAP SIFT stamp describes a database this one replaces: drop it before the swap
    db_path.with_name(DB_STAMP).unlink(missing_ok=True)
    # about what the database holds, for a full disk's message: the keypoints and matches
    needed = features_path.stat().st_size + matches_path.stat().st_size
    with fresh_database(db_path, needed) as db:
        image_ids = write_images(db, infos, cameras, assignment)
        stored = write_keypoints(db, features_path, image_ids)
        write_matches(db, matches_path, pairs, image_ids, stored)
        if priors:
            write_pose_priors(db, priors, image_ids)
        if rig is not None:
            pycolmap.apply_rig_config([rig], db)
    return db_path
