"""Localization: query photos -> camera poses in an existing model (a ``reconstruct`` output folder).

For every query: features with the map's own extractor configuration (written to
``OUT/query_features.h5``, never into the map's file), retrieval of the ``num_retrieved`` most
similar registered map images by global descriptor, matching with the map's matcher, 2D-3D
correspondences through the map's tracks, and LO-RANSAC PnP + refinement
(``pycolmap.estimate_and_refine_absolute_pose``).

A query is *localized* only when PnP succeeds with at least ``min_inliers`` inliers. Unlike hloc's
``localize_sfm`` (which, without clustering, silently reports the pose of the top retrieved image
when PnP fails), a failed query is reported as failed, with the reason, and gets no pose.

Intrinsics, per query, in this order: an hloc-style list (``name MODEL W H params...``); the
EXIF focal length; else a guess of ``1.2 * max(W, H)`` that PnP re-estimates and refines (the
focal source is recorded in ``localize.json``). ``intrinsics="map"`` reuses the camera of the best
retrieved map image when the query has its size (a query taken with the map's camera).

Outputs: ``OUT/poses.txt`` (``name qw qx qy qz tx ty tz``, cam_from_world, localized queries only)
and ``OUT/localize.json`` (per query: localized, inliers, correspondences, retrieved images,
reason when failed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import torch

from . import extract, io, match, presets, registry
from .cameras import camera_dict, guess_camera, parse_camera_line
from .images import IMAGE_EXTENSIONS, list_images
from .matchers.base import collate_pairs, features_to_tensors, to_device
from .runtime import autocast, default_device

log = logging.getLogger(__name__)

REFERENCE_SIZE = 1600.0  # ransac_thresh is given for images of this long side and scaled with size


class LocalizationError(RuntimeError):
    """The map or the queries cannot be used (the message says why)."""


# --------------------------------------------------------------------------------------------
# the map


@dataclass
class LocalizationMap:
    model_dir: Path
    reconstruction: pycolmap.Reconstruction
    features_path: Path
    global_path: Path
    preset: dict
    image_ids: dict[str, int]  # registered map image name -> image id in the reconstruction


def map_preset(model_dir: Path) -> dict:
    """The preset the map was made with; its feature config is taken from features.h5 itself.

    The preset comes from ``stats.json`` (written by ``reconstruct``);
    the extractor (and guidance) configuration always from ``features.h5``'s ``config``
    attribute, so queries get exactly the map's features even with overridden settings.
    """
    model_dir = Path(model_dir)
    stored = (io.read_stats(model_dir) or {}).get("preset")
    preset = presets.resolve(stored) if isinstance(stored, (str, dict)) else {}
    features_path = model_dir / "features.h5"
    if not features_path.exists():
        if preset and presets.pipeline(preset) is presets.Pipeline.COLMAP_SIFT:
            raise LocalizationError(
                f"{model_dir} was made with COLMAP's own SIFT (preset 'sift'): its features live only "
                "in database.db, so it cannot be used for localization; use a learned-feature preset")
        raise LocalizationError(f"{features_path} does not exist: MODEL_DIR must be a reconstruct output")
    fconf = io.read_config(features_path)
    preset["features"] = fconf["features"]
    if fconf.get("guidance"):
        preset["guidance"] = fconf["guidance"]
    else:
        preset.pop("guidance", None)
    matches_path = model_dir / "matches.h5"
    if matches_path.exists():  # the matcher that made the map's matches is the truth, if recorded
        mconf = io.read_config(matches_path)
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
    rec = pycolmap.Reconstruction(sparse)
    if preset is None:
        preset = map_preset(model_dir)
    else:
        preset = presets.resolve(preset)
        fconf = io.read_config(model_dir / "features.h5")
        if fconf.get("features") != preset.get("features"):
            raise LocalizationError(f"preset {preset.get('name')!r} extracts other features than the map's "
                                    f"features.h5 ({fconf.get('features')})")
    image_ids = {rec.image(i).name: int(i) for i in rec.reg_image_ids()}
    if not image_ids:
        raise LocalizationError(f"the model in {sparse} has no registered image")
    return LocalizationMap(model_dir, rec, model_dir / "features.h5", model_dir / "global.h5", preset,
                           image_ids)


def map_image_dir(model_dir: Path) -> Path | None:
    """The map's photo folder, when the output folder records it (stats.json)."""
    image_dir = (io.read_stats(model_dir) or {}).get("image_dir")
    return Path(image_dir) if isinstance(image_dir, str) and Path(image_dir).is_dir() else None


def ensure_map_global(lmap: LocalizationMap, output_dir: Path, num_retrieved: int,
                      image_dir: Path | None, device: str | None) -> Path | None:
    """The map's global descriptors: its ``global.h5``, else computed once into
    ``OUT/map_global.h5`` from the map's photos (``reconstruct`` writes ``global.h5`` only for
    retrieval pairs). ``None`` when the map is small enough to match every image."""
    if lmap.global_path.exists():
        return lmap.global_path
    if len(lmap.image_ids) <= num_retrieved:
        log.info("map has no global.h5 and only %d images: every query is matched to all of them",
                 len(lmap.image_ids))
        return None
    image_dir = image_dir or map_image_dir(lmap.model_dir)
    if image_dir is None:
        raise LocalizationError(
            f"{lmap.global_path} does not exist and the map's photo folder is unknown: pass --map-images "
            "(global descriptors are computed once into OUT/map_global.h5) or rebuild the map with "
            "`reconstruct --pairs retrieval`")
    path = output_dir / "map_global.h5"
    log.info("map has no global.h5: computing global descriptors of %d map images into %s",
             len(lmap.image_ids), path)
    # the map's features.h5 already holds every item, so extract only adds the global descriptors
    extract.main(image_dir, lmap.features_path, lmap.preset, image_names=sorted(lmap.image_ids),
                 global_path=path, device=device)
    return path


# --------------------------------------------------------------------------------------------
# queries and their cameras


@dataclass
class Query:
    name: str  # as given (relative to image_dir), also the key in query_features.h5
    camera: pycolmap.Camera | None = None  # known intrinsics (list file), else decided later


def read_query_list(path: Path) -> list[Query]:
    """A list file: one image a line, optionally followed by ``MODEL W H params...``."""
    queries = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        camera = parse_camera_line(tokens[1:], f"{path}:{line_no}") if len(tokens) > 1 else None
        queries.append(Query(tokens[0], camera))
    return queries


def resolve_queries(
    queries: Path | str | Sequence[str], image_dir: Path | str | None = None
) -> tuple[Path, list[Query]]:
    """(image folder, queries) from a folder, a list file, or a list of names under ``image_dir``."""
    if not isinstance(queries, (str, Path)):
        if image_dir is None:
            raise ValueError("a list of query names needs image_dir")
        return Path(image_dir), [Query(str(q)) for q in queries]
    path = Path(queries)
    if path.is_dir():
        return (Path(image_dir) if image_dir else path), [Query(n) for n in list_images(path)]
    if not path.is_file():
        raise FileNotFoundError(f"queries {path} is neither a folder nor a list file")
    if path.suffix.lower() in IMAGE_EXTENSIONS:  # a single image
        return path.parent, [Query(path.name)]
    return (Path(image_dir) if image_dir else path.parent), read_query_list(path)


def read_intrinsics(path: Path | str) -> dict[str, pycolmap.Camera]:
    """hloc-style intrinsics list: ``name MODEL W H params...`` a line."""
    return {q.name: q.camera for q in read_query_list(Path(path)) if q.camera is not None}



# --------------------------------------------------------------------------------------------
# retrieval and matching


def read_global(path: Path, names: Sequence[str]) -> np.ndarray:
    """(len(names), D) L2-normalised global descriptors."""
    with h5py.File(path, "r") as h5:
        missing = [n for n in names if n not in h5 or "global_descriptor" not in h5[n]]
        if missing:
            raise KeyError(f"no global descriptor for {missing[:3]} in {path}")
        desc = np.stack([h5[n]["global_descriptor"][()].astype(np.float32).ravel() for n in names])
    return desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)


def retrieve(query_desc: np.ndarray, db_desc: np.ndarray, db_names: Sequence[str], k: int) -> list[list[str]]:
    """For every query row, the ``k`` most similar database names (cosine similarity)."""
    sim = query_desc @ db_desc.T
    order = np.argsort(-sim, axis=1, kind="stable")[:, : min(k, len(db_names))]
    return [[db_names[j] for j in row] for row in order]


class QueryMatcher:
    """The map's matcher, run on (query, map image) pairs in one padded batch per query."""

    def __init__(self, preset: dict, device: torch.device) -> None:
        self.device = device
        self.matcher = registry.matcher(preset["matcher"]).to(device).eval()
        match.check_compatible(self.matcher, preset, Path("query features"))
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    def db_features(self, features_path: Path, name: str) -> dict[str, torch.Tensor]:
        if name not in self._cache:
            self._cache[name] = features_to_tensors(io.read_features(features_path, name))
        return self._cache[name]

    def match(self, query: dict[str, torch.Tensor], dbs: Sequence[dict[str, torch.Tensor]],
              batch_size: int = 8) -> list[np.ndarray]:
        """(K, 2) index pairs (query keypoint, map keypoint) for every map image."""
        out: list[np.ndarray] = []
        for start in range(0, len(dbs), batch_size):
            chunk = dbs[start:start + batch_size]
            data = to_device(collate_pairs([(query, db) for db in chunk]), self.device)
            with torch.inference_mode(), autocast(self.device):
                pred = self.matcher(data)
            m0 = pred["matches0"].cpu().numpy()
            n0 = int(query["keypoints"].shape[0])
            for i in range(len(chunk)):
                row = m0[i, :n0]
                idx = np.flatnonzero(row >= 0)
                out.append(np.stack([idx, row[idx]], axis=1).astype(np.int64))
        return out


# --------------------------------------------------------------------------------------------
# 2D-3D and PnP


def correspondences(
    rec: pycolmap.Reconstruction, db_image_ids: Sequence[int], matches: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (query keypoint, 3D point) pairs through the map's tracks.

    Returns query keypoint indices (M,), point3D ids (M,) and the index (into ``db_image_ids``)
    of the map image each came from (M,). One query keypoint may see several 3D points (as in
    hloc); only exact duplicates are dropped.
    """
    kp_idx, p3d, src = [], [], []
    for j, (image_id, m) in enumerate(zip(db_image_ids, matches, strict=True)):
        image = rec.image(image_id)
        for iq, idb in m:
            point2D = image.point2D(int(idb))
            if point2D.has_point3D():
                kp_idx.append(int(iq))
                p3d.append(int(point2D.point3D_id))
                src.append(j)
    if not kp_idx:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    pairs = np.stack([kp_idx, p3d], axis=1)
    _, first = np.unique(pairs, axis=0, return_index=True)
    first = np.sort(first)
    return pairs[first, 0], pairs[first, 1], np.asarray(src, dtype=np.int64)[first]


def covisibility_clusters(rec: pycolmap.Reconstruction, image_ids: Sequence[int]) -> list[list[int]]:
    """Connected groups of the given map images, linked when they observe a common 3D point."""
    points = {
        i: {p.point3D_id for p in rec.image(i).points2D if p.has_point3D()} for i in image_ids
    }
    clusters: list[list[int]] = []
    left = list(image_ids)
    while left:
        cluster = [left.pop(0)]
        queue = [cluster[0]]
        while queue:
            current = queue.pop()
            linked = [i for i in left if points[current] & points[i]]
            for i in linked:
                left.remove(i)
                cluster.append(i)
                queue.append(i)
        clusters.append(cluster)
    return clusters


def ransac_threshold(base: float, camera: pycolmap.Camera) -> float:
    """``base`` px at a long side of 1600 px, scaled to the query's size (errors scale with it)."""
    return max(1.0, base * max(camera.width, camera.height) / REFERENCE_SIZE)


def estimate_pose(
    points2D: np.ndarray, points3D: np.ndarray, camera: pycolmap.Camera, max_error: float,
    estimate_focal: bool,
) -> dict | None:
    """pycolmap LO-RANSAC PnP + refinement; ``None`` when RANSAC finds no model."""
    est = pycolmap.AbsolutePoseEstimationOptions()
    est.estimate_focal_length = estimate_focal
    est.ransac.max_error = max_error
    est.ransac.random_seed = 0  # reproducible results
    ref = pycolmap.AbsolutePoseRefinementOptions()
    ref.refine_focal_length = estimate_focal
    ref.refine_extra_params = False
    cam = pycolmap.Camera(model=camera.model.name, width=camera.width, height=camera.height,
                          params=np.asarray(camera.params).copy())
    ret = pycolmap.estimate_and_refine_absolute_pose(
        np.asarray(points2D, np.float64), np.asarray(points3D, np.float64), cam, est, ref)
    if ret is None:
        return None
    ret["camera"] = cam  # refined in place when the focal length was estimated
    return ret


# --------------------------------------------------------------------------------------------
# per-query result


@dataclass
class QueryResult:
    name: str
    localized: bool = False
    reason: str | None = None
    num_inliers: int = 0
    num_correspondences: int = 0
    num_matches: int = 0
    retrieved: list[str] = field(default_factory=list)
    focal_source: str | None = None
    camera: dict | None = None
    qvec: list[float] | None = None  # cam_from_world rotation (w, x, y, z)
    tvec: list[float] | None = None  # cam_from_world translation
    inlier_map_images: dict[str, int] = field(default_factory=dict)
    num_clusters: int | None = None
    seconds: float = 0.0


def rigid_to_lists(rigid: pycolmap.Rigid3d) -> tuple[list[float], list[float]]:
    x, y, z, w = (float(v) for v in rigid.rotation.quat)  # pycolmap/Eigen order is (x, y, z, w)
    return [w, x, y, z], [float(v) for v in rigid.translation]


@dataclass
class LocalizeOptions:
    num_retrieved: int = 10
    min_inliers: int = 12
    ransac_thresh: float = 12.0
    covisibility_clustering: bool = False
    intrinsics_mode: str = "auto"  # "auto" (list, EXIF, guess) or "map" (see module doc)


def pose_from_correspondences(
    lmap: LocalizationMap, kp: np.ndarray, db_ids: Sequence[int], matches: Sequence[np.ndarray],
    camera: pycolmap.Camera, estimate_focal: bool, opts: LocalizeOptions, result: QueryResult,
) -> dict | None:
    """PnP on all retrieved images, or per covisibility cluster keeping the best (hloc's option)."""
    rec = lmap.reconstruction
    groups = covisibility_clusters(rec, db_ids) if opts.covisibility_clustering else [list(db_ids)]
    result.num_clusters = len(groups) if opts.covisibility_clustering else None
    best, best_count = None, -1
    for group in groups:
        sel = [db_ids.index(i) for i in group]
        kp_idx, p3d, src = correspondences(rec, group, [matches[j] for j in sel])
        if len(kp_idx) > best_count:
            result.num_correspondences = len(kp_idx)
        if len(kp_idx) < max(4, opts.min_inliers):
            best_count = max(best_count, len(kp_idx))
            continue
        xyz = np.stack([rec.point3D(int(p)).xyz for p in p3d])
        # features.h5 puts the top-left pixel centre at (0, 0), COLMAP at (0.5, 0.5)
        ret = estimate_pose(kp[kp_idx] + 0.5, xyz, camera, ransac_threshold(opts.ransac_thresh, camera),
                            estimate_focal)
        if ret is not None and ret["num_inliers"] > (best["num_inliers"] if best else -1):
            ret["sources"] = [group[s] for s in src[np.asarray(ret["inlier_mask"], bool)]]
            ret["num_correspondences"] = len(kp_idx)
            best = ret
    if best is not None:
        result.num_correspondences = best["num_correspondences"]
    return best


def localize_query(
    lmap: LocalizationMap, query_features: Path, query: Query, image_dir: Path, retrieved: list[str],
    matcher: QueryMatcher, opts: LocalizeOptions,
) -> QueryResult:
    t0 = time.perf_counter()
    result = QueryResult(query.name, retrieved=list(retrieved))
    feats = io.read_features(query_features, query.name)
    width, height = (int(v) for v in feats["image_size"])
    camera, estimate_focal = choose_camera(lmap, query, image_dir, retrieved, (width, height),
                                           opts.intrinsics_mode, result)
    qfeat = features_to_tensors(feats)
    db_ids = [lmap.image_ids[n] for n in retrieved]
    matches = matcher.match(qfeat, [matcher.db_features(lmap.features_path, n) for n in retrieved])
    result.num_matches = int(sum(len(m) for m in matches))
    ret = pose_from_correspondences(lmap, feats["keypoints"], db_ids, matches, camera, estimate_focal,
                                    opts, result)
    if ret is None:
        result.reason = (f"too few 2D-3D correspondences ({result.num_correspondences}, "
                         f"need {max(4, opts.min_inliers)})" if result.num_correspondences
                         < max(4, opts.min_inliers) else "PnP RANSAC found no pose")
    elif ret["num_inliers"] < opts.min_inliers:
        result.num_inliers = int(ret["num_inliers"])
        result.reason = f"too few PnP inliers ({ret['num_inliers']} < {opts.min_inliers})"
    else:
        result.localized = True
        result.num_inliers = int(ret["num_inliers"])
        result.qvec, result.tvec = rigid_to_lists(ret["cam_from_world"])
        result.camera = camera_dict(ret["camera"])
        counts: dict[str, int] = {}
        for image_id in ret["sources"]:
            name = lmap.reconstruction.image(image_id).name
            counts[name] = counts.get(name, 0) + 1
        result.inlier_map_images = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    result.seconds = time.perf_counter() - t0
    return result


def choose_camera(
    lmap: LocalizationMap, query: Query, image_dir: Path, retrieved: Sequence[str], size: tuple[int, int],
    mode: str, result: QueryResult,
) -> tuple[pycolmap.Camera, bool]:
    """The query camera and whether PnP must estimate its focal length."""
    width, height = size
    if query.camera is not None:
        if (query.camera.width, query.camera.height) != (width, height):
            raise LocalizationError(
                f"intrinsics of {query.name} are for {query.camera.width}x{query.camera.height} but the "
                f"image is {width}x{height} (EXIF-oriented)")
        result.focal_source = "given"
        result.camera = camera_dict(query.camera)
        return query.camera, False
    if mode == "map" and retrieved:
        cam = lmap.reconstruction.image(lmap.image_ids[retrieved[0]]).camera
        if (cam.width, cam.height) == (width, height):
            result.focal_source = f"map camera of {retrieved[0]}"
            result.camera = camera_dict(cam)
            return cam, False
    cam, source = guess_camera(image_dir / query.name, width, height)
    result.focal_source = source
    result.camera = camera_dict(cam)
    return cam, source == "guess"


# --------------------------------------------------------------------------------------------
# entry point


def main(
    model_dir: Path | str,
    queries: Path | str | Sequence[str],
    output_dir: Path | str,
    image_dir: Path | str | None = None,
    intrinsics: Path | str | None = None,
    map_images: Path | str | None = None,
    num_retrieved: int = 10,
    min_inliers: int = 12,
    ransac_thresh: float = 12.0,
    covisibility_clustering: bool = False,
    preset: dict | str | None = None,
    device: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Localize ``queries`` in the model of ``model_dir``; returns the ``localize.json`` content.

    ``intrinsics``: an hloc-style list file, or ``"map"`` to reuse the map camera of the best
    retrieved image when the sizes agree; default: EXIF focal, else a guess refined by PnP.
    ``map_images``: the map's photo folder, needed only when the map lacks ``global.h5``.
    """
    map_images = Path(map_images) if map_images else None
    t_start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lmap = load_map(model_dir, preset)
    image_dir, qlist = resolve_queries(queries, image_dir)
    if not qlist:
        raise LocalizationError(f"no query image in {queries}")
    mode = "auto"
    if intrinsics == "map":
        mode = "map"
    elif intrinsics is not None:
        given = read_intrinsics(intrinsics)
        for q in qlist:
            q.camera = q.camera or given.get(q.name)
    opts = LocalizeOptions(num_retrieved, min_inliers, ransac_thresh, covisibility_clustering, mode)

    qfeat_path, qglobal_path = output_dir / "query_features.h5", output_dir / "query_global.h5"
    summary = extract.main(image_dir, qfeat_path, lmap.preset, image_names=[q.name for q in qlist],
                           global_path=qglobal_path, overwrite=overwrite, device=device)
    results: dict[str, QueryResult] = {
        name: QueryResult(name, reason=f"image could not be read: {why}")
        for name, why in summary.failed.items()
    }
    ok = [q for q in qlist if q.name not in summary.failed]
    db_names = sorted(lmap.image_ids)
    if ok:
        db_global = ensure_map_global(lmap, output_dir, num_retrieved, map_images, device)
        if db_global is None:  # small map without global descriptors: all of it, for every query
            ranked = [list(db_names) for _ in ok]
        else:
            ranked = retrieve(read_global(qglobal_path, [q.name for q in ok]),
                              read_global(db_global, db_names), db_names, num_retrieved)
        matcher = QueryMatcher(lmap.preset, default_device(device))
        for q, retrieved in zip(ok, ranked, strict=True):
            results[q.name] = localize_query(lmap, qfeat_path, q, image_dir, retrieved, matcher, opts)
            r = results[q.name]
            log.info("%s: %s", q.name, f"localized, {r.num_inliers} inliers" if r.localized
                     else f"NOT localized ({r.reason})")
    ordered = [results[q.name] for q in qlist]
    io.write_poses(output_dir / "poses.txt", [(r.name, r.qvec, r.tvec) for r in ordered if r.localized])
    report = {
        "model_dir": str(Path(model_dir)),
        "preset": lmap.preset.get("name"),
        "options": asdict(opts),
        "num_queries": len(ordered),
        "num_localized": sum(r.localized for r in ordered),
        "seconds": time.perf_counter() - t_start,
        "queries": {r.name: asdict(r) for r in ordered},
    }
    tmp = output_dir / "localize.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, output_dir / "localize.json")
    return report


# --------------------------------------------------------------------------------------------
# command line


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("localize", help="query photos -> poses in an existing model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--min-inliers", type=int, default=12, help="PnP inliers needed to call a query localized")
    p.add_argument("--ransac-thresh", type=float, default=12.0,
                   help="PnP RANSAC threshold in px for a 1600 px image (scaled with the query size)")
    p.add_argument("--covisibility-clustering", action="store_true",
                   help="PnP per group of covisible retrieved images, keep the best")
    p.add_argument("--preset", default=None, choices=presets.names(), metavar="NAME",
                   help="the map's preset, when the folder does not record it")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="recompute query features")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    report = main(args.model, args.queries, args.output, image_dir=args.image_dir,
                  intrinsics=args.intrinsics, map_images=args.map_images,
                  num_retrieved=args.num_retrieved,
                  min_inliers=args.min_inliers, ransac_thresh=args.ransac_thresh,
                  covisibility_clustering=args.covisibility_clustering, preset=args.preset,
                  device=args.device, overwrite=args.overwrite)
    for name, r in report["queries"].items():
        if r["localized"]:
            state = f"localized  {r['num_inliers']:5d} inliers / {r['num_correspondences']} 2D-3D"
        else:
            state = f"FAILED     {r['reason']}"
        print(f"{name}: {state}")
    print(f"localized {report['num_localized']} / {report['num_queries']} queries "
          f"({report['seconds']:.1f} s); poses in {args.output / 'poses.txt'}")
    return 0 if report["num_localized"] else 3
