"""Localization: query photos -> camera poses in an existing model (a ``reconstruct`` output folder).

For every query, through the shared stages: features with the map's extractor configuration
(``extract``, into ``OUT/query_features.h5``, never the map's file), the ``num_retrieved`` most
similar map images (``pairs.retrieve``), matches with the map's matcher (``match.PairMatcher``);
then here: 2D-3D correspondences through the map's tracks and LO-RANSAC PnP + refinement (``pnp``).

A query is *localized* only when PnP finds a believable pose (``pnp.pose_doubt``): at least
``min_inliers`` inliers that are at least ``min_inlier_ratio`` of the 2D-3D correspondences (twice
the inliers and 30% when the focal length is a guess), a refined focal length within 0.25-5x the
long side, a camera centre within twice the map's radius of its centre, and (for a pose with under
80% inliers) more inliers than the query's mirror image gives (:class:`MirrorCheck`: a reflected
photo of a nearly symmetric scene finds a consistent, wrong pose). Unlike hloc's
``localize_sfm`` (which, without clustering, silently reports the pose of the top retrieved image
when PnP fails), a failed query is reported as failed, with the reason, and gets no pose.

Intrinsics, per query, in this order: an hloc-style list (``name MODEL W H params...``); the
EXIF focal length; else a guess of ``1.2 * max(W, H)`` that PnP re-estimates and refines (the
focal source is recorded in ``localize.json``). ``intrinsics="map"`` reuses the camera of the best
retrieved map image when the query has its size (a query taken with the map's camera).

Outputs: ``OUT/poses.txt`` (``name qw qx qy qz tx ty tz``, cam_from_world, localized queries only,
names escaped as in pairs.txt), ``OUT/hloc_results.txt`` (the same lines in hloc's results format:
names as given, unescaped) and ``OUT/localize.json`` (per query: localized, inliers,
correspondences, retrieved images, reason when failed; ``failed`` lists the queries without a pose).
Each localized query also has its camera ``position`` in the map's frame, which for a georegistered
map (``georef.json``, see :mod:`omniglue_sfm.geometry.geo`) is east-north-up metres, with its
``lat_lon_alt`` (WGS84); the header's ``frame`` says which.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pycolmap

from .. import extract, match, orientation, pairs
from ..config.options import RunOptions
from ..config.rotation import options_from_preset
from ..formats import outputs, textfiles
from ..geometry import geo
from ..geometry.cameras import Query, read_intrinsics, resolve_queries
from ..runtime import locks
from .maps import LocalizationError, LocalizationMap, ensure_map_global, load_map
from .query import LocalizeOptions, MirrorCheck, QueryResult, localize_query

__all__ = ["HLOC_RESULTS", "LocalizationError", "LocalizationMap", "LocalizeOptions", "QueryResult",
           "load_map", "main"]

log = logging.getLogger(__name__)

HLOC_RESULTS = "hloc_results.txt"  # hloc's results format, beside our poses.txt


def main(
    model_dir: Path | str,
    queries: Path | str | Sequence[str],
    output_dir: Path | str,
    options: LocalizeOptions | None = None,
    run: RunOptions | None = None,
    *,
    preset: dict | str | None = None,
) -> dict:
    """Localize ``queries`` (a folder, one image, a list file, or names in ``options.image_dir``)
    in the model of ``model_dir``; returns the ``localize.json`` content. ``preset``: the map's,
    when its folder does not record it. ``run.overwrite`` recomputes the query features."""
    t_start = time.perf_counter()
    opts, run = options or LocalizeOptions(), run or RunOptions()
    output_dir = Path(output_dir)
    with locks.locked_output_dir(output_dir):  # one run per output folder
        lmap = load_map(model_dir, preset)
        image_dir, qlist = resolve_queries(queries, opts.image_dir)
        if not qlist:
            raise LocalizationError(f"no query image in {queries}")
        if opts.intrinsics is not None and opts.intrinsics != "map":
            given = read_intrinsics(opts.intrinsics)
            for q in qlist:
                q.camera = q.camera or given.get(q.name)
        summary = extract_queries(lmap, image_dir, qlist, output_dir, run)
        results: dict[str, QueryResult] = {
            name: QueryResult(name, reason=f"image could not be read: {why}")
            for name, why in summary.failed.items()
        }
        ok = [q for q in qlist if q.name not in summary.failed]
        if ok:
            results.update(localize_all(lmap, image_dir, ok, output_dir, opts, run))
        ordered = [results[q.name] for q in qlist]
        georef = geo.read_georef(model_dir)
        add_positions(ordered, georef)
        header = {"model_dir": str(Path(model_dir)), "preset": lmap.preset.get("name"),
                  "options": asdict(opts), "seconds": time.perf_counter() - t_start,
                  "frame": ({"crs": geo.CRS, "origin": georef.frame.todict()} if georef is not None
                            else "the map's own (not georegistered)")}
        return write_outputs(output_dir, ordered, header)


def extract_queries(lmap: LocalizationMap, image_dir: Path, qlist: Sequence[Query], output_dir: Path,
                    run: RunOptions) -> extract.ExtractSummary:
    """The queries' features (and global descriptors) with the map's configuration, into
    ``OUT/query_features.h5``; turned upright against the map when the map's images were."""
    rotation = options_from_preset(lmap.preset)
    turns = None
    if rotation is not None:  # estimated only for queries without features
        ref = orientation.TurnReference(lmap.preset, lmap.features_path,
                                        lmap.global_path if lmap.global_path.exists() else None,
                                        sorted(lmap.image_ids))

        def turns(names: list[str]) -> dict[str, int]:
            return orientation.query_turns(image_dir, names, ref, rotation, run.device)

    images = extract.ImageSet(image_dir, [q.name for q in qlist], turns)
    return extract.main(images, output_dir / "query_features.h5", lmap.preset, run,
                        global_path=output_dir / "query_global.h5")


def localize_all(lmap: LocalizationMap, image_dir: Path, queries: Sequence[Query], output_dir: Path,
                 opts: LocalizeOptions, run: RunOptions) -> dict[str, QueryResult]:
    """Retrieval, matching (the map's matcher, as hloc's ``features_ref``) and PnP of each query."""
    db_names = sorted(lmap.image_ids)
    db_global = ensure_map_global(lmap, output_dir, opts.num_retrieved, opts.map_images, run)
    if db_global is None:  # small map without global descriptors: all of it, for every query
        ranked = [list(db_names) for _ in queries]
    else:
        ranked = pairs.retrieve(output_dir / "query_global.h5", db_global, [q.name for q in queries],
                                db_names, opts.num_retrieved)
    matcher = match.PairMatcher(lmap.preset["matcher"], lmap.preset, lmap.features_path, run.device,
                                run.batch_size)
    map_features = match.FeatureCache(lmap.features_path)
    mirror = MirrorCheck(lmap, image_dir, matcher, map_features, run.device)
    results: dict[str, QueryResult] = {}
    try:
        for q, retrieved in zip(queries, ranked, strict=True):
            r = results[q.name] = localize_query(lmap, output_dir / "query_features.h5", q, image_dir,
                                                 retrieved, matcher, map_features, opts, mirror)
            log.info("%s: %s", q.name, f"localized, {r.num_inliers} inliers" if r.localized
                     else f"NOT localized ({r.reason})")
    finally:
        map_features.close()
    return results


def add_positions(results: Sequence[QueryResult], georef: geo.Georef | None) -> None:
    """Each localized query's camera centre in the map's frame, and its latitude, longitude and
    altitude when the map is georegistered (``georef.json``)."""
    for r in results:
        if not r.localized or r.qvec is None or r.tvec is None:
            continue
        w, x, y, z = r.qvec
        rotation = pycolmap.Rotation3d(np.array([x, y, z, w], dtype=np.float64)).matrix()
        centre = -np.asarray(rotation).T @ np.asarray(r.tvec, dtype=np.float64)
        r.position = [round(float(v), 6) for v in centre]
        if georef is not None:
            lat, lon, alt = georef.to_lla(centre)[0]
            r.lat_lon_alt = [round(float(lat), 9), round(float(lon), 9), round(float(alt), 4)]


def write_outputs(output_dir: Path, ordered: Sequence[QueryResult], header: dict) -> dict:
    """``poses.txt``, hloc's ``hloc_results.txt`` (localized queries, names as given) and
    ``localize.json`` (``header`` + every query; ``failed``: name -> reason). Returns the report."""
    localized = [(r.name, r.qvec, r.tvec) for r in ordered if r.localized]
    textfiles.write_poses(output_dir / "poses.txt", localized)
    textfiles.write_poses(output_dir / HLOC_RESULTS, localized, quote_names=False)  # hloc's results file
    report = {
        **header,
        "num_queries": len(ordered),
        "num_localized": len(localized),
        "failed": {r.name: r.reason for r in ordered if not r.localized},  # no line in either poses file
        "hloc_results": HLOC_RESULTS,
        "queries": {r.name: asdict(r) for r in ordered},
    }
    outputs.write_json(output_dir / "localize.json", report)
    return report

