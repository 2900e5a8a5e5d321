"""Interface of guidance backbones (OmniGlue's foundation-model features).

A guidance backbone turns an image into a dense feature map and, from the same forward pass, a
global descriptor (used by retrieval pairs). It is computed once per image in ``extract``,
sampled at the keypoints and stored in ``features.h5`` as ``guidance`` (C, N) float16.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class Guidance(nn.Module):
    """``forward(image, features)``:
      image:    (1, 3, H, W) float32 RGB in [0, 1];
      features: the extractor's output for the same image (may hold ``dense``).
    returns ``{"dense": (1, C, h, w), "global_descriptor": (C,)}``; the map covers the whole
    image (cell (i, j) centred at ((j + 0.5) W / w, (i + 0.5) H / h)).
    """

    default_conf: ClassVar[dict] = {}
    dim: int = 0

    def __init__(self, conf: dict) -> None:
        super().__init__()
        self.conf = {**self.default_conf, **{k: v for k, v in conf.items() if k != "name"}}

    def forward(self, image: torch.Tensor, features: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover


def sample_dense(dense: torch.Tensor, keypoints: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly sample a dense map at keypoints.

    dense: (1, C, h, w) covering an image of ``size`` = (W, H) pixels; keypoints: (N, 2) pixels
    of that image. Returns (N, C). Cell centres sit at ((j + 0.5) W / w, (i + 0.5) H / h)
    (``align_corners=False``); outside the outermost centres the border value is used.
    """
    w, h = size
    grid = keypoints.new_empty(1, 1, keypoints.shape[0], 2)
    grid[0, 0, :, 0] = (keypoints[:, 0] + 0.5) / w * 2 - 1
    grid[0, 0, :, 1] = (keypoints[:, 1] + 0.5) / h * 2 - 1
    out = F.grid_sample(dense, grid.to(dense.dtype), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0, :, 0].t()
