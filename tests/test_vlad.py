"""``vlad``: VLAD global descriptors from the scene's own local descriptors (issue #13)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omniglue_sfm import pairs, vlad
from omniglue_sfm.formats import h5io


def test_vlad_file_serves_retrieval(small_features: Path, tmp_path: Path) -> None:
    out = tmp_path / "vlad.h5"
    assert vlad.main(small_features, out, num_words=8) == 3
    names = h5io.list_names(small_features)
    desc = pairs.load_global(out, names)
    assert desc.shape == (3, 8 * 128)
    with h5io.read_h5(out) as h5:
        raw = np.stack([h5[n]["global_descriptor"][()] for n in names])
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 1.0, rtol=1e-5)
    assert len(pairs.retrieval(out, None, 1)) >= 2
    again = tmp_path / "again.h5"
    vlad.main(small_features, again, num_words=8)  # a seeded vocabulary: the same vectors again
    np.testing.assert_array_equal(pairs.load_global(again, names), desc)


def test_vlad_of_the_same_descriptors_is_the_same_and_others_differ() -> None:
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(300, 16)).astype(np.float32) for _ in range(2))
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    centres = vlad.vocabulary([a, b], 4)
    va, va2, vb = vlad.vlad(a, centres), vlad.vlad(a[::-1].copy(), centres), vlad.vlad(b, centres)
    np.testing.assert_allclose(va, va2, atol=1e-6)  # order of keypoints does not matter
    assert float(va @ vb) < 0.99


def test_too_few_descriptors_for_the_words() -> None:
    with pytest.raises(ValueError, match="fewer words"):
        vlad.vocabulary([np.ones((3, 8), np.float32)], 16)
