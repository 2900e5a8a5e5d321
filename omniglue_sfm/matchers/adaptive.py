"""Adaptive inference bookkeeping of a padded batch (depth and width confidence, as LightGlue's):
which pairs are still running, which of their points are left, and the compaction of both."""

from __future__ import annotations

import torch


def any_or_all(mask: torch.Tensor) -> torch.Tensor:
    """(B, N) key mask; an image without real points lets all be attended to (no NaN; its
    outputs are discarded)."""
    return mask | ~mask.any(-1, keepdim=True)


def key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, N) bool -> (B, 1, 1, N) additive 0 / -inf key mask for SDPA; None when all real."""
    if mask is None or bool(mask.all()):
        return None
    mask = any_or_all(mask)
    return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))[:, None, None]



class ActivePairs:
    """The pairs still running and their points: ids (B') into the batch, idx0/idx1 (B', N')
    original keypoint indices of the compacted points, with masks marking the real ones."""

    def __init__(self, d0, d1, r0, r1, sim_g, mask0, mask1) -> None:
        self.d0, self.d1, self.r0, self.r1, self.sim_g = d0, d1, r0, r1, sim_g
        self.mask0, self.mask1 = mask0, mask1
        b, n, m = mask0.shape[0], mask0.shape[1], mask1.shape[1]
        dev = mask0.device
        self.ids = torch.arange(b, device=dev)
        self.idx0 = torch.arange(n, device=dev)[None].expand(b, -1)
        self.idx1 = torch.arange(m, device=dev)[None].expand(b, -1)
        self.pruned0 = ~mask0.clone()
        self.pruned1 = ~mask1.clone()
        self._masks()

    @property
    def empty(self) -> bool:
        return len(self.ids) == 0

    def _masks(self) -> None:
        self.self0, self.self1 = key_mask(self.mask0), key_mask(self.mask1)

    def layer(self, layer: torch.nn.Module, mask01: torch.Tensor | None,
              mask10: torch.Tensor | None) -> None:
        self.d0 = layer.self_attn(self.d0, self.r0, self.self0)
        self.d1 = layer.self_attn(self.d1, self.r1, self.self1)
        self.d0, self.d1 = layer.cross_attn(self.d0, self.d1, mask01, mask10)

    def keep_pairs(self, keep: torch.Tensor) -> None:
        for name in ("d0", "d1", "mask0", "mask1", "ids", "idx0", "idx1"):
            setattr(self, name, getattr(self, name)[keep])
        self.r0, self.r1 = self.r0[:, keep], self.r1[:, keep]
        if self.sim_g is not None:
            self.sim_g = (self.sim_g[0][keep], self.sim_g[1][keep])
        self._masks()

    def keep_points(self, side: int, keep: torch.Tensor) -> None:
        """Compact side 0 or 1 to the points ``keep`` (B', N) of each pair (real ones first)."""
        if bool((keep == (self.mask0 if side == 0 else self.mask1)).all()):
            return  # nothing pruned: padding alone is no reason to re-compact
        count = keep.sum(1)
        width = max(1, int(count.max()))
        # stable sort puts kept points first, in their original order
        order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :width]
        new_mask = torch.arange(width, device=keep.device)[None] < count[:, None]
        d, r, idx = (self.d0, self.r0, self.idx0) if side == 0 else (self.d1, self.r1, self.idx1)
        pruned = self.pruned0 if side == 0 else self.pruned1
        dropped = ~keep & (self.mask0 if side == 0 else self.mask1)  # real points pruned now
        pruned[self.ids[:, None].expand_as(idx)[dropped], idx[dropped]] = True
        d = d.gather(1, order[..., None].expand(-1, -1, d.shape[-1]))
        r = r.gather(3, order[None, :, None, :, None].expand(2, -1, 1, -1, r.shape[-1]))
        idx = idx.gather(1, order)
        if side == 0:
            self.d0, self.r0, self.idx0, self.mask0 = d, r, idx, new_mask
            if self.sim_g is not None:
                self.sim_g = gather_points(self.sim_g, order, rows_first=True)
        else:
            self.d1, self.r1, self.idx1, self.mask1 = d, r, idx, new_mask
            if self.sim_g is not None:
                self.sim_g = gather_points(self.sim_g, order, rows_first=False)
        self._masks()


def gather_points(sim_g: tuple[torch.Tensor, torch.Tensor], order: torch.Tensor, rows_first: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the points ``order`` (B, N') of image 0 (``rows_first``) or 1 in (G, G^T)."""
    g01, g10 = sim_g
    if not rows_first:
        g01, g10 = g10, g01
    g01 = g01.gather(1, order[..., None].expand(-1, -1, g01.shape[2]))
    g10 = g10.gather(2, order[:, None, :].expand(-1, g10.shape[1], -1))
    return (g01, g10) if rows_first else (g10, g01)
