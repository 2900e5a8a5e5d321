"""Supervision from real 3D scenes: matcher training pairs labelled by a COLMAP model.

Input: a folder made by ``omniglue-sfm reconstruct IMAGES SCENE_OUT``, i.e. ``SCENE_OUT/features.h5``
(the pipeline's keypoints, descriptors, scores and guidance) and ``SCENE_OUT/sparse/`` (the COLMAP
model). The sfm stage writes every image's keypoints into COLMAP in ``features.h5`` order, so
``image.points2D[k]`` is keypoint ``k`` of ``features.h5`` (COLMAP puts the centre of the top-left
pixel at (0.5, 0.5), ``features.h5`` at (0, 0)). This is checked for every image used: the counts
must agree and the positions must agree to within 1e-3 px, otherwise a ``ValueError`` says so.

Generic models (e.g. MegaDepth): the same code path takes any COLMAP model plus an hloc-like
features file with the same layout (one group per image name holding ``keypoints`` (N, 2),
``descriptors`` (D, N), ``scores`` (N,), ``image_size`` (W, H), optionally ``guidance`` (C, N));
pass ``sparse_dir=`` and ``features_path=``. The model's points2D must be those keypoints, in
that order (hloc's ``triangulation`` / ``reconstruction`` with the same features file do this, and
hloc uses the same +0.5 convention); a model built from other features (MegaDepth's own SIFT
models) must first be re-triangulated with the features, otherwise the check above refuses it.
Without ``guidance`` in the features file, train without guidance (``collate_records(...,
with_guidance=False)``).

Labels of a pair (A, B) (:func:`gt_matches_from_model`), on the keypoints kept for training:

* keypoint i of A and keypoint j of B are a match (gt0[i] = j, gt1[j] = i) when both observe the
  same 3D point, that point is observed by exactly one kept keypoint in each image, and (unless
  ``pos_px`` is None) it reprojects within ``pos_px`` of both keypoints;
* a 3D point observed by several kept keypoints of one image (a track with two observations in
  the same image) makes all its keypoints of the pair ignored (-2), as does a failed ``pos_px``
  check;
* a keypoint of A whose 3D point is not observed by any kept keypoint of B is unmatched (-1) when
  the point is behind B's camera, projects outside B's image, or projects inside but farther than
  ``neg_px`` from every kept keypoint of B; otherwise (projection near some keypoint of B: a missed
  match or an occluder) it is ignored (-2);
* keypoints without a 3D point are ignored (-2). The same holds for B.

``herzjesu_p8`` is the project's test scene and is refused (``ValueError``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..formats import h5io
from .data import IGNORE, UNMATCHED, top_keypoints

TEST_SCENE = "herzjesu_p8"
COLMAP_OFFSET = 0.5  # COLMAP pixel coordinates = features.h5 coordinates + 0.5
KEYPOINT_TOLERANCE_PX = 1e-3


# --------------------------------------------------------------------------------------------
# the scene


def check_not_test_scene(*paths: Path | str | None) -> None:
    """``ValueError`` if any path's name (or its parent's name) is the test scene ``herzjesu_p8``."""
    for path in paths:
        if path is None:
            continue
        path = Path(path).absolute()
        for name in (path.name, path.parent.name):
            if TEST_SCENE in name.lower():
                raise ValueError(f"{path} is the test scene {TEST_SCENE}: it must never be used for training")


def _model_dir(sparse_dir: Path) -> Path:
    for d in (sparse_dir, sparse_dir / "0"):
        if (d / "images.bin").is_file() or (d / "images.txt").is_file():
            return d
    raise FileNotFoundError(f"no COLMAP model (images.bin / images.txt) in {sparse_dir} or its 0/")


def load_scene(scene_out: Path | str, sparse_dir: Path | str | None = None,
               features_path: Path | str | None = None):
    """(pycolmap.Reconstruction, features path) of a scene folder, refusing the test scene.

    ``sparse_dir`` / ``features_path`` default to ``scene_out/sparse`` (or ``sparse/0``) and
    ``scene_out/features.h5``; give them for a generic COLMAP model and hloc-like features file.
    """
    import pycolmap

    scene_out = Path(scene_out)
    image_dir = None
    stats = scene_out / "stats.json"
    if stats.is_file():
        try:
            image_dir = json.loads(stats.read_text()).get("image_dir")
        except json.JSONDecodeError:
            image_dir = None
    sparse_dir = Path(sparse_dir) if sparse_dir is not None else scene_out / "sparse"
    features_path = Path(features_path) if features_path is not None else scene_out / "features.h5"
    check_not_test_scene(scene_out, image_dir, sparse_dir.parent, features_path.parent)
    if not features_path.is_file():
        raise FileNotFoundError(f"{features_path} does not exist")
    rec = pycolmap.Reconstruction(_model_dir(sparse_dir))
    return rec, features_path


def _covisible_counts(rec) -> tuple[list[int], np.ndarray]:
    """Registered image ids (sorted) and the (n, n) counts of 3D points both images observe
    (upper triangle, i < j)."""
    ids = sorted(int(i) for i in rec.reg_image_ids())
    index = {image_id: k for k, image_id in enumerate(ids)}
    n = len(ids)
    by_length: dict[int, list[list[int]]] = defaultdict(list)
    for point in rec.points3D.values():
        seen = sorted({index[e.image_id] for e in point.track.elements if e.image_id in index})
        if len(seen) >= 2:
            by_length[len(seen)].append(seen)
    counts = np.zeros(n * n, dtype=np.int64)
    for length, rows in by_length.items():
        arr = np.asarray(rows, dtype=np.int64)  # each row sorted: pairs come out as i < j
        ii, jj = np.triu_indices(length, 1)
        step = max(1, 4_000_000 // len(ii))
        for s in range(0, len(arr), step):
            chunk = arr[s:s + step]
            counts += np.bincount((chunk[:, ii] * n + chunk[:, jj]).ravel(), minlength=n * n)
    return ids, counts.reshape(n, n)


def _pairs_of_model(rec, min_shared: int, max_pairs: int | None, seed: int) -> list[tuple[str, str, int]]:
    ids, counts = _covisible_counts(rec)
    names = [rec.image(i).name for i in ids]
    ii, jj = np.nonzero(counts >= max(1, min_shared))
    pairs = sorted((*sorted((names[i], names[j])), int(counts[i, j])) for i, j in zip(ii, jj, strict=True))
    if max_pairs is not None and len(pairs) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False))
        pairs = [pairs[k] for k in keep]
    return pairs


def scene_pairs(scene_out: Path | str, min_shared: int = 50, max_pairs: int | None = None, seed: int = 0,
                *, sparse_dir: Path | str | None = None,
                features_path: Path | str | None = None) -> list[tuple[str, str]]:
    """Image pairs (name_a < name_b, sorted) of registered images sharing >= ``min_shared`` 3D
    points; with ``max_pairs``, a subset drawn with a ``seed``-ed RNG (still sorted)."""
    rec, _ = load_scene(scene_out, sparse_dir, features_path)
    return [(a, b) for a, b, _ in _pairs_of_model(rec, min_shared, max_pairs, seed)]


# --------------------------------------------------------------------------------------------
# labels


def _resolve_image(rec, image):
    if isinstance(image, str):
        found = rec.find_image_with_name(image)
        if found is None:
            raise KeyError(f"no image {image!r} in the model")
        return found
    if isinstance(image, int | np.integer):
        return rec.image(int(image))
    return image


def _image_points(rec, image, cache: dict | None) -> dict[str, np.ndarray]:
    """Per points2D entry: ``pids`` (K,) int64 (-1: no 3D point), ``xyz`` (K, 3) (NaN: none),
    ``xy`` (K, 2) in features.h5 pixel coordinates."""
    key = int(image.image_id)
    if cache is not None and key in cache:
        return cache[key]
    points2d = image.points2D
    pids = np.array([p.point3D_id if p.has_point3D() else -1 for p in points2d], dtype=np.int64)
    xy = np.array([p.xy for p in points2d], dtype=np.float64).reshape(-1, 2) - COLMAP_OFFSET
    xyz = np.full((len(pids), 3), np.nan)
    for k in np.flatnonzero(pids >= 0):
        xyz[k] = rec.point3D(int(pids[k])).xyz
    out = {"pids": pids, "xyz": xyz, "xy": xy}
    if cache is not None:
        cache[key] = out
    return out


def check_keypoints(image_name: str, points_xy: np.ndarray, keypoints: np.ndarray,
                    tol: float = KEYPOINT_TOLERANCE_PX) -> None:
    """``ValueError`` unless the model's points2D (features.h5 coordinates) are the keypoints."""
    if len(points_xy) != len(keypoints):
        raise ValueError(
            f"{image_name}: the model has {len(points_xy)} points2D but the features file {len(keypoints)} "
            "keypoints; the model must have been built from these features (points2D[k] = keypoint k)")
    if len(keypoints):
        err = np.abs(points_xy - np.asarray(keypoints, dtype=np.float64)).max()
        if not err <= tol:
            raise ValueError(
                f"{image_name}: points2D and keypoints differ by up to {err:.4g} px (> {tol} px); the model "
                "must have been built from these features, in features-file order")


def _project(rec, image, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projections (n, 2) in features.h5 coordinates (NaN where not in front) and in-front mask."""
    m = image.cam_from_world().matrix()
    cam = xyz @ m[:, :3].T + m[:, 3]
    front = np.isfinite(cam).all(axis=1) & (cam[:, 2] > 1e-9)
    uv = np.full((len(xyz), 2), np.nan)
    if front.any():
        camera = rec.camera(image.camera_id)
        uv[front] = np.asarray(camera.img_from_cam(cam[front], check_cheirality=False)) - COLMAP_OFFSET
    return uv, front


def _nearest_distance(points: np.ndarray, keypoints: np.ndarray, chunk: int = 4096) -> np.ndarray:
    if len(keypoints) == 0:
        return np.full(len(points), np.inf)
    kp = torch.from_numpy(np.asarray(keypoints, dtype=np.float64))
    out = [torch.cdist(torch.from_numpy(points[s:s + chunk]), kp).min(1).values
           for s in range(0, len(points), chunk)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def _negatives(rec, other, pids: np.ndarray, xyz: np.ndarray, other_pids: np.ndarray,
               other_kp: np.ndarray, neg_px: float) -> np.ndarray:
    """Indices of keypoints (with a 3D point not observed in the other view) labelled unmatched."""
    cand = np.flatnonzero((pids >= 0) & ~np.isin(pids, other_pids))
    if len(cand) == 0:
        return cand
    uv, front = _project(rec, other, xyz[cand])
    camera = rec.camera(other.camera_id)
    lo = -COLMAP_OFFSET
    inside = front & (uv[:, 0] >= lo) & (uv[:, 1] >= lo) & (uv[:, 0] <= camera.width + lo) \
        & (uv[:, 1] <= camera.height + lo)
    near = np.zeros(len(cand), dtype=bool)
    if inside.any():
        near[inside] = _nearest_distance(uv[inside], other_kp) <= neg_px
    return cand[~near]


def _unique_positions(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Position of each of ``wanted`` in ``values`` (each occurs exactly once there)."""
    order = np.argsort(values, kind="stable")
    return order[np.searchsorted(values[order], wanted)]


def gt_matches_from_model(
    rec, image_a, image_b, kp_a: np.ndarray | torch.Tensor, kp_b: np.ndarray | torch.Tensor,
    idx_a: np.ndarray | torch.Tensor | None = None, idx_b: np.ndarray | torch.Tensor | None = None,
    pos_px: float | None = 4.0, neg_px: float = 8.0, cache: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels gt0 (N,) / gt1 (M,) int64 (match index, -1 unmatched, -2 ignore) of a model's pair.

    ``image_a`` / ``image_b``: ``pycolmap.Image``, image name or id. ``kp_a`` (N, 2) / ``kp_b``
    (M, 2): keypoints in features.h5 coordinates; ``idx_a`` / ``idx_b``: their indices into the
    image's points2D (default: all, in order), e.g. the top-scoring subset kept for training.
    The keypoints must sit at their points2D (1e-3 px). ``cache``: a dict reused across calls on
    the same model (per-image arrays). Rules: see the module docstring.
    """
    img_a, img_b = _resolve_image(rec, image_a), _resolve_image(rec, image_b)
    kp_a = np.asarray(kp_a, dtype=np.float64).reshape(-1, 2)
    kp_b = np.asarray(kp_b, dtype=np.float64).reshape(-1, 2)
    sides = []
    for img, kp, idx in ((img_a, kp_a, idx_a), (img_b, kp_b, idx_b)):
        pts = _image_points(rec, img, cache)
        idx = np.arange(len(kp)) if idx is None else np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(idx) != len(kp) or (len(idx) and (idx.min() < 0 or idx.max() >= len(pts["pids"]))):
            raise ValueError(f"{img.name}: {len(kp)} keypoints but indices {len(idx)} / points2D "
                             f"{len(pts['pids'])} do not fit")
        check_keypoints(img.name, pts["xy"][idx], kp)
        sides.append((pts["pids"][idx], pts["xyz"][idx]))
    (pa, xa), (pb, xb) = sides
    n, m = len(pa), len(pb)
    gt0 = np.full(n, IGNORE, dtype=np.int64)
    gt1 = np.full(m, IGNORE, dtype=np.int64)

    # positives: a 3D point observed by exactly one kept keypoint in each image
    ua, ca = np.unique(pa[pa >= 0], return_counts=True)
    ub, cb = np.unique(pb[pb >= 0], return_counts=True)
    good = np.intersect1d(ua[ca == 1], ub[cb == 1])
    i, j = _unique_positions(pa, good), _unique_positions(pb, good)
    if pos_px is not None and len(good):
        proj_a, front_a = _project(rec, img_a, xa[i])
        proj_b, front_b = _project(rec, img_b, xb[j])
        err_a = np.linalg.norm(proj_a - kp_a[i], axis=1)
        err_b = np.linalg.norm(proj_b - kp_b[j], axis=1)
        ok = front_a & front_b & (err_a <= pos_px) & (err_b <= pos_px)  # NaN compares False
        i, j = i[ok], j[ok]
    gt0[i], gt1[j] = j, i

    # unmatched: the 3D point is not seen by B's kept keypoints and no kept keypoint is near it
    gt0[_negatives(rec, img_b, pa, xa, pb, kp_b, neg_px)] = UNMATCHED
    gt1[_negatives(rec, img_a, pb, xb, pa, kp_a, neg_px)] = UNMATCHED
    return torch.from_numpy(gt0), torch.from_numpy(gt1)


# --------------------------------------------------------------------------------------------
# records


def _view(features: dict[str, np.ndarray]) -> dict:
    """A training view (same format as the pools) plus ``point2D_idx`` (N,) into the model."""
    kp = features["keypoints"]
    n = len(kp)
    view = {
        "keypoints": torch.from_numpy(np.asarray(kp, dtype=np.float32)),
        "descriptors": torch.from_numpy(np.ascontiguousarray(features["descriptors"].T, dtype=np.float16)),
        "scores": torch.from_numpy(np.asarray(features["scores"], dtype=np.float32)).reshape(n),
        "image_size": torch.from_numpy(np.asarray(features["image_size"], dtype=np.float32)).reshape(2),
        "point2D_idx": torch.arange(n, dtype=torch.long),
    }
    if "guidance" in features:
        view["guidance"] = torch.from_numpy(np.ascontiguousarray(features["guidance"].T, dtype=np.float16))
    return view


def records_from_scene(
    scene_out: Path | str, max_keypoints: int | None = None, min_shared: int = 50,
    max_pairs: int | None = None, seed: int = 0, *, sparse_dir: Path | str | None = None,
    features_path: Path | str | None = None, pos_px: float | None = 4.0, neg_px: float = 8.0,
) -> list[dict]:
    """Training records of a scene's pairs (:func:`scene_pairs`) with precomputed labels.

    Each record: ``view0`` / ``view1`` (keypoints (N, 2) float32, descriptors (N, D) float16,
    scores (N,), image_size (2,) = (W, H), guidance (N, C) float16 when the features have it,
    point2D_idx (N,)), ``gt0`` / ``gt1`` int64, ``scene``, ``names`` (name0, name1), ``shared``
    (3D points of the pair in the whole model). No ``H_0to1``. A view is one dict shared by every
    record of that image. With ``max_keypoints``, each view keeps its top-scoring keypoints
    (``data.top_keypoints``) and the labels are computed on the kept keypoints.
    """
    rec, features_path = load_scene(scene_out, sparse_dir, features_path)
    pairs = _pairs_of_model(rec, min_shared, max_pairs, seed)
    available = set(h5io.list_names(features_path))
    cache: dict = {}
    views: dict[str, dict] = {}
    images = {}
    for name in sorted({name for a, b, _ in pairs for name in (a, b)}):
        if name not in available:
            raise KeyError(f"image {name!r} of the model has no features in {features_path}")
        image = rec.find_image_with_name(name)
        feats = h5io.read_features(features_path, name)
        check_keypoints(name, _image_points(rec, image, cache)["xy"], feats["keypoints"])
        view = _view(feats)
        views[name] = top_keypoints(view, max_keypoints) if max_keypoints else view
        images[name] = image
    scene = Path(scene_out).absolute().name
    records = []
    for a, b, shared in pairs:
        va, vb = views[a], views[b]
        gt0, gt1 = gt_matches_from_model(rec, images[a], images[b], va["keypoints"].numpy(),
                                         vb["keypoints"].numpy(), va["point2D_idx"].numpy(),
                                         vb["point2D_idx"].numpy(), pos_px=pos_px, neg_px=neg_px, cache=cache)
        records.append({"view0": va, "view1": vb, "gt0": gt0, "gt1": gt1, "scene": scene, "names": (a, b),
                        "shared": shared})
    return records


# --------------------------------------------------------------------------------------------
# metrics without a homography


def label_precision_recall(matches0: torch.Tensor, gt0: torch.Tensor,
                           gt1: torch.Tensor | None = None) -> dict[str, int]:
    """Counts for precision / recall of one pair's predicted matches against labels.

    A prediction i -> j is correct if gt0[i] == j; wrong if gt0[i] == -1 or gt0[i] is another
    keypoint; otherwise (gt0[i] == -2) not counted, unless ``gt1`` is given and says j is
    unmatched (-1) or matched to another keypoint than i (then wrong). Padding must be labelled
    -2. Same dict as ``losses.match_counts`` (``losses.precision_recall`` aggregates them);
    ``gt`` = positives of gt0, recall = correct / gt.
    """
    matches0, gt0 = torch.as_tensor(matches0).long(), torch.as_tensor(gt0).long()
    if matches0.shape != gt0.shape:
        raise ValueError(f"matches0 {tuple(matches0.shape)} and gt0 {tuple(gt0.shape)} differ in shape")
    pred = matches0 >= 0
    i = pred.nonzero()[:, 0]
    j, g = matches0[i], gt0[i]
    correct = (g >= 0) & (g == j)
    wrong = (g == UNMATCHED) | ((g >= 0) & (g != j))
    if gt1 is not None:
        h = torch.as_tensor(gt1).long()[j]
        wrong |= (g == IGNORE) & ((h == UNMATCHED) | ((h >= 0) & (h != i)))
    return {"correct": int(correct.sum()), "wrong": int(wrong.sum()), "predicted": int(pred.sum()),
            "gt": int((gt0 >= 0).sum())}
