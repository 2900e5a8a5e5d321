"""2D-3D correspondences through a model's tracks and absolute pose (PnP) with pycolmap.

The geometry of localization: which 3D points a query's matches see, which retrieved map
images belong together (covisibility), and LO-RANSAC PnP + refinement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pycolmap

REFERENCE_SIZE = 1600.0  # ransac_thresh is given for images of this long side and scaled with size


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


def rigid_to_lists(rigid: pycolmap.Rigid3d) -> tuple[list[float], list[float]]:
    x, y, z, w = (float(v) for v in rigid.rotation.quat)  # pycolmap/Eigen order is (x, y, z, w)
    return [w, x, y, z], [float(v) for v in rigid.translation]


# --------------------------------------------------------------------------------------------
# is the pose believable?

# With a guessed focal length PnP has one more unknown to bend: ask for more evidence.
GUESSED_FOCAL_MIN_INLIER_RATIO = 0.3
GUESSED_FOCAL_INLIER_FACTOR = 2  # x min_inliers
# a refined focal length outside [0.25, 5] x the long side is a field of view wider than 127 deg or
# narrower than 11 deg: not a photo of the map, PnP fitting noise
FOCAL_RANGE = (0.25, 5.0)
MAX_DISTANCE_FACTOR = 2.0  # x the map's radius, from the map's centre


@dataclass(frozen=True)
class MapExtent:
    """Where the map is: the median of its camera centres and the radius around it that holds 95%
    of its 3D points and camera centres."""

    centre: np.ndarray
    radius: float

    @classmethod
    def of(cls, rec: pycolmap.Reconstruction) -> MapExtent:
        cams = np.array([rec.image(i).projection_center() for i in rec.reg_image_ids()])
        points = np.array([p.xyz for p in rec.points3D.values()]).reshape(-1, 3)
        centre = np.median(cams, axis=0)
        dist = np.linalg.norm(np.concatenate([cams, points]) - centre, axis=1)
        return cls(centre, float(np.percentile(dist, 95)))


@dataclass(frozen=True)
class PoseRules:
    min_inliers: int = 12
    min_inlier_ratio: float = 0.2  # inliers / 2D-3D correspondences


def pose_doubt(ret: dict, num_correspondences: int, estimate_focal: bool, extent: MapExtent,
               rules: PoseRules) -> str | None:
    """Why a PnP result (``estimate_pose``'s dict) is not a believable pose; None when it is.

    A pose explains a query only with enough inliers, a fair share of the correspondences (random
    or mirrored matches give a few percent to 20%), more of both when the focal length was a guess,
    a sane refined focal length, and a camera near the map rather than far outside it.
    """
    inliers = int(ret["num_inliers"])
    ratio = inliers / max(1, num_correspondences)
    min_inliers, min_ratio = rules.min_inliers, rules.min_inlier_ratio
    if estimate_focal:
        min_inliers *= GUESSED_FOCAL_INLIER_FACTOR
        min_ratio = max(min_ratio, GUESSED_FOCAL_MIN_INLIER_RATIO)
    guessed = " (focal length guessed)" if estimate_focal else ""
    if inliers < min_inliers:
        return f"too few PnP inliers ({inliers} < {min_inliers}{guessed})"
    if ratio < min_ratio:
        return (f"too small a share of PnP inliers ({inliers} of {num_correspondences} 2D-3D "
                f"correspondences, {ratio:.0%} < {min_ratio:.0%}{guessed})")
    camera = ret["camera"]
    if estimate_focal:
        long_side = max(camera.width, camera.height)
        focal = float(np.mean([camera.params[i] for i in camera.focal_length_idxs()]))
        low, high = FOCAL_RANGE
        if not low * long_side <= focal <= high * long_side:
            return (f"implausible focal length {focal:.0f} px for a {long_side} px image "
                    f"(expected {low:g}-{high:g} x the long side)")
    centre = np.asarray(ret["cam_from_world"].inverse().translation)
    distance = float(np.linalg.norm(centre - extent.centre))
    if distance > MAX_DISTANCE_FACTOR * extent.radius:
        return (f"camera centre far outside the map ({distance:.3g} from its centre, more than "
                f"{MAX_DISTANCE_FACTOR:g} x its radius {extent.radius:.3g})")
    return None
