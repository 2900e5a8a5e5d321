"""DINOv2 guidance (Oquab et al. 2023): OmniGlue's foundation-model features.

Our own ViT (no timm), whose parameter names are those of the official
``dinov2_vit{s,b}14_pretrain.pth`` files (docs/reference.md §2.1), loaded strictly. The
architecture (width, depth, registers) is read from the checkpoint; heads are width / 64.

Pre-processing as OmniGlue's official wrapper (docs/reference.md §2.2): the long side is brought down to at
most 630 px (the short side ``int(630 * short / long)``), each side floored to a multiple of 14,
bilinear resize without antialiasing, ImageNet normalisation. Features: the last block's tokens
through the final LayerNorm, patch tokens only. Position embeddings are resized as the official
code does: bicubic, ``scale_factor = ((h + 0.1) / 37, (w + 0.1) / 37)``, no antialiasing (register
variants: exact size, antialiasing on, as in their hub constructors).

Deviation from the official sampler, on purpose: the resized image covers the whole input, so
patch (i, j) is centred at ((j + 0.5) W / w, (i + 0.5) H / h) and ``guidance.base.sample_dense``
samples it there; the official code samples at ``x w / W`` with no half-cell offset.

Global descriptor: the final-LayerNorm CLS token, L2-normalised (``global = "cls"``), or the mean
of the L2-normalised patch tokens, L2-normalised (``global = "mean"``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import weights
from .base import Guidance

PATCH = 14
HEAD_DIM = 64
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # rows of qkv are ordered [q | k | v], each split into heads of 64 channels
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, h*w, D), row-major patches


class DINOv2ViT(nn.Module):
    """DINOv2 ViT/14 at the official 518-px training size (37 x 37 position grid)."""

    def __init__(self, dim: int = 768, depth: int = 12, num_registers: int = 0, grid: int = 37) -> None:
        super().__init__()
        self.dim, self.grid, self.num_registers = dim, grid, num_registers
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # used in training only; kept to load strictly
        if num_registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, num_registers, dim))
        self.blocks = nn.ModuleList([Block(dim, dim // HEAD_DIM) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> DINOv2ViT:
        """Build the architecture a checkpoint describes (width, depth, registers, grid)."""
        if "cls_token" not in state or "pos_embed" not in state:
            raise weights.WeightsNotFoundError("not a DINOv2 checkpoint: no cls_token / pos_embed")
        dim = state["cls_token"].shape[-1]
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        regs = state["register_tokens"].shape[1] if "register_tokens" in state else 0
        grid = math.isqrt(state["pos_embed"].shape[1] - 1)
        return cls(dim, depth, regs, grid)

    def interpolate_pos_encoding(self, h: int, w: int) -> torch.Tensor:
        """(1, 1 + h*w, D) position embeddings for an h x w patch grid (official resampling)."""
        pos = self.pos_embed.float()
        if h == w == self.grid:
            return pos
        g = self.grid
        patch_pos = pos[:, 1:].reshape(1, g, g, self.dim).permute(0, 3, 1, 2)
        if self.num_registers:  # register variants: exact size, antialiased
            patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", antialias=True)
        else:  # the +0.1 avoids a floating-point floor one below the target size
            patch_pos = F.interpolate(patch_pos, scale_factor=((h + 0.1) / g, (w + 0.1) / g),
                                      mode="bicubic", antialias=False)
        if patch_pos.shape[-2:] != (h, w):
            raise RuntimeError(f"position grid {tuple(patch_pos.shape[-2:])} != patch grid {(h, w)}")
        return torch.cat([pos[:, :1], patch_pos.flatten(2).transpose(1, 2)], 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) normalised, H and W multiples of 14 -> (CLS (B, D), patches (B, D, h, w)),
        both after the final LayerNorm."""
        b, _, hh, ww = x.shape
        h, w = hh // PATCH, ww // PATCH
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), self.patch_embed(x)], 1)
        tokens = tokens + self.interpolate_pos_encoding(h, w).to(tokens.dtype)
        if self.num_registers:  # registers carry no position embedding and sit after CLS
            regs = self.register_tokens.expand(b, -1, -1)
            tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], 1)
        for blk in self.blocks:
            tokens = blk(tokens)
        tokens = self.norm(tokens)
        patches = tokens[:, 1 + self.num_registers:].transpose(1, 2).reshape(b, self.dim, h, w)
        return tokens[:, 0], patches


def dino_input_size(height: int, width: int, max_side: int = 630) -> tuple[int, int]:
    """(H', W') the image is resized to: long side at most ``max_side`` (short side truncated),
    then each side floored to a multiple of 14 (at least one patch)."""
    if max(height, width) > max_side:
        if height >= width:
            height, width = max_side, int(max_side * width / height)
        else:
            height, width = int(max_side * height / width), max_side
    return max(PATCH, height // PATCH * PATCH), max(PATCH, width // PATCH * PATCH)


class DINOv2Guidance(Guidance):
    """The ``dinov2_vits14`` / ``dinov2_vitb14`` guidance plugin (the preset ``name`` picks it).

    Config: ``weights`` (explicit checkpoint path, optional; default: the official file via the
    weights policy), ``max_side`` (630), ``global`` ("cls" or "mean").
    """

    default_conf: ClassVar[dict] = {"weights": None, "max_side": 630, "global": "cls"}
    variants: ClassVar[dict[str, int]] = {"dinov2_vits14": 384, "dinov2_vitb14": 768}

    def __init__(self, conf: dict) -> None:
        variant = conf.get("name", "dinov2_vitb14")
        super().__init__(conf)
        if variant not in self.variants:
            raise ValueError(f"unknown DINOv2 variant {variant!r}; known: {sorted(self.variants)}")
        if self.conf["global"] not in ("cls", "mean"):
            raise ValueError(f"global must be 'cls' or 'mean', got {self.conf['global']!r}")
        explicit = self.conf.get("weights")
        if explicit and str(explicit) in weights.KNOWN:  # another known name, e.g. a fine-tuned copy
            path = weights.resolve_known(str(explicit))
        else:
            path = weights.resolve_known(variant, explicit)
        self.vit = load_vit(path)
        if self.vit.dim != self.variants[variant]:
            raise weights.WeightsNotFoundError(
                f"{path} holds a {self.vit.dim}-d ViT but {variant} is {self.variants[variant]}-d")
        self.dim = self.vit.dim
        self.variant = variant
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)
        self.eval()

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) RGB in [0, 1] -> resized, normalised (1, 3, H', W')."""
        size = dino_input_size(*image.shape[-2:], int(self.conf["max_side"]))
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=False)
        return (image - self.mean) / self.std

    @torch.inference_mode()
    def forward(self, image: torch.Tensor, features: dict | None = None) -> dict[str, torch.Tensor]:
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"DINOv2 guidance expects a (1, 3, H, W) RGB image, got {tuple(image.shape)}")
        cls_token, patches = self.vit(self.preprocess(image.float()))
        if self.conf["global"] == "cls":
            gdesc = F.normalize(cls_token[0], dim=0)
        else:
            gdesc = F.normalize(F.normalize(patches, dim=1).mean((0, 2, 3)), dim=0)
        return {"dense": patches, "global_descriptor": gdesc}


def load_vit(path: Path) -> DINOv2ViT:
    """The DINOv2 ViT of an official checkpoint file, its shape read from the file and every key
    loaded strictly; :class:`WeightsNotFoundError` naming the file when it is not one."""
    state = weights.load_state_dict(path)
    vit = DINOv2ViT.from_state_dict(state)
    try:
        vit.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise weights.WeightsNotFoundError(f"{path} is not a DINOv2 ViT/14 checkpoint: {err}") from err
    return vit
