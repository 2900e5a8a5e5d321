"""The HDF5 / pairs.txt contract: odd names, pair keys, both pair orders, configs, resume."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from omniglue_sfm.formats import h5io, matches_h5, sharded, textfiles

ODD_NAMES = ["sub dir/é 1.jpg", "a/b.jpg", "a-b.jpg", "x y/z.PNG", "日本/写真.jpg"]


def _feature_item(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "keypoints": rng.uniform(0, 100, (n, 2)).astype(np.float32),
        "scores": rng.uniform(0, 1, n).astype(np.float32),
        "descriptors": rng.normal(size=(8, n)).astype(np.float32),
        "image_size": np.array([100, 80]),
    }


def test_odd_names_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    with sharded.ShardedH5(path, "features", {"x": 1}) as store:
        for i, name in enumerate(ODD_NAMES):
            store.add(name, _feature_item(5 + i, i))
    assert h5io.list_names(path) == sorted(ODD_NAMES)
    for i, name in enumerate(ODD_NAMES):
        got = h5io.read_features(path, name)
        np.testing.assert_array_equal(got["keypoints"], _feature_item(5 + i, i)["keypoints"])
        assert got["keypoints"].dtype == np.float32


def test_pair_keys_do_not_collide() -> None:
    keys = {matches_h5.pair_key(a, b) for a in ODD_NAMES for b in ODD_NAMES if a < b}
    assert len(keys) == len(ODD_NAMES) * (len(ODD_NAMES) - 1) // 2
    assert matches_h5.pair_key("a/b.jpg", "c.jpg") != matches_h5.pair_key("a-b.jpg", "c.jpg")
    assert matches_h5.pair_key("a/b.jpg", "c.jpg") == matches_h5.pair_key("c.jpg", "a/b.jpg")
    assert matches_h5.split_pair_key(matches_h5.pair_key("sub dir/é 1.jpg", "a-b.jpg")) == ("a-b.jpg",
                                                                                            "sub dir/é 1.jpg")


def test_pairs_txt_round_trip(tmp_path: Path) -> None:
    pairs = [(ODD_NAMES[0], ODD_NAMES[1]), (ODD_NAMES[2], ODD_NAMES[3]), (ODD_NAMES[4], ODD_NAMES[0])]
    textfiles.write_pairs(tmp_path / "pairs.txt", pairs)
    assert textfiles.read_pairs(tmp_path / "pairs.txt") == pairs


@pytest.mark.parametrize("order", ["canonical", "flipped"])
def test_matches_found_in_both_orders(tmp_path: Path, order: str) -> None:
    a, b = "a/b.jpg", "sub dir/é 1.jpg"  # canonical order: a < b
    name0, name1 = (a, b) if order == "canonical" else (b, a)
    n0, n1 = 6, 4
    m0 = np.array([2, -1, 0, -1, 3, -1], dtype=np.int32)  # name0's keypoint -> name1's
    s0 = np.linspace(0.1, 0.6, n0).astype(np.float32)
    path = tmp_path / "matches.h5"
    with sharded.ShardedH5(path, "matches", {"m": 1}) as store:
        mc, sc, (c0, c1) = matches_h5.orient_matches(name0, name1, m0, s0, n1)
        item, attrs = matches_h5.write_match_item(mc, sc, n1 if (c0, c1) == (name0, name1) else n0)
        store.add(matches_h5.pair_key(c0, c1), item, attrs)
    fwd, fwd_scores = matches_h5.read_matches(path, name0, name1)
    order = np.argsort(fwd[:, 0])  # rows come in the stored (canonical) image's order
    expected = np.array([[0, 2], [2, 0], [4, 3]])
    np.testing.assert_array_equal(fwd[order], expected)
    np.testing.assert_allclose(fwd_scores[order], s0[[0, 2, 4]])
    back, back_scores = matches_h5.read_matches(path, name1, name0)
    np.testing.assert_array_equal(np.sort(back[:, ::-1], axis=0), np.sort(expected, axis=0))
    assert sorted(back_scores.tolist()) == sorted(fwd_scores.tolist())
    assert list(matches_h5.iter_match_keys(path)) == [(a, b)]


def test_config_mismatch_raises(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    with sharded.ShardedH5(path, "features", {"max_keypoints": 256}) as store:
        store.add("a.jpg", _feature_item(3, 0))
    with pytest.raises(h5io.ConfigMismatchError, match="another configuration"):
        sharded.ShardedH5(path, "features", {"max_keypoints": 512})
    sharded.ShardedH5(path, "features", {"max_keypoints": 512}, overwrite=True)  # explicit overwrite is fine
    assert not path.exists()


def test_sharded_resume_after_unfinalised_run(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    first = sharded.ShardedH5(path, "features", {"c": 1}, flush_every=2)
    for i in range(5):
        first.add(f"img{i}.jpg", _feature_item(3, i))
    # a "kill": the object is dropped without finalize(); the 5th item was still buffered
    del first
    assert not path.exists() and len(list((tmp_path / "features.h5.parts").glob("shard-*.h5"))) == 2
    second = sharded.ShardedH5(path, "features", {"c": 1}, flush_every=2)
    assert second.done == {f"img{i}.jpg" for i in range(4)}
    for i in range(4, 7):
        if f"img{i}.jpg" not in second:
            second.add(f"img{i}.jpg", _feature_item(3, i))
    second.finalize()
    assert not (tmp_path / "features.h5.parts").exists()
    assert h5io.list_names(path) == [f"img{i}.jpg" for i in range(7)]
    with h5py.File(path) as h5:
        np.testing.assert_array_equal(h5["img2.jpg/keypoints"][()], _feature_item(3, 2)["keypoints"])
