"""hloc interoperability, both directions, with files written the way hloc writes them.

The hloc side is written here from hloc's documented layout (not hloc's code): features.h5 with
one group per image name (nested by '/'), keypoints (N, 2), descriptors (D, N), scores,
image_size, often float16 and no configuration; matches.h5 with pair keys "name0/name1" after
'/' -> '-' in each name (old files: joined by '_'), matches0 int16 with -1 for no match,
matching_scores0 float16, pairs in either order; pairs files "name0 name1" a line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import small_preset
from test_sfm import synthetic_scene

from omniglue_sfm import cli, extract, localize, match, sfm
from omniglue_sfm.colmap.mapper import SfMOptions
from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.formats import h5io, hloc, matches_h5, sharded, textfiles
from omniglue_sfm.geometry import pnp

# names with '/', spaces, non-ASCII; "a-b.jpg" is what hloc's encoding makes of "a/b.jpg"
ODD_NAMES = ["sub dir/é 1.jpg", "a/b.jpg", "x y/z.PNG", "日本/写真.jpg", "plain.jpg"]


# --------------------------------------------------------------------------------------------
# hloc's side: a reader following hloc's lookup, and writers of hloc's layout


def hloc_key(name0: str, name1: str, separator: str = "/") -> str:
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def hloc_get_matches(path: Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """As hloc reads a pair: new key, reversed new key, then the old '_' forms."""
    with h5py.File(path, "r") as f:
        candidates = ((hloc_key(name0, name1), False), (hloc_key(name1, name0), True),
                      (hloc_key(name0, name1, "_"), False), (hloc_key(name1, name0, "_"), True))
        found = [(key, rev) for key, rev in candidates if key in f]
        if not found:
            raise ValueError(f"pair ({name0}, {name1}) not found")
        key, reverse = found[0]
        m0, s0 = f[key]["matches0"][()], f[key]["matching_scores0"][()]
    idx = np.where(m0 != -1)[0]
    matches = np.stack([idx, m0[idx]], -1)
    return (np.flip(matches, -1) if reverse else matches), s0[idx]


def hloc_feature_names(path: Path) -> list[str]:
    """hloc's listing: the parent group of every dataset."""
    names = set()
    with h5py.File(path, "r") as f:
        f.visititems(lambda _, obj: names.add(obj.parent.name.strip("/")) if isinstance(obj, h5py.Dataset)
                     else None)
    return sorted(names)


def write_hloc_features(path: Path, items: dict[str, dict[str, np.ndarray]], half: bool = True) -> None:
    with h5py.File(path, "w") as f:
        for name, item in items.items():
            group = f.create_group(name)
            for key, value in item.items():
                value = np.asarray(value)
                group.create_dataset(key, data=value.astype(np.float16) if half and value.dtype == np.float32
                                     else value)
            group["keypoints"].attrs["uncertainty"] = 1.0


def write_hloc_matches(path: Path, pairs: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
                       old: set[tuple[str, str]] = frozenset()) -> None:
    """``pairs``: (name0, name1) -> (matches0, scores0) in that order; ``old``: pairs under '_' keys."""
    with h5py.File(path, "w") as f:
        for (a, b), (m0, s0) in pairs.items():
            group = f.create_group(hloc_key(a, b, "_" if (a, b) in old else "/"))
            group.create_dataset("matches0", data=np.asarray(m0).astype(np.int16))
            group.create_dataset("matching_scores0", data=np.asarray(s0).astype(np.float16))


def matches0_of(matches: np.ndarray, n0: int) -> np.ndarray:
    m0 = np.full(n0, -1, np.int64)
    m0[matches[:, 0]] = matches[:, 1]
    return m0


def _item(n: int, seed: int, dim: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"keypoints": rng.uniform(0, 100, (n, 2)).astype(np.float32),
            "scores": rng.uniform(0, 1, n).astype(np.float32),
            "descriptors": rng.normal(size=(dim, n)).astype(np.float32),
            "image_size": np.array([100, 80])}


def _our_matches(path: Path, names: list[str], sizes: dict[str, int], seed: int = 0,
                 shards: int = 1) -> dict[tuple[str, str], np.ndarray]:
    """Random matches of every pair, written in our layout (``shards`` separate runs, then merged)."""
    rng = np.random.default_rng(seed)
    truth, parts = {}, []
    for i, (a, b) in enumerate((a, b) for a in names for b in names if a < b):
        k = min(sizes[a], sizes[b]) // 2
        m = np.stack([rng.choice(sizes[a], k, replace=False), rng.choice(sizes[b], k, replace=False)], 1)
        truth[(a, b)] = m
        part = path.with_name(f"part{i % shards}.h5") if shards > 1 else path
        with sharded.ShardedH5(part, "matches", {"m": 1}) as store:
            m0, s0, (c0, c1) = matches_h5.orient_matches(a, b, matches0_of(m, sizes[a]), np.ones(sizes[a]),
                                                         sizes[b])
            item, attrs = matches_h5.write_match_item(m0, s0, sizes[c1])
            store.add(matches_h5.pair_key(c0, c1), item, attrs)
        parts.append(part)
    if shards > 1:
        sharded.merge_h5(sorted(set(parts)), path, "matches")
    return truth


def _same_rows(a: np.ndarray, b: np.ndarray) -> bool:
    return sorted(map(tuple, a.tolist())) == sorted(map(tuple, b.tolist()))


# --------------------------------------------------------------------------------------------
# ours, read by hloc's lookup


@pytest.mark.parametrize("shards", [1, 3])
def test_hloc_lookup_finds_every_pair_and_image_in_our_files(tmp_path: Path, shards: int) -> None:
    sizes = {n: 6 + i for i, n in enumerate(ODD_NAMES)}
    with sharded.ShardedH5(tmp_path / "features.h5", "features", {"x": 1}) as store:
        for i, name in enumerate(ODD_NAMES):
            store.add(name, _item(sizes[name], i))
    truth = _our_matches(tmp_path / "matches.h5", ODD_NAMES, sizes, shards=shards)
    assert hloc_feature_names(tmp_path / "features.h5") == sorted(ODD_NAMES)
    with h5py.File(tmp_path / "features.h5", "r") as f:
        for i, name in enumerate(ODD_NAMES):
            np.testing.assert_array_equal(f[name]["keypoints"][()], _item(sizes[name], i)["keypoints"])
            assert f[name]["descriptors"].shape == (8, sizes[name])  # (D, N), as hloc stores them
    for (a, b), m in truth.items():
        for x, y, expected in ((a, b, m), (b, a, m[:, ::-1])):
            got, scores = hloc_get_matches(tmp_path / "matches.h5", x, y)
            assert _same_rows(got, expected), (x, y)
            assert len(scores) == len(m)
            assert _same_rows(matches_h5.read_matches(tmp_path / "matches.h5", x, y)[0], expected)
    with h5py.File(tmp_path / "matches.h5", "r") as f:
        assert json.loads(f.attrs[matches_h5.HLOC_UNREADABLE_ATTR]) == []
        assert f.attrs[matches_h5.HLOC_ALIASES_ATTR] > 0
    # the aliases are links, not items: nothing is listed or merged twice
    assert len(list(matches_h5.iter_match_keys(tmp_path / "matches.h5"))) == len(truth)


def test_names_hloc_cannot_tell_apart_are_reported(tmp_path: Path) -> None:
    names = ["a/b.jpg", "a-b.jpg", "c.jpg"]  # hloc encodes the first two alike
    sizes = dict.fromkeys(names, 8)
    truth = _our_matches(tmp_path / "matches.h5", names, sizes)
    with h5py.File(tmp_path / "matches.h5", "r") as f:
        unreadable = {tuple(p) for p in json.loads(f.attrs[matches_h5.HLOC_UNREADABLE_ATTR])}
    assert ("a/b.jpg", "c.jpg") in unreadable and ("a-b.jpg", "a/b.jpg") in unreadable
    for (a, b), m in truth.items():  # we read every pair right
        assert _same_rows(matches_h5.read_matches(tmp_path / "matches.h5", b, a)[0], m[:, ::-1])


def test_our_pairs_file_is_hloc_readable_and_theirs_is_ours(tmp_path: Path) -> None:
    pairs = [("a/b.jpg", "日本/写真.jpg"), ("plain.jpg", "a/b.jpg")]
    textfiles.write_pairs(tmp_path / "ours.txt", pairs)
    assert [tuple(line.split()) for line in (tmp_path / "ours.txt").read_text().splitlines()] == pairs
    odd = [("sub dir/é 1.jpg", "100%.jpg"), ("#1.jpg", "tab\there.jpg")]
    textfiles.write_pairs(tmp_path / "odd.txt", odd)
    assert textfiles.read_pairs(tmp_path / "odd.txt") == odd
    # hloc's pairs file: both orders, as pairs_from_retrieval writes them
    (tmp_path / "hloc.txt").write_text("db/1.jpg q/2.jpg\nq/2.jpg db/1.jpg\ndb/1.jpg db/3.jpg\n")
    assert matches_h5.unique_pairs(textfiles.read_pairs(tmp_path / "hloc.txt")) == [("db/1.jpg", "q/2.jpg"),
                                                                     ("db/1.jpg", "db/3.jpg")]


# --------------------------------------------------------------------------------------------
# hloc's files as our inputs


def _hloc_copy_of(features: Path, rename: dict[str, str], half: bool) -> dict[str, dict[str, np.ndarray]]:
    items = {}
    with h5io.read_h5(features) as f:
        for old, new in rename.items():
            items[new] = {k: f[old][k][()] for k in ("keypoints", "scores", "descriptors", "image_size")}
            if half:  # what the float16 file will hold
                items[new] = {k: v.astype(np.float16).astype(np.float32) if v.dtype == np.float32 else v
                              for k, v in items[new].items()}
    return items


def test_match_reads_hloc_features_and_records_their_hash(small_features: Path, tmp_path: Path) -> None:
    names = h5io.list_names(small_features)
    rename = dict(zip(names, ["cam 1/a.jpg", "cam-2/b c.jpg", "日本/写真.jpg"], strict=True))
    items = _hloc_copy_of(small_features, rename, half=True)
    write_hloc_features(tmp_path / "hloc_features.h5", items, half=True)
    with sharded.ShardedH5(tmp_path / "ours.h5", "features", {"f": 1}) as store:  # the same values, ours
        for name, item in items.items():
            store.add(name, item)
    new = list(rename.values())
    # hloc's pairs file: '/' in names, one pair in both orders; no spaces (hloc cannot have them)
    textfiles.write_pairs(tmp_path / "pairs.txt", [(new[0], new[1]), (new[1], new[0]), (new[2], new[0]),
                                            (new[1], new[2])])
    preset = small_preset("mnn")
    match.main(tmp_path / "hloc_features.h5", tmp_path / "pairs.txt", tmp_path / "m_hloc.h5", preset,
               RunOptions(device="cpu"))
    match.main(tmp_path / "ours.h5", tmp_path / "pairs.txt", tmp_path / "m_ours.h5", preset,
               RunOptions(device="cpu"))
    config = h5io.read_config(tmp_path / "m_hloc.h5")["features"]["features"]
    assert config["name"] == hloc.EXTERNAL and config["descriptor_dim"] == 128
    assert config["sha256"] == hashlib.sha256((tmp_path / "hloc_features.h5").read_bytes()).hexdigest()
    for a, b in [(new[0], new[1]), (new[2], new[0]), (new[1], new[2])]:
        got = matches_h5.read_matches(tmp_path / "m_hloc.h5", a, b)[0]
        assert len(got) > 20 and _same_rows(got, matches_h5.read_matches(tmp_path / "m_ours.h5", a, b)[0])
    # sfm takes these matches with that features file, identified by its hash
    assert hloc.check_matches_fit(tmp_path / "hloc_features.h5", tmp_path / "m_hloc.h5")["features"] == config
    # the hloc file changes: the old matches are neither resumed into nor mapped with it
    with h5py.File(tmp_path / "hloc_features.h5", "a") as f:
        f[new[0]]["scores"][0] = 0.5
    with pytest.raises(h5io.ConfigMismatchError, match="other features"):
        hloc.check_matches_fit(tmp_path / "hloc_features.h5", tmp_path / "m_hloc.h5")
    with pytest.raises(h5io.ConfigMismatchError, match="another configuration"):
        match.main(tmp_path / "hloc_features.h5", tmp_path / "pairs.txt", tmp_path / "m_hloc.h5", preset,
                   RunOptions(device="cpu"))
    # and our extraction never writes into an hloc file
    with pytest.raises(h5io.ConfigMismatchError, match="not written by omniglue-sfm"):
        extract.main(extract.ImageSet(tmp_path, []), tmp_path / "hloc_features.h5", preset)


def test_hloc_features_of_the_wrong_size_or_layout_are_refused(tmp_path: Path, capsys) -> None:
    write_hloc_features(tmp_path / "f.h5", {"a.jpg": _item(5, 0, dim=16), "b.jpg": _item(6, 1, dim=16)})
    textfiles.write_pairs(tmp_path / "pairs.txt", [("a.jpg", "b.jpg")])
    code = cli.main(["match", str(tmp_path / "f.h5"), str(tmp_path / "pairs.txt"), str(tmp_path / "m.h5"),
                     "--preset", "aliked+lightglue"])
    assert code == 1 and "16-d descriptors; the matcher expects 128-d" in capsys.readouterr().err
    item = _item(5, 0)
    item["descriptors"] = item["descriptors"].T  # (N, D): not hloc's layout
    write_hloc_features(tmp_path / "t.h5", {"a.jpg": item})
    with pytest.raises(ValueError, match="transposed"):
        hloc.features_config(tmp_path / "t.h5")


@pytest.fixture(scope="module")
def hloc_scene(tmp_path_factory):
    """The synthetic scene of test_sfm, renamed ('/', spaces) and written as hloc writes it."""
    root = tmp_path_factory.mktemp("hloc_scene")
    gt, keypoints = synthetic_scene(root / "src")
    rename = {n: (f"cam {i % 2}/img {i}.jpg" if i % 3 else f"cam-{i}/x.jpg")
              for i, n in enumerate(sorted(gt))}
    for old, new in rename.items():
        (root / "images" / new).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "src" / "images" / old, root / "images" / new)
    items = _hloc_copy_of(root / "src" / "features.h5", rename, half=False)
    write_hloc_features(root / "features.h5", items, half=False)  # fp16 keypoints would cost ~0.1 px here
    pairs, old_form = {}, set()
    for i, (a, b) in enumerate(matches_h5.iter_match_keys(root / "src" / "matches.h5")):
        m, s = matches_h5.read_matches(root / "src" / "matches.h5", a, b)
        x, y = rename[a], rename[b]
        if i % 2:  # stored the other way round
            x, y, m = y, x, m[:, ::-1]
        pairs[(x, y)] = (matches0_of(m, len(items[x]["keypoints"])), np.ones(len(items[x]["keypoints"])))
        if i % 3 == 0:
            old_form.add((x, y))
    write_hloc_matches(root / "matches.h5", pairs, old_form)
    return root, pairs, old_form


def test_sfm_reads_hloc_features_and_matches(hloc_scene) -> None:
    root, pairs, old_form = hloc_scene
    assert old_form and len(pairs) == 15
    result = sfm.main(root / "images", root / "features.h5", root / "matches.h5", root / "out",
                      options=SfMOptions(progress=False))
    assert result.stats["registered"] == 6 and result.stats["mean_reprojection_error"] < 1.0
    assert result.stats["inputs"]["matches"] == "external (no configuration)"
    expected = hashlib.sha256((root / "features.h5").read_bytes()).hexdigest()
    assert result.stats["inputs"]["features"]["sha256"] == expected
    assert pycolmap_matched_pairs(root / "out" / "database.db") == 15  # every pair, whatever its key form
    # with hloc's pairs file (one pair in both orders) the same pairs are imported
    (root / "pairs.txt").write_text("".join(f"{a} {b}\n{b} {a}\n" for a, b in pairs if " " not in a + b))
    chosen = sfm.select_pairs(root / "matches.h5", h5io.list_names(root / "features.h5"), root / "pairs.txt")
    assert 0 < len(chosen) == sum(" " not in a + b for a, b in pairs)


def pycolmap_matched_pairs(db_path: Path) -> int:
    from omniglue_sfm.colmap.mapper import pair_statistics

    return pair_statistics(db_path)["matched_pairs"]


def test_hloc_matches_that_do_not_fit_the_features_are_refused(hloc_scene, tmp_path: Path, capsys) -> None:
    root, pairs, _ = hloc_scene
    (a, b), (m0, s0) = next(iter(pairs.items()))
    bad = m0.copy()
    bad[np.flatnonzero(bad >= 0)[0]] = 30000  # beyond b's keypoints
    write_hloc_matches(tmp_path / "m.h5", {(a, b): (bad, s0)})
    code = cli.main(["sfm", str(root / "images"), str(root / "features.h5"), str(tmp_path / "m.h5"),
                     str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "refers to keypoints" in err and "Traceback" not in err
    bad[np.flatnonzero(bad >= 0)[0]] = -7  # an int16 overflow, never "no match"
    write_hloc_matches(tmp_path / "m.h5", {(a, b): (bad, s0)})
    with pytest.raises(ValueError, match="int16 overflow"):
        matches_h5.read_matches(tmp_path / "m.h5", b, a)


def test_sfm_refuses_matches_made_from_other_features(tmp_path: Path) -> None:
    for tag in ("f1", "f2"):
        with sharded.ShardedH5(tmp_path / f"{tag}.h5", "features", {"features": {"name": tag}}) as store:
            store.add("a.jpg", _item(5, 0))
            store.add("b.jpg", _item(5, 1))
    config = {"matcher": {}, "features": {"features": {"name": "f1"}}}
    with sharded.ShardedH5(tmp_path / "m.h5", "matches", config) as s:
        s.add(matches_h5.pair_key("a.jpg", "b.jpg"), {"matches0": np.arange(5, dtype=np.int32)})
    assert hloc.check_matches_fit(tmp_path / "f1.h5", tmp_path / "m.h5")["matches"] == "omniglue-sfm"
    with pytest.raises(h5io.ConfigMismatchError, match="other features"):
        hloc.check_matches_fit(tmp_path / "f2.h5", tmp_path / "m.h5")


# --------------------------------------------------------------------------------------------
# localize: hloc's results format


def test_localize_writes_hloc_results_with_names_as_given(tmp_path: Path) -> None:
    import pycolmap

    pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.02, -0.03, 0.01, 1.0])),
                            np.array([0.3, 0.1, 0.4]))
    ok = localize.QueryResult("dir/q 1.jpg", localized=True)
    ok.qvec, ok.tvec = pnp.rigid_to_lists(pose)
    failed = localize.QueryResult("日本/q2.jpg", reason="too few PnP inliers (3 < 12)")
    report = localize.write_outputs(tmp_path, [ok, failed], {"model_dir": "m"})
    lines = (tmp_path / localize.HLOC_RESULTS).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    name, *values = lines[0].rsplit(maxsplit=7)
    assert name == "dir/q 1.jpg"  # as given, not escaped
    np.testing.assert_allclose([float(v) for v in values], [*ok.qvec, *ok.tvec], rtol=1e-12)
    saved = json.loads((tmp_path / "localize.json").read_text())
    assert saved["failed"] == {"日本/q2.jpg": "too few PnP inliers (3 < 12)"} == report["failed"]
    assert saved["hloc_results"] == localize.HLOC_RESULTS
    assert list(textfiles.read_poses(tmp_path / "poses.txt")) == ["dir/q 1.jpg"]


def test_a_file_without_links_gets_them_from_merge(tmp_path: Path) -> None:
    """A matches.h5 written before the links: `merge FILE FILE` adds them (as docs/design.md says)."""
    a, b = "sub dir/é 1.jpg", "x y/z.PNG"
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.attrs[h5io.CONFIG_ATTR] = h5io.config_to_json({"m": 1})
        group = f.create_group(matches_h5.pair_key(a, b))
        group["matches0"] = np.array([1, -1, 0], np.int32)
        group["matching_scores0"] = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="not found"):
        hloc_get_matches(path, a, b)
    assert cli.main(["merge", str(path), str(path)]) == 0
    assert _same_rows(hloc_get_matches(path, b, a)[0], np.array([[1, 0], [0, 2]]))
