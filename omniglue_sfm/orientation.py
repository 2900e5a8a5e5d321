"""Turned photos: which quarter-turn makes each image upright, and the keypoint mapping.

Learned features and matchers are trained on upright images; a photo stored turned by 90, 180
or 270 degrees (a scan, an export that lost its EXIF orientation, a drone or turntable capture)
matches badly. This module finds each image's **turn** ``k`` in {0, 1, 2, 3}: its upright view is
``np.rot90(image, k)`` (the photo turned ``k`` x 90 degrees counter-clockwise; a photo stored turned
90 degrees clockwise has ``k = 1``). The turn is on top of the EXIF orientation, which
:func:`omniglue_sfm.formats.images.read_image` has already applied.

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

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import pairs
from .config import registry
from .config.rotation import OrientationOptions
from .features.image import extract_image
from .formats.images import ImageReadError, read_image, resize_for_extraction
from .geometry.turns import turn_image
from .match import FeatureCache, PairMatcher
from .matchers.base import features_to_tensors
from .runtime.devices import default_device

log = logging.getLogger(__name__)


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
    def read(name: str) -> np.ndarray | None:
        try:
            return read_image(image_dir / name, draft_side)
        except ImageReadError:
            return None

    return read


# --------------------------------------------------------------------------------------------
# the two callers: a folder's orientation pass (extract) and localization queries (localize)


ORIENTATION_EXHAUSTIVE_MAX = 40  # orientation pass: exhaustive pairs up to this many images
ORIENTATION_WINDOW = 5  # above: a sequential window (plus quadratic links) in name order


def orientation_candidates(names: list[str]) -> list[tuple[str, str]]:
    """The pairs the orientation pass may match (it stops early; see :func:`solve_turns`)."""
    if len(names) <= ORIENTATION_EXHAUSTIVE_MAX:
        return pairs.exhaustive(names)
    return pairs.sequential(names, window=ORIENTATION_WINDOW, quadratic=True)


def orientation_pass(image_dir: Path, names: list[str], preset: dict, features_config: dict,
                     features_path: Path, rotation: OrientationOptions,
                     device: str | None) -> TurnEstimate:
    """Every image's turn, with low-resolution features of the preset's own extractor matched by
    the preset's own matcher (steps 1-3 of the module docstring)."""
    dev = default_device(device)
    low_conf = {**features_config["features"], "max_keypoints": rotation.max_keypoints}
    low = registry.extractor(low_conf).to(dev).eval()
    matcher_conf = preset.get("matcher") or {"name": "mnn"}
    matcher = PairMatcher(matcher_conf, features_config, features_path, dev)

    def features_of(img: np.ndarray) -> dict:
        return extract_image(img, low, None, None, dev)[0]

    def match_fn(fa: dict, fb: dict) -> np.ndarray:
        return matcher.match_to_references(features_to_tensors(fa), [features_to_tensors(fb)])[0]

    read = read_or_none(image_dir, draft_side=rotation.resize_max)
    return estimate_turns(names, orientation_candidates, read, features_of, match_fn, rotation)


QUERY_TURN_REFERENCES = 2  # map images a query is matched against to tell its turn


@dataclass(frozen=True)
class TurnReference:
    """The map queries are turned against: its preset, ``features.h5``, ``global.h5`` (None: a few
    map images spread over the list instead of the most similar ones) and registered image names."""

    preset: dict
    features_path: Path
    global_path: Path | None
    names: list[str]


class _QueryProbe:
    """The map's extractor and matcher, its features and global descriptors, loaded once."""

    def __init__(self, ref: TurnReference, device: str | None) -> None:
        self.device = default_device(device)
        conf = ref.preset
        self.extractor = registry.extractor(conf["features"]).to(self.device).eval()
        self.guidance = registry.guidance(conf["guidance"]).to(self.device).eval() if conf.get("guidance") \
            else None
        self.resize_max = conf["features"].get("resize_max")
        self.matcher = PairMatcher(conf["matcher"], conf, ref.features_path, self.device)
        self.map_features = FeatureCache(ref.features_path)
        self.db_names = list(ref.names)
        self.db_global = pairs.load_global(ref.global_path, self.db_names) if ref.global_path else None

    def references(self, gvec: np.ndarray | None) -> list[str]:
        if self.db_global is None or gvec is None:
            step = max(1, len(self.db_names) // QUERY_TURN_REFERENCES)
            return self.db_names[::step][:QUERY_TURN_REFERENCES]
        sim = pairs.similarity(gvec[None] / max(float(np.linalg.norm(gvec)), 1e-12), self.db_global)[0]
        return [self.db_names[j] for j in np.argsort(-sim, kind="stable")[:QUERY_TURN_REFERENCES]]

    def score(self, img: np.ndarray, k: int, rotation: OrientationOptions) -> int:
        """Verified matches of the query turned ``k`` times against its most similar map images."""
        item, gvec = extract_image(img, self.extractor, self.guidance, self.resize_max, self.device, turn=k)
        refs = self.references(gvec)
        found = self.matcher.match_to_references(features_to_tensors(item, k),
                                                 [self.map_features[r] for r in refs])
        max_error = 4.0 * max(1.0, max(img.shape[:2]) / 1600.0)
        return sum(verified_score(item["keypoints"], self.map_features[r]["keypoints"].numpy(), m, max_error,
                                  rotation) for r, m in zip(refs, found, strict=True))


def query_turns(image_dir: Path, names: Sequence[str], ref: TurnReference, rotation: OrientationOptions,
                device: str | None) -> dict[str, int]:
    """Each query's quarter-turn relative to the map: the query is extracted (with the map's
    configuration) at each turn, upright first; each view retrieves its most similar map images
    and is matched to them (map images upright, as the map matched them). The upright view is
    accepted at once with ``accept_inliers`` verified matches; else the clear winner, else 0."""
    probe = _QueryProbe(ref, device)
    read = read_or_none(image_dir)
    turns: dict[str, int] = {}
    try:
        for name in names:
            img = read(name)
            if img is None:
                turns[name] = 0  # the extraction reports it
                continue
            scores = [probe.score(img, 0, rotation)]
            if scores[0] < rotation.accept_inliers:  # not clearly upright, as most photos are
                scores += [probe.score(img, k, rotation) for k in (1, 2, 3)]
            turns[name] = 0 if len(scores) == 1 else query_turn(scores, rotation)
            log.info("%s: turn %d (verified matches per turn %s)", name, 90 * turns[name], scores)
    finally:
        probe.map_features.close()
    return turns
