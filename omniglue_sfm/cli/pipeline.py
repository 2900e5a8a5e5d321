"""Commands of the pipeline's stages: frames, extract, pairs, vlad, match, merge, sfm, reconstruct."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import extract, frames, match, pairs, reconstruct, sfm, vlad
from ..colmap.summary import print_sfm_summary
from ..formats.images import none_readable
from . import args as A


def add_commands(sub: argparse._SubParsersAction) -> None:
    for add in (_frames, _extract, _pairs, _vlad, _match, _merge, _sfm, _reconstruct):
        add(sub)


def _described(sub: argparse._SubParsersAction, name: str, help_text: str, module: object,
               whole: bool = True) -> argparse.ArgumentParser:
    """A command whose description is its module's docstring (whole, or its first paragraph)."""
    doc = module.__doc__ or ""
    if whole:
        return sub.add_parser(name, help=help_text, description=doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    return sub.add_parser(name, help=help_text, description=doc.split("\n\n")[0])


# --------------------------------------------------------------------------------------------
# frames, extract


def _frames(sub: argparse._SubParsersAction) -> None:
    p = _described(sub, "frames", "video -> sharp, distinct frames (JPEG) + frames.json", frames)
    p.add_argument("video", type=Path, help="video file")
    p.add_argument("output", type=Path, help="folder for the frames (re-run to resume)")
    A.add_frames(p)
    p.add_argument("--max-size", type=A.positive_int, default=None, metavar="PX",
                   help="scale the frames down to this long side")
    p.set_defaults(func=_run_frames)


def _run_frames(args: argparse.Namespace) -> int:
    result = frames.main(args.video, args.output, A.frame_options(args))
    dropped = ", ".join(f"{v} {k}" for k, v in result.dropped.items())
    print(f"{len(result.frames)} frames of {result.decoded} decoded ({dropped} dropped) -> {args.output}"
          + (" (reused)" if result.skipped else ""))
    return 0


def _extract(sub: argparse._SubParsersAction) -> None:
    p = _described(sub, "extract", "image folder -> features.h5 (+ global.h5)", extract)
    p.add_argument("images", type=Path, help="image folder (searched recursively)")
    p.add_argument("out_h5", type=Path, help="features.h5 to write (resumed if it exists)")
    A.add_preset(p)
    p.add_argument("--global", dest="global_h5", type=Path, default=None,
                   help="also write global descriptors (for `pairs --mode retrieval`) here")
    A.add_masks(p)
    A.add_rotation(p)
    A.add_overwrite(p)
    A.add_device(p)
    A.add_executor(p)
    p.set_defaults(func=_run_extract)


def _run_extract(args: argparse.Namespace) -> int:
    preset = A.resolved_preset(args)  # validated before any work
    summary = extract.main(args.images, args.out_h5, preset, A.run_options(args), global_path=args.global_h5)
    n = len(summary.names)
    print(f"features for {n} image(s) in {args.out_h5} ({summary.seconds:.1f} s)")
    for name, reason in summary.failed.items():
        print(f"  failed: {name}: {reason}")
    if summary.failed and n == 0:
        raise none_readable(args.images, summary.failed)
    return 0


# --------------------------------------------------------------------------------------------
# pairs, vlad


def _pairs(sub: argparse._SubParsersAction) -> None:
    p = _described(sub, "pairs", "choose image pairs -> pairs.txt", pairs)
    p.add_argument("images", type=Path, help="image folder (names are taken from it)")
    p.add_argument("out_txt", type=Path)
    p.add_argument("--mode", default="exhaustive", choices=pairs.MODES)
    A.add_pairs(p)
    p.add_argument("--global", dest="global_h5", type=Path, default=None, help="global.h5 from extract")
    p.add_argument("--model", type=Path, default=None, help="COLMAP model folder (covisibility)")
    p.set_defaults(func=_run_pairs)


def _run_pairs(args: argparse.Namespace) -> int:
    found = pairs.main(args.images, args.out_txt, A.pairs_options(args, args.mode), args.global_h5,
                       args.model)
    print(f"{len(found)} pairs ({args.mode}) -> {args.out_txt}")
    return 0


def _vlad(sub: argparse._SubParsersAction) -> None:
    p = _described(sub, "vlad", "features.h5 -> VLAD global descriptors (for retrieval pairs)", vlad,
                   whole=False)
    p.add_argument("features_h5", type=Path)
    p.add_argument("out_h5", type=Path, help="descriptor file for `pairs --mode retrieval --global`")
    p.add_argument("--words", type=int, default=vlad.DEFAULT_WORDS,
                   help=f"visual words (default {vlad.DEFAULT_WORDS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the vocabulary's sample")
    p.set_defaults(func=_run_vlad)


def _run_vlad(args: argparse.Namespace) -> int:
    n = vlad.main(args.features_h5, args.out_h5, args.words, args.seed)
    print(f"VLAD descriptors ({args.words} words) of {n} image(s) -> {args.out_h5}")
    return 0


# --------------------------------------------------------------------------------------------
# match, merge


def _match(sub: argparse._SubParsersAction) -> None:
    p = _described(sub, "match", "features.h5 + pairs.txt -> matches.h5", match)
    p.add_argument("features_h5", type=Path)
    p.add_argument("pairs_txt", type=Path)
    p.add_argument("out_h5", type=Path, help="matches.h5 to write (resumed if it exists)")
    A.add_preset(p, knobs=False)  # its [matcher]; the features are features.h5's
    A.add_batch_size(p, "pairs per batch")
    A.add_device(p)
    A.add_overwrite(p)
    p.add_argument("--shard", default=None, metavar="i/n",
                   help="match only pairs i, i+n, i+2n, ... into OUT.shard-i-of-n.h5 (merge with `merge`)")
    A.add_executor(p)
    p.set_defaults(func=_run_match)


def _run_match(args: argparse.Namespace) -> int:
    preset = A.resolved_preset(args)  # validated before any work
    shard = match.parse_shard(args.shard)
    s = match.main(args.features_h5, args.pairs_txt, args.out_h5, preset, A.run_options(args), shard=shard)
    out = match.shard_path(args.out_h5, shard) if shard else args.out_h5
    print(f"matched {s.num_pairs} pair(s) ({s.num_skipped_existing} already done), "
          f"{s.mean_matches:.1f} matches/pair, {s.seconds:.1f} s -> {out}")
    return 0


def _merge(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("merge", help="merge match (or feature) shard files into one",
                       description="Merge files made with the same configuration, e.g. the outputs of "
                                   "`match --shard i/n`, into OUT_H5.")
    m.add_argument("out_h5", type=Path)
    m.add_argument("sources", type=Path, nargs="+")
    m.add_argument("--kind", default="matches", choices=["matches", "features", "global"])
    m.set_defaults(func=_run_merge)


def _run_merge(args: argparse.Namespace) -> int:
    match.merge(list(args.sources), args.out_h5, args.kind)
    print(f"merged {len(args.sources)} file(s) into {args.out_h5}")
    return 0


# --------------------------------------------------------------------------------------------
# sfm, reconstruct


def _sfm(sub: argparse._SubParsersAction) -> None:
    p = _described(sub, "sfm", "features + matches -> COLMAP model", sfm, whole=False)
    p.add_argument("images", type=Path, help="image folder")
    p.add_argument("features", type=Path, help="features.h5")
    p.add_argument("matches", type=Path, help="matches.h5")
    p.add_argument("output", type=Path, help="output folder")
    p.add_argument("--pairs", type=Path, default=None, help="pairs.txt (default: every pair in matches.h5)")
    A.add_sfm(p)
    p.set_defaults(func=_run_sfm)


def _run_sfm(args: argparse.Namespace) -> int:
    result = sfm.main(args.images, args.features, args.matches, args.output, args.pairs, A.sfm_options(args))
    print_sfm_summary(result)
    return 0


def _reconstruct(sub: argparse._SubParsersAction) -> None:
    p = _described(sub, "reconstruct", "image folder or video -> COLMAP model, all stages", reconstruct,
                   whole=False)
    p.add_argument("images", type=Path, help="image folder (searched recursively; 2:1 panoramas are cut into "
                                             "views) or a video file")
    p.add_argument("output", type=Path, help="output folder (re-run to resume)")
    A.add_preset(p)
    A.add_batch_size(p)
    p.add_argument("--pairs", choices=pairs.IMAGE_MODES, default=None,
                   help=f"pair selection (default: spatial when most photos have GPS, sequential with loop "
                        f"closure for a video, else exhaustive up to {reconstruct.EXHAUSTIVE_MAX_IMAGES} "
                        "images, else retrieval)")
    A.add_pairs(p)
    A.add_retrieval(p)
    A.add_sfm(p)
    A.add_capture(p)
    A.add_masks(p)
    A.add_rotation(p)
    A.add_overwrite(p)
    A.add_device(p)
    A.add_executor(p)
    p.set_defaults(func=_run_reconstruct)


def _run_reconstruct(args: argparse.Namespace) -> int:
    preset = A.resolved_preset(args)  # validated before any work
    result = reconstruct.main(args.images, args.output, preset, A.run_options(args),
                              pair_options=A.pairs_options(args, args.pairs), sfm_options=A.sfm_options(args),
                              capture=A.capture_options(args))
    print_sfm_summary(result, result.failed_images, result.stage_seconds)
    return 0
