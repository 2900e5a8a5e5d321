"""Mutual nearest neighbour matching of descriptors (cosine similarity), batched with masks."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import Matcher, mutual_matches


class MutualNearestNeighbour(Matcher):
    """Config: ``min_similarity`` (cosine, optional) and ``ratio_threshold`` (optional Lowe ratio
    on descriptor distances ``sqrt(2 - 2 cos)``, tested in both directions).

    Scores are the cosine similarities of the matched descriptors.
    """

    default_conf: ClassVar[dict] = {"min_similarity": None, "ratio_threshold": None}

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        d0 = F.normalize(data["descriptors0"].float(), dim=-1)
        d1 = F.normalize(data["descriptors1"].float(), dim=-1)
        sim = torch.einsum("bnd,bmd->bnm", d0, d1)
        b, n, m = sim.shape
        mask0 = data.get("mask0", torch.ones(b, n, dtype=torch.bool, device=sim.device))
        mask1 = data.get("mask1", torch.ones(b, m, dtype=torch.bool, device=sim.device))
        threshold = self.conf["min_similarity"]
        matches0, scores0 = mutual_matches(
            sim, float("-inf") if threshold is None else float(threshold), mask0, mask1
        )
        ratio = self.conf["ratio_threshold"]
        if ratio is not None and n > 0 and m > 0:
            valid = mask0[:, :, None] & mask1[:, None, :]
            masked = sim.masked_fill(~valid, float("-inf"))
            # row i matched to column j: row i's ratio (over columns) and column j's (over rows) must pass
            row_ok = _ratio_ok(masked, 2, float(ratio))
            col_ok_at_match = _ratio_ok(masked, 1, float(ratio)).gather(1, matches0.clamp(min=0))
            keep = row_ok & col_ok_at_match & (matches0 >= 0)
            matches0 = torch.where(keep, matches0, torch.full_like(matches0, -1))
            scores0 = torch.where(keep, scores0, torch.zeros_like(scores0))
        return {"matches0": matches0, "matching_scores0": scores0}


def _ratio_ok(sim: torch.Tensor, dim: int, ratio: float) -> torch.Tensor:
    """Lowe's ratio test along ``dim`` of a masked (-inf) similarity matrix: (B, N) or (B, M)."""
    k = min(2, sim.shape[dim])
    top = sim.topk(k, dim=dim).values
    best = top.select(dim, 0)
    second = top.select(dim, 1) if k == 2 else torch.full_like(best, float("-inf"))
    dist_best = (2 - 2 * best.clamp(max=1)).clamp(min=0).sqrt()
    dist_second = (2 - 2 * second.clamp(max=1)).clamp(min=0).sqrt()  # -inf similarity -> inf distance
    return dist_best <= ratio * dist_second
