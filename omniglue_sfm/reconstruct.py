"""``reconstruct``: photo folder -> COLMAP model in one call (extract, pairs, match, sfm).

``OUT`` receives ``features.h5``, ``global.h5``, ``pairs.txt``, ``matches.h5``, ``database.db``,
``sparse/``, ``model.ply`` and ``stats.json`` (which also records the preset and the image folder,
so ``localize`` and ``viz`` need nothing else). Every stage resumes: a re-run
skips the images, pairs and model already finished with the same configuration.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path

from . import io, pairs, presets, sfm
from .summary import print_sfm_summary, stage

logger = logging.getLogger(__name__)

EXHAUSTIVE_MAX_IMAGES = 40  # above this, exhaustive matching grows too fast: use retrieval


def default_pairs_mode(num_images: int) -> str:
    return "exhaustive" if num_images <= EXHAUSTIVE_MAX_IMAGES else "retrieval"


def check_weights(preset: Mapping) -> None:
    """Resolve every checkpoint the preset names before any work, so a missing file fails fast."""
    from . import weights

    for section in ("features", "guidance", "matcher"):
        config = preset.get(section) or {}
        for key in ("weights", "model"):
            value = config.get(key)
            if isinstance(value, str) and value in weights.KNOWN:
                weights.resolve_known(value)


def main(
    image_dir: Path | str,
    output_dir: Path | str,
    preset: str | dict = "omniglue",
    pairs_mode: str | None = None,
    num_matched: int = pairs.DEFAULT_NUM_MATCHED,
    window: int = pairs.DEFAULT_WINDOW,
    loop_closure: bool = False,
    camera_mode: str = "auto",
    camera_model: str = "SIMPLE_RADIAL",
    camera_params: str | None = None,
    mapper: str = "incremental",
    overwrite: bool = False,
    device: str | None = None,
    preset_overrides: Mapping | None = None,
    verbose: bool = False,
    progress: bool = True,
    print_summary: bool = True,
) -> sfm.SfMResult:
    """All stages in one call; ``preset_overrides`` are merged into the preset (e.g. fewer keypoints)."""
    from .images import list_images

    image_dir, output_dir = Path(image_dir), Path(output_dir)
    preset = presets.resolve(preset, preset_overrides)
    names = list_images(image_dir)
    if not names:
        raise FileNotFoundError(f"no images found in {image_dir}")
    mode = pairs_mode or default_pairs_mode(len(names))
    if mode not in pairs.IMAGE_MODES:
        raise ValueError(f"unknown pairs mode {mode!r}; choose one of {pairs.IMAGE_MODES}")
    check_weights(preset)
    output_dir.mkdir(parents=True, exist_ok=True)
    logger.info("%d images, preset %s, %s pairs", len(names), preset.get("name"), mode)
    timings: dict[str, float] = {}
    failed: dict[str, str] = {}
    if presets.pipeline(preset) is presets.Pipeline.COLMAP_SIFT:
        result = _run_colmap_sift(image_dir, output_dir, preset, mode, window, camera_mode, camera_model,
                                  camera_params, mapper, names, overwrite, verbose, progress, timings,
                                  failed)
    else:
        result = _run_learned(image_dir, output_dir, preset, names, mode, num_matched, window,
                              loop_closure, camera_mode, camera_model, camera_params, mapper,
                              overwrite, device, verbose, progress, timings, failed)
    result.stats["failed_images"] = failed
    result.stats["stage_seconds"] = dict(timings)
    result.stats["preset"] = preset
    result.stats["image_dir"] = str(image_dir.resolve())
    io.write_stats(output_dir, result.stats)
    if print_summary:
        print_sfm_summary(result, failed, timings)
    return result


def _run_colmap_sift(image_dir, output_dir, preset, mode, window, camera_mode, camera_model,
                     camera_params, mapper, names, overwrite, verbose, progress, timings,
                     failed) -> sfm.SfMResult:
    from . import colmap_sift

    return colmap_sift.main(image_dir, output_dir, preset, mode, window, None, camera_mode, camera_model,
                            camera_params, mapper, names, overwrite, verbose, progress, timings, failed)


def _run_learned(image_dir, output_dir, preset, names, mode, num_matched, window, loop_closure,
                 camera_mode, camera_model, camera_params, mapper, overwrite, device, verbose, progress,
                 timings, failed) -> sfm.SfMResult:
    from . import extract, match

    features_path = output_dir / "features.h5"
    matches_path = output_dir / "matches.h5"
    with stage("extract", timings):
        # global descriptors come from the same forward pass; localize retrieves with them later
        summary = extract.main(image_dir, features_path, preset, image_names=names,
                               global_path=output_dir / "global.h5",
                               overwrite=overwrite, device=device)
    failed.update(summary.failed)
    names = summary.names
    if len(names) < 2:
        raise sfm.ReconstructionError(f"only {len(names)} readable image(s); SfM needs at least two")
    with stage("pairs", timings):
        pairs_path = output_dir / "pairs.txt"
        pairs.main(None, pairs_path, mode, window, loop_closure, num_matched=num_matched,
                   global_path=output_dir / "global.h5", names=names)
    with stage("match", timings):
        match.main(features_path, pairs_path, matches_path, preset, overwrite=overwrite, device=device)
    with stage("sfm", timings):
        return sfm.main(image_dir, features_path, matches_path, output_dir, pairs_path, camera_mode,
                        camera_model, camera_params, mapper, image_names=names, verbose=verbose,
                        progress=progress)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("reconstruct", help="image folder -> COLMAP model, all stages",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, help="image folder (searched recursively)")
    parser.add_argument("output", type=Path, help="output folder (re-run to resume)")
    parser.add_argument("--preset", default="omniglue", choices=presets.names(), metavar="NAME",
                        help=f"pipeline preset: {', '.join(presets.names())} (default: omniglue)")
    parser.add_argument("--pairs", choices=pairs.IMAGE_MODES, default=None,
                        help=f"pair selection (default: exhaustive up to {EXHAUSTIVE_MAX_IMAGES} images, "
                             f"else retrieval)")
    parser.add_argument("--num-matched", type=int, default=pairs.DEFAULT_NUM_MATCHED,
                        help="retrieval: pairs per image")
    parser.add_argument("--window", type=int, default=pairs.DEFAULT_WINDOW,
                        help="sequential: neighbours per image")
    parser.add_argument("--loop-closure", action="store_true", help="sequential: add retrieval loop pairs")
    sfm.add_camera_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="discard existing outputs")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    parser.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    # main() prints the summary table itself; the guard prints errors without a traceback
    def call() -> sfm.SfMResult:
        return main(args.images, args.output, args.preset, args.pairs, args.num_matched, args.window,
                    args.loop_closure, args.camera_mode, args.camera_model, args.camera_params,
                    args.mapper, args.overwrite, args.device, verbose=args.verbose)

    return sfm.run_cli_guarded(call, print_result=False)
