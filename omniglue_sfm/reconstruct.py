"""``reconstruct``: photo folder -> COLMAP model in one call (extract, pairs, match, sfm).

``OUT`` receives ``features.h5``, ``global.h5``, ``pairs.txt``, ``matches.h5``, ``database.db``,
``sparse/``, ``model.ply`` and ``stats.json`` (which also records the preset and the image folder,
so ``localize`` and ``viz`` need nothing else). Every stage resumes: a re-run
skips the images, pairs and model already finished with the same configuration.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from . import colmap_sift, extract, match, pairs, sfm
from .colmap.database import check_database_path
from .colmap.mapper import DB_STAMP, ReconstructionError, SfMOptions, SfMResult
from .config import presets
from .config.options import RunOptions
from .formats import h5io, outputs
from .formats.images import list_images, none_readable
from .runtime import locks
from .runtime.progress import stage

logger = logging.getLogger(__name__)

EXHAUSTIVE_MAX_IMAGES = 40  # above this, exhaustive matching grows too fast: use retrieval


def default_pairs_mode(num_images: int) -> str:
    return "exhaustive" if num_images <= EXHAUSTIVE_MAX_IMAGES else "retrieval"


def check_weights(preset: Mapping) -> None:
    """Resolve every checkpoint the preset names before any work, so a missing file fails fast."""
    from .runtime import weights

    for section in ("features", "guidance", "matcher"):
        config = preset.get(section) or {}
        for key in ("weights", "model"):
            value = config.get(key)
            if isinstance(value, str) and value in weights.KNOWN:
                weights.resolve_known(value)


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
) -> SfMResult:
    """All stages in one call. ``preset``: a name or a resolved preset dict (``presets.resolve``
    merges overrides); ``run``: device, batch size, executor and overwrite of the learned stages.

    ``pair_options.mode`` None: exhaustive up to ``EXHAUSTIVE_MAX_IMAGES`` images, else retrieval.
    """
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    preset = presets.resolve(preset)
    sfm_options = sfm_options or SfMOptions()
    run = run or RunOptions()
    names = list_images(image_dir)
    if not names:
        raise FileNotFoundError(f"no images found in {image_dir}")
    pair_options = pair_options or pairs.PairsOptions()
    if pair_options.mode is None:
        pair_options = replace(pair_options, mode=default_pairs_mode(len(names)))
    if pair_options.mode not in pairs.IMAGE_MODES:
        raise ValueError(f"unknown pairs mode {pair_options.mode!r}; choose one of {pairs.IMAGE_MODES}")
    learned = presets.pipeline(preset) is not presets.Pipeline.COLMAP_SIFT
    run.check(preset)
    check_weights(preset)
    check_database_path(output_dir / "database.db")
    with locks.locked_output_dir(output_dir):  # one run per output folder
        check_pipeline(output_dir, preset, run.overwrite)
        logger.info("%d images, preset %s, %s pairs", len(names), preset.get("name"), pair_options.mode)
        if not learned:
            result = colmap_sift.main(image_dir, output_dir, preset, pair_options, None, sfm_options, names,
                                      run.overwrite)
        else:
            result = run_learned(extract.ImageSet(image_dir, names), output_dir, preset, run, pair_options,
                                 sfm_options)
        result.stats["failed_images"] = result.failed_images
        result.stats["stage_seconds"] = dict(result.stage_seconds)
        result.stats["preset"] = preset
        result.stats["image_dir"] = str(image_dir.resolve())
        outputs.write_stats(output_dir, result.stats)
    return result


def run_learned(images: extract.ImageSet, output_dir: Path, preset: dict, run: RunOptions,
                pair_options: pairs.PairsOptions, sfm_options: SfMOptions) -> SfMResult:
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
        pairs.main(None, pairs_path, pair_options, global_path=output_dir / "global.h5", names=names)
    with stage("match", timings):
        match.main(features_path, pairs_path, matches_path, preset, run)
    with stage("sfm", timings):
        result = sfm.main(images.folder, features_path, matches_path, output_dir, pairs_path, sfm_options,
                          image_names=names)
    result.failed_images, result.stage_seconds = dict(summary.failed), timings
    if summary.turns:  # rotation handling on: each image's quarter-turn, in degrees
        result.stats["image_turns_deg"] = {n: 90 * t for n, t in sorted(summary.turns.items())}
    if summary.orientation is not None:  # the pass ran in this call (inside the extract stage)
        result.stats["orientation"] = summary.orientation
    return result
