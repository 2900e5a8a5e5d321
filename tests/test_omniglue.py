"""Properties of the OmniGlue model (paper §3) and of the shared Sinkhorn, on small random inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omniglue_sfm.matchers.base import collate_pairs
from omniglue_sfm.matchers.omniglue import OmniGlue, PositionGuidedAttention, guidance_mask
from omniglue_sfm.matchers.sinkhorn import log_optimal_transport

SIZE = torch.tensor([320.0, 240.0])


def _feats(n: int, gen: torch.Generator, dim: int = 32, gdim: int = 16) -> dict:
    return {"keypoints": torch.rand(n, 2, generator=gen) * SIZE,
            "descriptors": F.normalize(torch.randn(n, dim, generator=gen), dim=1),
            "scores": torch.rand(n, generator=gen), "image_size": SIZE,
            "guidance": torch.randn(n, gdim, generator=gen)}


def _model(**conf) -> OmniGlue:
    torch.manual_seed(0)
    base = {"input_dim": 32, "guidance_dim": 16, "d_model": 32, "n_layers": 2, "num_heads": 2,
            "sinkhorn_iterations": 50, "match_threshold": 0.0}
    model = OmniGlue({**base, **conf}).eval()
    with torch.no_grad():  # larger final projection: a peaked assignment with real matches
        model.final_proj.weight.mul_(4.0)
    return model


# ------------------------------------------------------------------ Sinkhorn


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


# ------------------------------------------------------------------ guided cross-attention


def test_guidance_mask_keeps_the_top_half_by_cosine():
    gen = torch.Generator().manual_seed(1)
    g0, g1 = torch.randn(1, 7, 8, generator=gen), torch.randn(1, 10, 8, generator=gen)
    mask1 = torch.tensor([[True] * 9 + [False]])
    mask = guidance_mask(g0, g1, mask1, 0.5)
    assert (mask.sum(-1) == 4).all() and not mask[..., 9].any()  # floor(9 / 2) real keys
    sim = F.normalize(g0, dim=-1) @ F.normalize(g1, dim=-1).transpose(1, 2)
    for i in range(7):
        top = set(sim[0, i, :9].topk(4).indices.tolist())
        assert set(mask[0, i].nonzero()[:, 0].tolist()) == top
    # ratio 1.0 keeps every real key
    assert torch.equal(guidance_mask(g0, g1, mask1, 1.0), mask1[:, None].expand(1, 7, 10))


def test_batched_guidance_mask_per_pair_counts():
    gen = torch.Generator().manual_seed(2)
    g0, g1 = torch.randn(2, 5, 8, generator=gen), torch.randn(2, 8, 8, generator=gen)
    mask1 = torch.tensor([[True] * 8, [True] * 5 + [False] * 3])
    mask = guidance_mask(g0, g1, mask1, 0.5)
    assert (mask[0].sum(-1) == 4).all() and (mask[1].sum(-1) == 2).all()
    alone = guidance_mask(g0[1:], g1[1:, :5], mask1[1:, :5], 0.5)
    assert torch.equal(mask[1:, :, :5], alone) and not mask[1, :, 5:].any()


def test_a_keypoint_never_attends_outside_its_guided_set():
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    layer = PositionGuidedAttention(16, 2).eval()
    d0, p0 = torch.randn(1, 6, 16, generator=gen), torch.randn(1, 6, 16, generator=gen)
    d1, p1 = torch.randn(1, 9, 16, generator=gen), torch.randn(1, 9, 16, generator=gen)
    g0, g1 = torch.randn(1, 6, 4, generator=gen), torch.randn(1, 9, 4, generator=gen)
    mask = guidance_mask(g0, g1, torch.ones(1, 9, dtype=torch.bool), 0.5)
    query = 2
    outside = ~mask[0, query]
    assert outside.sum() == 5
    base = layer(d0, p0, d1, p1, mask)
    d1b, p1b = d1.clone(), p1.clone()
    d1b[0, outside] += 5 * torch.randn(int(outside.sum()), 16, generator=gen)
    p1b[0, outside] -= 3.0
    moved = layer(d0, p0, d1b, p1b, mask)
    assert torch.allclose(moved[0, query], base[0, query], atol=1e-5)
    # ... while a query whose set contains a perturbed key does change: the test can fail
    changed = [i for i in range(6) if (mask[0, i] & outside).any()]
    assert changed and not torch.allclose(moved[0, changed], base[0, changed], atol=1e-3)


def test_values_are_position_free():
    """Positions enter q and k only: with q zeroed (uniform attention), moving every keypoint leaves
    the output unchanged; with the values computed from d + p it would not."""
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    layer = PositionGuidedAttention(16, 2).eval()
    with torch.no_grad():
        layer.q.weight.zero_()
        layer.q.bias.zero_()
    d0, d1 = torch.randn(1, 5, 16, generator=gen), torch.randn(1, 7, 16, generator=gen)
    p0, p1 = torch.randn(1, 5, 16, generator=gen), torch.randn(1, 7, 16, generator=gen)
    out = layer(d0, p0, d1, p1, None)
    assert torch.allclose(layer(d0, p0 * 3 + 1, d1, -p1, None), out, atol=1e-5)
    # positions do steer attention when q is live
    torch.manual_seed(4)
    live = PositionGuidedAttention(16, 2).eval()
    assert not torch.allclose(live(d0, p0, d1, p1, None), live(d0, p0, d1, -p1, None), atol=1e-3)


def test_additive_masks_equal_boolean_masks():
    """The speed path (float masks built once) gives what a plain boolean mask gives."""
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    layer = PositionGuidedAttention(16, 2).eval()
    d0, p0 = torch.randn(2, 6, 16, generator=gen), torch.randn(2, 6, 16, generator=gen)
    d1, p1 = torch.randn(2, 9, 16, generator=gen), torch.randn(2, 9, 16, generator=gen)
    mask = torch.rand(2, 6, 9, generator=gen) > 0.5
    mask[..., 0] = True
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    ref = layer(d0, p0, d1, p1, mask)
    assert torch.allclose(layer(d0, p0, d1, p1, additive), ref, atol=1e-6)
    # and both equal an explicit softmax over the allowed keys
    q, k, v = layer._heads(layer.q(d0 + p0)), layer._heads(layer.k(d1 + p1)), layer._heads(layer.v(d1))
    att = ((q @ k.transpose(-1, -2)) / 8**0.5).masked_fill(~mask[:, None], float("-inf")).softmax(-1)
    msg = layer.merge((att @ v).transpose(1, 2).flatten(2))
    assert torch.allclose(ref, d0 + layer.mlp(torch.cat([d0, msg], -1)), atol=1e-5)


# ------------------------------------------------------------------ the whole model


def test_batch_of_pairs_equals_one_at_a_time():
    gen = torch.Generator().manual_seed(6)
    model = _model()
    pairs = [(_feats(30, gen), _feats(22, gen)), (_feats(17, gen), _feats(35, gen)),
             (_feats(30, gen), _feats(35, gen))]
    with torch.inference_mode():
        batch = model(collate_pairs(pairs))
        assert (batch["matches0"] >= 0).sum() > 5
        for i, pair in enumerate(pairs):
            single = model(collate_pairs([pair]))
            n, m = pair[0]["keypoints"].shape[0], pair[1]["keypoints"].shape[0]
            assert torch.equal(batch["matches0"][i, :n], single["matches0"][0])
            assert (batch["matches0"][i, n:] == -1).all()
            assert torch.allclose(batch["matching_scores0"][i, :n], single["matching_scores0"][0], atol=1e-4)
            la, ls = batch["log_assignment"][i], single["log_assignment"][0]
            assert torch.allclose(la[:n, :m], ls[:n, :m], atol=1e-3)


def test_guidance_ratio_one_is_unguided():
    gen = torch.Generator().manual_seed(7)
    data = collate_pairs([(_feats(20, gen), _feats(24, gen))])
    no_guidance = {k: v for k, v in data.items() if not k.startswith("guidance")}
    with torch.inference_mode():
        full = _model(guidance_ratio=1.0)(data)
        unguided = _model(guidance_ratio=1.0)(no_guidance)
        guided = _model(guidance_ratio=0.5)(data)
    assert torch.equal(full["log_assignment"], unguided["log_assignment"])
    assert not torch.allclose(guided["log_assignment"], full["log_assignment"], atol=1e-3)


def test_guided_model_ignores_guidance_outside_ratio_changes():
    """Scaling guidance vectors (cosine similarity is scale-free) does not change the result;
    shuffling them does: guidance matters only through the cross-attention mask."""
    gen = torch.Generator().manual_seed(8)
    data = collate_pairs([(_feats(20, gen), _feats(24, gen))])
    model = _model(guidance_ratio=0.5)
    scaled = {**data, "guidance0": data["guidance0"] * 7.0}
    shuffled = {**data, "guidance1": data["guidance1"][:, torch.randperm(24, generator=gen)]}
    with torch.inference_mode():
        ref = model(data)["log_assignment"]
        assert torch.allclose(model(scaled)["log_assignment"], ref, atol=1e-5)
        assert not torch.allclose(model(shuffled)["log_assignment"], ref, atol=1e-3)


@pytest.mark.parametrize("n1", [0, 1])
def test_tiny_and_empty_images_do_not_break_the_batch(n1):
    gen = torch.Generator().manual_seed(9)
    model = _model()
    pairs = [(_feats(12, gen), _feats(n1, gen)), (_feats(12, gen), _feats(15, gen))]
    with torch.inference_mode():
        batch = model(collate_pairs(pairs))
        single = model(collate_pairs([pairs[1]]))
    assert not torch.isnan(batch["log_assignment"][1]).any()
    assert torch.equal(batch["matches0"][1], single["matches0"][0])
    if n1 == 0:
        assert (batch["matches0"][0] == -1).all()
