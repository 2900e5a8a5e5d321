"""The map queries are localized in: a ``reconstruct`` output folder, its preset and features,
and its global descriptors for retrieval (computed once when it has none).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pycolmap

from .. import extract
from ..colmap.mapper import fingerprint
from ..config import presets
from ..config.options import RunOptions
from ..formats import h5io, outputs, provenance
from ..geometry.pnp import MapExtent

log = logging.getLogger(__name__)

class LocalizationError(RuntimeError):
    """The map or the queries cannot be used (the message says why)."""


@dataclass
class LocalizationMap:
    model_dir: Path
    reconstruction: pycolmap.Reconstruction
    features_path: Path
    global_path: Path
    preset: dict
    image_ids: dict[str, int]  # registered map image name -> image id in the reconstruction
    extent: MapExtent  # where the map is: a localized camera must be near it


def refuse_colmap_sift(model_dir: Path, preset: dict) -> None:
    """A map of the COLMAP SIFT pipeline cannot localize (whatever other files its folder holds)."""
    if preset and presets.pipeline(preset) is presets.Pipeline.COLMAP_SIFT:
        raise LocalizationError(
            f"{model_dir} was made with COLMAP's own SIFT (preset {preset.get('name', 'sift')!r}): its "
            "features live only in database.db, so it cannot be used for localization; reconstruct "
            "with a learned-feature preset (e.g. omniglue) to localize")


def map_preset(model_dir: Path) -> dict:
    """The preset the map was made with; its feature config is taken from features.h5 itself.

    The preset comes from ``stats.json`` (written by ``reconstruct``);
    the extractor (and guidance) configuration always from ``features.h5``'s ``config``
    attribute, so queries get exactly the map's features even with overridden settings.
    """
    model_dir = Path(model_dir)
    stored = (outputs.read_stats(model_dir) or {}).get("preset")
    preset = presets.resolve(stored) if isinstance(stored, (str, dict)) else {}
    refuse_colmap_sift(model_dir, preset)
    features_path = model_dir / "features.h5"
    if not features_path.exists():
        raise LocalizationError(f"{features_path} does not exist: MODEL_DIR must be a reconstruct output")
    fconf = h5io.read_config(features_path)
    preset["features"] = fconf["features"]
    if fconf.get("guidance"):
        preset["guidance"] = fconf["guidance"]
    else:
        preset.pop("guidance", None)
    preset["rotation"] = map_rotation(fconf)
    matches_path = model_dir / "matches.h5"
    if matches_path.exists():  # the matcher that made the map's matches is the truth, if recorded
        mconf = h5io.read_config(matches_path)
        if isinstance(mconf.get("matcher"), dict):
            preset["matcher"] = mconf["matcher"]
    if "matcher" not in preset:
        raise LocalizationError(
            f"cannot tell which matcher made {model_dir}: no preset in stats.json and no "
            "matcher config in matches.h5; pass --preset")
    return preset


def load_map(model_dir: Path | str, preset: dict | str | None = None) -> LocalizationMap:
    model_dir = Path(model_dir)
    sparse = model_dir / "sparse"
    if not (sparse / "images.bin").exists() and not (sparse / "images.txt").exists():
        raise LocalizationError(f"{sparse} holds no COLMAP model: MODEL_DIR must be a reconstruct output")
    outputs.check_last_run(model_dir)
    rec = pycolmap.Reconstruction(sparse)
    if preset is None:
        preset = map_preset(model_dir)
    else:
        preset = presets.resolve(preset)
        refuse_colmap_sift(model_dir, preset)
        fconf = h5io.read_config(model_dir / "features.h5")
        if fconf.get("features") != preset.get("features"):
            raise LocalizationError(f"preset {preset.get('name')!r} extracts other features than the map's "
                                    f"features.h5 ({fconf.get('features')})")
        preset["rotation"] = map_rotation(fconf)  # queries are turned upright as the map's images were
    preset.pop("masks", None)  # the map's mask folder has no masks of the queries
    image_ids = {rec.image(i).name: int(i) for i in rec.reg_image_ids()}
    if not image_ids:
        raise LocalizationError(f"the model in {sparse} has no registered image")
    check_model_features(rec, model_dir / "features.h5")
    return LocalizationMap(model_dir, rec, model_dir / "features.h5", model_dir / "global.h5", preset,
                           image_ids, MapExtent.of(rec))


def check_model_features(rec: pycolmap.Reconstruction, features_path: Path) -> None:
    """The model's 2D points are the keypoints of ``features.h5`` (as the database import wrote
    them, +0.5 px), image by image: a ``features.h5`` re-extracted after the model was made (a
    re-run that stopped before its mapping) would pair the model's 3D points with other keypoints."""
    with h5io.read_h5(features_path) as h5:
        for image_id in rec.reg_image_ids():
            image = rec.image(image_id)
            kps = h5[image.name]["keypoints"] if image.name in h5 else None
            points = image.points2D
            same = (kps is not None and len(points) == kps.shape[0]
                    and (len(points) == 0 or all(
                        np.allclose(points[i].xy, np.asarray(kps[i], np.float64) + 0.5, atol=1e-3)
                        for i in (0, len(points) - 1))))
            if not same:
                raise LocalizationError(
                    f"the model's keypoints of {image.name!r} are not those of {features_path}: the "
                    "features were extracted again after the model was made; run sfm (or reconstruct) "
                    "again before localizing against it")


def map_rotation(features_config: dict) -> dict | str:
    """The rotation handling recorded in the map's ``features.h5`` ("off" when it has none)."""
    return features_config.get("rotation") or "off"


def ensure_map_global(lmap: LocalizationMap, output_dir: Path, num_retrieved: int, map_images: Path | None,
                      run: RunOptions) -> Path | None:
    """The map's global descriptors: its ``global.h5``, else computed once into
    ``OUT/map_global-<map>.h5`` from the map's photos (``reconstruct`` writes ``global.h5`` only for
    retrieval pairs). ``None`` when the map is small enough to match every image."""
    if lmap.global_path.exists():
        return lmap.global_path
    if len(lmap.image_ids) <= num_retrieved:
        log.info("map has no global.h5 and only %d images: every query is matched to all of them",
                 len(lmap.image_ids))
        return None
    try:
        image_dir = outputs.recorded_image_dir(lmap.model_dir, map_images)
    except FileNotFoundError as err:
        raise LocalizationError(
            f"{lmap.global_path} does not exist and the map's photo folder is unknown ({err}): pass "
            "--map-images (global descriptors are computed once into OUT/map_global-*.h5) or rebuild the "
            "map with `reconstruct --pairs retrieval`") from None
    names = sorted(lmap.image_ids)
    sources = map_sources(lmap.features_path, image_dir, names)
    # named after the map and its features: another map (or a rebuilt one) gets its own file
    key = fingerprint({"map": lmap.model_dir.resolve(), "sources": sources})
    path = output_dir / f"map_global-{key}.h5"
    log.info("map has no global.h5: computing global descriptors of %d map images into %s",
             len(lmap.image_ids), path)
    # the map's features.h5 already holds every item (made with its masks, if any) and no photo
    # changed (map_sources), so extract only adds the global descriptors
    masks = h5io.read_config(lmap.features_path).get("masks")
    preset = {**lmap.preset, "masks": masks} if masks else lmap.preset
    extract.main(extract.ImageSet(image_dir, names), lmap.features_path, preset,
                 replace(run, overwrite=False), global_path=path)
    return path


def map_sources(features_path: Path, image_dir: Path, names: list[str]) -> dict[str, str]:
    """What the map's features were made from, per image; a :class:`LocalizationError` when a
    photo in ``image_dir`` is not the one they were made from: extracting from it would rewrite
    the map's own ``features.h5`` under its model (whose points index the old keypoints)."""
    sources, changed = {}, []
    with h5io.read_h5(features_path) as h5:
        for name in names:
            record = dict(h5[name].attrs)
            sources[name] = provenance.source_sha1(record)
            if provenance.source_changed(record, image_dir / name):
                changed.append(name)
    if changed:
        raise LocalizationError(
            f"{len(changed)} of the map's photos in {image_dir} are not the files its features were made "
            f"from (first: {changed[0]}); pass the map's own photos with --map-images")
    return sources

