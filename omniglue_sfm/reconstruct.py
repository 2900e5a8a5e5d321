"""``reconstruct``: photo folder -> COLMAP model in one call (extract, pairs, match, sfm).

``OUT`` receives ``features.h5``, ``global.h5``, ``pairs.txt``, ``matches.h5``, ``database.db``,
``sparse/``, ``model.ply`` and ``stats.json`` (which also records the preset and the image folder,
so ``localize`` and ``viz`` need nothing else). Every stage resumes: a re-run
skips the images, pairs and model already finished with the same configuration.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from . import colmap_sift, executors, extract, io, match, orientation, pairs, presets, sfm
from .images import list_images, none_readable
from .mapping import DB_STAMP, ReconstructionError, SfMOptions, SfMResult, add_arguments
from .masks import add_masks_argument
from .runtime import check_device
from .summary import print_sfm_summary, stage

logger = logging.getLogger(__name__)

EXHAUSTIVE_MAX_IMAGES = 40  # above this, exhaustive matching grows too fast: use retrieval


def default_pairs_mode(num_images: int) -> str:
    return "exhaustive" if num_images <= EXHAUSTIVE_MAX_IMAGES else "retrieval"


def check_weights(preset: Mapping) -> None:
    """Before any work: the optional packages the preset's plugins need, and every checkpoint it
    names (one error naming each missing one), so a missing file fails fast."""
    from . import registry, weights

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
    stored = (io.read_stats(output_dir) or {}).get("preset")
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
        raise io.ConfigMismatchError(
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


@dataclass(frozen=True)
class RunOptions:
    """How the learned pipelines' extract and match stages run (the ``sift`` preset takes none)."""

    device: str | None = None  # torch device (default: cuda when available)
    batch_size: int | None = None  # pairs per matching batch (default 16 GPU, 4 CPU); speed only
    masks: Path | None = None  # mask folder (see omniglue_sfm.masks); part of the features' config
    executor: executors.ExecutorOptions | None = None  # where extract and match run (default: here)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        return cls(args.device, args.batch_size, args.masks, executors.ExecutorOptions.from_args(args))

    def check(self, preset: Mapping, learned: bool) -> None:
        """Before any work: options the preset cannot use are errors, not silently ignored."""
        name = preset.get("name", "?")
        if learned:
            check_device(self.device)
        elif self.masks is not None:
            raise ValueError(f"--masks works with learned-feature presets, not {name!r}")
        elif self.batch_size is not None:
            raise ValueError(f"--batch-size is for learned matchers; preset {name!r} matches inside COLMAP")
        elif self.executor is not None and self.executor.is_ray:
            raise ValueError(f"--executor ray runs the learned pipelines' extract and match; preset "
                             f"{name!r} runs COLMAP's own SIFT here: leave --executor out")


def main(
    image_dir: Path | str,
    output_dir: Path | str,
    preset: str | Mapping = "omniglue",
    pair_options: pairs.PairsOptions | None = None,
    options: SfMOptions | None = None,
    overwrite: bool = False,
    run: RunOptions | None = None,
    preset_overrides: Mapping | None = None,
    print_summary: bool = True,
) -> SfMResult:
    """All stages in one call; ``preset_overrides`` are merged into the preset (e.g. fewer keypoints);
    ``run``: device, batch size, masks and executor of the learned stages.

    ``pair_options.mode`` None: exhaustive up to ``EXHAUSTIVE_MAX_IMAGES`` images, else retrieval.
    """
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    preset = presets.resolve(preset, preset_overrides)
    options = options or SfMOptions()
    names = list_images(image_dir)
    if not names:
        raise FileNotFoundError(f"no images found in {image_dir}")
    pair_options = pair_options or pairs.PairsOptions()
    if pair_options.mode is None:
        pair_options = replace(pair_options, mode=default_pairs_mode(len(names)))
    if pair_options.mode not in pairs.IMAGE_MODES:
        raise ValueError(f"unknown pairs mode {pair_options.mode!r}; choose one of {pairs.IMAGE_MODES}")
    learned = presets.pipeline(preset) is not presets.Pipeline.COLMAP_SIFT
    run = run or RunOptions()
    run.check(preset, learned)
    check_weights(preset)
    with io.locked_output_dir(output_dir):  # one run per output folder
        check_pipeline(output_dir, preset, overwrite)
        logger.info("%d images, preset %s, %s pairs", len(names), preset.get("name"), pair_options.mode)
        if not learned:
            result = colmap_sift.main(image_dir, output_dir, preset, pair_options, None, options, names,
                                      overwrite)
        else:
            result = run_learned(image_dir, output_dir, preset, names, pair_options, options, overwrite,
                                 run)
        result.stats["failed_images"] = result.failed_images
        result.stats["stage_seconds"] = dict(result.stage_seconds)
        result.stats["preset"] = preset
        result.stats["image_dir"] = str(image_dir.resolve())
        io.write_stats(output_dir, result.stats)
    if print_summary:
        print_sfm_summary(result, result.failed_images, result.stage_seconds)
    return result


def run_learned(
    image_dir: Path, output_dir: Path, preset: dict, names: list[str], pair_options: pairs.PairsOptions,
    options: SfMOptions, overwrite: bool, run: RunOptions,
) -> SfMResult:
    """extract -> pairs -> match -> sfm into ``output_dir``; every stage resumes."""
    features_path = output_dir / "features.h5"
    matches_path = output_dir / "matches.h5"
    pairs_path = output_dir / "pairs.txt"
    timings: dict[str, float] = {}
    with stage("extract", timings):
        # global descriptors come from the same forward pass; localize retrieves with them later
        summary = extract.main(image_dir, features_path, preset, image_names=names,
                               global_path=output_dir / "global.h5",
                               overwrite=overwrite, device=run.device, masks=run.masks, executor=run.executor)
    names = summary.names
    if not names and summary.failed:
        raise none_readable(image_dir, summary.failed)
    if len(names) < 2:
        raise ReconstructionError(f"only {len(names)} readable image(s); SfM needs at least two")
    with stage("pairs", timings):
        pairs.main(None, pairs_path, pair_options, global_path=output_dir / "global.h5", names=names)
    with stage("match", timings):
        match.main(features_path, pairs_path, matches_path, preset, overwrite=overwrite, device=run.device,
                   batch_size=run.batch_size, executor=run.executor)
    with stage("sfm", timings):
        result = sfm.main(image_dir, features_path, matches_path, output_dir, pairs_path, options,
                          image_names=names)
    result.failed_images, result.stage_seconds = dict(summary.failed), timings
    if summary.turns:  # rotation handling on: each image's quarter-turn, in degrees
        result.stats["image_turns_deg"] = {n: 90 * t for n, t in sorted(summary.turns.items())}
    if summary.orientation is not None:  # the pass ran in this call (inside the extract stage)
        result.stats["orientation"] = summary.orientation
    return result


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("reconstruct", help="image folder -> COLMAP model, all stages",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, help="image folder (searched recursively)")
    parser.add_argument("output", type=Path, help="output folder (re-run to resume)")
    presets.add_arguments(parser)  # --preset, --preset-file, --max-keypoints, --resize-max
    parser.add_argument("--batch-size", type=presets.positive_int, default=None, metavar="N",
                        help="pairs per matching batch (default 16 GPU, 4 CPU); speed only, not recorded")
    parser.add_argument("--pairs", choices=pairs.IMAGE_MODES, default=None,
                        help=f"pair selection (default: exhaustive up to {EXHAUSTIVE_MAX_IMAGES} images, "
                             f"else retrieval)")
    pairs.add_arguments(parser)
    add_arguments(parser)
    add_masks_argument(parser)
    orientation.add_argument(parser)
    parser.add_argument("--overwrite", action="store_true", help="discard existing outputs")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    executors.add_arguments(parser)
    parser.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    # main() prints the summary table itself
    preset = presets.PresetChoice.from_args(args).resolve()  # validated before any work
    main(args.images, args.output, preset, pairs.PairsOptions.from_args(args, args.pairs),
         SfMOptions.from_args(args), args.overwrite, RunOptions.from_args(args))
    return 0
