"""SuperGlue (Sarlin et al., CVPR 2020) with Magic Leap's official checkpoints.

Parameter names follow ``superglue_{indoor,outdoor}.pth`` (1x1 ``Conv1d`` layers, channels
first): ``kenc.encoder.*`` (keypoint encoder on (x, y, score)), ``gnn.layers.{0..17}`` alternating
self / cross attention (``attn.proj.{0,1,2}`` = q, k, v, ``attn.merge``, ``mlp.{0,1,3}`` with
BatchNorm), ``final_proj`` and ``bin_score``. Heads are *interleaved*: channel c belongs to head
c % 4 at position c // 4 (the checkpoint was trained that way). The log-space Sinkhorn and the
mutual arg-max are shared with OmniGlue.

Padded batches: BatchNorm runs in eval mode (a per-channel affine map), padded keys are masked
out of attention and out of Sinkhorn, so a pair gives the same matches alone or in a batch.

The 1x1 convolutions keep the checkpoint's names and shapes but run as matrix products on
(B, N, C) tensors (``pointwise``): PyTorch's CPU Conv1d falls back to a slow im2col path.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import weights
from .base import Matcher, mutual_matches
from .sinkhorn import log_optimal_transport


def conv_mlp(channels: list[int]) -> nn.Sequential:
    """1x1 convs with BatchNorm + ReLU between them (not after the last)."""
    layers: list[nn.Module] = []
    for i in range(1, len(channels)):
        layers.append(nn.Conv1d(channels[i - 1], channels[i], 1, bias=True))
        if i < len(channels) - 1:
            layers += [nn.BatchNorm1d(channels[i]), nn.ReLU()]
    return nn.Sequential(*layers)


def pointwise(seq: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 1x1 Conv1d, or a ``conv_mlp`` stack of them, to channels-last x (B, N, C)."""
    layers = seq if isinstance(seq, nn.Sequential) else [seq]
    for layer in layers:
        if isinstance(layer, nn.Conv1d):
            x = F.linear(x, layer.weight[..., 0], layer.bias)
        elif isinstance(layer, nn.BatchNorm1d):
            x = F.batch_norm(x.reshape(-1, x.shape[-1]), layer.running_mean, layer.running_var,
                             layer.weight, layer.bias, layer.training, layer.momentum or 0.0,
                             layer.eps).view(x.shape)
        else:
            x = layer(x)
    return x


def normalize_keypoints_superglue(kpts: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) pixels, size (B, 2) = (W, H) -> (kp - size / 2) / (0.7 max(W, H))."""
    size = size.to(kpts)
    scale = 0.7 * size.max(-1, keepdim=True).values
    return (kpts - size[:, None] / 2) / scale[:, None]


class KeypointEncoder(nn.Module):
    def __init__(self, dim: int, layers: list[int]) -> None:
        super().__init__()
        self.encoder = conv_mlp([3, *layers, dim])

    def forward(self, kpts: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """kpts (B, N, 2) normalised, scores (B, N) -> (B, N, dim)."""
        return pointwise(self.encoder, torch.cat([kpts, scores[..., None]], -1))


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.proj = nn.ModuleList([nn.Conv1d(dim, dim, 1) for _ in range(3)])
        self.merge = nn.Conv1d(dim, dim, 1)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N, C / heads), channel c -> (head c % h, position c // h)."""
        b, n, c = x.shape
        return x.view(b, n, c // self.num_heads, self.num_heads).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, src: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, N, C) queries, src (B, S, C) keys/values, key_mask (B, 1, 1, S) bool or None."""
        q = self._heads(pointwise(self.proj[0], x))
        k = self._heads(pointwise(self.proj[1], src))
        v = self._heads(pointwise(self.proj[2], src))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, h, N, d)
        b, h, n, d = out.shape
        return pointwise(self.merge, out.permute(0, 2, 3, 1).reshape(b, n, d * h))


class AttentionalPropagation(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(dim, num_heads)
        self.mlp = conv_mlp([2 * dim, 2 * dim, dim])
        nn.init.constant_(self.mlp[-1].bias, 0.0)

    def forward(self, x: torch.Tensor, src: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """Returns the residual update of x."""
        return pointwise(self.mlp, torch.cat([x, self.attn(x, src, key_mask)], -1))


class AttentionalGNN(nn.Module):
    def __init__(self, dim: int, layer_names: list[str], num_heads: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([AttentionalPropagation(dim, num_heads) for _ in layer_names])
        self.names = layer_names

    def forward(self, d0: torch.Tensor, d1: torch.Tensor, m0: torch.Tensor | None,
                m1: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        for layer, name in zip(self.layers, self.names, strict=True):
            if name == "cross":
                delta0, delta1 = layer(d0, d1, m1), layer(d1, d0, m0)
            else:
                delta0, delta1 = layer(d0, d0, m0), layer(d1, d1, m1)
            d0, d1 = d0 + delta0, d1 + delta1
        return d0, d1


def _key_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """(B, S) bool -> (B, 1, 1, S) for SDPA, or None without padding. An image with no keypoint at
    all gets an all-True mask (its result is discarded) so that softmax never sees only -inf."""
    if bool(mask.all()):
        return None
    mask = mask | ~mask.any(1, keepdim=True)
    return mask[:, None, None, :]


class SuperGlue(nn.Module):
    default_conf: ClassVar[dict] = {
        "descriptor_dim": 256,
        "keypoint_encoder": [32, 64, 128, 256],
        "gnn_layers": ["self", "cross"] * 9,
        "num_heads": 4,
        "sinkhorn_iterations": 100,
        "match_threshold": 0.2,
    }

    def __init__(self, conf: dict | None = None) -> None:
        super().__init__()
        self.conf = conf = {**self.default_conf, **(conf or {})}
        dim = conf["descriptor_dim"]
        self.kenc = KeypointEncoder(dim, list(conf["keypoint_encoder"]))
        self.gnn = AttentionalGNN(dim, list(conf["gnn_layers"]), conf["num_heads"])
        self.final_proj = nn.Conv1d(dim, dim, 1)
        self.register_parameter("bin_score", nn.Parameter(torch.tensor(1.0)))

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The padded batch of ``matchers.base`` (needs scores0/1). Returns matches0,
        matching_scores0 (B, N) and log_assignment (B, N+1, M+1)."""
        kp0, kp1 = data["keypoints0"], data["keypoints1"]
        b, n, m = kp0.shape[0], kp0.shape[1], kp1.shape[1]
        mask0 = data.get("mask0", torch.ones(b, n, dtype=torch.bool, device=kp0.device))
        mask1 = data.get("mask1", torch.ones(b, m, dtype=torch.bool, device=kp0.device))
        dim = self.conf["descriptor_dim"]
        for i in "01":
            got = data[f"descriptors{i}"].shape[-1]
            if got != dim:
                raise ValueError(f"SuperGlue needs {dim}-d descriptors, got {got}")
        d0 = data["descriptors0"] + self.kenc(
            normalize_keypoints_superglue(kp0, data["image_size0"]), data["scores0"])
        d1 = data["descriptors1"] + self.kenc(
            normalize_keypoints_superglue(kp1, data["image_size1"]), data["scores1"])
        d0, d1 = self.gnn(d0, d1, _key_mask(mask0), _key_mask(mask1))
        f0, f1 = pointwise(self.final_proj, d0), pointwise(self.final_proj, d1)
        scores = torch.einsum("bnd,bmd->bnm", f0, f1) / dim**0.5
        log_p = log_optimal_transport(scores, self.bin_score, self.conf["sinkhorn_iterations"], mask0, mask1)
        matches0, mscores0 = mutual_matches(log_p[:, :-1, :-1].exp(), self.conf["match_threshold"],
                                            mask0, mask1)
        return {"matches0": matches0, "matching_scores0": mscores0, "log_assignment": log_p}


class SuperGlueMatcher(Matcher):
    """The ``superglue`` matcher plugin.

    Config: ``weights`` ("superglue_outdoor", "superglue_indoor" or a file path),
    ``sinkhorn_iterations`` (100), ``match_threshold`` (0.2). Needs 256-d descriptors and scores
    (SuperPoint).
    """

    default_conf: ClassVar[dict] = {"weights": "superglue_outdoor", "sinkhorn_iterations": 100,
                                    "match_threshold": 0.2}
    required_inputs: ClassVar[tuple[str, ...]] = ("keypoints", "descriptors", "scores")

    def __init__(self, conf: dict) -> None:
        super().__init__(conf)
        name = str(self.conf["weights"])
        if name in weights.KNOWN:
            path = weights.resolve_known(name)
        else:
            spec = weights.WeightSpec(Path(name).name, "OMNIGLUE_SFM_SUPERGLUE")
            path = weights.resolve(spec, explicit=name)
        state = weights.load_state_dict(path)
        self.model = SuperGlue({k: self.conf[k] for k in ("sinkhorn_iterations", "match_threshold")})
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise weights.WeightsNotFoundError(f"{path} is not a SuperGlue checkpoint: {err}") from err
        self.model.eval()

    @torch.inference_mode()
    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(data)
        return {"matches0": out["matches0"], "matching_scores0": out["matching_scores0"]}
