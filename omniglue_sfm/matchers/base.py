"""One interface for every matcher, batched over pairs with padding masks.

``Matcher.forward(data)`` takes a batch of B pairs, padded to N (image 0) and M (image 1)
keypoints:

=================  ==============  =========================================================
key                shape           meaning
=================  ==============  =========================================================
keypoints0/1       (B, N, 2)       float32 pixels of the original image
descriptors0/1     (B, N, D)       float32 local descriptors
scores0/1          (B, N)          float32 detection scores
image_size0/1      (B, 2)          float32 (W, H) of the original image
mask0/1            (B, N)          bool, True for real keypoints, False for padding
guidance0/1        (B, N, C)       optional, guidance features at the keypoints
=================  ==============  =========================================================

and returns ``matches0`` (B, N) int64 (index into image 1 or -1; always -1 on padding) and
``matching_scores0`` (B, N) float32. Guided matchers list ``"guidance"`` in
``required_inputs``. Every matcher must give the same matches for a pair whether it is run
alone or padded inside a batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import torch
from torch import nn


class Matcher(nn.Module):
    default_conf: ClassVar[dict] = {}
    required_inputs: ClassVar[tuple[str, ...]] = ("keypoints", "descriptors")

    def __init__(self, conf: dict) -> None:
        super().__init__()
        self.conf = {**self.default_conf, **{k: v for k, v in conf.items() if k != "name"}}

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover


def features_to_tensors(feats: dict[str, np.ndarray], turn: int = 0) -> dict[str, torch.Tensor]:
    """One image's ``features.h5`` entry -> unbatched tensors (descriptors transposed to (N, D)).

    ``turn``: the quarter-turns its features were extracted at (the group's ``turn`` attribute).
    Keypoints and image size are then given in the upright view: matchers encode positions, and
    they were trained on upright images. Only match indices come back, so nothing else changes.
    """
    keypoints, size = np.asarray(feats["keypoints"], np.float32), np.asarray(feats["image_size"])
    if turn % 4:
        from ..geometry.turns import to_upright  # the one home of the mapping

        upright, upright_size = to_upright(keypoints, size, turn)
        keypoints, size = upright.astype(np.float32), np.asarray(upright_size)
    out = {
        "keypoints": torch.from_numpy(np.ascontiguousarray(keypoints)),
        "descriptors": torch.from_numpy(np.asarray(feats["descriptors"], np.float32)).t(),
        "image_size": torch.from_numpy(np.asarray(size, np.float32)),
    }
    n = out["keypoints"].shape[0]
    scores = feats.get("scores")
    out["scores"] = (
        torch.from_numpy(np.asarray(scores, np.float32)) if scores is not None else torch.ones(n)
    )
    if "guidance" in feats:
        out["guidance"] = torch.from_numpy(np.asarray(feats["guidance"], np.float32)).t()
    return out


def pad_stack(items: list[dict[str, torch.Tensor]], suffix: str, multiple: int = 1) -> dict:
    """Stack unbatched feature dicts into a padded batch with keys ``<name><suffix>``.

    Padded keypoints sit at the image centre with zero descriptors and scores; ``mask<suffix>``
    marks the real ones. ``multiple`` rounds the padded length up (fewer distinct shapes).
    """
    n_max = max(int(it["keypoints"].shape[0]) for it in items)
    n_max = max(1, -(-n_max // multiple) * multiple)
    b = len(items)
    ref = items[0]
    out: dict[str, torch.Tensor] = {
        f"mask{suffix}": torch.zeros(b, n_max, dtype=torch.bool),
        f"image_size{suffix}": torch.stack([it["image_size"] for it in items]),
    }
    for key in ("keypoints", "descriptors", "scores", "guidance"):
        if key not in ref:
            continue
        shape = (b, n_max, *ref[key].shape[1:])
        out[f"{key}{suffix}"] = torch.zeros(shape, dtype=ref[key].dtype)
    for i, it in enumerate(items):
        n = it["keypoints"].shape[0]
        out[f"mask{suffix}"][i, :n] = True
        out[f"keypoints{suffix}"][i, :] = it["image_size"] / 2
        for key in ("keypoints", "descriptors", "scores", "guidance"):
            if key in it:
                out[f"{key}{suffix}"][i, :n] = it[key]
    return out


def collate_pairs(
    pairs: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]], multiple: int = 1
) -> dict[str, torch.Tensor]:
    """A batch of (features0, features1) -> the padded input of ``Matcher.forward``."""
    data = pad_stack([p[0] for p in pairs], "0", multiple)
    data.update(pad_stack([p[1] for p in pairs], "1", multiple))
    return data


def unpadded_pairs(data: dict[str, torch.Tensor]) -> Iterator[tuple[int, dict, int, int]]:
    """Each pair of a padded batch as a batch of one, cut to its real points: (k, pair, n0, n1).

    ``collate_pairs`` puts the real keypoints first; anything else is an error. Pairs with an
    image without keypoints are skipped (nothing to match). For matchers that run pair by pair.
    """
    b, n = data["keypoints0"].shape[:2]
    m = data["keypoints1"].shape[1]
    device = data["keypoints0"].device
    mask0 = data.get("mask0", torch.ones(b, n, dtype=torch.bool, device=device))
    mask1 = data.get("mask1", torch.ones(b, m, dtype=torch.bool, device=device))
    counts0, counts1 = mask0.sum(1).tolist(), mask1.sum(1).tolist()
    for k in range(b):
        n0, n1 = int(counts0[k]), int(counts1[k])
        if n0 == 0 or n1 == 0:
            continue
        if not (bool(mask0[k, :n0].all()) and bool(mask1[k, :n1].all())):
            raise ValueError("a padded batch must hold the real keypoints before the padding (collate_pairs)")
        pair = {key: _pair_slice(key, value, k, n0, n1) for key, value in data.items()
                if torch.is_tensor(value) and not key.startswith("mask")}
        yield k, pair, n0, n1


def _pair_slice(key: str, value: torch.Tensor, k: int, n0: int, n1: int) -> torch.Tensor:
    if key.startswith("image_size"):
        return value[k:k + 1]
    return value[k:k + 1, : (n0 if key.endswith("0") else n1)]


def mutual_matches(
    scores: torch.Tensor, threshold: float, mask0: torch.Tensor | None = None,
    mask1: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual arg-max of a (B, N, M) score matrix (higher is better).

    Returns matches0 (B, N) int64 (-1 where no mutual best above ``threshold``) and its
    scores (B, N). Padded rows/columns (masks False) never match.
    """
    if mask0 is not None and mask1 is not None:
        valid = mask0[:, :, None] & mask1[:, None, :]
        scores = scores.masked_fill(~valid, float("-inf"))
    max0, idx0 = scores.max(2)
    _, idx1 = scores.max(1)
    arange = torch.arange(scores.shape[1], device=scores.device)[None]
    mutual = idx1.gather(1, idx0) == arange
    keep = mutual & (max0 > threshold)
    matches0 = torch.where(keep, idx0, torch.full_like(idx0, -1))
    matching_scores0 = torch.where(keep, max0, torch.zeros_like(max0))
    return matches0, matching_scores0.float()


def to_device(data: dict[str, torch.Tensor], device: torch.device | str) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in data.items()}
