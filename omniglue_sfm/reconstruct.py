"""``reconstruct``: photo folder or video -> COLMAP model in one call (extract, pairs, match, sfm).

``OUT`` receives ``features.h5``, ``global.h5``, ``pairs.txt``, ``matches.h5``, ``database.db``,
``sparse/``, ``model.ply`` and ``stats.json`` (which also records the preset and the image folder,
so ``localize`` and ``viz`` need nothing else). Every stage resumes: a re-run
skips the images, pairs and model already finished with the same configuration.

Field captures (:mod:`omniglue_sfm.capture`): photos with EXIF GPS are paired by position, mapped
with GPS priors and georegistered (``sparse/`` in metres in a local east-north-up frame,
``georef.json``); a video is cut into frames (``OUT/frames/``); 2:1 panoramas into pinhole views
(``OUT/views/``) mapped as rigs.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from . import capture as captures
from . import colmap_sift, extract, match, pairs, sfm
from .colmap.database import check_database_path
from .colmap.mapper import DB_STAMP, ReconstructionError, SfMOptions, SfMResult
from .config import presets
from .config.options import RunOptions
from .formats import h5io, outputs, textfiles
from .formats.images import none_readable
from .runtime import locks
from .runtime.progress import stage

logger = logging.getLogger(__name__)

EXHAUSTIVE_MAX_IMAGES = 40  # above this, exhaustive matching grows too fast: use retrieval


def default_pairs_mode(num_images: int) -> str:
    return "exhaustive" if num_images <= EXHAUSTIVE_MAX_IMAGES else "retrieval"


def check_weights(preset: Mapping) -> None:
    """Before any work: the optional packages the preset's plugins need, and every checkpoint it
    names (one error naming each missing one), so a missing file fails fast."""
    from .config import registry
    from .runtime import weights

    registry.check_installed(dict(preset))
    names = []
    for section in ("features", "guidance", "matcher"):
        config = preset.get(section) or {}
        for key in ("weights", "model"):
            value = config.get(key)
            if isinstance(value, str) and value in weights.KNOWN:
                names.append(value)
    weights.check_available(names)


LEARNED_FILES = ("features.h5", "matches.h5", "global.h5")


def recorded_pipeline(output_dir: Path) -> tuple[presets.Pipeline, str] | None:
    """The pipeline (and preset name) ``output_dir`` holds outputs of, or None when it is new.

    ``stats.json`` records the preset; without it (a run stopped early) the files tell.
    """
    stored = (outputs.read_stats(output_dir) or {}).get("preset")
    if isinstance(stored, (str, dict)):
        try:
            resolved = presets.resolve(stored)
            return presets.pipeline(resolved), str(resolved.get("name", "?"))
        except (KeyError, ValueError):
            pass  # an unknown preset name: fall back on the files
    if (output_dir / DB_STAMP).exists():
        return presets.Pipeline.COLMAP_SIFT, "sift"
    for name in LEARNED_FILES:
        if (output_dir / name).exists() or (output_dir / f"{name}.parts").exists():
            return presets.Pipeline.LEARNED, "?"
    return None


def check_pipeline(output_dir: Path, preset: Mapping, overwrite: bool) -> None:
    """Refuse to run another pipeline into ``output_dir`` (its model would be replaced); with
    ``overwrite``, remove the other pipeline's files so that nothing of it is left beside the new model.
    """
    found = recorded_pipeline(output_dir)
    wanted = presets.pipeline(preset)
    if found is None or found[0] is wanted:
        return
    if not overwrite:
        raise h5io.ConfigMismatchError(
            f"{output_dir} holds outputs of preset {found[1]!r} ({found[0].value} pipeline); preset "
            f"{preset.get('name', '?')!r} runs the {wanted.value} pipeline and would replace them. "
            "Use another output folder or --overwrite.")
    logger.info("--overwrite: removing the %s pipeline's outputs from %s", found[0].value, output_dir)
    if wanted is presets.Pipeline.COLMAP_SIFT:
        for name in LEARNED_FILES:
            (output_dir / name).unlink(missing_ok=True)
            shutil.rmtree(output_dir / f"{name}.parts", ignore_errors=True)
        (output_dir / "pairs.txt").unlink(missing_ok=True)
    else:
        (output_dir / DB_STAMP).unlink(missing_ok=True)
        shutil.rmtree(output_dir / "oriented_images", ignore_errors=True)


def main(
    image_dir: Path | str,
    output_dir: Path | str,
    preset: str | Mapping = "omniglue",
    run: RunOptions | None = None,
    *,
    pair_options: pairs.PairsOptions | None = None,
    sfm_options: SfMOptions | None = None,
    capture: captures.CaptureOptions | None = None,
) -> SfMResult:
    """All stages in one call. ``preset``: a name or a resolved preset dict (``presets.resolve``
    merges overrides); ``run``: device, batch size, executor and overwrite of the learned stages;
    ``capture``: GPS, video frames and panoramas (:mod:`omniglue_sfm.capture`). ``image_dir`` may be
    a video file.

    ``pair_options.mode`` None: spatial when most photos have GPS (learned presets), sequential with
    loop closure for a video, else exhaustive up to ``EXHAUSTIVE_MAX_IMAGES`` images and retrieval above.
    """
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    preset = presets.resolve(preset)
    sfm_options = sfm_options or SfMOptions()
    run = run or RunOptions()
    if not image_dir.exists():
        raise FileNotFoundError(f"{image_dir} does not exist (give a folder of photos or a video file)")
    pair_options = pair_options or pairs.PairsOptions()
    if pair_options.mode is not None and pair_options.mode not in pairs.IMAGE_MODES:
        raise ValueError(f"unknown pairs mode {pair_options.mode!r}; choose one of {pairs.IMAGE_MODES}")
    learned = presets.pipeline(preset) is not presets.Pipeline.COLMAP_SIFT
    run.check(preset)
    check_weights(preset)
    check_database_path(output_dir / "database.db")
    with locks.locked_output_dir(output_dir):  # one run per output folder
        check_pipeline(output_dir, preset, run.overwrite)
        cap = captures.prepare(image_dir, output_dir, capture)
        if cap.kind == "panoramas" and not learned:
            raise ValueError(f"panoramas are mapped as rigs of views by the learned pipelines; preset "
                             f"{preset.get('name')!r} runs COLMAP's SIFT: choose another preset")
        names, image_dir = cap.names, cap.image_dir
        sfm_options = replace(sfm_options, camera=cap.camera(sfm_options.camera))
        fallback = default_pairs_mode(len(names))
        if learned or cap.kind == "video":
            pair_options = cap.default_pairs(pair_options, fallback)
        elif pair_options.mode is None:
            pair_options = replace(pair_options, mode=fallback)
        logger.info("%d images (%s), preset %s, %s pairs", len(names), cap.kind, preset.get("name"),
                    pair_options.mode)
        if not learned:
            result = colmap_sift.main(image_dir, output_dir, preset, pair_options, None, sfm_options, names,
                                      run.overwrite)
        else:
            result = run_learned(extract.ImageSet(image_dir, names), output_dir, preset, run, pair_options,
                                 sfm_options, cap)
        georef = captures.georegister(output_dir, cap, result.reconstruction, result.stats.get("fingerprint"),
                                      result.skipped)
        result.stats.update(cap.stats)
        result.stats["pairs_mode"] = pair_options.mode
        if georef is not None:
            result.stats["georef"] = {k: v for k, v in georef.items() if k not in ("per_image_m", "key")}
        elif cap.positions:  # GPS photos, yet no metres: said in stats.json and the summary, not only logged
            result.stats["georef"] = {"error": captures.NOT_GEOREGISTERED}
        else:
            result.stats.pop("georef", None)
        result.stats["failed_images"] = result.failed_images
        result.stats["stage_seconds"] = dict(result.stage_seconds)
        result.stats["preset"] = preset
        result.stats["image_dir"] = str(image_dir.resolve())
        outputs.write_stats(output_dir, result.stats)
    return result


def run_learned(images: extract.ImageSet, output_dir: Path, preset: dict, run: RunOptions,
                pair_options: pairs.PairsOptions, sfm_options: SfMOptions,
                cap: captures.Capture | None = None) -> SfMResult:
    """extract -> pairs -> match -> sfm into ``output_dir``; every stage resumes."""
    features_path = output_dir / "features.h5"
    matches_path = output_dir / "matches.h5"
    pairs_path = output_dir / "pairs.txt"
    timings: dict[str, float] = {}
    with stage("extract", timings):
        # global descriptors come from the same forward pass; localize retrieves with them later
        summary = extract.main(images, features_path, preset, run, global_path=output_dir / "global.h5")
    names = summary.names
    if not names and summary.failed:
        raise none_readable(images.folder, summary.failed)
    if len(names) < 2:
        raise ReconstructionError(f"only {len(names)} readable image(s); SfM needs at least two")
    with stage("pairs", timings):
        positions = cap.positions if cap else None
        retrieval_path = pairs.retrieval_descriptors(pair_options, features_path, output_dir / "global.h5",
                                                     names, positions)
        chosen = pairs.main(None, pairs_path, pair_options, global_path=retrieval_path, names=names,
                            positions=positions)
        if cap is not None and cap.kind == "panoramas":  # views of one panorama share no baseline
            kept = cap.filter_pairs(chosen)
            textfiles.write_pairs(pairs_path, kept)
            logger.info("%d pairs between views of different panoramas", len(kept))
    with stage("match", timings):
        match.main(features_path, pairs_path, matches_path, preset, run)
    with stage("sfm", timings):
        result = sfm.main(images.folder, features_path, matches_path, output_dir, pairs_path, sfm_options,
                          image_names=names, priors=cap.priors if cap else None, rig=cap.rig if cap else None)
    result.failed_images, result.stage_seconds = dict(summary.failed), timings
    if summary.turns:  # rotation handling on: each image's quarter-turn, in degrees
        result.stats["image_turns_deg"] = {n: 90 * t for n, t in sorted(summary.turns.items())}
    if summary.orientation is not None:  # the pass ran in this call (inside the extract stage)
        result.stats["orientation"] = summary.orientation
    return result
