"""``vlad``: ``features.h5`` -> VLAD global descriptors for retrieval pairs, with no extra weights.

VLAD (vector of locally aggregated descriptors) sums, per visual word, the residuals of an
image's local descriptors to that word's centre; the vocabulary is learned on the scene itself
(spherical k-means on a seeded sample of its descriptors), so nothing is downloaded and the words
fit the scene. Each word's sum is power-normalised (signed square root) and L2-normalised, then the
whole vector. The output has the layout of ``global.h5`` (``global_descriptor`` per image), so
``pairs --mode retrieval --global vlad.h5`` uses it as is. On lund it finds more of the verified
pairs than the dense-map descriptor at the same k (docs/scale.md, "Pair selection at scale").

The vocabulary depends on every image, so the file is rebuilt from scratch on each run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .formats import h5io, sharded
from .runtime import locks

log = logging.getLogger(__name__)

DEFAULT_WORDS = 64
SAMPLE = 50_000  # descriptors the vocabulary is learned on
ITERATIONS = 20


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def read_descriptors(features_path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """name -> (N, D) float32 unit local descriptors."""
    with h5io.read_h5(features_path) as h5:
        return {n: _unit(h5[n]["descriptors"][()].T.astype(np.float32)) for n in names}


def vocabulary(descriptors: list[np.ndarray], num_words: int, seed: int = 0) -> np.ndarray:
    """(num_words, D) unit centres: spherical k-means on a seeded sample of the descriptors."""
    pool = np.concatenate([d for d in descriptors if len(d)])
    if len(pool) < num_words:
        raise ValueError(f"only {len(pool)} local descriptors for {num_words} visual words; use fewer words")
    rng = np.random.default_rng(seed)
    sample = pool[rng.choice(len(pool), min(SAMPLE, len(pool)), replace=False)]
    return _kmeans(sample, num_words, rng)


def file_vocabulary(features_path: Path, names: list[str], num_words: int, seed: int = 0) -> np.ndarray:
    """:func:`vocabulary` of the images ``names`` of ``features_path`` (the same sample, the same
    centres), reading one image at a time: only the sample is ever in memory, never every descriptor."""
    with h5io.read_h5(features_path) as h5:
        counts = np.array([h5[n]["descriptors"].shape[1] for n in names], np.int64)
        total = int(counts.sum())
        if total < num_words:
            raise ValueError(f"only {total} local descriptors for {num_words} visual words; use fewer words")
        rng = np.random.default_rng(seed)
        picks = rng.choice(total, min(SAMPLE, total), replace=False)  # indices into the concatenation
        owner = np.searchsorted(np.cumsum(counts), picks, side="right")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sample = np.empty((len(picks), h5[names[int(owner[0])]]["descriptors"].shape[0]), np.float32)
        for i in np.unique(owner):
            rows = np.flatnonzero(owner == i)
            descriptors = _unit(h5[names[i]]["descriptors"][()].T.astype(np.float32))  # as read_descriptors
            sample[rows] = descriptors[picks[rows] - starts[i]]
    return _kmeans(sample, num_words, rng)


def _kmeans(sample: np.ndarray, num_words: int, rng: np.random.Generator) -> np.ndarray:
    centres = sample[rng.choice(len(sample), num_words, replace=False)].copy()
    for _ in range(ITERATIONS):
        assign = np.argmax(sample @ centres.T, axis=1)
        for j in range(num_words):
            members = sample[assign == j]
            if len(members):  # an empty word keeps its centre
                centres[j] = members.mean(axis=0)
        centres = _unit(centres)
    return centres


def vlad(descriptors: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(num_words * D,) unit VLAD vector of one image's (N, D) descriptors."""
    residuals = np.zeros_like(centres)
    if len(descriptors):
        assign = np.argmax(descriptors @ centres.T, axis=1)
        np.add.at(residuals, assign, descriptors - centres[assign])
    residuals = np.sign(residuals) * np.sqrt(np.abs(residuals))  # power law: tame bursty words
    return _unit(_unit(residuals).ravel())


def main(features_path: Path | str, out_path: Path | str, num_words: int = DEFAULT_WORDS,
         seed: int = 0, names: list[str] | None = None) -> int:
    """Write ``out_path`` (global.h5 layout) for ``names`` (default: every image of
    ``features_path``); returns the count."""
    features_path, out_path = Path(features_path), Path(out_path)
    if num_words < 1:
        raise ValueError(f"--words must be at least 1, got {num_words}")
    have = h5io.list_names(features_path)
    if names is not None:
        missing = sorted(set(names) - set(have))
        if missing:
            raise ValueError(f"{features_path} has no features for {len(missing)} image(s): "
                             f"{', '.join(missing[:5])}")
    names = have if names is None else list(names)
    if not names:
        raise ValueError(f"{features_path} holds no images")
    centres = file_vocabulary(features_path, names, num_words, seed)
    config = {"features": h5io.read_config(features_path), "global": "vlad", "words": num_words, "seed": seed}
    with locks.output_lock(out_path):
        store = sharded.ShardedH5(out_path, "global", config, overwrite=True)
        with store, h5io.read_h5(features_path) as h5:
            for name in names:  # one image's descriptors in memory at a time
                descriptors = _unit(h5[name]["descriptors"][()].T.astype(np.float32))
                store.add(name, {"global_descriptor": vlad(descriptors, centres).astype(np.float32)})
    log.info("VLAD (%d words) of %d images -> %s", num_words, len(names), out_path)
    return len(names)
