"""``vlad``: ``features.h5`` -> VLAD global descriptors for retrieval pairs, with no extra weights.

VLAD (vector of locally aggregated descriptors) sums, per visual word, the residuals of an
image's local descriptors to that word's centre; the vocabulary is learned on the scene itself
(spherical k-means on a seeded sample of its descriptors), so nothing is downloaded and the words
fit the scene. Each word's sum is power-normalised (signed square root) and L2-normalised, then the
whole vector. The output has the layout of ``global.h5`` (``global_descriptor`` per image), so
``pairs --mode retrieval --global vlad.h5`` uses it as is. On lund it finds more of the verified
pairs than the dense-map descriptor at the same k (README, "Pair selection at scale").

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
         seed: int = 0) -> int:
    """Write ``out_path`` (global.h5 layout) for every image of ``features_path``; returns the count."""
    features_path, out_path = Path(features_path), Path(out_path)
    if num_words < 1:
        raise ValueError(f"--words must be at least 1, got {num_words}")
    names = h5io.list_names(features_path)
    if not names:
        raise ValueError(f"{features_path} holds no images")
    descriptors = read_descriptors(features_path, names)
    centres = vocabulary(list(descriptors.values()), num_words, seed)
    config = {"features": h5io.read_config(features_path), "global": "vlad", "words": num_words, "seed": seed}
    with locks.output_lock(out_path):
        store = sharded.ShardedH5(out_path, "global", config, overwrite=True)
        with store:
            for name in names:
                store.add(name, {"global_descriptor": vlad(descriptors[name], centres).astype(np.float32)})
    log.info("VLAD (%d words) of %d images -> %s", num_words, len(names), out_path)
    return len(names)
