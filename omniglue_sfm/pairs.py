"""Stage 2: which image pairs to match -> ``pairs.txt`` (``name0 name1`` a line).

Modes:

* ``exhaustive``: every pair, n (n - 1) / 2 of them; fine up to a few hundred images.
* ``sequential``: for videos and walk-arounds in file-name order; each image with the next
  ``window`` images. ``quadratic`` also pairs image i with i + 2^k for every 2^k beyond the window
  (COLMAP's quadratic overlap: cheap links across longer gaps). ``loop_closure`` also pairs each
  image with its ``num_matched`` most similar images by global descriptor among those outside the
  window, which closes loops when the camera comes back to a place (needs ``global.h5``).
* ``retrieval``: each image with its ``num_matched`` most similar images (cosine similarity of
  the global descriptors written by ``extract --global``).
* ``spatial``: by GPS (photos' EXIF, see :mod:`omniglue_sfm.formats.gps`): each image with its
  ``num_matched`` nearest images within ``radius`` metres (horizontal distance: GPS altitude is the
  noisiest coordinate), like COLMAP's spatial matcher; ``with_retrieval`` adds the retrieval pairs
  too. Images without a position get retrieval pairs (they would be left out otherwise).
* ``covisibility``: from an existing COLMAP model, each image with the ``num_matched`` images
  that share the most 3D points with it (e.g. to re-match a model with another matcher).

Every mode drops self-pairs and duplicates in either order.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import vlad
from .formats import h5io, matches_h5, textfiles
from .formats.images import list_images

log = logging.getLogger(__name__)

# the pair modes of every pipeline; IMAGE_MODES need only the images (and their descriptors),
# covisibility needs an existing model
IMAGE_MODES = ("exhaustive", "sequential", "retrieval", "spatial")
MODES = (*IMAGE_MODES, "covisibility")
DEFAULT_WINDOW = 10  # sequential: neighbours per image (COLMAP's sequential overlap)
DEFAULT_NUM_MATCHED = 20  # retrieval, covisibility, spatial and loop closure: pairs per image
DEFAULT_RADIUS_M = 100.0  # spatial: farthest neighbour, metres (COLMAP's spatial matcher default)
# what the pipelines retrieve with: VLAD of the scene's own local descriptors, or the extractor's
# dense-map mean (global.h5). VLAD finds more of the overlapping pairs at the same k, and the gap
# widens with the image count (docs/growth.md, "Retrieval")
RETRIEVAL_DESCRIPTORS = ("vlad", "global")


@dataclass(frozen=True)
class PairsOptions:
    """Which pairs to match (see the module docstring for the modes)."""

    mode: str | None = None  # one of MODES; None: exhaustive (``reconstruct``: chosen by image count)
    window: int = DEFAULT_WINDOW
    loop_closure: bool = False
    quadratic: bool = False
    num_matched: int = DEFAULT_NUM_MATCHED
    radius: float = DEFAULT_RADIUS_M  # spatial
    with_retrieval: bool = False  # spatial: also the retrieval pairs
    retrieval: str = "vlad"  # the pipelines' retrieval descriptor (RETRIEVAL_DESCRIPTORS)

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"unknown pairs mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.retrieval not in RETRIEVAL_DESCRIPTORS:
            raise ValueError(f"unknown retrieval descriptor {self.retrieval!r}; choose one of "
                             f"{', '.join(RETRIEVAL_DESCRIPTORS)}")
        if not self.radius > 0:
            raise ValueError(f"--radius must be positive (metres), got {self.radius}")
        # checked here, before any work (the pair stage runs after extraction)
        if self.window < 1:
            raise ValueError(f"--window must be at least 1, got {self.window}")
        if self.num_matched < 1:
            raise ValueError(f"--num-matched must be at least 1, got {self.num_matched}")


def exhaustive(names: list[str]) -> list[tuple[str, str]]:
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]


def sequential(
    names: list[str],
    window: int = DEFAULT_WINDOW,
    loop_closure: bool = False,
    quadratic: bool = False,
    global_path: Path | None = None,
    num_matched: int = 5,
) -> list[tuple[str, str]]:
    """Neighbours in ``names`` order (see the module docstring for the options)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = len(names)
    offsets = set(range(1, window + 1))
    if quadratic:
        k = 1
        while k < n:
            if k > window:
                offsets.add(k)
            k *= 2
    pairs = [(names[i], names[i + o]) for i in range(n) for o in sorted(offsets) if i + o < n]
    if loop_closure:
        if global_path is None:
            raise ValueError("sequential pairs with loop closure need global descriptors "
                             "(--global GLOBAL_H5)")
        desc = load_global(global_path, names)

        def score(rows: slice) -> np.ndarray:  # the window already has the pairs near the diagonal
            sim = desc[rows] @ desc.T
            sim[np.abs(np.arange(rows.start, rows.stop)[:, None] - np.arange(n)[None, :]) <= window] = -np.inf
            return sim

        pairs += top_k_pairs(score, names, names, num_matched)
    return matches_h5.unique_pairs(pairs)


def spatial(
    names: Sequence[str], positions: Mapping[str, np.ndarray], num_matched: int,
    radius: float = DEFAULT_RADIUS_M,
) -> list[tuple[str, str]]:
    """Each image of ``names`` that has a position (ENU metres) with its ``num_matched`` nearest
    others within ``radius`` (horizontal distance); images without a position get none here."""
    if num_matched < 1:
        raise ValueError(f"num_matched must be >= 1, got {num_matched}")
    located = [n for n in names if n in positions]
    if len(located) < 2:
        return []
    xy = np.array([np.asarray(positions[n], dtype=np.float64)[:2] for n in located])

    def score(rows: slice) -> np.ndarray:  # nearer is better; beyond the radius, or itself: never
        dist = np.linalg.norm(xy[rows, None] - xy[None], axis=-1)
        dist[dist > radius] = np.inf
        dist[np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop)] = np.inf
        return -dist

    return matches_h5.unique_pairs(top_k_pairs(score, located, located, num_matched))


def load_global(global_path: Path, names: Sequence[str]) -> np.ndarray:
    """(len(names), D) L2-normalised global descriptors."""
    with h5io.read_h5(global_path) as h5:
        missing = [n for n in names if n not in h5 or "global_descriptor" not in h5[n]]
        if missing:
            raise KeyError(f"{len(missing)} image(s) have no global descriptor in {global_path}: "
                           + ", ".join(missing[:10]))
        desc = np.stack([h5[n]["global_descriptor"][()] for n in names]).astype(np.float32)
    return desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)


SIMILARITY_ROWS = 1024  # queries scored at once: memory O(rows x N), never the N x N matrix


def top_k_pairs(score: Callable[[slice], np.ndarray], query: Sequence[str], db: Sequence[str],
                k: int) -> list[tuple[str, str]]:
    """(query, database) pairs of the ``k`` best-scored database images, best first per query, ties
    to the lower index. ``score(rows)`` gives the (rows, database) scores of a block of queries,
    -inf where a pair must never be picked. Scored a block at a time with ``argpartition``: memory
    O(block x N), never the N x N matrix, and no full sort of any row."""
    pairs = []
    k = min(k, len(db))
    for start in range(0, len(query), SIMILARITY_ROWS):
        rows = slice(start, min(start + SIMILARITY_ROWS, len(query)))
        sim = score(rows)
        top = (np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1]
               else np.broadcast_to(np.arange(sim.shape[1]), sim.shape))
        values = np.take_along_axis(sim, top, axis=1)
        top = np.take_along_axis(top, np.lexsort((top, -values), axis=1), axis=1)  # best first
        for i, row in enumerate(top):
            pairs += [(query[start + i], db[j]) for j in row if np.isfinite(sim[i, j])]
    return pairs


def similarity(query_desc: np.ndarray, db_desc: np.ndarray) -> np.ndarray:
    """Cosine similarity of descriptors centred on the mean of the database first: the mean is what
    every photo shares (sky, colours, the network's bias) and would otherwise dominate the cosine."""
    mean = db_desc.mean(axis=0, keepdims=True) if len(db_desc) > 1 else 0.0
    return _unit(query_desc - mean) @ _unit(db_desc - mean).T


def retrieve(
    query_global: Path, db_global: Path, query_names: Sequence[str], db_names: Sequence[str], k: int
) -> list[list[str]]:
    """For every query (descriptors in ``query_global``), the ``k`` most similar database images
    (descriptors in ``db_global``), best first; a query may share a name with a database image."""
    sim = similarity(load_global(query_global, query_names), load_global(db_global, db_names))
    order = np.argsort(-sim, axis=1, kind="stable")[:, : min(k, len(db_names))]
    return [[db_names[j] for j in row] for row in order]


def retrieval(
    global_path: Path,
    names: list[str] | None,
    num_matched: int,
    query_names: list[str] | None = None,
    db_names: list[str] | None = None,
) -> list[tuple[str, str]]:
    """Top-``num_matched`` database images of each query by cosine similarity, self excluded.

    ``names`` defaults to every image in ``global_path``; queries and database default to
    ``names``. Descriptors are centred on the mean of the database first: the mean is what every
    photo shares (sky, colours, the network's bias) and would otherwise dominate the cosine.
    """
    if names is None:
        names = h5io.list_names(global_path, "global")
    query = list(query_names) if query_names is not None else list(names)
    db = list(db_names) if db_names is not None else list(names)
    if num_matched < 1:
        raise ValueError(f"num_matched must be >= 1, got {num_matched}")
    query_desc, db_desc = load_global(global_path, query), load_global(global_path, db)
    # the cosine similarity of :func:`similarity`, as unit vectors centred on the database's mean
    mean = db_desc.mean(axis=0, keepdims=True) if len(db_desc) > 1 else 0.0
    db_index = {name: j for j, name in enumerate(db)}
    self_index = np.array([db_index.get(q, -1) for q in query])

    query_desc, db_desc = _unit(query_desc - mean), _unit(db_desc - mean)

    def score(rows: slice) -> np.ndarray:
        sim = query_desc[rows] @ db_desc.T
        sim[self_index[rows, None] == np.arange(len(db))[None, :]] = -np.inf  # never an image with itself
        return sim

    return matches_h5.unique_pairs(top_k_pairs(score, query, db, num_matched))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def covisibility(model_dir: Path, num_matched: int) -> list[tuple[str, str]]:
    """Each registered image with the ``num_matched`` images sharing the most 3D points with it."""
    import pycolmap

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"COLMAP model folder does not exist: {model_dir}")
    rec = pycolmap.Reconstruction(str(model_dir))
    shared: dict[int, Counter] = {}
    for point in rec.points3D.values():
        ids = sorted({el.image_id for el in point.track.elements})
        for a in ids:
            counter = shared.setdefault(a, Counter())
            counter.update(b for b in ids if b != a)
    pairs = []
    for image_id in sorted(shared, key=lambda i: rec.images[i].name):
        name = rec.images[image_id].name
        best = sorted(shared[image_id].items(), key=lambda kv: (-kv[1], rec.images[kv[0]].name))
        pairs += [(name, rec.images[other].name) for other, _ in best[:num_matched]]
    return matches_h5.unique_pairs(pairs)


def needs_retrieval(options: PairsOptions, names: Sequence[str],
                    positions: Mapping[str, np.ndarray] | None = None) -> bool:
    """Whether ``options`` pair any of ``names`` by global descriptor (``positions``: spatial's)."""
    if options.mode == "retrieval" or (options.mode == "sequential" and options.loop_closure):
        return True
    if options.mode == "spatial":
        return options.with_retrieval or positions is None or any(n not in positions for n in names)
    return False


def retrieval_descriptors(options: PairsOptions, features_path: Path, global_path: Path,
                          names: Sequence[str], positions: Mapping[str, np.ndarray] | None = None) -> Path:
    """The global descriptors a pipeline's pairs retrieve with: ``global_path`` (the extractor's,
    ``extract --global``) or, for ``options.retrieval == "vlad"``, VLAD of ``names``' local
    descriptors in ``features_path``, written beside it as ``vlad.h5``. That file is rebuilt each
    time (seconds): its vocabulary depends on every image, so it is never stale."""
    if options.retrieval == "global" or not needs_retrieval(options, names, positions):
        return global_path
    out = Path(features_path).with_name("vlad.h5")
    vlad.main(features_path, out, names=list(names))
    return out


def main(
    image_dir: Path | None,
    pairs_path: Path,
    options: PairsOptions | None = None,
    global_path: Path | None = None,
    model_dir: Path | None = None,
    names: list[str] | None = None,
    positions: Mapping[str, np.ndarray] | None = None,
) -> list[tuple[str, str]]:
    """Make pairs for ``names`` (default: every image in ``image_dir``) and write ``pairs_path``.
    ``positions``: spatial mode's ENU positions (default: read from the images' EXIF GPS)."""
    options = options or PairsOptions()
    mode, num_matched = options.mode or "exhaustive", options.num_matched
    if names is None and image_dir is not None and mode != "covisibility":
        names = list_images(image_dir)
    if mode == "exhaustive":
        pairs = exhaustive(_need(names))
    elif mode == "sequential":
        pairs = sequential(_need(names), options.window, options.loop_closure, options.quadratic,
                           global_path, num_matched)
    elif mode == "spatial":
        pairs = spatial_pairs(_need(names), image_dir, positions, options, global_path)
    elif mode == "retrieval":
        if global_path is None:
            raise ValueError("retrieval pairs need global descriptors: run `extract --global GLOBAL_H5` "
                             "and pass --global GLOBAL_H5")
        if names is not None:
            have = set(h5io.list_names(global_path, "global"))
            dropped = [n for n in names if n not in have]
            if dropped:  # e.g. unreadable images that extract skipped
                log.warning("%d image(s) have no global descriptor and get no pairs: %s",
                            len(dropped), ", ".join(dropped[:10]))
            names = [n for n in names if n in have]
        pairs = retrieval(global_path, names, num_matched)
    else:
        if model_dir is None:
            raise ValueError("covisibility pairs need a COLMAP model: pass --model MODEL_DIR")
        pairs = covisibility(model_dir, num_matched)
    textfiles.write_pairs(pairs_path, pairs)
    log.info("%d pairs (%s) -> %s", len(pairs), mode, pairs_path)
    return pairs


def spatial_pairs(
    names: list[str], image_dir: Path | None, positions: Mapping[str, np.ndarray] | None,
    options: PairsOptions, global_path: Path | None,
) -> list[tuple[str, str]]:
    """Spatial mode: GPS neighbours, retrieval pairs for the images without GPS (and for all with
    ``with_retrieval``)."""
    if positions is None:
        from .formats import gps
        from .geometry.geo import LocalFrame

        if image_dir is None:
            raise ValueError("spatial pairs need the images (their EXIF GPS) or positions")
        scan = gps.scan(image_dir, names)
        if scan.bad:
            raise ValueError(scan.bad_message())
        if len(scan.fixes) < 2:
            raise ValueError(f"spatial pairs need GPS in the photos' EXIF; {len(scan.fixes)} of "
                             f"{len(names)} have it: choose another --mode")
        frame = LocalFrame.around(np.array([f.lla() for f in scan.fixes.values()]))
        positions = {n: frame.to_enu(f.lla())[0] for n, f in scan.fixes.items()}
    pairs = spatial(names, positions, options.num_matched, options.radius)
    without = [n for n in names if n not in positions]
    if without or options.with_retrieval:
        if global_path is None:
            why = (f"{len(without)} image(s) have no GPS position: spatial pairs pair them by retrieval"
                   if without else "--with-retrieval")
            raise ValueError(f"{why}, which needs global descriptors (--global GLOBAL_H5)")
        queries = names if options.with_retrieval else without
        pairs += retrieval(global_path, names, options.num_matched, query_names=queries)
        if without:
            log.info("spatial pairs: %d image(s) without GPS paired by retrieval", len(without))
    return matches_h5.unique_pairs(pairs)


def _need(names: list[str] | None) -> list[str]:
    if names is None:
        raise ValueError("no image names: give an image folder")
    return names
