"""SuperPoint / SuperGlue / DINOv2 loaders: official key layouts, strict loading, the weights
policy, and the pieces of maths each network has that are easy to get subtly wrong.

The checkpoints are built here from the key tables in docs/reference.md (§1, §2.1, §3),
not from our modules, so a renamed or reshaped parameter fails the strict load.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from omniglue_sfm.matchers.base import collate_pairs
from omniglue_sfm.runtime import weights

# ------------------------------------------------------------------ official key tables


def _conv(prefix: str, cout: int, cin: int, k: int, conv1d: bool = False) -> dict:
    shape = (cout, cin, 1) if conv1d else (cout, cin, k, k)
    return {f"{prefix}.weight": shape, f"{prefix}.bias": (cout,)}


def _bn(prefix: str, c: int) -> dict:
    return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def magicleap_superpoint_keys() -> dict:
    table = [("conv1a", 64, 1, 3), ("conv1b", 64, 64, 3), ("conv2a", 64, 64, 3), ("conv2b", 64, 64, 3),
             ("conv3a", 128, 64, 3), ("conv3b", 128, 128, 3), ("conv4a", 128, 128, 3),
             ("conv4b", 128, 128, 3), ("convPa", 256, 128, 3), ("convPb", 65, 256, 1),
             ("convDa", 256, 128, 3), ("convDb", 256, 256, 1)]
    out: dict = {}
    for name, cout, cin, k in table:
        out |= _conv(name, cout, cin, k)
    return out


def open_superpoint_keys() -> dict:
    table = [("backbone.0.0", 64, 1, 3), ("backbone.0.1", 64, 64, 3), ("backbone.1.0", 64, 64, 3),
             ("backbone.1.1", 64, 64, 3), ("backbone.2.0", 128, 64, 3), ("backbone.2.1", 128, 128, 3),
             ("backbone.3.0", 128, 128, 3), ("backbone.3.1", 128, 128, 3), ("detector.0", 256, 128, 3),
             ("detector.1", 65, 256, 1), ("descriptor.0", 256, 128, 3), ("descriptor.1", 256, 256, 1)]
    out: dict = {}
    for name, cout, cin, k in table:
        out |= _conv(f"{name}.conv", cout, cin, k) | _bn(f"{name}.bn", cout)
    return out


def superglue_keys() -> dict:
    out: dict = {}
    chans = [3, 32, 64, 128, 256, 256]
    for i in range(5):
        out |= _conv(f"kenc.encoder.{3 * i}", chans[i + 1], chans[i], 1, conv1d=True)
        if i < 4:
            out |= _bn(f"kenc.encoder.{3 * i + 1}", chans[i + 1])
    for layer in range(18):
        p = f"gnn.layers.{layer}"
        for j in range(3):
            out |= _conv(f"{p}.attn.proj.{j}", 256, 256, 1, conv1d=True)
        out |= _conv(f"{p}.attn.merge", 256, 256, 1, conv1d=True)
        out |= _conv(f"{p}.mlp.0", 512, 512, 1, conv1d=True) | _bn(f"{p}.mlp.1", 512)
        out |= _conv(f"{p}.mlp.3", 256, 512, 1, conv1d=True)
    return out | _conv("final_proj", 256, 256, 1, conv1d=True) | {"bin_score": ()}


def dinov2_keys(dim: int = 384, depth: int = 12) -> dict:
    out = {"cls_token": (1, 1, dim), "pos_embed": (1, 1370, dim), "mask_token": (1, dim),
           "patch_embed.proj.weight": (dim, 3, 14, 14), "patch_embed.proj.bias": (dim,),
           "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(depth):
        p = f"blocks.{i}"
        out |= {f"{p}.norm1.weight": (dim,), f"{p}.norm1.bias": (dim,),
                f"{p}.attn.qkv.weight": (3 * dim, dim), f"{p}.attn.qkv.bias": (3 * dim,),
                f"{p}.attn.proj.weight": (dim, dim), f"{p}.attn.proj.bias": (dim,),
                f"{p}.ls1.gamma": (dim,), f"{p}.norm2.weight": (dim,), f"{p}.norm2.bias": (dim,),
                f"{p}.mlp.fc1.weight": (4 * dim, dim), f"{p}.mlp.fc1.bias": (4 * dim,),
                f"{p}.mlp.fc2.weight": (dim, 4 * dim), f"{p}.mlp.fc2.bias": (dim,),
                f"{p}.ls2.gamma": (dim,)}
    return out


def random_state(table: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in table.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif shape and len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.1 + (1.0 if key.endswith("gamma") else 0.0)
    return state


def save_as(tmp_path, monkeypatch, name: str, state: dict) -> None:
    """Write ``state`` where the weights policy finds checkpoint ``name`` (its env variable)."""
    spec = weights.KNOWN[name]
    path = tmp_path / spec.filename
    torch.save(state, path)
    monkeypatch.setenv(spec.env_var, str(path))


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    # never download in tests, and never pick up a real file from the user's cache
    monkeypatch.setenv("OMNIGLUE_SFM_OFFLINE", "1")
    monkeypatch.setenv("OMNIGLUE_SFM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_key_tables_match_our_modules():
    from omniglue_sfm.features.superpoint import MagicLeapSuperPoint, OpenSuperPoint
    from omniglue_sfm.guidance.dinov2 import DINOv2ViT
    from omniglue_sfm.matchers.superglue import SuperGlue

    with torch.device("meta"):  # shapes only, no memory nor initialisation
        modules = [MagicLeapSuperPoint(), OpenSuperPoint(), SuperGlue(), DINOv2ViT(384, 12),
                   DINOv2ViT(768, 12)]
    tables = [magicleap_superpoint_keys(), open_superpoint_keys(), superglue_keys(), dinov2_keys(384, 12),
              dinov2_keys(768, 12)]
    for table, module in zip(tables, modules, strict=True):
        ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert ours == table


# ------------------------------------------------------------------ missing weights


@pytest.mark.parametrize("name", ["superpoint", "superpoint_open", "superglue_outdoor", "superglue_indoor",
                                  "dinov2_vits14", "dinov2_vitb14"])
def test_missing_weights_name_file_and_url(name):
    from omniglue_sfm.config import registry

    spec = weights.KNOWN[name]
    with pytest.raises(weights.WeightsNotFoundError) as err:
        if name.startswith("superpoint"):
            registry.extractor({"name": "superpoint", "weights": name})
        elif name.startswith("superglue"):
            registry.matcher({"name": "superglue", "weights": name})
        else:
            registry.guidance({"name": name})
    assert spec.filename in str(err.value) and spec.url in str(err.value)


# ------------------------------------------------------------------ SuperPoint


def _textured_image(h: int = 64, w: int = 80) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    img = F.interpolate(torch.rand(1, 3, h // 4, w // 4, generator=gen), size=(h, w), mode="bilinear")
    return img.clamp(0, 1)


@pytest.mark.parametrize("name,table,layout", [
    ("superpoint", magicleap_superpoint_keys, "magicleap"),
    ("superpoint_open", open_superpoint_keys, "open"),
])
def test_superpoint_loads_both_layouts(tmp_path, monkeypatch, name, table, layout):
    from omniglue_sfm.config import registry

    save_as(tmp_path, monkeypatch, name, random_state(table()))
    ex = registry.extractor({"name": "superpoint", "weights": name, "max_keypoints": 50,
                             "detection_threshold": 0.0})
    assert ex.layout == layout
    out = ex(_textured_image())
    kp, sc, de = out["keypoints"], out["scores"], out["descriptors"]
    assert kp.shape == (50, 2) and sc.shape == (50,) and de.shape == (50, 256)
    assert out["dense"].shape == (1, 256, 8, 10)
    assert torch.all(sc[:-1] >= sc[1:])  # best first
    assert torch.allclose(de.norm(dim=1), torch.ones(50), atol=1e-5)
    # 4-px border removed; NMS radius 4: no two keypoints within 4 px (Chebyshev)
    assert kp[:, 0].min() >= 4 and kp[:, 0].max() < 80 - 4 and kp[:, 1].min() >= 4 and kp[:, 1].max() < 64 - 4
    cheb = (kp[:, None] - kp[None]).abs().amax(-1) + torch.eye(50) * 100
    assert cheb.min() > 4


def test_superpoint_layout_conf_overrides_and_rejects_wrong_file(tmp_path, monkeypatch):
    from omniglue_sfm.config import registry

    save_as(tmp_path, monkeypatch, "superpoint", random_state(magicleap_superpoint_keys()))
    with pytest.raises(weights.WeightsNotFoundError, match="open SuperPoint"):
        registry.extractor({"name": "superpoint", "weights": "superpoint", "layout": "open"})


def test_superpoint_depth_to_space_order_and_nms():
    from omniglue_sfm.features.superpoint import depth_to_space, max_pool_nms

    logits = torch.zeros(1, 65, 2, 3)
    logits[0, 8 * 5 + 2, 1, 2] = 20.0  # cell (row 1, col 2), in-cell row 5, col 2
    prob = depth_to_space(logits)
    assert prob.shape == (1, 16, 24)
    assert tuple((prob[0] == prob.max()).nonzero()[0].tolist()) == (8 + 5, 16 + 2)
    # a lower peak 3 px from a higher one is suppressed; one 6 px away survives
    s = torch.zeros(1, 20, 20)
    s[0, 10, 10], s[0, 10, 13], s[0, 10, 16] = 1.0, 0.9, 0.8
    kept = max_pool_nms(s, 2)[0].nonzero().tolist()
    assert kept == [[10, 10], [10, 13], [10, 16]]
    # radius 4: 0.9 is suppressed by 1.0; 0.8 (6 px from 1.0) only lost to the suppressed 0.9, so a
    # second round admits it
    kept = max_pool_nms(s, 4)[0].nonzero().tolist()
    assert kept == [[10, 10], [10, 16]]


def test_superpoint_descriptor_sampling_conventions():
    from omniglue_sfm.features.superpoint import sample_descriptors

    desc = F.normalize(torch.randn(1, 256, 4, 5), dim=1)
    # open: cell (i, j) covers pixels [8j, 8j + 8) x [8i, 8i + 8), centred at (8j + 3.5, 8i + 3.5)
    kp = torch.tensor([[8 * 2 + 3.5, 8 * 1 + 3.5], [8 * 4 + 3.5, 8 * 3 + 3.5], [8 * 1 + 7.5, 8 * 2 + 3.5]])
    out = sample_descriptors(desc, kp, "open")
    assert torch.allclose(out[0], desc[0, :, 1, 2], atol=1e-5)
    assert torch.allclose(out[1], desc[0, :, 3, 4], atol=1e-5)
    mid = F.normalize(desc[0, :, 2, 1] + desc[0, :, 2, 2], dim=0)  # half-way between two centres
    assert torch.allclose(out[2], mid, atol=1e-5)
    # magicleap (its official formula): the first cell at pixel 3.5, the last at 8w - 1 (not 8w - 4.5)
    kp = torch.tensor([[3.5, 3.5], [8 * 5 - 1.0, 8 * 4 - 1.0], [8 * 4 + 3.5, 8 * 3 + 3.5]])
    out = sample_descriptors(desc, kp, "magicleap")
    assert torch.allclose(out[0], desc[0, :, 0, 0], atol=1e-5)
    assert torch.allclose(out[1], desc[0, :, 3, 4], atol=1e-5)
    assert not torch.allclose(out[2], desc[0, :, 3, 4], atol=1e-3)


# ------------------------------------------------------------------ SuperGlue


def _sg_pair(n0: int, n1: int, seed: int) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(seed)
    size = torch.tensor([640.0, 480.0])

    def feats(n):
        return {"keypoints": torch.rand(n, 2, generator=gen) * size,
                "descriptors": F.normalize(torch.randn(n, 256, generator=gen), dim=1),
                "scores": torch.rand(n, generator=gen), "image_size": size}

    return feats(n0), feats(n1)


def test_superglue_loads_and_pads_like_single_pairs(tmp_path, monkeypatch):
    from omniglue_sfm.config import registry

    save_as(tmp_path, monkeypatch, "superglue_outdoor", random_state(superglue_keys()))
    sg = registry.matcher({"name": "superglue", "weights": "superglue_outdoor", "sinkhorn_iterations": 30,
                           "match_threshold": 0.0})
    pairs = [_sg_pair(40, 33, 0), _sg_pair(25, 47, 1)]
    batch = sg(collate_pairs(pairs))
    assert batch["matches0"].shape == (2, 40)
    for i, pair in enumerate(pairs):
        single = sg(collate_pairs([pair]))
        n = pair[0]["keypoints"].shape[0]
        assert torch.equal(batch["matches0"][i, :n], single["matches0"][0])
        assert torch.allclose(batch["matching_scores0"][i, :n], single["matching_scores0"][0], atol=1e-5)
        assert (batch["matches0"][i, n:] == -1).all()
    assert (batch["matches0"] >= 0).sum() > 0


def test_superglue_heads_are_interleaved():
    from omniglue_sfm.matchers.superglue import MultiHeadAttention

    torch.manual_seed(0)
    att = MultiHeadAttention(16, 4).eval()
    x, src = torch.randn(1, 16, 7), torch.randn(1, 16, 9)  # channels first, as SuperGlue's convs
    # SuperGlue's formula: channel c = 4 * d + h, i.e. view as (B, dim, heads, N)
    q, k, v = (p(t).view(1, 4, 4, -1) for p, t in zip(att.proj, (x, src, src), strict=True))
    prob = (torch.einsum("bdhn,bdhm->bhnm", q, k) / 2.0).softmax(-1)
    ref = att.merge(torch.einsum("bhnm,bdhm->bdhn", prob, v).reshape(1, 16, 7))
    out = att(x.transpose(1, 2), src.transpose(1, 2), None)  # ours runs channels last
    assert torch.allclose(out.transpose(1, 2), ref, atol=1e-5)


def test_superglue_keypoint_normalisation():
    from omniglue_sfm.matchers.superglue import normalize_keypoints_superglue

    kp = torch.tensor([[[320.0, 240.0], [640.0, 240.0]]])
    out = normalize_keypoints_superglue(kp, torch.tensor([[640.0, 480.0]]))
    assert torch.allclose(out, torch.tensor([[[0.0, 0.0], [320 / (0.7 * 640), 0.0]]]))


# ------------------------------------------------------------------ DINOv2


def test_dinov2_loads_strictly_and_gives_dense_and_global(tmp_path, monkeypatch):
    from omniglue_sfm.config import registry

    # depth comes from the checkpoint: two blocks keep the test fast, the names are the official ones
    save_as(tmp_path, monkeypatch, "dinov2_vits14", random_state(dinov2_keys(384, 2)))
    g = registry.guidance({"name": "dinov2_vits14"})
    assert g.dim == 384 and len(g.vit.blocks) == 2
    out = g(torch.rand(1, 3, 80, 100), {})
    assert out["dense"].shape == (1, 384, 80 // 14, 100 // 14)
    assert out["global_descriptor"].shape == (384,)
    assert torch.isclose(out["global_descriptor"].norm(), torch.tensor(1.0))
    # the wrong variant for the file is refused
    save_as(tmp_path, monkeypatch, "dinov2_vitb14", random_state(dinov2_keys(384, 2)))
    with pytest.raises(weights.WeightsNotFoundError, match="768"):
        registry.guidance({"name": "dinov2_vitb14"})


def test_dinov2_input_size_follows_omniglue():
    from omniglue_sfm.guidance.dinov2 import dino_input_size

    assert dino_input_size(480, 640) == (462, 630)  # docs/reference.md §2.2 example: 630x472 -> 630x462
    assert dino_input_size(683, 1024) == (420, 630)
    assert dino_input_size(300, 200) == (294, 196)  # small images: only floored to 14
    assert dino_input_size(1000, 1000) == (630, 630)


def test_dinov2_pos_embed_interpolation_is_the_official_one():
    from omniglue_sfm.guidance.dinov2 import DINOv2ViT

    vit = DINOv2ViT(32, 1)
    torch.nn.init.normal_(vit.pos_embed)
    assert torch.equal(vit.interpolate_pos_encoding(37, 37), vit.pos_embed)
    out = vit.interpolate_pos_encoding(30, 45)
    grid = vit.pos_embed[:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=(30.1 / 37, 45.1 / 37), mode="bicubic", align_corners=False)
    assert out.shape == (1, 1 + 30 * 45, 32)
    assert torch.equal(out[:, 0], vit.pos_embed[:, 0])
    assert torch.allclose(out[:, 1:], ref.flatten(2).transpose(1, 2))
    # differs from resizing to the exact size (scale 30/37): the +0.1 offset matters
    exact = F.interpolate(grid, size=(30, 45), mode="bicubic", align_corners=False)
    assert not torch.allclose(out[:, 1:], exact.flatten(2).transpose(1, 2), atol=1e-4)


def test_dinov2_block_matches_the_formula():
    from omniglue_sfm.guidance.dinov2 import Block

    torch.manual_seed(0)
    blk = Block(128, 2)
    for p in blk.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 5, 128)
    h = F.layer_norm(x, (128,), blk.norm1.weight, blk.norm1.bias, 1e-6)
    q, k, v = (h @ blk.attn.qkv.weight.t() + blk.attn.qkv.bias).split(128, -1)  # rows [q | k | v]
    q, k, v = (t.view(1, 5, 2, 64).transpose(1, 2) for t in (q, k, v))
    a = ((q @ k.transpose(-1, -2)) / 8.0).softmax(-1) @ v
    y = x + blk.ls1.gamma * blk.attn.proj(a.transpose(1, 2).reshape(1, 5, 128))
    h2 = F.layer_norm(y, (128,), blk.norm2.weight, blk.norm2.bias, 1e-6)
    y = y + blk.ls2.gamma * blk.mlp.fc2(F.gelu(blk.mlp.fc1(h2)))
    assert torch.allclose(blk(x), y, atol=1e-5)


def test_superpoint_and_dinov2_fit_the_extract_stage(tmp_path, monkeypatch):
    """Through ``features.image.extract_image``: a features.h5 item with 384-d guidance per keypoint."""
    import numpy as np

    from omniglue_sfm.config import registry
    from omniglue_sfm.features.image import extract_image

    save_as(tmp_path, monkeypatch, "superpoint_open", random_state(open_superpoint_keys(), 1))
    save_as(tmp_path, monkeypatch, "dinov2_vits14", random_state(dinov2_keys(384, 1), 2))
    ex = registry.extractor({"name": "superpoint", "weights": "superpoint_open", "max_keypoints": 40,
                             "detection_threshold": 0.0})
    guide = registry.guidance({"name": "dinov2_vits14", "global": "mean"})
    img = (_textured_image(90, 120)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    item, gvec = extract_image(img, ex, guide, 100, torch.device("cpu"))
    n = item["keypoints"].shape[0]
    assert n == 40 and item["descriptors"].shape == (256, n) and item["guidance"].shape == (384, n)
    assert item["guidance"].dtype == np.float16 and np.isfinite(item["guidance"]).all()
    assert gvec.shape == (384,) and np.isclose(np.linalg.norm(gvec), 1.0, atol=1e-5)
    # keypoints come back in original pixels (the image was resized to 100 px for extraction)
    assert item["keypoints"][:, 0].max() < 120 and item["keypoints"][:, 0].max() > 100
