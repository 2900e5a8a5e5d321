"""Training: homography sampler, ground-truth labels, loss, resume, LightGlue warm start, finetune CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import omniglue_sfm
from omniglue_sfm.training import data as D
from omniglue_sfm.training import finetune as FT
from omniglue_sfm.training import homography as Hm
from omniglue_sfm.training import train as T
from omniglue_sfm.training.losses import nll_loss


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_MODEL = {"input_dim": 32, "descriptor_dim": 32, "n_layers": 2, "num_heads": 2, "filter_threshold": 0.05}


def _synthetic_records(n_pairs: int, n: int = 48, dim: int = 32, gdim: int = 16, seed: int = 0) -> list[dict]:
    """Pairs with known H: 2/3 of the keypoints of view 0 reappear in view 1 (noisy descriptors)."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    size = torch.tensor([128.0, 96.0])
    out = []
    for _ in range(n_pairs):
        h = Hm.sample_homography((128, 96), 20.0, rng)
        kp0 = torch.rand(n, 2, generator=gen) * (size - 1)
        kp1 = Hm.warp_points(h, kp0)
        k = 2 * n // 3
        kp1 = torch.cat([kp1[:k], torch.rand(n - k, 2, generator=gen) * (size - 1)])
        d0 = F.normalize(torch.randn(n, dim, generator=gen), dim=1)
        d1 = F.normalize(torch.cat([d0[:k] + 0.3 * torch.randn(k, dim, generator=gen),
                                    torch.randn(n - k, dim, generator=gen)]), dim=1)
        g0 = torch.randn(n, gdim, generator=gen)
        g1 = torch.cat([g0[:k], torch.randn(n - k, gdim, generator=gen)])
        perm = torch.randperm(n, generator=gen)
        view0 = {"keypoints": kp0, "descriptors": d0, "scores": torch.ones(n), "guidance": g0,
                 "image_size": size}
        view1 = {"keypoints": kp1[perm], "descriptors": d1[perm], "scores": torch.ones(n),
                 "guidance": g1[perm], "image_size": size}
        out.append({"view0": view0, "view1": view1, "H_0to1": torch.from_numpy(h), "photo": "x",
                    "shift": 20.0})
    return out


def _cfg(tmp_path, steps: int, **train) -> dict:
    return {"name": "t", "seed": 0, "out_dir": str(tmp_path / "run"), "features": {"name": "aliked"},
            "guidance": {"name": "aliked-grid"}, "data": {}, "model": dict(TINY_MODEL),
            "train": {**T.DEFAULT_TRAIN, "steps": steps, "batch_size": 2, "lr": 3e-3, "warmup_steps": 1,
                      "warm_start": "", "checkpoint_every": 1, "val_every": 10**6, **train}}


# --------------------------------------------------------------------------------------------
# homographies


@pytest.mark.parametrize("shift", [25.0, 50.0, 100.0])
def test_homography_corner_moves_are_bounded_and_convex(shift: float) -> None:
    rng = np.random.default_rng(0)
    size = (320, 240)
    corners = torch.from_numpy(Hm.patch_corners(size))
    for _ in range(50):
        h = Hm.sample_homography(size, shift, rng)
        quad = Hm.warp_points(np.linalg.inv(h), corners)  # view-1 corners in view-0 pixels
        moves = (quad - corners.float()).norm(dim=1)
        assert float(moves.max()) <= shift + 1e-3
        assert Hm.is_convex(quad.double().numpy())


def test_crop_keeps_margin_inside_the_photo() -> None:
    rng = np.random.default_rng(1)
    for photo in [(481, 321), (1024, 768), (300, 900)]:
        for _ in range(20):
            c = Hm.sample_crop(photo, (320, 240), 100.0, rng)
            x0, y0 = c.origin
            assert x0 >= 100 - 1e-6 and y0 >= 100 - 1e-6
            assert x0 + 320 + 100 <= photo[0] * c.scale + 1e-6
            assert y0 + 240 + 100 <= photo[1] * c.scale + 1e-6


def test_scaled_shift_is_relative_to_640() -> None:
    assert Hm.scaled_shift(200, (320, 240)) == pytest.approx(100)
    assert Hm.scaled_shift(100, (640, 480)) == pytest.approx(100)


def test_rendered_view1_matches_warped_view0() -> None:
    """A pixel of view 0 and its H-image in view 1 show the same photo content."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:200, 0:300]
    photo = torch.from_numpy(np.stack([np.sin(xx / 9.0), np.cos(yy / 7.0), np.sin((xx + yy) / 11.0)]) * 0.5
                             + 0.5).float()
    crop = Hm.sample_crop((300, 200), (96, 64), 16.0, rng)
    h = Hm.sample_homography((96, 64), 16.0, rng)
    v0, (v1,) = Hm.render_views(photo, crop, [h], (96, 64))
    pts = torch.tensor([[20.0, 20.0], [50.0, 30.0], [70.0, 45.0]])
    q = Hm.warp_points(h, pts).round().long()
    for p, qq in zip(pts.long(), q, strict=True):
        if 0 <= qq[0] < 96 and 0 <= qq[1] < 64:
            assert torch.allclose(v0[:, p[1], p[0]], v1[:, qq[1], qq[0]], atol=0.08)


def test_dlt_recovers_a_known_homography() -> None:
    h = np.array([[1.1, 0.05, 3.0], [-0.02, 0.95, -4.0], [1e-4, -2e-4, 1.0]])
    src = np.random.default_rng(0).uniform(0, 300, (10, 2))
    dst = Hm.warp_points(h, torch.from_numpy(src)).double().numpy()
    assert np.allclose(Hm.homography_from_points(src, dst), h, atol=1e-5)


def test_photometric_augment_stays_in_range_and_changes_image() -> None:
    img = torch.rand(3, 32, 40)
    rng = np.random.default_rng(0)
    outs = [Hm.photometric_augment(img, rng) for _ in range(10)]
    assert all(o.min() >= 0 and o.max() <= 1 and o.shape == img.shape for o in outs)
    assert any(not torch.equal(o, img) for o in outs)
    assert torch.equal(Hm.photometric_augment(img, rng, strength=0), img)


# --------------------------------------------------------------------------------------------
# labels, split, loss


def test_gt_labels_on_a_known_homography() -> None:
    h = np.array([[1.0, 0.0, 10.0], [0.0, 1.0, 5.0], [0.0, 0.0, 1.0]])  # a translation
    kp0 = torch.tensor([[0.0, 0.0], [50.0, 50.0], [100.0, 20.0], [200.0, 200.0]])
    kp1 = torch.tensor([[11.0, 5.0],     # kp0[0] + (10, 5) + 1 px   -> positive
                        [64.0, 55.0],    # kp0[1] + (10, 5) + 4 px   -> ignore (between 3 and 5)
                        [300.0, 300.0],  # far from everything        -> unmatched
                        [110.5, 25.0]])  # kp0[2] + (10, 5) + 0.5 px -> positive
    gt0, gt1 = D.gt_matches_from_homography(kp0, kp1, h)
    assert gt0.tolist() == [0, D.IGNORE, 3, D.UNMATCHED]
    assert gt1.tolist() == [0, D.IGNORE, D.UNMATCHED, 2]


def test_gt_positive_needs_mutual_nearest() -> None:
    h = np.eye(3)
    kp0 = torch.tensor([[10.0, 10.0], [11.0, 10.0]])  # both within 3 px of the single kp1
    kp1 = torch.tensor([[10.2, 10.0]])
    gt0, gt1 = D.gt_matches_from_homography(kp0, kp1, h)
    assert gt0.tolist() == [0, D.IGNORE]
    assert gt1.tolist() == [0]


def test_split_is_stable_and_held_out_fraction() -> None:
    keys = [f"set/img_{i:04d}.jpg" for i in range(2000)]
    splits = [D.split_of(k) for k in keys]
    assert splits == [D.split_of(k) for k in keys]
    held = sum(s != "train" for s in splits) / len(keys)
    assert 0.07 < held < 0.13


def test_nll_loss_prefers_the_right_assignment() -> None:
    gt0 = torch.tensor([[1, -1, -2]])
    gt1 = torch.tensor([[-1, 0]])
    good = torch.full((1, 4, 3), -10.0)
    good[0, 0, 1] = 0.0  # the GT match
    good[0, 1, 2] = 0.0  # unmatched row -> dustbin
    good[0, 3, 0] = 0.0  # unmatched column -> dustbin
    bad = good.clone()
    bad[0, 0, 1], bad[0, 0, 0] = -10.0, 0.0
    loss_good, _ = nll_loss(good, gt0, gt1)
    loss_bad, parts = nll_loss(bad, gt0, gt1)
    assert loss_good.item() == pytest.approx(0.0)
    assert loss_bad.item() == pytest.approx(5.0)  # 0.5 * 10 (positive) + 0.5 * 0 (negatives)
    assert parts["nll_neg"].item() == pytest.approx(0.0)


def test_loss_is_finite_with_padded_pairs() -> None:
    """Pairs of different sizes in one batch: padded rows of the assignment are -inf, which
    must not turn the loss into NaN (-inf * 0)."""
    records = _synthetic_records(1, n=40) + _synthetic_records(1, n=28, seed=1)
    data = D.collate_records(records)
    assert not data["mask0"].all()
    model = T.OmniGlue(dict(TINY_MODEL)).train()
    loss, parts = T.training_loss(model(data), data, confidence_weight=1.0)
    assert torch.isfinite(loss) and torch.isfinite(parts["nll_pos"]).all()


def test_learning_rate_schedule() -> None:
    t = {**T.DEFAULT_TRAIN, "steps": 100, "lr": 1e-3, "warmup_steps": 10, "decay_start": 0.5,
         "final_lr_factor": 0.1}
    assert T.learning_rate(0, t) == pytest.approx(1e-4)
    assert T.learning_rate(30, t) == pytest.approx(1e-3)
    assert T.learning_rate(100, t) == pytest.approx(1e-4)
    assert T.learning_rate(75, t) < 1e-3


# --------------------------------------------------------------------------------------------
# training loop


def test_loss_decreases_on_a_tiny_batch(tmp_path) -> None:
    records = _synthetic_records(2)
    cfg = _cfg(tmp_path, steps=1)
    torch.manual_seed(0)
    model = T.make_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = D.collate_records(records)
    losses = []
    for _ in range(15):
        loss, _ = T.training_loss(model(data), data, confidence_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    single, _ = nll_loss(model(data)["log_assignment"], data["gt_matches0"], data["gt_matches1"])
    assert single.item() < losses[0]


def test_resume_gives_the_identical_next_step(tmp_path) -> None:
    records = _synthetic_records(4)
    straight = T.train(_cfg(tmp_path / "a", steps=3), records=[dict(r) for r in records], val_records=[],
                       progress=False)
    T.train(_cfg(tmp_path / "b", steps=2), records=[dict(r) for r in records], val_records=[], progress=False)
    resumed = T.train(_cfg(tmp_path / "b", steps=3), records=[dict(r) for r in records], val_records=[],
                      progress=False)
    a = torch.load(straight, weights_only=False)
    b = torch.load(resumed, weights_only=False)
    assert a["step"] == b["step"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    log = (tmp_path / "b" / "run" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3"]


def test_training_with_768d_guidance(tmp_path) -> None:
    """Guidance of DINOv2's width (768-D) trains end to end and changes the cross-attention masks.

    Uses random 768-D vectors shared by corresponding keypoints (DINOv2's weights are not
    available offline); the DINOv2 plugin is exercised on images in test_dinov2_guided_pool.
    """
    records = _synthetic_records(2, gdim=768)
    cfg = _cfg(tmp_path, steps=3)
    last = T.train(cfg, records=records, val_records=records, progress=False)
    state = torch.load(last, weights_only=False)
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_dinov2_guided_pool_trains(tmp_path, textured) -> None:
    """The DINOv2 guidance plugin feeds a cached pool and a few training steps (768-D guidance is
    covered above). The official weights are not available offline, so the plugin loads a
    randomly initialised ViT-S/14 (384-D, 1 block) written to a file: the code path is the real one."""
    from omniglue_sfm.guidance.dinov2 import DINOv2ViT

    torch.manual_seed(0)
    vit = DINOv2ViT(dim=384, depth=1, grid=8)
    torch.save(vit.state_dict(), tmp_path / "vits14_random.pth")
    guid = {"name": "dinov2_vits14", "weights": str(tmp_path / "vits14_random.pth")}
    ff = D.FeatureFn({"name": "aliked", "model": "aliked-n16", "max_keypoints": 64}, guid)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(textured(120, 160, seed=1)).save(photos / "a.jpg")
    pool = D.PoolConfig(roots=[str(photos)], split="all", shifts=[20.0], patch_size=(112, 84), augment=0.0)
    D.build_pool(pool, tmp_path / "pairs", ff, progress=False)
    records = D.load_pool([tmp_path / "pairs"])
    assert records[0]["view0"]["guidance"].shape[1] == 384
    cfg = _cfg(tmp_path, steps=2, batch_size=1)
    cfg["model"].update(input_dim=128)
    assert T.train(cfg, records=records, val_records=[], progress=False).is_file()


# --------------------------------------------------------------------------------------------
# warm start, export, finetune


def test_guidance_only_training_ships_as_a_difference_to_lightglue(tmp_path) -> None:
    """The shipped recipe: LightGlue warm start, only the guidance scales learn; the export
    stores just those and loads back to the trained model exactly."""
    from omniglue_sfm.matchers.omniglue_plugin import load_model

    recs = _synthetic_records(2, dim=128, gdim=16)
    cfg = _cfg(tmp_path, steps=2, warm_start="aliked_lightglue", trainable=["guidance_scale"], lr=0.05)
    cfg["model"] = {"input_dim": 128}
    last = T.train(cfg, records=recs, val_records=recs, progress=False)
    state = torch.load(last, weights_only=False)
    assert state["model"]["guidance_scale"].abs().sum() > 0
    out = FT.export(last, tmp_path / "og.pt")
    ckpt = torch.load(out, weights_only=False)
    assert ckpt["base"] == "aliked_lightglue" and set(ckpt["state_dict"]) == {"guidance_scale"}
    loaded = load_model(str(out))[0].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state["model"].items())
    with pytest.raises(ValueError, match="matches no parameter"):
        T.trainable_parameters(T.make_model(cfg), ["nothing"])


def test_export_and_finetune_cli(tmp_path, textured) -> None:
    from omniglue_sfm import cli
    from omniglue_sfm.matchers.omniglue_plugin import load_checkpoint

    cfg = _cfg(tmp_path, steps=1)
    cfg["model"].update(input_dim=128)
    cfg["features"] = {"name": "aliked", "model": "aliked-n16", "max_keypoints": 64}
    cfg["guidance"] = {"name": "aliked-grid"}
    cfg["data"] = {"patch_size": [96, 72], "shifts": [60.0], "augment": 0.5}
    recs = _synthetic_records(2, dim=128, gdim=128)
    init = FT.export(T.train(cfg, records=recs, val_records=[], progress=False), tmp_path / "init.pt")
    assert load_checkpoint(str(init))["metadata"]["steps"] == 1
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(textured(90, 120, seed=i)).save(photos / f"{i}.jpg")
    out = tmp_path / "adapted.pt"
    code = cli.main(["finetune", str(photos), "--init", str(init), "--out", str(out), "--steps", "2",
                     "--batch-size", "1"])
    assert code == 0
    ckpt = load_checkpoint(str(out))
    assert ckpt["metadata"]["steps"] == 2 and ckpt["metadata"]["finetune_photos"] == 2
    before = load_checkpoint(str(init))["state_dict"]
    assert any(not torch.equal(before[k], v) for k, v in ckpt["state_dict"].items())


def test_bad_config_is_a_clear_error(tmp_path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[features]\nname = "aliked"\n')
    with pytest.raises(ValueError, match="missing"):
        T.load_config(p)
    with pytest.raises(FileNotFoundError):
        T.load_config(tmp_path / "nope.toml")


def test_heldout_list_matches_the_split() -> None:
    from pathlib import Path

    listed = Path(D.__file__).parent / "configs" / "heldout_photos.txt"
    rows = [line.split() for line in listed.read_text().splitlines() if not line.startswith("#")]
    assert rows and all(D.split_of(key) == split for split, key in rows)


def test_init_checkpoint_starts_from_exported_weights(tmp_path) -> None:
    from omniglue_sfm.matchers.omniglue_plugin import load_model

    recs = _synthetic_records(2)
    first = FT.export(T.train(_cfg(tmp_path / "a", steps=1), records=recs, val_records=[], progress=False),
                     tmp_path / "a.pt", quantize=False)
    cfg = _cfg(tmp_path / "b", steps=1, lr=0.0, init_checkpoint=str(first))
    state = torch.load(T.train(cfg, records=recs, val_records=[], progress=False), weights_only=False)
    ref = load_model(str(first))[0].state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in state["model"].items())


def test_shipped_checkpoint_metadata_names_the_omniglue_preset_plugins() -> None:
    """finetune rebuilds the extractor from metadata["features"]: it must be the plugins the
    ``omniglue-guided`` preset runs the shipped checkpoint with (a wrong name breaks finetuning)."""
    import json
    from pathlib import Path

    from omniglue_sfm.config import presets, registry
    from omniglue_sfm.matchers.omniglue_plugin import load_checkpoint

    preset = presets.get("omniglue-guided")
    assert presets.get("omniglue")["features"] == preset["features"]  # default: same features, unguided
    shipped = Path(omniglue_sfm.__file__).parent / "weights" / "omniglue_aliked.pt"
    meta = load_checkpoint(str(shipped))["metadata"]
    sidecar = json.loads(shipped.with_suffix(".json").read_text())["metadata"]
    for m in (meta, sidecar):
        assert m["features"]["name"] in registry.EXTRACTORS
        assert m["guidance"]["name"] in registry.GUIDANCE
        assert m["features"]["name"] == preset["features"]["name"]
        assert m["features"]["model"] == preset["features"]["model"]
        assert m["guidance"]["name"] == preset["guidance"]["name"]


def test_bundled_configs_load_and_build_the_shipped_architecture() -> None:
    """Every stage config must parse, and its [model] must describe the shipped checkpoint's
    architecture (only the match threshold is chosen after training)."""
    from pathlib import Path

    from omniglue_sfm.matchers.omniglue_plugin import load_checkpoint

    configs = sorted((Path(D.__file__).parent / "configs").glob("*.toml"))
    shipped = load_checkpoint(str(Path(omniglue_sfm.__file__).parent / "weights" / "omniglue_aliked.pt"))
    arch = ("input_dim", "descriptor_dim", "n_layers", "num_heads", "guidance")
    assert len(configs) >= 2
    for path in configs:
        cfg = T.load_config(path)
        full = T.OmniGlue(cfg["model"]).conf  # strict: unknown keys are an error
        assert {k: full[k] for k in arch} == {k: shipped["conf"][k] for k in arch}, path.name
        assert cfg["guidance"] == shipped["metadata"]["guidance"], path.name
