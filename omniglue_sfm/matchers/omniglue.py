"""OmniGlue (Jiang et al., CVPR 2024, arXiv 2405.12979) in PyTorch.

A sparse matcher whose cross-attention is guided by a foundation model: for each keypoint,
cross-attention only looks at the top ``guidance_ratio`` of the other image's keypoints by
cosine similarity of their guidance features (DINOv2 in the paper). Positions guide attention
but never enter the values, so the refined descriptors carry no position (paper Eqs. 1-5)::

    q_i = W_q (d_i + p_i),  k_j = W_k (d_j + p_j),  v_j = W_v d_j
    delta_i = merge(softmax(q_i k_S^T / sqrt(c)) v_S)
    d_i <- d_i + MLP([d_i | delta_i])

9 blocks of (self-attention, cross-attention), then a final projection, dot-product scores and
log-space Sinkhorn with a learned dustbin (SuperGlue), mutual best above a threshold.

Shapes: B pairs, N / M keypoints (padded), D local-descriptor dim, C guidance dim, c = d_model.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import Matcher, mutual_matches
from .sinkhorn import log_optimal_transport


def normalize_keypoints(kpts: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) pixels -> roughly [-1, 1], centred, scaled by half the longest side."""
    size = size.to(kpts)
    shift = size / 2
    scale = size.max(-1).values / 2
    return (kpts - shift[:, None]) / scale[:, None, None]


class FourierPositionEncoder(nn.Module):
    """p = MLP([x, y, sin(2^l pi x), cos(2^l pi x), sin(2^l pi y), cos(2^l pi y)]_{l<L})."""

    def __init__(self, num_frequencies: int, dim: int) -> None:
        super().__init__()
        self.register_buffer(
            "freqs", (2.0 ** torch.arange(num_frequencies)) * math.pi, persistent=False
        )
        in_dim = 2 + 4 * num_frequencies
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        """xy: (B, N, 2) normalised coordinates -> (B, N, c)."""
        angles = xy[..., None] * self.freqs  # (B, N, 2, L)
        feats = torch.cat([xy, angles.sin().flatten(-2), angles.cos().flatten(-2)], -1)
        return self.mlp(feats)


class PositionGuidedAttention(nn.Module):
    """One attention layer of OmniGlue: q, k from d + p; v from d; residual MLP on [d | delta]."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.merge = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(
            nn.Linear(2 * dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self,
        desc: torch.Tensor,
        pos: torch.Tensor,
        src_desc: torch.Tensor,
        src_pos: torch.Tensor,
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """desc/pos: (B, N, c) targets; src_*: (B, S, c) sources; attn_mask: (B, 1|N, S), bool
        (True = may attend) or additive float (0 / -inf, see :func:`additive_mask`), broadcast
        over heads. Returns the updated (B, N, c)."""
        q = self._heads(self.q(desc + pos))
        k = self._heads(self.k(src_desc + src_pos))
        v = self._heads(self.v(src_desc))
        mask = attn_mask[:, None] if attn_mask is not None else None
        if mask is not None and mask.dtype != q.dtype and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)  # additive masks follow the activations (autocast)
        msg = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        msg = self.merge(msg.transpose(1, 2).flatten(2))
        return desc + self.mlp(torch.cat([desc, msg], -1))


def guidance_mask(
    g0: torch.Tensor, g1: torch.Tensor, mask1: torch.Tensor, ratio: float
) -> torch.Tensor:
    """For every keypoint of image 0, True for the top ``ratio`` of image 1's real keypoints by
    cosine similarity of guidance features. g0: (B, N, C), g1: (B, M, C), mask1: (B, M).
    Returns (B, N, M) bool. Ties at the threshold are kept."""
    sim = torch.einsum("bnc,bmc->bnm", F.normalize(g0.float(), dim=-1), F.normalize(g1.float(), dim=-1))
    sim = sim.masked_fill(~mask1[:, None, :], float("-inf"))
    counts = mask1.sum(1)  # (B,)
    keep = (counts.float() * ratio).floor().clamp(min=1).long()  # per pair
    return (sim >= _kth_largest(sim, keep)) & mask1[:, None, :]


def _kth_largest(sim: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, N, 1): the keep[b]-th largest entry of each row of sim (B, N, M). An unsorted top-k and
    its minimum: 2-3x faster on the CPU than a sorted top-k and a gather, same values."""
    if bool((keep == keep[0]).all()):
        return sim.topk(int(keep[0]), dim=2, sorted=False).values.amin(2, keepdim=True)
    return torch.stack([s.topk(int(k), dim=1, sorted=False).values.amin(1, keepdim=True)
                        for s, k in zip(sim, keep, strict=True)])


def additive_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """Bool attention mask (True = may attend) -> float 0 / -inf, built once per forward: SDPA
    would otherwise convert a bool mask in every one of the 18 layers. None when nothing is
    masked (SDPA's fastest path). A query with no allowed key at all (an image without
    keypoints; its output is discarded) gets zeros, not NaN."""
    if bool(mask.all()):
        return None
    mask = mask | ~mask.any(-1, keepdim=True)
    return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))


class OmniGlue(nn.Module):
    default_conf: ClassVar[dict] = {
        "input_dim": 128,  # local descriptor dimension (ALIKED 128, SuperPoint 256, DISK 128)
        "guidance_dim": 128,  # guidance feature dimension (DINOv2 ViT-B 768, ViT-S 384)
        "d_model": 256,
        "n_layers": 9,
        "num_heads": 4,
        "num_frequencies": 8,
        "guidance_ratio": 0.5,  # 1.0 = unguided cross-attention (the paper's "without DINO")
        "sinkhorn_iterations": 20,
        "match_threshold": 0.1,
    }

    def __init__(self, conf: dict | None = None) -> None:
        super().__init__()
        self.conf = conf = {**self.default_conf, **(conf or {})}
        dim = conf["d_model"]
        self.input_proj = (
            nn.Linear(conf["input_dim"], dim) if conf["input_dim"] != dim else nn.Identity()
        )
        self.posenc = FourierPositionEncoder(conf["num_frequencies"], dim)
        self.self_blocks = nn.ModuleList(
            [PositionGuidedAttention(dim, conf["num_heads"]) for _ in range(conf["n_layers"])]
        )
        self.cross_blocks = nn.ModuleList(
            [PositionGuidedAttention(dim, conf["num_heads"]) for _ in range(conf["n_layers"])]
        )
        self.final_proj = nn.Linear(dim, dim)
        self.bin_score = nn.Parameter(torch.tensor(1.0))

    def cross_masks(self, data: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, M) and (B, M, N) boolean cross-attention masks (guidance and padding)."""
        mask0, mask1 = data["mask0"], data["mask1"]
        ratio = self.conf["guidance_ratio"]
        if ratio >= 1.0 or "guidance0" not in data:
            return (
                mask1[:, None, :].expand(-1, mask0.shape[1], -1),
                mask0[:, None, :].expand(-1, mask1.shape[1], -1),
            )
        g0, g1 = data["guidance0"], data["guidance1"]
        return guidance_mask(g0, g1, mask1, ratio), guidance_mask(g1, g0, mask0, ratio)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """data: the padded batch of ``matchers.base`` (keypoints, descriptors, image_size,
        masks, optional guidance). Returns matches0 (B, N), matching_scores0 (B, N),
        log_assignment (B, N+1, M+1)."""
        b, n = data["keypoints0"].shape[:2]
        m = data["keypoints1"].shape[1]
        dev = data["keypoints0"].device
        mask0 = data.get("mask0", torch.ones(b, n, dtype=torch.bool, device=dev))
        mask1 = data.get("mask1", torch.ones(b, m, dtype=torch.bool, device=dev))
        data = {**data, "mask0": mask0, "mask1": mask1}

        d0 = self.input_proj(data["descriptors0"])
        d1 = self.input_proj(data["descriptors1"])
        p0 = self.posenc(normalize_keypoints(data["keypoints0"], data["image_size0"]))
        p1 = self.posenc(normalize_keypoints(data["keypoints1"], data["image_size1"]))
        # (B, 1, S) padding-only self masks and (B, N, M) / (B, M, N) cross masks, additive
        self0, self1 = additive_mask(mask0[:, None, :]), additive_mask(mask1[:, None, :])
        cross01, cross10 = (additive_mask(m) for m in self.cross_masks(data))

        for self_attn, cross_attn in zip(self.self_blocks, self.cross_blocks, strict=True):
            d0, d1 = self_attn(d0, p0, d0, p0, self0), self_attn(d1, p1, d1, p1, self1)
            d0, d1 = cross_attn(d0, p0, d1, p1, cross01), cross_attn(d1, p1, d0, p0, cross10)

        f0, f1 = self.final_proj(d0), self.final_proj(d1)
        scores = torch.einsum("bnc,bmc->bnm", f0, f1) / f0.shape[-1] ** 0.5
        log_p = log_optimal_transport(
            scores, self.bin_score, self.conf["sinkhorn_iterations"], mask0, mask1
        )
        matches0, mscores0 = mutual_matches(
            log_p[:, :-1, :-1].exp(), self.conf["match_threshold"], mask0, mask1
        )
        return {"matches0": matches0, "matching_scores0": mscores0, "log_assignment": log_p}


class OmniGlueMatcher(Matcher):
    """The ``omniglue`` matcher plugin: an :class:`OmniGlue` with a checkpoint.

    Checkpoint file: ``torch.save({"conf": ..., "state_dict": ..., "metadata": ...})``. Config
    keys: ``weights`` (name in ``weights.KNOWN`` or a path), and any model conf key to override
    (e.g. ``match_threshold``, ``sinkhorn_iterations``, ``guidance_ratio``).
    """

    default_conf: ClassVar[dict] = {"weights": "omniglue"}
    required_inputs: ClassVar[tuple[str, ...]] = ("keypoints", "descriptors", "guidance")

    def __init__(self, conf: dict) -> None:
        super().__init__(conf)
        ckpt = load_checkpoint(self.conf["weights"])
        overrides = {k: v for k, v in self.conf.items() if k in OmniGlue.default_conf}
        self.model = OmniGlue({**ckpt["conf"], **overrides})
        self.model.load_state_dict(dequantize_state_dict(ckpt["state_dict"]))
        self.metadata = ckpt.get("metadata", {})
        self.model.eval()
        if self.model.conf["guidance_ratio"] >= 1.0:
            self.required_inputs = ("keypoints", "descriptors")

    @torch.inference_mode()
    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(data)
        return {"matches0": out["matches0"], "matching_scores0": out["matching_scores0"]}


def load_checkpoint(weights: str) -> dict:
    """Resolve ``weights`` (a ``weights.KNOWN`` name or a file path) and read the checkpoint."""
    from pathlib import Path

    from .. import weights as W

    path = W.resolve_known(weights) if weights in W.KNOWN else W.resolve(
        W.WeightSpec(Path(weights).name, "OMNIGLUE_SFM_OMNIGLUE"), explicit=weights
    )
    ckpt = W.load_state_dict(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "conf" not in ckpt:
        raise W.WeightsNotFoundError(
            f"{path} is not an omniglue-sfm OmniGlue checkpoint (expected keys 'conf' and 'state_dict')"
        )
    return ckpt


# --------------------------------------------------------------------------------------------
# compact checkpoints: 12 M parameters are 48 MB in float32 and 24 MB in float16, over the 20 MB
# we allow inside the package, so 2-D weights are stored as int8 with one float scale per output
# row (symmetric, per-channel); everything else stays float32.


def quantize_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        value = value.detach().float().cpu()
        if value.ndim == 2 and value.numel() >= 4096:
            scale = value.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127.0
            out[key + ".int8"] = (value / scale).round().clamp(-127, 127).to(torch.int8)
            out[key + ".scale"] = scale.squeeze(1)
        else:
            out[key] = value
    return out


def dequantize_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".int8"):
            base = key[: -len(".int8")]
            out[base] = value.float() * state_dict[base + ".scale"].float()[:, None]
        elif not key.endswith(".scale") or key[: -len(".scale")] + ".int8" not in state_dict:
            out[key] = value.float()
    return out


def save_checkpoint(model: OmniGlue, path, metadata: dict, quantize: bool = True) -> None:
    """Write ``{"conf", "state_dict", "metadata"}`` atomically (int8 weights when ``quantize``)."""
    import os
    from pathlib import Path

    path = Path(path)
    state = model.state_dict()
    state = quantize_state_dict(state) if quantize else {k: v.detach().cpu() for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"conf": dict(model.conf), "state_dict": state, "metadata": dict(metadata)}, tmp)
    os.replace(tmp, path)
