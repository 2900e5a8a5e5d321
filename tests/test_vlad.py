"""``vlad``: VLAD global descriptors from the scene's own local descriptors (issue #13)."""

from __future__ import annotations

import shutil
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


def _copy_features(small_features: Path, tmp_path: Path) -> tuple[Path, Path]:
    features, global_path = tmp_path / "features.h5", tmp_path / "global.h5"
    shutil.copy(small_features, features)
    shutil.copy(small_features.with_name("global.h5"), global_path)
    return features, global_path


def test_pipelines_retrieve_with_vlad_by_default(small_features: Path, tmp_path: Path) -> None:
    """reconstruct / triangulate: retrieval pairs compare VLAD of the scene's own features,
    written beside features.h5 for exactly the images being paired."""
    features, global_path = _copy_features(small_features, tmp_path)
    names = h5io.list_names(features)
    options = pairs.PairsOptions("retrieval", num_matched=1)
    used = pairs.retrieval_descriptors(options, features, global_path, names[:2])
    assert used == tmp_path / "vlad.h5"
    assert h5io.list_names(used, "global") == sorted(names[:2])
    found = pairs.main(None, tmp_path / "pairs.txt", options, global_path=used, names=names[:2])
    assert found == [tuple(names[:2])]
    with pytest.raises(ValueError, match="no features for 1 image"):
        pairs.retrieval_descriptors(options, features, global_path, [*names, "missing.jpg"])


def test_the_extractor_descriptor_on_request_and_none_without_retrieval(small_features: Path,
                                                                         tmp_path: Path) -> None:
    features, global_path = _copy_features(small_features, tmp_path)
    names = h5io.list_names(features)
    chosen = pairs.PairsOptions("retrieval", retrieval="global")
    assert pairs.retrieval_descriptors(chosen, features, global_path, names) == global_path
    for mode in ("exhaustive", "sequential"):  # no retrieval: nothing to build
        plain = pairs.PairsOptions(mode)
        assert pairs.retrieval_descriptors(plain, features, global_path, names) == global_path
    assert not (tmp_path / "vlad.h5").exists()
    with pytest.raises(ValueError, match="retrieval descriptor"):
        pairs.PairsOptions("retrieval", retrieval="netvlad")


@pytest.mark.parametrize(("options", "positions", "expected"), [
    (pairs.PairsOptions("retrieval"), None, True),
    (pairs.PairsOptions("sequential"), None, False),
    (pairs.PairsOptions("sequential", loop_closure=True), None, True),
    (pairs.PairsOptions("exhaustive"), None, False),
    (pairs.PairsOptions("spatial"), {"a": np.zeros(3), "b": np.zeros(3)}, False),
    (pairs.PairsOptions("spatial"), {"a": np.zeros(3)}, True),  # b has no GPS: paired by retrieval
    (pairs.PairsOptions("spatial", with_retrieval=True), {"a": np.zeros(3), "b": np.zeros(3)}, True),
    (pairs.PairsOptions("spatial"), None, True),  # positions read later from EXIF: may lack some
])
def test_which_pair_modes_retrieve(options, positions, expected) -> None:
    assert pairs.needs_retrieval(options, ["a", "b"], positions) is expected
