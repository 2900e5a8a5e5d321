"""match: batching equivalence, both orders, empty images, shards + merge, config checks."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import small_preset

from omniglue_sfm import match
from omniglue_sfm.cli import main as cli_main
from omniglue_sfm.config.options import RunOptions
from omniglue_sfm.formats import h5io, matches_h5, sharded, textfiles
from omniglue_sfm.matchers.base import collate_pairs, features_to_tensors
from omniglue_sfm.matchers.lightglue import LightGlueMatcher
from omniglue_sfm.matchers.mnn import MutualNearestNeighbour
from omniglue_sfm.runtime import weights


def _random_feats(n: int, seed: int, dim: int = 32) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return features_to_tensors({
        "keypoints": rng.uniform(0, 99, (n, 2)).astype(np.float32),
        "descriptors": rng.normal(size=(dim, n)).astype(np.float32),
        "scores": rng.uniform(size=n).astype(np.float32),
        "image_size": np.array([100, 100]),
    })


def _batch_vs_single(matcher, pairs: list) -> None:
    batched = matcher(collate_pairs(pairs, multiple=8))
    assert batched["matches0"].shape[1] % 8 == 0
    for k, (f0, f1) in enumerate(pairs):
        single = matcher(collate_pairs([(f0, f1)]))
        n0 = f0["keypoints"].shape[0]
        torch.testing.assert_close(batched["matches0"][k, :n0], single["matches0"][0, :n0])
        torch.testing.assert_close(batched["matching_scores0"][k, :n0], single["matching_scores0"][0, :n0])
        assert (batched["matches0"][k, n0:] == -1).all()
        assert batched["matches0"][k].max() < f1["keypoints"].shape[0]


@pytest.mark.parametrize("conf", [{}, {"min_similarity": 0.2}, {"ratio_threshold": 0.95}])
def test_mnn_batching_equivalence(conf: dict) -> None:
    # image 1 holds noisy copies of image 0's descriptors, so there are real matches
    pairs = []
    for k, (n0, n1) in enumerate([(30, 50), (45, 12), (7, 7), (60, 1)]):
        f0, f1 = _random_feats(n0, k), _random_feats(n1, 100 + k)
        m = min(n0, n1)
        f1["descriptors"][:m] = f0["descriptors"][:m] + 0.3 * torch.randn(m, 32)
        pairs.append((f0, f1))
    matcher = MutualNearestNeighbour({"name": "mnn", **conf})
    _batch_vs_single(matcher, pairs)
    out = matcher(collate_pairs(pairs[:1]))["matches0"][0]
    assert (out[:30] == torch.arange(30)).float().mean() > 0.8


def _real_feats(path: Path) -> list[dict[str, torch.Tensor]]:
    return [features_to_tensors(h5io.read_features(path, n)) for n in h5io.list_names(path)]


@pytest.mark.parametrize("adaptive", [True, False])
def test_lightglue_batching_equivalence(small_features: Path, adaptive: bool) -> None:
    f = _real_feats(small_features)
    cut = {k: v[:100] if k != "image_size" else v for k, v in f[2].items()}  # a smaller image: padding
    pairs = [(f[0], f[1]), (f[1], cut), (cut, f[0])]
    off = {} if adaptive else {"depth_confidence": -1, "width_confidence": -1}
    matcher = LightGlueMatcher({"name": "lightglue", "features": "aliked", **off})
    with torch.inference_mode():
        _batch_vs_single(matcher, pairs)
        if not adaptive:  # the unpadded fast path (one forward for the batch) gives the same too
            same = [(f[0], f[1]), (f[1], f[2])]
            if len({p["keypoints"].shape[0] for pair in same for p in pair}) == 1:
                _batch_vs_single(matcher, same)
        n = (matcher(collate_pairs(pairs[:1]))["matches0"] >= 0).sum()
    assert n > 30


def _pairs_file(tmp_path: Path, names: list[str]) -> Path:
    path = tmp_path / "pairs.txt"
    a, b, c = names[:3]
    textfiles.write_pairs(path, [(b, a), (a, c), (c, b), (a, b)])  # (a, b) repeats (b, a): 3 unique pairs
    return path


def test_match_main_mnn_and_lightglue(small_features: Path, tmp_path: Path) -> None:
    names = h5io.list_names(small_features)
    pairs_path = _pairs_file(tmp_path, names)
    for matcher in ("mnn", "lightglue"):
        out = tmp_path / f"{matcher}.h5"
        s = match.main(small_features, pairs_path, out, small_preset(matcher), RunOptions(device="cpu",
                                                                                          batch_size=2))
        assert s.num_pairs == 3 and s.num_skipped_existing == 0 and s.mean_matches > 20
        assert sorted(matches_h5.iter_match_keys(out)) == sorted(matches_h5.canonical_pair(a, b) for a, b in
                                                          matches_h5.unique_pairs(textfiles.read_pairs(pairs_path)))
        fwd, _ = matches_h5.read_matches(out, names[1], names[0])
        back, _ = matches_h5.read_matches(out, names[0], names[1])
        assert {tuple(r) for r in fwd} == {tuple(r[::-1]) for r in back}
        cfg = h5io.read_config(out)
        assert cfg["matcher"]["name"] == matcher and cfg["features"] == h5io.read_config(small_features)
        again = match.main(small_features, pairs_path, out, small_preset(matcher), RunOptions(device="cpu"))
        assert again.num_pairs == 0 and again.num_skipped_existing == 3
    with pytest.raises(h5io.ConfigMismatchError):
        match.main(small_features, pairs_path, tmp_path / "mnn.h5", small_preset("mnn", min_similarity=0.9))


def test_empty_image_needs_no_model(small_features: Path, tmp_path: Path, monkeypatch) -> None:
    feats = tmp_path / "f.h5"
    with sharded.ShardedH5(feats, "features", h5io.read_config(small_features)) as store:
        store.add("real.jpg", h5io.read_features(small_features, h5io.list_names(small_features)[0]))
        store.add("blank.jpg", {
            "keypoints": np.zeros((0, 2), np.float32), "scores": np.zeros(0, np.float32),
            "descriptors": np.zeros((128, 0), np.float32), "image_size": np.array([64, 64]),
        })
    textfiles.write_pairs(tmp_path / "p.txt", [("real.jpg", "blank.jpg")])
    # superpoint LightGlue weights are absent here: building the matcher would raise
    monkeypatch.setenv("OMNIGLUE_SFM_OFFLINE", "1")
    monkeypatch.setenv("OMNIGLUE_SFM_CACHE", str(tmp_path / "cache"))
    preset = small_preset("lightglue", features="superpoint")
    s = match.main(feats, tmp_path / "p.txt", tmp_path / "m.h5", preset, RunOptions(device="cpu"))
    assert s.num_pairs == 1 and s.mean_matches == 0
    m, _ = matches_h5.read_matches(tmp_path / "m.h5", "blank.jpg", "real.jpg")
    assert m.shape == (0, 2)
    with pytest.raises(weights.WeightsNotFoundError, match="superpoint_lightglue.pth"):
        LightGlueMatcher({"features": "superpoint"})


def test_matcher_must_fit_features(small_features: Path, tmp_path: Path) -> None:
    pairs_path = _pairs_file(tmp_path, h5io.list_names(small_features))
    with pytest.raises(ValueError, match="disk"):
        match.main(small_features, pairs_path, tmp_path / "m.h5", small_preset("lightglue", features="disk"),
                   RunOptions(device="cpu"))
    textfiles.write_pairs(tmp_path / "bad.txt", [("nope.jpg", h5io.list_names(small_features)[0])])
    with pytest.raises(KeyError, match="nope.jpg"):
        match.main(small_features, tmp_path / "bad.txt", tmp_path / "m2.h5", small_preset(),
                   RunOptions(device="cpu"))


def test_shards_merge_to_the_full_result(small_features: Path, tmp_path: Path) -> None:
    pairs_path = _pairs_file(tmp_path, h5io.list_names(small_features))
    full = tmp_path / "full.h5"
    match.main(small_features, pairs_path, full, small_preset(), RunOptions(device="cpu"))
    out = tmp_path / "m.h5"
    for i in range(2):
        assert cli_main(["match", str(small_features), str(pairs_path), str(out), "--preset", "aliked+mnn",
                         "--device", "cpu", "--shard", f"{i}/2"]) == 0
    shards = [match.shard_path(out, (i, 2)) for i in range(2)]
    assert all(p.exists() for p in shards)
    # the CLI preset (aliked+mnn, min_similarity 0.75) differs from the test preset: compare like with like
    full_cli = tmp_path / "full_cli.h5"
    match.main(small_features, pairs_path, full_cli, "aliked+mnn", RunOptions(device="cpu"))
    assert cli_main(["merge", str(out), *map(str, shards)]) == 0
    with h5py.File(out) as merged, h5py.File(full_cli) as ref:
        keys = h5io.list_names(out, "matches")
        assert keys == h5io.list_names(full_cli, "matches") and len(keys) == 3
        for key in keys:
            np.testing.assert_array_equal(merged[key]["matches0"][()], ref[key]["matches0"][()])
    with pytest.raises(h5io.ConfigMismatchError):
        sharded.merge_h5([full, full_cli], tmp_path / "mixed.h5", "matches")
    with pytest.raises(ValueError, match="0 <= i < n"):
        match.parse_shard("2/2")
    with pytest.raises(ValueError, match="i/n"):
        match.parse_shard("first")


def test_new_checkpoint_under_the_same_name_is_not_resumed_into(small_features: Path, tmp_path: Path) -> None:
    """matches.h5 records the checkpoint's hash: retraining OmniGlue into the same file name must
    not silently reuse matches made by the old weights."""
    from omniglue_sfm.matchers.omniglue import OmniGlue
    from omniglue_sfm.matchers.omniglue_plugin import save_checkpoint

    pairs_path = _pairs_file(tmp_path, h5io.list_names(small_features))
    ckpt = tmp_path / "og.pt"
    torch.manual_seed(0)
    save_checkpoint(OmniGlue({"n_layers": 1}), ckpt, {"test": True})
    preset = small_preset("omniglue", guidance=True, weights=str(ckpt))
    out = tmp_path / "m.h5"
    match.main(small_features, pairs_path, out, preset, RunOptions(device="cpu"))
    assert h5io.read_config(out)["matcher_checkpoint_sha256"] == weights.fingerprint(preset["matcher"])
    match.main(small_features, pairs_path, out, preset, RunOptions(device="cpu"))  # same weights: resumes
    torch.manual_seed(1)
    save_checkpoint(OmniGlue({"n_layers": 1}), ckpt, {"test": True})
    with pytest.raises(h5io.ConfigMismatchError):
        match.main(small_features, pairs_path, out, preset, RunOptions(device="cpu"))
