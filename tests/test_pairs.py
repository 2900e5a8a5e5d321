"""pairs: exhaustive, sequential (+quadratic, loop closure), retrieval, covisibility, CLI."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SHARED_SCENES, need_shared_scenes, save_resized, small_preset

from omniglue_sfm import extract, pairs
from omniglue_sfm.cli import main as cli_main
from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.formats import matches_h5, textfiles

NAMES = [f"{i:03d}.jpg" for i in range(12)]


def test_exhaustive() -> None:
    got = pairs.exhaustive(NAMES)
    assert len(got) == 66 and len(matches_h5.unique_pairs(got)) == 66


def test_sequential_window_and_quadratic() -> None:
    plain = pairs.sequential(NAMES, window=2)
    assert len(plain) == 11 + 10 and ("000.jpg", "002.jpg") in plain and ("000.jpg", "003.jpg") not in plain
    quad = pairs.sequential(NAMES, window=2, quadratic=True)
    assert ("000.jpg", "004.jpg") in quad and ("000.jpg", "008.jpg") in quad
    assert ("000.jpg", "005.jpg") not in quad and set(plain) < set(quad)
    with pytest.raises(ValueError, match="global"):
        pairs.sequential(NAMES, loop_closure=True)


def _write_global(path: Path, names: list[str], vectors: np.ndarray) -> None:
    with h5py.File(path, "w") as h5:
        for name, vec in zip(names, vectors, strict=True):
            h5.create_group(name).create_dataset("global_descriptor", data=vec.astype(np.float32))


def test_retrieval_and_loop_closure(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 16))
    labels = np.array([i % 2 for i in range(len(NAMES))])  # two interleaved "places"
    vecs = centres[labels] + 0.1 * rng.normal(size=(len(NAMES), 16))
    _write_global(tmp_path / "g.h5", NAMES, vecs)
    got = pairs.retrieval(tmp_path / "g.h5", NAMES, num_matched=3)
    assert all(a != b for a, b in got) and len(got) == len(matches_h5.unique_pairs(got))
    assert all(labels[NAMES.index(a)] == labels[NAMES.index(b)] for a, b in got)
    # every image has its 3 neighbours (some pairs are shared, hence <= 36)
    assert 18 <= len(got) <= 36
    loop = pairs.sequential(NAMES, window=1, loop_closure=True, global_path=tmp_path / "g.h5", num_matched=2)
    far = [(a, b) for a, b in loop if abs(NAMES.index(a) - NAMES.index(b)) > 1]
    assert far and all(labels[NAMES.index(a)] == labels[NAMES.index(b)] for a, b in far)


def test_covisibility(tmp_path: Path) -> None:
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 100 100 50 50 50 50\n")
    (tmp_path / "images.txt").write_text(
        "1 1 0 0 0 0 0 0 1 a.jpg\n10 10 1 11 11 2 12 12 3\n"
        "2 1 0 0 0 0 0 0 1 b.jpg\n10 10 1 11 11 2 12 12 3\n"
        "3 1 0 0 0 0 0 0 1 c.jpg\n10 10 3\n"
    )
    (tmp_path / "points3D.txt").write_text(
        "1 0 0 1 0 0 0 0.1 1 0 2 0\n2 0 0 2 0 0 0 0.1 1 1 2 1\n3 0 0 3 0 0 0 0.1 1 2 2 2 3 0\n"
    )
    assert pairs.covisibility(tmp_path, 1) == [("a.jpg", "b.jpg"), ("c.jpg", "a.jpg")]
    everything = {("a.jpg", "b.jpg"), ("a.jpg", "c.jpg"), ("b.jpg", "c.jpg")}
    assert set(pairs.covisibility(tmp_path, 2)) == everything


def test_cli_pairs(small_scene: Path, small_features: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.txt"
    assert cli_main(["pairs", str(small_scene), str(out), "--mode", "exhaustive"]) == 0
    assert len(textfiles.read_pairs(out)) == 3
    glob = small_features.with_name("global.h5")
    assert cli_main(["pairs", str(small_scene), str(out), "--mode", "retrieval", "--global", str(glob),
                     "--num-matched", "1"]) == 0
    assert 2 <= len(textfiles.read_pairs(out)) <= 3
    with pytest.raises(ValueError, match="--global"):
        pairs.main(small_scene, out, pairs.PairsOptions("retrieval"))


@pytest.mark.shared_data
@pytest.mark.slow
def test_retrieval_separates_two_scenes(tmp_path: Path) -> None:
    need_shared_scenes("herzjesu_p8", "lund")
    images = tmp_path / "images"
    for scene in ("herzjesu_p8", "lund"):
        (images / scene).mkdir(parents=True)
        for src in sorted((SHARED_SCENES / scene / "images").glob("*.jpg"))[:6]:
            save_resized(src, images / scene / src.name, 256)
    glob = tmp_path / "g.h5"
    extract.main(images, tmp_path / "f.h5", small_preset(max_keypoints=64), RunOptions(device="cpu"),
                 global_path=glob)
    got = pairs.retrieval(glob, None, num_matched=5)
    same = [a.split("/")[0] == b.split("/")[0] for a, b in got]
    assert np.mean(same) >= 0.9, f"{np.mean(same):.2f} of {len(got)} retrieval pairs within a scene"


def test_retrieve_ranks_map_images_for_queries_of_another_file(tmp_path: Path) -> None:
    """Localization's retrieval: queries and map in two files, names may repeat, mean-centred."""
    rng = np.random.default_rng(3)
    shared = rng.normal(size=16) * 10  # what every photo has in common
    db = shared + rng.normal(size=(4, 16))
    _write_global(tmp_path / "map.h5", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], db)
    queries = np.stack([db[2] + 0.01 * rng.normal(size=16), db[0] + 0.01 * rng.normal(size=16)])
    _write_global(tmp_path / "q.h5", ["c.jpg", "x.jpg"], queries)
    ranked = pairs.retrieve(tmp_path / "q.h5", tmp_path / "map.h5", ["c.jpg", "x.jpg"],
                            ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], 2)
    assert [r[0] for r in ranked] == ["c.jpg", "a.jpg"]  # a query may match its namesake in the map
    assert all(len(r) == 2 for r in ranked)
