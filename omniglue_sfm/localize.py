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
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pycolmap

from . import extract, match, orientation, pairs
from .config import presets, registry
from .config.options import RunOptions
from .config.rotation import options_from_preset
from .features.image import extract_image
from .formats import h5io, outputs, provenance, textfiles
from .formats.images import read_image_sized
from .geometry import geo
from .geometry.cameras import Query, camera_dict, guess_camera, read_intrinsics, resolve_queries
from .geometry.pnp import (
    MapExtent,
    PoseRules,
    correspondences,
    covisibility_clusters,
    estimate_pose,
    pose_doubt,
    ransac_threshold,
    rigid_to_lists,
)
from .matchers.base import features_to_tensors
from .runtime import locks
from .runtime.devices import default_device

log = logging.getLogger(__name__)


HLOC_RESULTS = "hloc_results.txt"  # hloc's results format, beside our poses.txt


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
    extent: MapExtent  # where the map is: a localized camera must be near it


def refuse_colmap_sift(model_dir: Path, preset: dict) -> None:
    """A map of the COLMAP SIFT pipeline cannot localize (whatever other files its folder holds)."""
    if preset and presets.pipeline(preset) is presets.Pipeline.COLMAP_SIFT:
        raise LocalizationError(
            f"{model_dir} was made with COLMAP's own SIFT (preset {preset.get('name', 'sift')!r}): its "
            "features live only in database.db, so it cannot be used for localization; reconstruct "
            "with a learned-feature preset (e.g. omniglue) to localize")


def map_preset(model_dir: Path) -> dict:
    """The preset the map was made with; its feature config is taken from features.h5 itself.

    The preset comes from ``stats.json`` (written by ``reconstruct``);
    the extractor (and guidance) configuration always from ``features.h5``'s ``config``
    attribute, so queries get exactly the map's features even with overridden settings.
    """
    model_dir = Path(model_dir)
    stored = (outputs.read_stats(model_dir) or {}).get("preset")
    preset = presets.resolve(stored) if isinstance(stored, (str, dict)) else {}
    refuse_colmap_sift(model_dir, preset)
    features_path = model_dir / "features.h5"
    if not features_path.exists():
        raise LocalizationError(f"{features_path} does not exist: MODEL_DIR must be a reconstruct output")
    fconf = h5io.read_config(features_path)
    preset["features"] = fconf["features"]
    if fconf.get("guidance"):
        preset["guidance"] = fconf["guidance"]
    else:
        preset.pop("guidance", None)
    preset["rotation"] = map_rotation(fconf)
    matches_path = model_dir / "matches.h5"
    if matches_path.exists():  # the matcher that made the map's matches is the truth, if recorded
        mconf = h5io.read_config(matches_path)
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
        refuse_colmap_sift(model_dir, preset)
        fconf = h5io.read_config(model_dir / "features.h5")
        if fconf.get("features") != preset.get("features"):
            raise LocalizationError(f"preset {preset.get('name')!r} extracts other features than the map's "
                                    f"features.h5 ({fconf.get('features')})")
        preset["rotation"] = map_rotation(fconf)  # queries are turned upright as the map's images were
    preset.pop("masks", None)  # the map's mask folder has no masks of the queries
    image_ids = {rec.image(i).name: int(i) for i in rec.reg_image_ids()}
    if not image_ids:
        raise LocalizationError(f"the model in {sparse} has no registered image")
    return LocalizationMap(model_dir, rec, model_dir / "features.h5", model_dir / "global.h5", preset,
                           image_ids, MapExtent.of(rec))


def map_rotation(features_config: dict) -> dict | str:
    """The rotation handling recorded in the map's ``features.h5`` ("off" when it has none)."""
    return features_config.get("rotation") or "off"


def ensure_map_global(lmap: LocalizationMap, output_dir: Path, opts: LocalizeOptions,
                      run: RunOptions) -> Path | None:
    """The map's global descriptors: its ``global.h5``, else computed once into
    ``OUT/map_global.h5`` from the map's photos (``reconstruct`` writes ``global.h5`` only for
    retrieval pairs). ``None`` when the map is small enough to match every image."""
    if lmap.global_path.exists():
        return lmap.global_path
    if len(lmap.image_ids) <= opts.num_retrieved:
        log.info("map has no global.h5 and only %d images: every query is matched to all of them",
                 len(lmap.image_ids))
        return None
    try:
        image_dir = outputs.recorded_image_dir(lmap.model_dir, opts.map_images)
    except FileNotFoundError as err:
        raise LocalizationError(
            f"{lmap.global_path} does not exist and the map's photo folder is unknown ({err}): pass "
            "--map-images (global descriptors are computed once into OUT/map_global.h5) or rebuild the "
            "map with `reconstruct --pairs retrieval`") from None
    path = output_dir / "map_global.h5"
    log.info("map has no global.h5: computing global descriptors of %d map images into %s",
             len(lmap.image_ids), path)
    # the map's features.h5 already holds every item (made with its masks, if any), so extract only
    # adds the global descriptors
    masks = h5io.read_config(lmap.features_path).get("masks")
    preset = {**lmap.preset, "masks": masks} if masks else lmap.preset
    extract.main(extract.ImageSet(image_dir, sorted(lmap.image_ids)), lmap.features_path, preset,
                 replace(run, overwrite=False), global_path=path)
    return path


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
    turn_deg: int = 0  # how far the query was turned (counter-clockwise) to extract it upright
    seconds: float = 0.0
    position: list[float] | None = None  # camera centre in the map's frame (ENU metres when georegistered)
    lat_lon_alt: list[float] | None = None  # the same in WGS84, when the map is georegistered


@dataclass(frozen=True)
class LocalizeOptions:
    num_retrieved: int = 10  # map images retrieved per query
    min_inliers: int = 12  # PnP inliers needed to call a query localized (x2 with a guessed focal)
    min_inlier_ratio: float = 0.2  # PnP inliers / 2D-3D correspondences (at least 0.3, guessed focal)
    ransac_thresh: float = 12.0  # PnP RANSAC threshold in px for a 1600 px image
    covisibility_clustering: bool = False  # PnP per group of covisible retrieved images, keep the best
    # an hloc-style list file (name MODEL W H params...), or "map": the map camera of the best
    # retrieved image when the sizes agree; None: EXIF focal, else a guess refined by PnP
    intrinsics: Path | str | None = None
    image_dir: Path | None = None  # the folder a query list's names are in
    map_images: Path | None = None  # the map's photos; needed only when the map lacks global.h5

    def __post_init__(self) -> None:
        # checked here, before any work (the queries are extracted first)
        if self.num_retrieved < 1:
            raise ValueError(f"--num-retrieved must be at least 1, got {self.num_retrieved}")
        if self.min_inliers < 4:  # PnP needs 4 points; fewer inliers prove nothing
            raise ValueError(f"--min-inliers must be at least 4, got {self.min_inliers}")
        if not 0 < self.min_inlier_ratio <= 1:
            raise ValueError(f"--min-inlier-ratio is a share of the 2D-3D correspondences, in (0, 1]; got "
                             f"{self.min_inlier_ratio}")
        if not (math.isfinite(self.ransac_thresh) and self.ransac_thresh > 0):
            raise ValueError(f"--ransac-thresh must be a positive number of pixels, got {self.ransac_thresh}")

    @property
    def intrinsics_mode(self) -> str:
        return "map" if self.intrinsics == "map" else "auto"

    @property
    def pose_rules(self) -> PoseRules:
        return PoseRules(self.min_inliers, self.min_inlier_ratio)


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


# A pose that passed every other rule but explains under this share of the correspondences is
# checked against the query's mirror image (genuine views of the sample reach 85-95%).
MIRROR_CHECK_BELOW_RATIO = 0.8


class MirrorCheck:
    """Is a query a reflection (a mirrored photo) of the map's scene? A mirrored photo of a nearly
    symmetric facade matches the facade's symmetric counterparts and finds a consistent, wrong PnP
    pose (38-66% inliers on the sample, off by half the scene); local keypoint triangles keep
    their handedness there, so only the reflection itself tells: the query mirrored back is
    extracted and localized like the query. A reflection explains the map better mirrored than as
    given; a genuine photo far worse (20-45% of its inliers on the sample). The map's extractor is
    loaded on the first check."""

    def __init__(self, lmap: LocalizationMap, image_dir: Path, matcher: match.PairMatcher,
                 map_features: match.FeatureCache, device: str | None) -> None:
        self.lmap, self.image_dir, self.matcher, self.map_features = lmap, image_dir, matcher, map_features
        self.device = default_device(device)
        self._models: tuple | None = None

    def mirrored_inliers(self, query: Query, turn: int, retrieved: list[str], camera: pycolmap.Camera,
                         estimate_focal: bool, opts: LocalizeOptions) -> int:
        """PnP inliers of the query's mirror image (left and right swapped) against ``retrieved``."""
        conf = self.lmap.preset
        if self._models is None:
            self._models = (registry.extractor(conf["features"]).to(self.device).eval(),
                            registry.guidance(conf["guidance"]).to(self.device).eval()
                            if conf.get("guidance") else None)
        extractor, guidance = self._models
        resize_max = conf["features"].get("resize_max")
        img, full_size = read_image_sized(self.image_dir / query.name, resize_max)
        mirrored_turn = (4 - turn) % 4  # a mirror reverses the sense of a turn
        item, _ = extract_image(np.ascontiguousarray(img[:, ::-1]), extractor, guidance, resize_max,
                                self.device, full_size, mirrored_turn)
        matches = self.matcher.match_to_references(features_to_tensors(item, mirrored_turn),
                                                   [self.map_features[n] for n in retrieved])
        cam = pycolmap.Camera(model=camera.model.name, width=camera.width, height=camera.height,
                              params=np.asarray(camera.params).copy())
        params = np.asarray(cam.params).copy()
        for i in list(cam.principal_point_idxs())[:1]:  # the principal point's x is mirrored too
            params[i] = camera.width - params[i]
        cam.params = params
        db_ids = [self.lmap.image_ids[n] for n in retrieved]
        ret = pose_from_correspondences(self.lmap, item["keypoints"], db_ids, matches, cam, estimate_focal,
                                        opts, QueryResult(query.name))
        return int(ret["num_inliers"]) if ret is not None else 0


def localize_query(
    lmap: LocalizationMap, query_features: Path, query: Query, image_dir: Path, retrieved: list[str],
    matcher: match.PairMatcher, map_features: match.FeatureCache, opts: LocalizeOptions,
    mirror: MirrorCheck | None = None,
) -> QueryResult:
    t0 = time.perf_counter()
    result = QueryResult(query.name, retrieved=list(retrieved))
    feats = h5io.read_features(query_features, query.name)
    width, height = (int(v) for v in feats["image_size"])
    camera, estimate_focal = choose_camera(lmap, query, image_dir, retrieved, (width, height),
                                           opts.intrinsics_mode, result)
    turn = provenance.read_turn(query_features, query.name)
    result.turn_deg = 90 * turn
    qfeat = features_to_tensors(feats, turn)  # upright, as extracted
    db_ids = [lmap.image_ids[n] for n in retrieved]
    matches = matcher.match_to_references(qfeat, [map_features[n] for n in retrieved])
    result.num_matches = int(sum(len(m) for m in matches))
    ret = pose_from_correspondences(lmap, feats["keypoints"], db_ids, matches, camera, estimate_focal,
                                    opts, result)
    if ret is None:
        result.reason = (f"too few 2D-3D correspondences ({result.num_correspondences}, "
                         f"need {max(4, opts.min_inliers)})" if result.num_correspondences
                         < max(4, opts.min_inliers) else "PnP RANSAC found no pose")
    elif doubt := pose_doubt(ret, result.num_correspondences, estimate_focal, lmap.extent, opts.pose_rules):
        result.num_inliers = int(ret["num_inliers"])
        result.reason = f"pose rejected: {doubt}"
    elif (mirror is not None and ret["num_inliers"] < MIRROR_CHECK_BELOW_RATIO * result.num_correspondences
          and (mirrored := mirror.mirrored_inliers(query, turn, retrieved, camera, estimate_focal, opts))
          > ret["num_inliers"]):
        result.num_inliers = int(ret["num_inliers"])
        result.reason = (f"pose rejected: the query looks mirrored (a reflected photo): its mirror image "
                         f"gives {mirrored} PnP inliers, the query as given {result.num_inliers}")
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
    db_global = ensure_map_global(lmap, output_dir, opts, run)
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
