"""One query against the map: its camera, its matches to the retrieved map images, PnP, and the
rules a pose must pass to count as localized (:class:`MirrorCheck` included).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from .. import match
from ..config import registry
from ..features.image import extract_image
from ..formats import h5io, provenance
from ..formats.images import read_image_sized
from ..geometry.cameras import Query, camera_dict, guess_camera
from ..geometry.pnp import (
    PoseRules,
    correspondences,
    covisibility_clusters,
    estimate_pose,
    pose_doubt,
    ransac_threshold,
    rigid_to_lists,
)
from ..matchers.base import features_to_tensors
from ..runtime.devices import default_device
from .maps import LocalizationError, LocalizationMap

log = logging.getLogger(__name__)

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

