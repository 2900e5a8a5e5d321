"""Turned photos: which quarter-turn makes each image upright, and the keypoint mapping.

Learned features and matchers are trained on upright images; a photo stored turned by 90, 180
or 270 degrees (a scan, an export that lost its EXIF orientation, a drone or turntable capture)
matches badly. This module finds each image's **turn** ``k`` in {0, 1, 2, 3}: its upright view is
``np.rot90(image, k)`` (the photo turned ``k`` x 90 degrees counter-clockwise; a photo stored turned
90 degrees clockwise has ``k = 1``). The turn is on top of the EXIF orientation, which
:func:`omniglue_sfm.images.read_image` has already applied.

How the turns are found (``estimate_turns``), cheaply:

1. Every image gets low-resolution features (the preset's own extractor, ``resize_max`` px,
   ``max_keypoints``) as it is stored. Candidate pairs (exhaustive up to 40 images, else a
   sequential window with quadratic links; neighbours in name order first) are matched with the
   preset's matcher and verified with a fundamental matrix (pycolmap LO-RANSAC); inliers count
   only when they are ``min_inlier_ratio`` of the matches. A pair with ``accept_inliers``
   inliers joins its two images with relative turn 0 (union-find); one with fewer, but
   ``min_inliers``, only if turn 0 also beats the other three turns. A pair whose images are
   already joined is skipped, and so is an image that failed ``max_upright_failures`` times
   (step 2 takes it). On an upright scene this is all: about one match per image.
2. The largest joined group is the anchor. Each other group is attached through a candidate pair
   (anchor image ``a``, group image ``b``): ``b``'s three other quarter-turns are extracted (once)
   and matched against ``a``; the turn with the most inliers wins when it has at least
   ``min_inliers`` and ``margin`` times the runner-up's. Up to ``max_tries`` pairs per group.
3. One global offset is added to all turns, the one that leaves the most images at turn 0
   (photos are mostly upright). Images that could not be attached keep turn 0.

The real extraction then runs on each image turned upright and maps its keypoints back to the
original pixels (``from_upright``), so ``features.h5``, COLMAP, cameras and models keep the photo's
own frame. Matchers, which encode keypoint positions, are fed the upright frame again
(``to_upright``, in ``matchers.base.features_to_tensors``); only indices leave them.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .scenes import CameraPose

log = logging.getLogger(__name__)

ROTATION_MODES = ("auto", "off")


@dataclass(frozen=True)
class OrientationOptions:
    """How turns are estimated; every field is recorded in ``features.h5``'s configuration."""

    mode: str = "auto"  # "auto": estimate each image's quarter-turn; "off": take images as stored
    resize_max: int = 512  # long side of the low-resolution images of the orientation pass
    max_keypoints: int = 512  # keypoints per low-resolution image
    min_inliers: int = 30  # fundamental-matrix inliers that accept a relative turn
    # as stored, accepted at once with this many (else all four turns are compared): a pair 180
    # degrees apart can give ~30 matches that a fundamental matrix fits; an overlapping upright pair
    # gives hundreds at 512 keypoints
    accept_inliers: int = 100
    # ... and the share of the matches they must be: F fits ~30 of ~150 wrong-turn matches
    # (a 1D constraint), while a right turn has most matches inliers (measured: 0.15-0.2 vs 0.9)
    min_inlier_ratio: float = 0.4
    margin: float = 2.0  # the winning turn needs this many times the runner-up's inliers
    max_tries: int = 8  # candidate pairs tried to attach a group of images to the anchor
    # upright matches an image may fail in step 1 before it is left to step 2 (a turned image
    # fails all of them: without a cap, a turned image in an exhaustive scene costs n - 1 matches)
    max_upright_failures: int = 3

    def __post_init__(self) -> None:
        if self.mode not in ROTATION_MODES:
            raise ValueError(f"unknown rotation mode {self.mode!r}; choose one of "
                             f"{', '.join(ROTATION_MODES)}")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def record(self) -> dict:
        return asdict(self)


def options_from_preset(preset: Mapping) -> OrientationOptions | None:
    """The preset's ``rotation`` setting ("auto", "off", or a table of :class:`OrientationOptions`
    fields); None when the images are taken as stored (off, or a preset without the key)."""
    value = preset.get("rotation", "off")
    if isinstance(value, str):
        opts = OrientationOptions(mode=value)
    elif isinstance(value, Mapping):
        known = set(OrientationOptions.__dataclass_fields__)
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown rotation option(s) {', '.join(sorted(unknown))}; known: "
                             f"{', '.join(sorted(known))}")
        opts = OrientationOptions(**value)
    else:
        raise ValueError(f"rotation must be 'auto', 'off' or a table, got {value!r}")
    return opts if opts.enabled else None


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--rotation auto|off`` (for reconstruct and extract)."""
    parser.add_argument("--rotation", choices=ROTATION_MODES, default=None,
                        help="auto: find photos turned by 90/180/270 degrees and extract them upright "
                             "(the default of every learned preset); off: take every image as stored. "
                             "The sift preset ignores it (SIFT is rotation invariant)")


# --------------------------------------------------------------------------------------------
# the keypoint mapping (pixel centres at integers, as in features.h5)


def rotate_points(points: np.ndarray, size: Sequence[int], k: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Points of an image of ``size`` (W, H) -> the same points in ``np.rot90(image, k)``, and that
    image's size. One counter-clockwise quarter-turn sends pixel (x, y) to (y, W - 1 - x)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    w, h = int(size[0]), int(size[1])
    for _ in range(k % 4):
        pts = np.stack([pts[:, 1], (w - 1) - pts[:, 0]], axis=1)
        w, h = h, w
    return pts, (w, h)


def to_upright(points: np.ndarray, size: Sequence[int], turn: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Original-pixel points of an image of ``size`` -> its upright view (``turn`` quarter-turns)."""
    return rotate_points(points, size, turn)


def from_upright(points: np.ndarray, upright_size: Sequence[int],
                 turn: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Points of the upright view (of ``upright_size``) -> original pixels (inverse of :func:`to_upright`)."""
    return rotate_points(points, upright_size, -turn % 4)


def turn_image(img: np.ndarray, turn: int) -> np.ndarray:
    """The view ``turn`` quarter-turns counter-clockwise of an (H, W, C) image."""
    return np.ascontiguousarray(np.rot90(img, turn % 4))


def camera_turn_rotation(turn: int) -> np.ndarray:
    """R such that camera coordinates of the turned view are ``R @ X_cam`` (about the optical axis).
    One counter-clockwise image quarter-turn maps normalised (x, y) to (y, -x)."""
    step = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return np.linalg.matrix_power(step, turn % 4)


def turn_intrinsics(K: np.ndarray, size: Sequence[int], turn: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pinhole K of an image of ``size`` (W, H) -> K of its view turned ``turn`` times, and its size."""
    K = np.asarray(K, dtype=np.float64).copy()
    w, h = int(size[0]), int(size[1])
    for _ in range(turn % 4):
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        K = np.array([[fy, 0.0, cy], [0.0, fx, (w - 1) - cx], [0.0, 0.0, 1.0]])
        w, h = h, w
    return K, (w, h)


# --------------------------------------------------------------------------------------------
# estimating the turns


FeaturesFn = Callable[[np.ndarray], dict]  # (H, W, 3) uint8 -> a features.h5 item
MatchFn = Callable[[dict, dict], np.ndarray]  # two features.h5 items -> (K, 2) index pairs
ReadFn = Callable[[str], np.ndarray | None]  # image name -> (H, W, 3) uint8, None if unreadable


@dataclass
class TurnEstimate:
    turns: dict[str, int]  # image name -> quarter-turns that make it upright
    seconds: float = 0.0
    extractions: int = 0  # low-resolution feature extractions
    matched_pairs: int = 0  # low-resolution pair matches
    unattached: list[str] = field(default_factory=list)  # images whose turn could not be told (kept 0)

    def summary(self) -> dict:
        return {"seconds": round(self.seconds, 3), "extractions": self.extractions,
                "matched_pairs": self.matched_pairs, "unattached": self.unattached,
                "turned": {n: 90 * t for n, t in sorted(self.turns.items()) if t}}


def neighbours_first(names: Sequence[str], pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Candidate pairs (from ``pairs.exhaustive`` / ``pairs.sequential``) with neighbours in name
    order first: they overlap most often."""
    index = {n: i for i, n in enumerate(names)}
    return sorted(pairs, key=lambda p: (abs(index[p[0]] - index[p[1]]), index[p[0]]))


RANSAC_SEED = 0


def verified_inliers(kp0: np.ndarray, kp1: np.ndarray, matches: np.ndarray, max_error: float) -> int:
    """Matches consistent with one fundamental matrix (pycolmap LO-RANSAC); 0 with fewer than 8."""
    import pycolmap

    if len(matches) < 8:
        return 0
    options = pycolmap.RANSACOptions()
    options.max_error = float(max_error)
    options.random_seed = RANSAC_SEED  # reproducible, and COLMAP's global random state is left alone
    ret = pycolmap.estimate_fundamental_matrix(np.asarray(kp0, np.float64)[matches[:, 0]],
                                               np.asarray(kp1, np.float64)[matches[:, 1]], options)
    return 0 if ret is None else int(ret["num_inliers"])


def verified_score(kp0: np.ndarray, kp1: np.ndarray, matches: np.ndarray, max_error: float,
                   options: OrientationOptions) -> int:
    """The evidence a match set gives for its turn: its verified inliers, or 0 when they are too
    small a share of the matches to be more than what a fundamental matrix fits by chance."""
    inliers = verified_inliers(kp0, kp1, matches, max_error)
    return inliers if inliers >= options.min_inlier_ratio * max(len(matches), 1) else 0


IMAGE_CACHE = 256  # decoded low-resolution images the orientation pass keeps at once


class TurnScorer:
    """Verified low-resolution matches of image ``a`` (as stored) against image ``b`` turned ``k``
    times. Images are read, downscaled and extracted once per needed turn."""

    def __init__(self, read: ReadFn, features_of: FeaturesFn, match: MatchFn,
                 options: OrientationOptions) -> None:
        self.read, self.features_of, self.match, self.options = read, features_of, match, options
        # the last IMAGE_CACHE decoded low-resolution images (an image evicted is read again if
        # another turn of it is needed): memory stays bounded however many images there are
        self.small: OrderedDict[str, np.ndarray] = OrderedDict()
        self.shapes: dict[str, tuple[int, ...] | None] = {}  # (H, W) of each low-res image; None: unreadable
        self.features: dict[tuple[str, int], dict] = {}
        self.scores: dict[tuple[str, str, int], int] = {}
        self.extractions = 0
        self.matched = 0

    def image(self, name: str) -> np.ndarray | None:
        from .images import resize_for_extraction

        if name in self.small:
            self.small.move_to_end(name)
            return self.small[name]
        if name in self.shapes and self.shapes[name] is None:
            return None
        img = self.read(name)
        if img is None:
            self.shapes[name] = None
            return None
        small = resize_for_extraction(img, self.options.resize_max)[0]
        self.shapes[name] = small.shape[:2]
        self.small[name] = small
        if len(self.small) > IMAGE_CACHE:
            self.small.popitem(last=False)
        return small

    def item(self, name: str, k: int) -> dict | None:
        if (name, k) in self.features:  # no need for the image (which may have left the cache)
            return self.features[(name, k)]
        img = self.image(name)
        if img is None:
            return None
        self.features[(name, k)] = self.features_of(turn_image(img, k))
        self.extractions += 1
        return self.features[(name, k)]

    def __call__(self, a: str, b: str, k: int) -> int:
        key = (a, b, k % 4)
        if key not in self.scores:
            fa, fb = self.item(a, 0), self.item(b, k % 4)
            if fa is None or fb is None or len(fa["keypoints"]) == 0 or len(fb["keypoints"]) == 0:
                self.scores[key] = 0
            else:
                pairs = self.match(fa, fb)
                self.matched += 1
                # 3 px at 512 px: scaled with the low-resolution image size
                max_error = 3.0 * max(self.shapes[a]) / 512.0
                self.scores[key] = verified_score(fa["keypoints"], fb["keypoints"], pairs, max_error,
                                                  self.options)
        return self.scores[key]


class _Groups:
    """Union-find over image names."""

    def __init__(self, names: Sequence[str]) -> None:
        self.parent = {n: n for n in names}

    def find(self, n: str) -> str:
        while self.parent[n] != n:
            self.parent[n] = self.parent[self.parent[n]]
            n = self.parent[n]
        return n

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)

    def members(self) -> list[list[str]]:
        out: dict[str, list[str]] = {}
        for n in self.parent:
            out.setdefault(self.find(n), []).append(n)
        return sorted(out.values(), key=lambda g: (-len(g), g[0]))


def best_turn(scores: Sequence[int], options: OrientationOptions) -> int | None:
    """The winning turn of four scores, or None when none wins clearly."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    best, second = scores[order[0]], scores[order[1]]
    if best >= options.min_inliers and best >= options.margin * second:
        return int(order[0])
    return None


def solve_turns(names: Sequence[str], pairs: Sequence[tuple[str, str]], score: Callable[[str, str, int], int],
                options: OrientationOptions) -> tuple[dict[str, int], list[str]]:
    """One turn per image over the pair graph (steps 1-3 of the module docstring); also returns
    the images that could not be attached to the anchor group."""
    if not names:  # no readable image: nothing to turn (the extraction reports the failures)
        return {}, []
    groups = _Groups(names)
    failures = dict.fromkeys(names, 0)
    for a, b in pairs:  # step 1: upright links, skipping pairs already joined
        if groups.find(a) == groups.find(b) or max(failures[a], failures[b]) >= options.max_upright_failures:
            continue
        s0 = score(a, b, 0)
        if s0 >= options.accept_inliers or (
                s0 >= options.min_inliers and best_turn([score(a, b, t) for t in range(4)], options) == 0):
            groups.union(a, b)
        else:
            failures[a] += 1
            failures[b] += 1
    members = groups.members()
    anchor = set(members[0])
    turns = dict.fromkeys(names, 0)
    pending = [set(g) for g in members[1:]]
    touching: dict[str, list[int]] = {}  # image -> indices of its candidate pairs (no scan of all pairs)
    for index, (a, b) in enumerate(pairs):
        touching.setdefault(a, []).append(index)
        touching.setdefault(b, []).append(index)
    progress = True
    while pending and progress:  # step 2: attach the other groups, each by one quarter-turn
        progress = False
        for group in list(pending):
            own = sorted({i for m in group for i in touching.get(m, ())})  # in candidate order
            links = [(a, b) if a in anchor else (b, a) for a, b in (pairs[i] for i in own)
                     if (a in anchor and b in group) or (b in anchor and a in group)]
            for a, b in links[: options.max_tries]:
                k = best_turn([score(a, b, t) for t in range(4)], options)
                if k is None:
                    continue
                for m in group:  # the group's images are upright relative to each other
                    turns[m] = (turns[a] + k) % 4
                anchor |= group
                pending.remove(group)
                progress = True
                break
    unattached = sorted(n for g in pending for n in g)
    # step 3: the global offset that leaves the most images as stored (most photos are upright)
    counts = [sum((t + o) % 4 == 0 for n, t in turns.items() if n in anchor) for o in range(4)]
    offset = int(np.argmax(counts))  # ties: the smallest offset, 0 first
    return {n: ((t + offset) % 4 if n in anchor else 0) for n, t in turns.items()}, unattached


def estimate_turns(names: Sequence[str], candidates: Callable[[list[str]], list[tuple[str, str]]],
                   read: ReadFn, features_of: FeaturesFn, match: MatchFn,
                   options: OrientationOptions) -> TurnEstimate:
    """The quarter-turn of every image of ``names`` (see the module docstring); ``candidates``
    gives the pairs that may be matched among the readable images."""
    start = time.perf_counter()
    scorer = TurnScorer(read, features_of, match, options)
    # each readable image's upright features, made while its decoded image is at hand
    readable = [n for n in names if scorer.item(n, 0) is not None]
    ordered = neighbours_first(readable, candidates(readable))
    turns, unattached = solve_turns(readable, ordered, scorer, options)
    est = TurnEstimate({**dict.fromkeys(names, 0), **turns}, time.perf_counter() - start,
                       scorer.extractions, scorer.matched, unattached)
    turned = {n: t for n, t in est.turns.items() if t}
    log.info("orientation pass: %d image(s) turned %s, %d extraction(s), %d match(es), %.1f s", len(turned),
             turned, est.extractions, est.matched_pairs, est.seconds)
    if unattached:
        log.warning("orientation pass: could not tell the turn of %d image(s), taken as stored: %s",
                    len(unattached), ", ".join(unattached[:10]))
    return est


def query_turn(scores: Sequence[int], options: OrientationOptions) -> int:
    """A query's turn from its four scores against the map (upright first); 0 when unclear."""
    k = best_turn(scores, options)
    return 0 if k is None else k


def read_or_none(image_dir: Path, draft_side: int | None = None) -> ReadFn:
    """A reader for :func:`estimate_turns`: unreadable images are left to the extraction to report.
    ``draft_side``: JPEGs are decoded at a reduced scale with sides at least this long (faster)."""
    from .images import ImageReadError, read_image

    def read(name: str) -> np.ndarray | None:
        try:
            return read_image(image_dir / name, draft_side)
        except ImageReadError:
            return None

    return read


# --------------------------------------------------------------------------------------------
# turned variants of ground-truth scenes (tests and pipelines/herzjesu_rotated.py)


def turn_camera(pose: CameraPose, turn: int) -> CameraPose:
    """The ground truth of an image's view turned ``turn`` quarter-turns counter-clockwise: same
    centre, camera rotated about its optical axis, K and size transformed like the pixels."""
    from .scenes import CameraPose

    R_turn = camera_turn_rotation(turn)
    K, size = (None, pose.size) if pose.K is None else turn_intrinsics(pose.K, pose.size, turn)
    return CameraPose(R=R_turn @ pose.R, t=R_turn @ pose.t, K=K, size=size)


def write_turned_scene(scene_dir: Path, out_dir: Path, turned_cw: Mapping[str, int],
                       long_side: int | None = None) -> Path:
    """A copy of a Strecha scene (``images/``, ``gt/``) whose images named in ``turned_cw`` are
    stored turned clockwise by that many degrees (90, 180, 270), their ``.camera`` transformed
    with them. ``long_side`` also downscales every image (and its K). Turned images are written
    as JPEG (quality 95) under the same name; the others are copied as they are."""
    import shutil

    from PIL import Image

    from .images import read_image
    from .scenes import read_strecha_dir, write_strecha_camera

    scene_dir, out_dir = Path(scene_dir), Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "gt").mkdir(parents=True, exist_ok=True)
    for name, pose in read_strecha_dir(scene_dir / "gt").items():
        degrees = int(turned_cw.get(name, 0))
        if degrees % 90:
            raise ValueError(f"{name}: turns are multiples of 90 degrees, got {degrees}")
        k = -(degrees // 90) % 4  # clockwise by 90 = one counter-clockwise quarter-turn back
        src = scene_dir / "images" / name
        if k == 0 and long_side is None:
            shutil.copyfile(src, out_dir / "images" / name)
        else:
            img = read_image(src)
            if long_side is not None:
                pose = _scaled_camera(pose, long_side / max(img.shape[:2]))
                from .images import resize_for_extraction

                img = resize_for_extraction(img, long_side)[0]
            Image.fromarray(turn_image(img, k)).save(out_dir / "images" / name, quality=95)
        write_strecha_camera(out_dir / "gt" / f"{name}.camera", turn_camera(pose, k))
    return out_dir


def _scaled_camera(pose: CameraPose, factor: float) -> CameraPose:
    from .scenes import CameraPose

    w, h = pose.size
    size = (round(w * factor), round(h * factor))
    K = None if pose.K is None else np.diag([size[0] / w, size[1] / h, 1.0]) @ pose.K
    return CameraPose(R=pose.R, t=pose.t, K=K, size=size)
