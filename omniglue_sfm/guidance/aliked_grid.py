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
    """Config: ``cell`` (grid step in pixels of the extraction image, default 14)."""

    default_conf: ClassVar[dict] = {"cell": 14}
    dim = 128

    def forward(self, image: torch.Tensor, features: dict) -> dict[str, torch.Tensor]:
        dense = features.get("dense")
        if dense is None:
            raise ValueError("aliked-grid guidance needs an extractor that returns its dense map "
                             "(aliked or disk)")
        h, w = image.shape[-2:]
        cell = int(self.conf["cell"])
        grid_hw = (max(1, round(h / cell)), max(1, round(w / cell)))
        # adaptive pooling splits the map into grid_hw nearly equal cells covering the whole image,
        # so cell (i, j) is centred at ((j + 0.5) W / w, (i + 0.5) H / h) as sample_dense expects
        grid = F.adaptive_avg_pool2d(F.normalize(dense.float(), dim=1), grid_hw)
        return {"dense": F.normalize(grid, dim=1), "global_descriptor": global_descriptor(dense)}
