"""The ``sift`` preset: COLMAP's own SIFT extraction and matching through pycolmap.

Cameras come from :mod:`omniglue_sfm.geometry.cameras` and images are written by :mod:`omniglue_sfm.sfm`
(same camera modes, same EXIF-oriented frame) before COLMAP extracts into that database; mapping
and outputs are :mod:`omniglue_sfm.colmap.mapper`'s, so this module only adds extraction and matching.

COLMAP (pycolmap 4.2) reads pixels without applying the EXIF orientation. Images whose tag says
they are rotated or mirrored are therefore copied upright (JPEG q95) to ``OUT/oriented_images/``
and COLMAP reads those; the other images are linked, not copied.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import pycolmap
from PIL import Image, ImageOps

from . import pairs, sfm
from .colmap import mapper as mapping
from .colmap.database import fresh_database, remove_side_files
from .colmap.mapper import DB_STAMP
from .config import presets
from .formats import matches_h5, outputs, provenance, textfiles
from .formats.images import file_problem, list_images, none_readable, oriented_size
from .geometry.cameras import ImageInfo, make_cameras
from .runtime.devices import num_threads

logger = logging.getLogger(__name__)


def prepare_images(
    image_dir: Path, names: Sequence[str], work_dir: Path
) -> tuple[Path, list[ImageInfo], dict[str, str]]:
    """The folder COLMAP should read (upright copies where needed), the readable images' sizes and
    the unreadable images (name -> reason), which are left out.
    """
    infos, rotated = [], []
    failed: dict[str, str] = {}
    for name in names:
        problem = file_problem(image_dir / name)  # a broken link, a link loop, an empty file
        if problem:
            logger.warning("skipping %s: %s", name, problem)
            failed[name] = problem
            continue
        try:
            (w, h), is_rotated = oriented_size(image_dir / name)
        except OSError as err:  # PIL's UnidentifiedImageError included
            logger.warning("skipping %s: %s", name, err)
            failed[name] = f"{type(err).__name__}: {err}"
            continue
        infos.append(ImageInfo(name, w, h))
        if is_rotated:
            rotated.append(name)
    if not rotated:
        return image_dir, infos, failed
    for name in (i.name for i in infos):
        target = work_dir / name
        if target.exists() or target.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if name in rotated:
            with Image.open(image_dir / name) as img:
                ImageOps.exif_transpose(img).convert("RGB").save(target, format="JPEG", quality=95)
        else:
            os.symlink((image_dir / name).resolve(), target)
    return work_dir, infos, failed


def extraction_options(preset: dict) -> pycolmap.FeatureExtractionOptions:
    feats = preset.get("features", {})
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = num_threads()
    options.max_image_size = int(feats.get("resize_max", -1) or -1)
    options.sift.max_num_features = int(feats.get("max_keypoints", 8192))
    return options


def native_pairs_mode(mode: str) -> str:
    """The pair mode COLMAP runs itself: exhaustive or sequential (retrieval falls back)."""
    if mode not in pairs.IMAGE_MODES:
        raise ValueError(f"sift preset: pairs mode {mode!r} not supported; choose one of {pairs.IMAGE_MODES} "
                         "or give a pairs file")
    if mode == "spatial":
        raise ValueError("sift preset: no spatial pairs (COLMAP matches inside its own database); choose "
                         "--pairs exhaustive or sequential, or a learned-feature preset")
    if mode == "retrieval":
        # COLMAP's retrieval needs a vocabulary tree we cannot ship; exhaustive is the fallback
        logger.warning("the sift preset has no retrieval pairs; matching exhaustively")
        return "exhaustive"
    return mode


def _match(db_path: Path, pairs_mode: str, window: int, pairs_path: Path | None) -> None:
    """COLMAP matching + verification: the pairs of ``pairs_path`` when given, else ``pairs_mode``."""
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = num_threads()
    verification = mapping.two_view_options()
    if pairs_path is not None:
        colmap_pairs = db_path.with_name("pairs_colmap.txt")
        # COLMAP's pair list splits on spaces and knows no escaping: write raw names
        listed = matches_h5.unique_pairs(textfiles.read_pairs(pairs_path))
        if any(" " in n for p in listed for n in p):
            raise ValueError("COLMAP's pair list cannot hold image names with spaces")
        colmap_pairs.write_text("".join(f"{a} {b}\n" for a, b in listed))
        pairing = pycolmap.ImportedPairingOptions(match_list_path=str(colmap_pairs))
        pycolmap.match_image_pairs(db_path, matching, pairing, verification)
    elif pairs_mode == "exhaustive":
        pycolmap.match_exhaustive(db_path, matching, pycolmap.ExhaustivePairingOptions(), verification)
    else:
        pairing = pycolmap.SequentialPairingOptions(overlap=window, quadratic_overlap=False)
        pycolmap.match_sequential(db_path, matching, pairing, verification)


def _read_stamp(db_path: Path) -> dict:
    try:
        return json.loads(db_path.with_name(DB_STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def image_sources(image_dir: Path, names: Sequence[str], db_path: Path) -> dict[str, dict]:
    """What each readable image is (size, mtime, inode change time, inode, SHA-1:
    ``formats.provenance.source_record``), so that a photo replaced under the same name changes the
    configuration and the database is rebuilt.

    Records of the last run (in the database stamp) are reused while the stat fields agree
    (``formats.provenance.source_changed``), so only new or touched files are hashed.
    """
    previous = _read_stamp(db_path).get("sources", {})
    records = {}
    for name in names:
        path = image_dir / name
        if file_problem(path):
            continue
        old = previous.get(name)
        unchanged = old and not provenance.source_changed(old, path)
        records[name] = old if unchanged else provenance.source_record(path)
    return records


def _db_state_matches(db_path: Path, config_key: str) -> bool:
    """Whether ``database.db`` was built by COLMAP SIFT with ``config_key`` (its stamp says so).

    Every other writer of ``database.db`` (the learned pipelines' sfm stage) removes the stamp
    first, so a stamp left by an older run is never trusted for a database it did not describe.
    """
    if not db_path.exists():
        return False
    stamp = _read_stamp(db_path)
    return stamp.get("pipeline") == presets.Pipeline.COLMAP_SIFT.value and stamp.get("config") == config_key


def main(
    image_dir: Path | str,
    output_dir: Path | str,
    preset: dict | str = "sift",
    pair_options: pairs.PairsOptions | None = None,
    pairs_path: Path | str | None = None,
    options: mapping.SfMOptions | None = None,
    image_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> mapping.SfMResult:
    """Extract, match, verify and map with COLMAP's SIFT; resumable like every stage.

    The pairs are those of ``pairs_path`` when given, else COLMAP's own exhaustive or sequential
    (``pair_options.window``) pairing; the result records failed images and stage seconds.
    """
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    pair_options = pair_options or pairs.PairsOptions()
    options = options or mapping.SfMOptions()
    camera, mapper, window = options.camera, options.mapper, pair_options.window
    preset = presets.resolve(preset)
    if presets.pipeline(preset) is not presets.Pipeline.COLMAP_SIFT:
        raise ValueError(f"preset {preset.get('name')!r} is not a COLMAP SIFT preset")
    pairs_mode = native_pairs_mode(pair_options.mode or "exhaustive")
    names = sorted(image_names) if image_names is not None else list_images(image_dir)
    if not names:
        raise FileNotFoundError(f"no images found in {image_dir}")
    output_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    pairs_list = textfiles.read_pairs(pairs_path) if pairs_path else None
    db_path = output_dir / "database.db"
    sources = image_sources(image_dir, names, db_path)
    config_key = mapping.fingerprint({
        "features": preset.get("features"), "names": names, "camera_mode": camera.mode,
        "camera_model": camera.model, "camera_params": camera.params, "pairs_mode": pairs_mode,
        "window": window, "pairs": pairs_list,
        "sources": {n: r["source_sha1"] for n, r in sources.items()},
    })
    key = mapping.fingerprint({"db": config_key, "mapper": mapper, "version": mapping.STATS_VERSION})
    if overwrite:
        db_path.with_name(DB_STAMP).unlink(missing_ok=True)
        db_path.unlink(missing_ok=True)
        remove_side_files(db_path)
    else:
        previous = mapping.load_previous(output_dir, key)
        if previous is not None:
            logger.info("sift: reusing the model in %s (same inputs)", output_dir / "sparse")
            return previous
    mapping.configure_colmap_logging(output_dir, options.verbose)
    stats: dict = {"fingerprint": key, "mapper": mapper, "camera_mode": camera.mode,
                   "camera_model": camera.model, "preset": preset, "seconds": {}}

    t0 = time.perf_counter()
    rebuild = not _db_state_matches(db_path, config_key)
    if rebuild:  # upright copies of replaced photos would be stale too
        shutil.rmtree(output_dir / "oriented_images", ignore_errors=True)
    read_dir, infos, failed = prepare_images(image_dir, names, output_dir / "oriented_images")
    names = [i.name for i in infos]
    if not names and failed:
        raise none_readable(image_dir, failed)
    if len(names) < 2:
        raise mapping.ReconstructionError(f"only {len(names)} readable image(s); SfM needs at least two")
    if rebuild:
        # COLMAP resumes extraction and matching inside an existing database; start a new one
        # whenever the configuration changed, so nothing is mixed.
        db_path.with_name(DB_STAMP).unlink(missing_ok=True)
        cameras, assignment = make_cameras(read_dir, infos, camera)
        with fresh_database(db_path) as db:
            sfm.write_images(db, infos, cameras, assignment)
        outputs.write_json(output_dir / DB_STAMP, {"pipeline": presets.Pipeline.COLMAP_SIFT.value,
                                              "config": config_key, "sources": sources})
    print(f"==> extract (COLMAP SIFT, {len(names)} images)", flush=True)
    pycolmap.extract_features(
        db_path, read_dir, image_names=list(names),
        reader_options=pycolmap.ImageReaderOptions(camera_model=camera.model),
        extraction_options=extraction_options(preset), device=pycolmap.Device.auto,
    )
    timings["extract"] = stats["seconds"]["extract"] = time.perf_counter() - t0
    _check_extracted(db_path, names)

    t0 = time.perf_counter()
    print(f"==> match (COLMAP SIFT, {pairs_mode})", flush=True)
    _match(db_path, pairs_mode, window, Path(pairs_path) if pairs_path else None)
    timings["match"] = stats["seconds"]["match+verification"] = time.perf_counter() - t0

    print("==> sfm", flush=True)
    result = mapping.map_and_write(db_path, read_dir, output_dir, names, mapper, stats, options.progress)
    timings["sfm"] = stats["seconds"]["mapping"] + stats["seconds"].get("export", 0.0)
    result.failed_images, result.stage_seconds = failed, timings
    return result


def _check_extracted(db_path: Path, names: Sequence[str]) -> None:
    with pycolmap.Database.open(db_path) as db:
        missing = [n for n in names if db.num_keypoints_for_image(db.read_image_with_name(n).image_id) == 0]
    if len(missing) == len(names):
        raise mapping.ReconstructionError("COLMAP SIFT found no keypoints in any image (see colmap.log)")
    if missing:
        logger.warning("no SIFT keypoints in %d image(s): %s", len(missing), ", ".join(missing[:5]))
