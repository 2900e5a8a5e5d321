"""Commands that use a finished model: localize, triangulate, export, viz."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import export, localize, pairs, triangulate
from ..config import presets
from ..viz.draw import viz_keypoints, viz_matches
from ..viz.files import write_html, write_ply
from ..viz.render import render_model
from . import args as A

VIZ_DESCRIPTION = """\
Pictures of every stage: matches, keypoints by track length, 3D renders, PLY and HTML exports.

``viz matches  DIR name0 name1 OUT.png``  matches of a pair side by side, inliers green, outliers
                                         red (the verified two-view geometry in ``database.db``,
                                         else a fundamental matrix fitted here with pycolmap)
``viz keypoints DIR OUT.png [names]``    keypoints coloured by the track length of their 3D point
                                         (grey: not triangulated)
``viz model DIR OUT.png``                3D render of the points and camera frustums (Open3D
                                         offscreen; a numpy/Pillow rasteriser when Open3D cannot
                                         render, which the log and the picture say)
``viz ply DIR OUT.ply``                  points + frustum edges as one PLY (MeshLab, CloudCompare)
``viz html DIR OUT.html``                interactive plotly page of points and frustums

``DIR`` is a ``reconstruct`` output folder (``sparse/``, ``features.h5``, ``matches.h5``,
``database.db``) or, for the 3D modes, a COLMAP model folder. ``--poses poses.txt`` adds
localized query cameras (green) to the 3D modes.
"""


def add_commands(sub: argparse._SubParsersAction) -> None:
    for add in (_localize, _viz, _export, _triangulate):
        add(sub)


# --------------------------------------------------------------------------------------------
# localize


def _localize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("localize", help="query photos -> poses in an existing model",
                       description=localize.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a reconstruct output folder (sparse/, features.h5, global.h5)")
    p.add_argument("queries", type=Path,
                   help="query image folder, one image, or a list file (name [MODEL W H params...])")
    p.add_argument("output", type=Path, help="output folder (poses.txt, localize.json)")
    p.add_argument("--image-dir", type=Path, default=None, help="folder the names of a list file are in")
    p.add_argument("--map-images", type=Path, default=None,
                   help="the map's photo folder; needed only if MODEL has no global.h5 and does not "
                        "record it")
    p.add_argument("--intrinsics", default=None,
                   help="hloc-style list 'name MODEL W H params...', or 'map' to reuse the map camera "
                        "of the best retrieved image (same image size); default: EXIF, else a guess "
                        "refined by PnP")
    p.add_argument("--num-retrieved", type=int, default=10, help="map images retrieved per query")
    p.add_argument("--min-inliers", type=int, default=12,
                   help="PnP inliers needed to call a query localized (twice as many when the focal "
                        "length is a guess)")
    p.add_argument("--min-inlier-ratio", type=float, default=0.2,
                   help="share of the 2D-3D correspondences that must be PnP inliers (at least 0.3 "
                        "when the focal length is a guess)")
    p.add_argument("--ransac-thresh", type=float, default=12.0,
                   help="PnP RANSAC threshold in px for a 1600 px image (scaled with the query size)")
    p.add_argument("--covisibility-clustering", action="store_true",
                   help="PnP per group of covisible retrieved images, keep the best")
    p.add_argument("--preset", default=None, choices=presets.names(), metavar="NAME",
                   help="the map's preset, when the folder does not record it")
    A.add_device(p)
    A.add_overwrite(p, "recompute query features")
    p.set_defaults(func=_run_localize)


def localize_options(args: argparse.Namespace) -> localize.LocalizeOptions:
    intrinsics = args.intrinsics if args.intrinsics in (None, "map") else Path(args.intrinsics)
    return localize.LocalizeOptions(args.num_retrieved, args.min_inliers, args.min_inlier_ratio,
                                    args.ransac_thresh, args.covisibility_clustering, intrinsics,
                                    args.image_dir, args.map_images)


def _run_localize(args: argparse.Namespace) -> int:
    report = localize.main(args.model, args.queries, args.output, localize_options(args), A.run_options(args),
                           preset=args.preset)
    for name, r in report["queries"].items():
        if r["localized"]:
            state = f"localized  {r['num_inliers']:5d} inliers / {r['num_correspondences']} 2D-3D"
        else:
            state = f"FAILED     {r['reason']}"
        print(f"{name}: {state}")
    print(f"localized {report['num_localized']} / {report['num_queries']} queries "
          f"({report['seconds']:.1f} s); poses in {args.output / 'poses.txt'}")
    return 0 if report["num_localized"] else 2  # like a scene that did not reconstruct (README)


# --------------------------------------------------------------------------------------------
# viz


def _viz(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("viz", help="pictures: matches, keypoints, 3D render, PLY, HTML",
                       description=VIZ_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = p.add_subparsers(dest="mode", required=True, metavar="MODE")
    m = modes.add_parser("matches", help="matches of one pair (inliers green, outliers red)")
    m.add_argument("folder", type=Path, help="reconstruct output folder")
    m.add_argument("name0")
    m.add_argument("name1")
    m.add_argument("out", type=Path, help="PNG to write")
    m.add_argument("--images", type=Path, default=None, help="image folder (default: from stats.json)")
    k = modes.add_parser("keypoints", help="keypoints coloured by track length")
    k.add_argument("folder", type=Path, help="reconstruct output folder")
    k.add_argument("out", type=Path, help="PNG to write")
    k.add_argument("names", nargs="*", help="images to show (default: the first 6 registered)")
    k.add_argument("--images", type=Path, default=None, help="image folder (default: from stats.json)")
    r = modes.add_parser("model", help="3D render of points and cameras to PNG")
    r.add_argument("folder", type=Path, help="reconstruct output folder or COLMAP model folder")
    r.add_argument("out", type=Path, help="PNG to write")
    r.add_argument("--size", type=image_size, default=(1280, 960), help="WxH in pixels (default 1280x960)")
    r.add_argument("--backend", choices=("auto", "open3d", "software"), default="auto")
    r.add_argument("--point-size", type=float, default=None, help="default: from the number of points")
    for name, help_text in (("ply", "points + camera frustums as PLY"), ("html", "interactive plotly page")):
        e = modes.add_parser(name, help=help_text)
        e.add_argument("folder", type=Path, help="reconstruct output folder or COLMAP model folder")
        e.add_argument("out", type=Path)
        if name == "html":
            e.add_argument("--cdn", action="store_true", help="load plotly.js from its CDN (small file)")
    for sp in (r, modes.choices["ply"], modes.choices["html"]):
        sp.add_argument("--poses", type=Path, default=None, help="poses.txt of localized queries (green)")
    p.set_defaults(func=_run_viz)


def _run_viz(args: argparse.Namespace) -> int:
    if args.mode == "matches":
        info = viz_matches(args.folder, args.name0, args.name1, args.out, args.images)
    elif args.mode == "keypoints":
        info = viz_keypoints(args.folder, args.out, args.names or None, args.images)
    elif args.mode == "model":
        w, h = args.size
        info = render_model(args.folder, args.out, (w, h), args.poses, point_size=args.point_size,
                            backend=args.backend)
    elif args.mode == "ply":
        info = write_ply(args.folder, args.out, args.poses)
    else:
        info = write_html(args.folder, args.out, args.poses, offline=not args.cdn)
    print(f"wrote {args.out} ({', '.join(f'{k}={v}' for k, v in info.items())})")
    return 0


# --------------------------------------------------------------------------------------------
# export, triangulate


def _export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="model -> undistorted images, PINHOLE model (gsplat/nerfstudio)",
                       description=export.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path,
                   help="a reconstruct / sfm / triangulate output folder, or a model folder")
    p.add_argument("dest", type=Path, help="export folder (images/, sparse/0/, ...)")
    p.add_argument("--format", choices=export.FORMATS, default="gsplat",
                   help="gsplat: gaussian-splatting's layout; nerfstudio: also transforms.json "
                        "(default: gsplat)")
    p.add_argument("--images", type=Path, default=None,
                   help="image folder (default: the one stats.json records)")
    p.add_argument("--masks", type=Path, default=None, metavar="DIR",
                   help="mask folder (default: the one the features were extracted with, if any)")
    A.add_overwrite(p, "replace a non-empty DEST")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    options = export.ExportOptions(args.format, args.images, args.masks, args.overwrite)
    result = export.main(args.source, args.dest, options)
    masks = ", masks" if result.masks else ""
    print(f"exported {result.num_images} image(s), {result.num_points3D} points ({args.format}{masks}) "
          f"to {result.dest}")
    return 0


def _triangulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("triangulate", help="known poses (a reference model) + our matches -> points",
                       description=(triangulate.__doc__ or "").split("\n\n")[0])
    p.add_argument("images", type=Path, help="image folder (names as in the reference model)")
    p.add_argument("output", type=Path, help="output folder (re-run to resume)")
    p.add_argument("--reference", type=Path, required=True,
                   help="COLMAP model with the known cameras and poses (a folder with images.bin/.txt)")
    A.add_preset(p)  # learned features only
    p.add_argument("--pairs", choices=pairs.MODES, default=None,
                   help="pair selection (default: exhaustive up to 40 images, else retrieval; "
                        "covisibility uses the reference's points)")
    A.add_pairs(p)
    A.add_retrieval(p)
    A.add_masks(p)
    A.add_overwrite(p, "discard existing features and matches")
    A.add_device(p)
    p.set_defaults(func=_run_triangulate)


def _run_triangulate(args: argparse.Namespace) -> int:
    preset = A.resolved_preset(args)  # validated before any work
    result = triangulate.main(args.images, args.output, args.reference, preset, A.run_options(args),
                              pair_options=A.pairs_options(args, args.pairs))
    s = result.stats
    print(f"{s['num_points3D']} points triangulated in {s['registered']} posed images "
          f"(mean reprojection error {s['mean_reprojection_error']:.2f} px, mean track length "
          f"{s['mean_track_length']:.2f}) -> {result.output_dir / 'sparse'}")
    few = s.get("images_with_few_points") or {}
    if few:
        print(f"warning: {len(few)} posed image(s) got no or almost no 3D points (wrong or swapped poses in "
              "the reference?): " + ", ".join(f"{name} ({n})" for name, n in few.items()))
    return 0


def image_size(text: str) -> tuple[int, int]:
    """``--size WxH``: two positive integers."""
    parts = text.lower().split("x")
    try:
        w, h = (int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH in pixels (e.g. 1280x960), got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"width and height must be at least 1, got {text!r}")
    return w, h
