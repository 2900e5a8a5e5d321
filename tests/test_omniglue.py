"""OmniGlue v2 (LightGlue trunk + learned guidance bias) and the shared Sinkhorn (SuperGlue)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omniglue_sfm.matchers.base import collate_pairs
from omniglue_sfm.matchers.omniglue import OmniGlue
from omniglue_sfm.matchers.omniglue_plugin import OmniGlueMatcher, load_model, save_checkpoint, warm_start
from omniglue_sfm.matchers.sinkhorn import log_optimal_transport

SIZE = torch.tensor([640.0, 480.0])


def _pair(n0: int, n1: int, seed: int, dim: int = 128, shared: float = 0.7) -> tuple[dict, dict]:
    """Two views of a planar-ish scene: a share of image 0's points reappear in image 1 shifted
    by a smooth motion with noisy descriptors; guidance agrees on the shared points."""
    gen = torch.Generator().manual_seed(seed)
    kp0 = torch.rand(n0, 2, generator=gen) * (SIZE - 1)
    d0 = F.normalize(torch.randn(n0, dim, generator=gen), dim=1)
    g0 = torch.randn(n0, 32, generator=gen)
    k = min(int(shared * n0), n1)
    kp1 = torch.cat([(kp0[:k] * 0.95 + torch.tensor([20.0, 10.0])).clamp(0, 479),
                     torch.rand(n1 - k, 2, generator=gen) * (SIZE - 1)])
    d1 = F.normalize(torch.cat([d0[:k] + 0.2 * torch.randn(k, dim, generator=gen),
                                torch.randn(n1 - k, dim, generator=gen)]), dim=1)
    g1 = torch.cat([g0[:k] + 0.1 * torch.randn(k, 32, generator=gen), torch.randn(n1 - k, 32, generator=gen)])
    perm = torch.randperm(n1, generator=gen)
    f0 = {"keypoints": kp0, "descriptors": d0, "scores": torch.ones(n0), "image_size": SIZE, "guidance": g0}
    f1 = {"keypoints": kp1[perm], "descriptors": d1[perm], "scores": torch.ones(n1), "image_size": SIZE,
          "guidance": g1[perm]}
    return f0, f1


@pytest.fixture(scope="module")
def lightglue_omniglue() -> OmniGlue:
    model = OmniGlue()
    assert warm_start(model, "aliked_lightglue") == ["guidance_scale"]
    return model.eval()


@pytest.mark.parametrize("adaptive", [False, True])
def test_warm_start_is_exactly_lightglue(lightglue_omniglue, adaptive) -> None:
    """With zero guidance scales the model is LightGlue: same matches as kornia's LightGlue with
    the same official weights, with and without early exit and point pruning."""
    from omniglue_sfm.matchers.lightglue import LightGlueMatcher

    conf = {} if adaptive else {"depth_confidence": -1, "width_confidence": -1}
    lightglue = LightGlueMatcher({"features": "aliked", **conf}).eval()
    ours = OmniGlue({**lightglue_omniglue.conf, **conf})
    ours.load_state_dict(lightglue_omniglue.state_dict())
    ours.eval()
    data = collate_pairs([_pair(400, 350, seed=0)])
    with torch.inference_mode():
        ref, out = lightglue(data), ours(data)
    assert (ref["matches0"] >= 0).sum() > 100
    assert torch.equal(out["matches0"], ref["matches0"])
    if adaptive:
        assert int(out["stop"][0]) < ours.conf["n_layers"]  # an easy pair exits early


@pytest.mark.parametrize("cpu_batching", [True, False])
def test_padded_batch_equals_one_pair_at_a_time(lightglue_omniglue, cpu_batching) -> None:
    """Early exit and pruning work per pair inside a padded batch, with guidance on; on the CPU
    a batch runs pair by pair by default, and the truly batched path (CUDA's) is tested too."""
    model = OmniGlue({**lightglue_omniglue.conf, "cpu_batching": cpu_batching})
    model.load_state_dict(lightglue_omniglue.state_dict())
    with torch.no_grad():
        model.guidance_scale.fill_(2.0)
    model.eval()
    pairs = [_pair(300, 260, 1), _pair(180, 320, 2, shared=0.3), _pair(250, 250, 3, shared=0.0)]
    with torch.inference_mode():
        batch = model(collate_pairs(pairs, multiple=64))
        for i, pair in enumerate(pairs):
            alone = model(collate_pairs([pair]))
            n = pair[0]["keypoints"].shape[0]
            assert torch.equal(batch["matches0"][i, :n], alone["matches0"][0]), i
            assert torch.allclose(batch["matching_scores0"][i, :n], alone["matching_scores0"][0], atol=1e-3)
            assert int(batch["stop"][i]) == int(alone["stop"][0])
            assert (batch["matches0"][i, n:] == -1).all()


def test_pruning_threshold_is_per_pair_not_per_padded_batch(lightglue_omniglue) -> None:
    """LightGlue prunes only images with more than ``pruning_min_points`` points (1024 on CUDA):
    a small pair batched with a large one must not be pruned because of the padded width."""
    conf = {**lightglue_omniglue.conf, "cpu_batching": True, "pruning_min_points": {"cpu": 250}}
    model = OmniGlue(conf)
    model.load_state_dict(lightglue_omniglue.state_dict())
    model.eval()
    small, large = _pair(200, 180, 11), _pair(400, 380, 12)
    with torch.inference_mode():
        batch = model(collate_pairs([small, large]))
        alone = model(collate_pairs([small]))
    assert not alone["pruned0"][0].any()  # below the threshold: never pruned
    assert torch.equal(batch["pruned0"][0, :200], alone["pruned0"][0])
    assert torch.equal(batch["matches0"][0, :200], alone["matches0"][0])


def test_guidance_scale_zero_equals_guidance_off_and_nonzero_changes_matching(lightglue_omniglue) -> None:
    data = collate_pairs([_pair(200, 200, 4, shared=0.5)])
    off = OmniGlue({**lightglue_omniglue.conf, "guidance": False, "depth_confidence": -1,
                    "width_confidence": -1})
    off.load_state_dict(lightglue_omniglue.state_dict())
    on = OmniGlue({**off.conf, "guidance": True})
    on.load_state_dict(lightglue_omniglue.state_dict())
    off.train(), on.train()  # training mode returns the log assignment
    with torch.no_grad():
        a, b = off(data)["log_assignment"], on(data)["log_assignment"]
        assert torch.allclose(a, b, atol=1e-5)
        on.guidance_scale.fill_(3.0)
        c = on(data)["log_assignment"]
    assert (a - c).abs().max() > 0.1


def test_gradients_reach_the_guidance_scales_and_every_layer_is_supervised(lightglue_omniglue) -> None:
    model = OmniGlue({**lightglue_omniglue.conf, "n_layers": 2})
    model.train()
    out = model(collate_pairs([_pair(64, 60, 5), _pair(40, 70, 6)]))
    assert len(out["log_assignments"]) == 2 and len(out["token_confidences"]) == 1
    assert out["log_assignments"][0].shape == (2, 65, 71)
    out["log_assignments"][-1][:, :-1, :-1].logsumexp((1, 2)).sum().backward()
    assert model.guidance_scale.grad is not None and model.guidance_scale.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_positions_enter_only_as_relative_offsets(lightglue_omniglue) -> None:
    """Rotary encoding in self-attention only: shifting all keypoints of an image by one offset
    (image size unchanged) changes nothing; values and cross-attention carry no position."""
    f0, f1 = _pair(200, 180, 7)
    moved = {**f1, "keypoints": f1["keypoints"] - torch.tensor([15.0, 7.0])}
    model = OmniGlue({**lightglue_omniglue.conf, "depth_confidence": -1, "width_confidence": -1})
    model.load_state_dict(lightglue_omniglue.state_dict())
    model.train()
    with torch.no_grad():
        a = model(collate_pairs([(f0, f1)]))["log_assignment"]
        b = model(collate_pairs([(f0, moved)]))["log_assignment"]
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("cpu_batching", [True, False])
@pytest.mark.parametrize("n1", [0, 1])
def test_tiny_and_empty_images_do_not_break_the_batch(lightglue_omniglue, n1, cpu_batching) -> None:
    pairs = [_pair(50, 40, 8), _pair(30, max(n1, 1), 9)]
    if n1 == 0:
        f0, f1 = pairs[1]
        pairs[1] = (f0, {k: (v[:0] if v.ndim and v.shape[0] == 1 else v) for k, v in f1.items()})
    model = OmniGlue({**lightglue_omniglue.conf, "cpu_batching": cpu_batching})
    model.load_state_dict(lightglue_omniglue.state_dict())
    with torch.inference_mode():
        out = model.eval()(collate_pairs(pairs))
    assert out["matches0"].shape == (2, 50)
    assert (out["matches0"][1] < max(n1, 1)).all() and torch.isfinite(out["matching_scores0"]).all()


def test_checkpoint_on_a_lightglue_base_stores_only_the_difference(tmp_path, lightglue_omniglue) -> None:
    model = OmniGlue(lightglue_omniglue.conf)
    model.load_state_dict(lightglue_omniglue.state_dict())
    with torch.no_grad():
        model.guidance_scale.copy_(torch.arange(36.0).view(9, 4) / 10)
    path = tmp_path / "og.pt"
    save_checkpoint(model, path, {"note": "test"}, base="aliked_lightglue")
    assert path.stat().st_size < 100_000
    assert set(torch.load(path, weights_only=False)["state_dict"]) == {"guidance_scale"}
    loaded, meta = load_model(str(path))
    assert meta == {"note": "test"}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    full = tmp_path / "full.pt"  # a full int8 checkpoint: within rounding of the weights
    save_checkpoint(model, full, {}, quantize=True)
    q = load_model(str(full))[0].state_dict()
    assert max((q[k] - v).abs().max().item() for k, v in model.state_dict().items()) < 0.05


def test_matcher_config_typos_are_errors() -> None:
    with pytest.raises(ValueError, match="guidence"):
        OmniGlueMatcher({"weights": "omniglue", "guidence": False})


def test_old_checkpoints_are_refused_with_a_clear_message(tmp_path) -> None:
    from omniglue_sfm.runtime import weights

    path = tmp_path / "v1.pt"
    torch.save({"conf": {"d_model": 256, "guidance_ratio": 0.5}, "state_dict": {}}, path)
    with pytest.raises(weights.WeightsNotFoundError, match="v1 checkpoint"):
        OmniGlueMatcher({"weights": str(path)})


def test_shipped_matcher_needs_guidance_unless_switched_off() -> None:
    assert "guidance" in OmniGlueMatcher({"weights": "omniglue"}).required_inputs
    assert "guidance" not in OmniGlueMatcher({"weights": "omniglue", "guidance": False}).required_inputs


# ------------------------------------------------------------------ Sinkhorn (SuperGlue)


def test_sinkhorn_marginals_and_padding():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 6, 5, generator=gen) * 3
    mask0 = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    mask1 = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    log_p = log_optimal_transport(scores, torch.tensor(0.5), 200, mask0, mask1)
    p = log_p.exp()
    for b, (n, m) in enumerate([(6, 5), (4, 3)]):
        # log P carries + log(n + m): rows of real keypoints sum to 1, the dustbin row to m, and so on
        assert torch.allclose(p[b, :n].sum(1), torch.ones(n), atol=1e-3)
        assert torch.allclose(p[b, :, :m].sum(0), torch.ones(m), atol=1e-3)
        assert torch.isclose(p[b, -1].sum(), torch.tensor(float(m)), atol=1e-3)
        assert torch.isclose(p[b, :, -1].sum(), torch.tensor(float(n)), atol=1e-3)
        # padded rows / columns carry no mass at all
        assert (p[b, n:-1] == 0).all() and (p[b, :, m:-1] == 0).all()
        # and the real block equals the unpadded problem
        alone = log_optimal_transport(scores[b: b + 1, :n, :m], torch.tensor(0.5), 200)
        real = torch.cat([log_p[b, :n, :m], log_p[b, :n, -1:]], 1)
        assert torch.allclose(real, torch.cat([alone[0, :n, :m], alone[0, :n, -1:]], 1), atol=1e-4)


@pytest.mark.parametrize("scale", [3.0, 300.0])
def test_fast_sinkhorn_equals_the_log_domain_loop(scale, monkeypatch):
    """The matrix-vector form gives the textbook log-domain result; for scores so spread that
    float32 exponentials underflow (scale 300) it hands over to the log-domain loop."""
    from omniglue_sfm.matchers import sinkhorn

    gen = torch.Generator().manual_seed(11)
    scores = torch.randn(2, 40, 30, generator=gen) * scale
    mask0 = torch.ones(2, 40, dtype=torch.bool)
    mask1 = torch.ones(2, 30, dtype=torch.bool)
    mask0[1, 25:], mask1[1, 18:] = False, False
    calls = []
    real = sinkhorn._log_sinkhorn
    monkeypatch.setattr(sinkhorn, "_log_sinkhorn", lambda *a: calls.append(1) or real(*a))
    fast = sinkhorn.log_optimal_transport(scores, torch.tensor(1.0), 20, mask0, mask1)
    assert len(calls) == (1 if scale > 100 else 0)
    monkeypatch.setattr(sinkhorn, "_scaled_sinkhorn", lambda *a: None)
    slow = sinkhorn.log_optimal_transport(scores, torch.tensor(1.0), 20, mask0, mask1)
    assert torch.allclose(fast, slow, atol=1e-4, rtol=1e-5)


