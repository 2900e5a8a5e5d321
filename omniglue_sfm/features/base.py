"""Interface of local-feature extractors."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class Extractor(nn.Module):
    """Detects keypoints and describes them.

    ``forward(image)``:
      image: (1, 3, H, W) float32 RGB in [0, 1] (already resized for extraction).
    returns a dict with
      keypoints:   (N, 2) float32, pixels of ``image``, centre of the top-left pixel at (0, 0);
      scores:      (N,) float32;
      descriptors: (N, D) float32;
      dense:       optional (1, C, H', W') dense descriptor map (used by guidance plugins).
    """

    default_conf: ClassVar[dict] = {}
    descriptor_dim: int = 0

    def __init__(self, conf: dict) -> None:
        super().__init__()
        self.conf = {**self.default_conf, **{k: v for k, v in conf.items() if k != "name"}}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
