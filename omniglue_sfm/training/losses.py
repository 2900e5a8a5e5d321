"""Loss and match metrics for training OmniGlue.

NLL of the Sinkhorn assignment (SuperGlue's loss), balanced like glue-factory's ``NLLLoss``:
``0.5 * mean(-log P_ij over GT matches) + 0.5 * mean(-log P_dustbin over GT-unmatched points of
both images)``; points labelled -2 (ignore) and padding carry no weight.
"""

from __future__ import annotations

import torch


def nll_loss(
    log_assignment: torch.Tensor, gt0: torch.Tensor, gt1: torch.Tensor, balance: float = 0.5
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """log_assignment (B, N+1, M+1); gt0 (B, N), gt1 (B, M) with index / -1 / -2.

    Returns the batch-mean loss and per-pair parts (B,) ``nll_pos``, ``nll_neg``.
    """
    b, n1, m1 = log_assignment.shape
    n, m = n1 - 1, m1 - 1
    pos = gt0 >= 0  # (B, N)
    idx = gt0.clamp(min=0)
    log_pos = log_assignment[:, :n, :m].gather(2, idx[..., None])[..., 0]  # (B, N)
    num_pos = pos.sum(1).clamp(min=1)
    # padded rows hold -inf (masked softmax); -inf * 0 would be NaN, so select instead of multiply
    nll_pos = -torch.where(pos, log_pos, 0.0).sum(1) / num_pos

    neg0, neg1 = gt0 == -1, gt1 == -1
    log_neg0 = log_assignment[:, :n, m]
    log_neg1 = log_assignment[:, n, :m]
    num_neg = (neg0.sum(1) + neg1.sum(1)).clamp(min=1)
    nll_neg = -((log_neg0 * neg0).sum(1) + (log_neg1 * neg1).sum(1)) / num_neg

    loss = balance * nll_pos + (1 - balance) * nll_neg
    return loss.mean(), {"nll_pos": nll_pos.detach(), "nll_neg": nll_neg.detach()}


def match_counts(
    matches0: torch.Tensor, gt0: torch.Tensor, kp0: torch.Tensor, kp1: torch.Tensor,
    h_0to1: torch.Tensor, mask0: torch.Tensor, correct_px: float = 3.0, wrong_px: float = 5.0,
) -> dict[str, int]:
    """Counts for precision / recall of one pair's predicted matches (the paper's protocol).

    A predicted match is correct if its reprojection error (keypoint 0 warped by H vs keypoint 1)
    is < ``correct_px`` and wrong if > ``wrong_px`` (in between: not counted in precision).
    Recall = correct predictions / GT matches (mutual nearest < 3 px).
    """
    from .homography import warp_points

    valid = (matches0 >= 0) & mask0
    i = valid.nonzero()[:, 0]
    j = matches0[i]
    err = (warp_points(h_0to1, kp0[i]) - kp1[j]).norm(dim=1) if len(i) else kp0.new_zeros(0)
    correct = int((err < correct_px).sum())
    wrong = int((err > wrong_px).sum())
    return {"correct": correct, "wrong": wrong, "predicted": int(valid.sum()),
            "gt": int((gt0 >= 0).sum())}


def precision_recall(counts: list[dict[str, int]]) -> tuple[float, float]:
    """Micro-averaged precision and recall (%) over pairs."""
    correct = sum(c["correct"] for c in counts)
    wrong = sum(c["wrong"] for c in counts)
    gt = sum(c["gt"] for c in counts)
    precision = 100.0 * correct / max(1, correct + wrong)
    recall = 100.0 * correct / max(1, gt)
    return precision, recall
