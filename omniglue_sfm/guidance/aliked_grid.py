"""Offline guidance backbone: the local-feature network's own dense map on a coarse grid.

OmniGlue's guidance is DINOv2 ViT-B/14: one feature per 14x14-pixel patch, coarse and
semantic. Its weights cannot be downloaded in our build environment, so this plugin gives the
same *shape* of signal from weights we have: the extractor's dense descriptor map (ALIKED's
L2-normalised 128-d map, or DISK's) average-pooled on a 14-pixel grid and L2-normalised per cell.
Pooling a 14x14 window makes each cell describe a neighbourhood rather than a point, which is
what the guided cross-attention needs (which keypoints of the other image are plausibly
related), though it is far less semantic than DINOv2. Whether it helps is measured by training,
against no guidance.

The global descriptor (for retrieval pairs) is the mean of the per-pixel unit vectors,
L2-normalised; see :func:`global_descriptor`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import Guidance


def global_descriptor(dense: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) dense map -> (C,) unit vector: mean of the L2-normalised pixel descriptors.

    A plain mean rather than GeM: descriptors such as ALIKED's have negative entries, for which
    GeM's power p is undefined.
    """
    pooled = F.normalize(dense.float(), dim=1).mean(dim=(0, 2, 3))
    return F.normalize(pooled, dim=0)


class ALIKEDGridGuidance(Guidance):
    """Config: ``cells``, grid cells along the image's longest side (default 73: a 14-pixel cell
    at 1024 px), so that a cell covers the same share of the image at every resolution (training
    crops and pipeline images differ in size); or ``cell`` > 0, a fixed step in pixels of the
    extraction image (DINOv2's 14-pixel patches), which overrides ``cells``."""

    default_conf: ClassVar[dict] = {"cells": 73, "cell": 0}
    dim = 128

    def grid_size(self, h: int, w: int) -> tuple[int, int]:
        cell = float(self.conf["cell"]) or max(h, w) / float(self.conf["cells"])
        return max(1, round(h / cell)), max(1, round(w / cell))

    def forward(self, image: torch.Tensor, features: dict) -> dict[str, torch.Tensor]:
        dense = features.get("dense")
        if dense is None:
            raise ValueError("aliked-grid guidance needs an extractor that returns its dense map "
                             "(aliked or disk)")
        grid_hw = self.grid_size(*image.shape[-2:])
        # adaptive pooling splits the map into grid_hw nearly equal cells covering the whole image,
        # so cell (i, j) is centred at ((j + 0.5) W / w, (i + 0.5) H / h) as sample_dense expects
        grid = F.adaptive_avg_pool2d(F.normalize(dense.float(), dim=1), grid_hw)
        return {"dense": F.normalize(grid, dim=1), "global_descriptor": global_descriptor(dense)}
