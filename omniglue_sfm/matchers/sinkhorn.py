"""Log-space optimal transport with a dustbin (SuperGlue's formulation), shared by SuperGlue and
OmniGlue. Handles padded batches: padded rows/columns get zero mass and do not change the result
of the real ones.
"""

from __future__ import annotations

import torch

# exp(-1e4) underflows to exactly 0 in float32/float16-accumulated-as-float32, so "very
# negative" behaves like -inf without producing NaN in (-inf) - (-inf).
_NEG = -1e4


def log_optimal_transport(
    scores: torch.Tensor,
    alpha: torch.Tensor,
    iterations: int,
    mask0: torch.Tensor | None = None,
    mask1: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sinkhorn in log space.

    scores: (B, N, M) similarity; alpha: scalar dustbin score; masks (B, N) / (B, M) bool.
    Returns (B, N+1, M+1) log assignment, scaled by log(n+m) so that matched entries are O(1)
    (rows of real keypoints sum to about 1 in exp space).
    """
    b, n, m = scores.shape
    scores = scores.float()
    if mask0 is None:
        mask0 = scores.new_ones(b, n, dtype=torch.bool)
    if mask1 is None:
        mask1 = scores.new_ones(b, m, dtype=torch.bool)
    ns = mask0.sum(1).float()  # (B,)
    ms = mask1.sum(1).float()
    alpha = alpha.float()
    couplings = torch.cat(
        [
            torch.cat([scores, alpha.expand(b, n, 1)], 2),
            alpha.expand(b, 1, m + 1),
        ],
        1,
    )
    valid0 = torch.cat([mask0, mask0.new_ones(b, 1)], 1)  # (B, N+1): dustbin row is valid
    valid1 = torch.cat([mask1, mask1.new_ones(b, 1)], 1)
    valid = valid0[:, :, None] & valid1[:, None, :]
    couplings = couplings.masked_fill(~valid, _NEG)

    norm = -(ns + ms).log()  # (B,)
    log_mu = torch.cat([norm[:, None].expand(b, n), (ms.log() + norm)[:, None]], 1)
    log_nu = torch.cat([norm[:, None].expand(b, m), (ns.log() + norm)[:, None]], 1)
    log_mu = log_mu.masked_fill(~valid0, _NEG)
    log_nu = log_nu.masked_fill(~valid1, _NEG)

    u = torch.zeros_like(log_mu)
    v = torch.zeros_like(log_nu)
    for _ in range(iterations):
        u = log_mu - torch.logsumexp(couplings + v[:, None, :], dim=2)
        v = log_nu - torch.logsumexp(couplings + u[:, :, None], dim=1)
    log_p = couplings + u[:, :, None] + v[:, None, :] - norm[:, None, None]
    return log_p.masked_fill(~valid, _NEG)
