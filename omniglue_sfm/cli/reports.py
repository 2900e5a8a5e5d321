"""Commands that measure and compare: evaluate, evaluate-pairs, evaluate-localization, compare, and
the training commands (train, finetune)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from .. import compare, localize, pairs
from ..config import presets
from ..evaluation import localization, reconstruction, two_view
from ..formats import outputs
from ..training import finetune, train
from . import args as A


def add_commands(sub: argparse._SubParsersAction) -> None:
    for add in (_evaluate, _evaluate_pairs, _compare, _evaluate_localization, _train):
        add(sub)


# --------------------------------------------------------------------------------------------
# evaluate, evaluate-pairs


def _evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="pose AUC and camera-centre error against ground truth",
                       description=(reconstruction.__doc__ or "").split("\n\n")[0])
    p.add_argument("model", type=Path, help="COLMAP model folder (e.g. OUT/sparse)")
    p.add_argument("--gt", type=Path, required=True, help="folder of Strecha <image>.camera files")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    result = reconstruction.evaluate(args.model, args.gt)
    if args.json:
        # inf is not JSON: an undefined centre error is written as null
        print(json.dumps({k: (None if isinstance(v, float) and math.isinf(v) else v)
                          for k, v in result.items()}))
    else:
        print(f"registered      {result['registered']} / {result['total']}")
        print(f"pose AUC@5/10/20 {result['auc5']:.3f} / {result['auc10']:.3f} / {result['auc20']:.3f}")
        print(f"centre error    {result['center_error']:.4g} (median, GT units, after Sim3 alignment)")
    return 0


def _evaluate_pairs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate-pairs", help="two-view pose AUC and epipolar precision of the raw matches",
                       description=(two_view.__doc__ or "").split("\n\n")[0])
    p.add_argument("output", type=Path, help="output folder holding features.h5 and matches.h5")
    p.add_argument("--gt", type=Path, required=True, help="folder of Strecha <image>.camera files")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--epipolar-px", type=float, default=2.0,
                   help="a match is correct below this symmetric epipolar distance (default 2.0)")
    p.add_argument("--ransac-px", type=float, default=1.0,
                   help="RANSAC max error of the essential matrix, in pixels (default 1.0)")
    p.set_defaults(func=_run_evaluate_pairs)


def _run_evaluate_pairs(args: argparse.Namespace) -> int:
    if not args.output.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {args.output}")
    result = two_view.evaluate_pairs(args.output / "features.h5", args.output / "matches.h5", args.gt,
                                     ransac_px=args.ransac_px, epipolar_px=args.epipolar_px)
    result = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"pairs                {result['pairs']} ({result['failed_pairs']} failed)")
        print(f"pose AUC@5/10/20     {result['auc5']:.3f} / {result['auc10']:.3f} / {result['auc20']:.3f}")
        print(f"matches per pair     {result['mean_matches']:.1f}")
        print(f"epipolar precision   {result['epipolar_precision']:.3f} "
              f"(< {args.epipolar_px:g} px; {result['epipolar_precision_mean_pair']:.3f} mean over pairs)")
    return 0


# --------------------------------------------------------------------------------------------
# compare, evaluate-localization


def _compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="reconstruct with several presets, one table",
                       description=compare.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", type=Path, help="image folder")
    p.add_argument("output", type=Path, help="output folder (one sub-folder per preset)")
    p.add_argument("--presets", default=",".join(compare.DEFAULT_PRESETS),
                   help=f"comma-separated preset names (default: {','.join(compare.DEFAULT_PRESETS)})")
    p.add_argument("--gt", type=Path, default=None, help="ground-truth folder (Strecha .camera files)")
    p.add_argument("--preset-file", type=Path, default=None, metavar="TOML",
                   help="your own presets (names usable in --presets), validated before any work")
    A.add_knobs(p)  # for every preset
    p.add_argument("--pairs", choices=pairs.IMAGE_MODES, default=None, help="pair selection")
    p.add_argument("--no-render", action="store_true", help="skip the 3D renders")
    A.add_device(p)
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    # every preset resolved (user file validated, overrides merged) before any work
    chosen = [A.resolved_preset(args, name) for name in names]
    options = compare.CompareOptions(args.gt, args.pairs, render=not args.no_render, verbose=args.verbose)
    report = compare.main(args.images, args.output, chosen, options, A.run_options(args))
    print(report["table"])
    if report.get("picture"):
        print(f"\nrenders: {report['picture']}")
    return 0 if any(r["status"] == "ok" for r in report["rows"].values()) else 1


def _evaluate_localization(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate-localization", help="leave-K-out localization recall against GT",
                       description=localization.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", type=Path, help="image folder of a ground-truth scene")
    p.add_argument("--gt", type=Path, required=True, help="ground-truth folder (Strecha .camera files)")
    p.add_argument("--leave-out", type=int, default=2, help="images left out of the map and localized")
    p.add_argument("--preset", default="omniglue", choices=presets.names(), metavar="NAME")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: ./evaluate_localization)")
    A.add_knobs(p)
    p.add_argument("--num-retrieved", type=int, default=10)
    p.add_argument("--intrinsics", default=None, help="as for `localize` (default: EXIF, else estimated)")
    A.add_device(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run_evaluate_localization)


def _run_evaluate_localization(args: argparse.Namespace) -> int:
    intrinsics = args.intrinsics if args.intrinsics in (None, "map") else Path(args.intrinsics)
    options = localize.LocalizeOptions(num_retrieved=args.num_retrieved, intrinsics=intrinsics)
    out = localization.main(args.images, args.gt, args.out or Path("evaluate_localization"),
                            A.resolved_preset(args), A.run_options(args), leave_out=args.leave_out,
                            localize_options=options, progress=not args.json)
    print(outputs.report_json(out) if args.json else localization.format_report(out))
    return 0


# --------------------------------------------------------------------------------------------
# train, finetune


def _train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train OmniGlue on homographies or COLMAP scenes (TOML config)")
    p.add_argument("config", help="training config, e.g. omniglue_sfm/training/configs/aliked_sh.toml")
    p.add_argument("--stage", choices=["all", "cache", "train"], default="all",
                   help="cache: only extract the pair pools; train: only train on what is cached")
    p.add_argument("--steps", type=int, default=0, help="override [train] steps")
    p.add_argument("--export", default="", help="also write a shippable checkpoint here when done")
    p.set_defaults(func=_run_train)

    f = sub.add_parser("finetune", help="adapt an OmniGlue checkpoint to your own photos")
    f.add_argument("images", help="folder of photos (homography pairs are made from them)")
    f.add_argument("--init", default="omniglue", help="checkpoint to start from (default: shipped)")
    f.add_argument("--out", required=True, help="where to write the adapted checkpoint (.pt)")
    f.add_argument("--steps", type=int, default=200)
    f.add_argument("--lr", type=float, default=3e-5)
    f.add_argument("--batch-size", type=int, default=2)
    f.add_argument("--cache-dir", default=None, help="feature cache (default: beside --out)")
    f.set_defaults(func=_run_finetune)


def _run_train(args: argparse.Namespace) -> int:
    cfg = train.load_config(args.config)
    if args.steps:
        cfg["train"]["steps"] = args.steps
    if args.stage in ("all", "cache"):
        train.build_caches(cfg)
    if args.stage in ("all", "train"):
        last = train.train(cfg)
        print(f"checkpoint: {last}")
        if args.export:
            print(f"exported: {finetune.export(last, args.export)}")
    return 0


def _run_finetune(args: argparse.Namespace) -> int:
    out = finetune.finetune(args.images, args.init, args.out, args.steps, lr=args.lr,
                            batch_size=args.batch_size, cache_dir=args.cache_dir)
    print(f"finetuned checkpoint: {out}")
    return 0
