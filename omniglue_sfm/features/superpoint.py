"""SuperPoint keypoints and descriptors (DeTone et al. 2018), two checkpoint layouts.

* ``magicleap``: Magic Leap's ``superpoint_v1.pth`` (keys ``conv1a`` ... ``convDb``; ReLU after
  every conv but the heads' last; non-commercial licence).
* ``open``: SuperPoint-Open, rpautrat's ``superpoint_v6_from_tf.pth`` (keys
  ``backbone.B.L.conv/bn``, ``detector.L.*``, ``descriptor.L.*``; each conv is followed by ReLU
  and then BatchNorm, eps 1e-3, as in the TF model; MIT licence). OmniGlue's official front-end.

Both share the post-processing (docs/reference.md §1.3): 65-way softmax, drop the
"no keypoint" channel, depth-to-space (8x8), max-pool NMS, threshold, 4-px border removal, top-k,
bilinear descriptor sampling (each layout's own convention) and L2 normalisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import weights
from .base import Extractor

_CELL = 8  # the encoder downsamples by 8; each coarse cell predicts an 8x8 block of pixels
_GRAY = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------------------------
# networks: each returns (logits (B, 65, h, w), descriptors (B, 256, h, w), not normalised)


class MagicLeapSuperPoint(nn.Module):
    """The Magic Leap network; parameter names are those of ``superpoint_v1.pth``."""

    layout = "magicleap"

    def __init__(self) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = 64, 64, 128, 128, 256
        self.conv1a = nn.Conv2d(1, c1, 3, padding=1)
        self.conv1b = nn.Conv2d(c1, c1, 3, padding=1)
        self.conv2a = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv2b = nn.Conv2d(c2, c2, 3, padding=1)
        self.conv3a = nn.Conv2d(c2, c3, 3, padding=1)
        self.conv3b = nn.Conv2d(c3, c3, 3, padding=1)
        self.conv4a = nn.Conv2d(c3, c4, 3, padding=1)
        self.conv4b = nn.Conv2d(c4, c4, 3, padding=1)
        self.convPa = nn.Conv2d(c4, c5, 3, padding=1)
        self.convPb = nn.Conv2d(c5, _CELL * _CELL + 1, 1)
        self.convDa = nn.Conv2d(c4, c5, 3, padding=1)
        self.convDb = nn.Conv2d(c5, 256, 1)

    def forward(self, gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = gray
        pairs = [(self.conv1a, self.conv1b), (self.conv2a, self.conv2b), (self.conv3a, self.conv3b),
                 (self.conv4a, self.conv4b)]
        for i, (ca, cb) in enumerate(pairs):
            x = F.relu(cb(F.relu(ca(x))))
            if i < 3:
                x = F.max_pool2d(x, 2, 2)
        logits = self.convPb(F.relu(self.convPa(x)))
        desc = self.convDb(F.relu(self.convDa(x)))
        return logits, desc


class _ConvReluBN(nn.Module):
    """conv -> ReLU (unless ``relu=False``) -> BatchNorm: SuperPoint-Open's "VGG block"."""

    def __init__(self, c_in: int, c_out: int, kernel: int, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.bn(F.relu(x) if self.relu else x)


class OpenSuperPoint(nn.Module):
    """SuperPoint-Open; parameter names are those of ``superpoint_v6_from_tf.pth``."""

    layout = "open"

    def __init__(self) -> None:
        super().__init__()
        chans = [1, 64, 64, 128, 128]
        stages = []
        for i in range(4):
            layers: list[nn.Module] = [_ConvReluBN(chans[i], chans[i + 1], 3),
                                       _ConvReluBN(chans[i + 1], chans[i + 1], 3)]
            if i < 3:
                layers.append(nn.MaxPool2d(2, 2))  # index 2: no parameters
            stages.append(nn.Sequential(*layers))
        self.backbone = nn.Sequential(*stages)
        self.detector = nn.Sequential(_ConvReluBN(128, 256, 3), _ConvReluBN(256, 65, 1, relu=False))
        self.descriptor = nn.Sequential(_ConvReluBN(128, 256, 3), _ConvReluBN(256, 256, 1, relu=False))

    def forward(self, gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.backbone(gray)
        return self.detector(x), self.descriptor(x)


_NETWORKS: dict[str, type[nn.Module]] = {"magicleap": MagicLeapSuperPoint, "open": OpenSuperPoint}


def detect_layout(state_dict: dict) -> str:
    """Which network a checkpoint belongs to, from its key names."""
    if "conv1a.weight" in state_dict:
        return "magicleap"
    if "backbone.0.0.conv.weight" in state_dict:
        return "open"
    sample = ", ".join(list(state_dict)[:5])
    raise weights.WeightsNotFoundError(
        "not a SuperPoint checkpoint: expected Magic Leap keys (conv1a.weight ...) or SuperPoint-Open "
        f"keys (backbone.0.0.conv.weight ...), found {sample} ..."
    )


# --------------------------------------------------------------------------------------------
# post-processing


def depth_to_space(logits: torch.Tensor) -> torch.Tensor:
    """(B, 65, h, w) logits -> (B, 8h, 8w) keypoint probability (softmax, dustbin dropped)."""
    prob = logits.softmax(1)[:, :-1]
    b, _, h, w = prob.shape
    prob = prob.permute(0, 2, 3, 1).reshape(b, h, w, _CELL, _CELL)  # channel = 8 * row + col
    return prob.permute(0, 1, 3, 2, 4).reshape(b, h * _CELL, w * _CELL)


def max_pool_nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Keep local maxima in a (2r+1)^2 window; two more rounds admit maxima that only lost to a
    suppressed neighbour. scores: (B, H, W); suppressed entries become 0."""
    if radius <= 0:
        return scores

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]

    zeros = torch.zeros_like(scores)
    is_max = scores == pool(scores)
    for _ in range(2):
        suppressed = pool(is_max.float()) > 0
        rest = torch.where(suppressed, zeros, scores)
        is_max = is_max | ((rest == pool(rest)) & ~suppressed)
    return torch.where(is_max, scores, zeros)


def select_keypoints(
    prob: torch.Tensor, threshold: float, border: int, max_keypoints: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) NMS'd probability -> keypoints (N, 2) float (x, y) and scores (N,), best first.

    Keeps score > threshold, rows in [border, H - border) and columns in [border, W - border),
    then the ``max_keypoints`` best (all when <= 0)."""
    h, w = prob.shape
    valid = prob > threshold
    if border > 0:
        inner = torch.zeros_like(valid)
        inner[border: h - border, border: w - border] = True
        valid &= inner
    rows, cols = valid.nonzero(as_tuple=True)
    scores = prob[rows, cols]
    k = scores.numel() if max_keypoints <= 0 else min(max_keypoints, scores.numel())
    scores, order = scores.topk(k)  # sorted, best first
    kpts = torch.stack([cols[order], rows[order]], -1).float()
    return kpts, scores


def sample_descriptors(desc: torch.Tensor, kpts: torch.Tensor, layout: str) -> torch.Tensor:
    """Bilinear lookup of a coarse (1, D, h, w) map at pixel keypoints (N, 2) -> (N, D), unit norm.

    ``magicleap``: coarse cell i sits at pixel 8i + 3.5 (grid_sample, align_corners=True after
    mapping [3.5, 8w - 4.5] to [-1, 1]); ``open``: cell i covers pixels [8i, 8i + 8)
    (align_corners=False on the 8w-pixel extent)."""
    _, _, h, w = desc.shape
    if layout == "magicleap":
        span = kpts.new_tensor([w * _CELL - _CELL / 2 - 0.5, h * _CELL - _CELL / 2 - 0.5])
        grid = (kpts - _CELL / 2 + 0.5) / span * 2 - 1
        align = True
    else:
        grid = (kpts + 0.5) / kpts.new_tensor([w * _CELL, h * _CELL]) * 2 - 1
        align = False
    out = F.grid_sample(desc, grid[None, None].to(desc.dtype), mode="bilinear", align_corners=align)
    return F.normalize(out[0, :, 0].t(), dim=1)


# --------------------------------------------------------------------------------------------


class SuperPointExtractor(Extractor):
    """The ``superpoint`` extractor plugin.

    Config: ``weights`` ("superpoint" = Magic Leap v1, "superpoint_open" = SuperPoint-Open, or a
    file path), ``layout`` ("auto" from the checkpoint keys, "magicleap" or "open"),
    ``max_keypoints`` (<= 0: all), ``detection_threshold``, ``nms_radius``, ``remove_borders``.
    Also returns ``dense``: the L2-normalised coarse (1, 256, H/8, W/8) descriptor map.
    """

    default_conf: ClassVar[dict] = {
        "weights": "superpoint",
        "layout": "auto",
        "max_keypoints": 2048,
        "detection_threshold": 0.005,
        "nms_radius": 4,
        "remove_borders": 4,
    }
    descriptor_dim = 256

    def __init__(self, conf: dict) -> None:
        super().__init__(conf)
        state, path = _load_weights(str(self.conf["weights"]))
        layout = self.conf["layout"]
        if layout == "auto":
            layout = detect_layout(state)
        if layout not in _NETWORKS:
            raise ValueError(f"unknown SuperPoint layout {layout!r}; use auto, magicleap or open")
        self.net = _NETWORKS[layout]()
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise weights.WeightsNotFoundError(
                f"{path} is not a {layout} SuperPoint checkpoint: {err}") from err
        self.layout = layout
        self.eval()

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] not in (1, 3):
            raise ValueError(f"SuperPoint expects a (1, 3 or 1, H, W) image, got {tuple(image.shape)}")
        if min(image.shape[-2:]) < _CELL:
            raise ValueError(f"image {tuple(image.shape[-2:])} is smaller than one {_CELL}-px cell")
        gray = image if image.shape[1] == 1 else (image * image.new_tensor(_GRAY)[:, None, None]).sum(1, True)
        logits, desc = self.net(gray.float())
        prob = max_pool_nms(depth_to_space(logits), int(self.conf["nms_radius"]))[0]
        kpts, scores = select_keypoints(prob, float(self.conf["detection_threshold"]),
                                        int(self.conf["remove_borders"]), int(self.conf["max_keypoints"]))
        dense = F.normalize(desc, dim=1)
        return {
            "keypoints": kpts,
            "scores": scores,
            "descriptors": sample_descriptors(dense, kpts, self.layout),
            "dense": dense,
        }


def _load_weights(name_or_path: str) -> tuple[dict, Path]:
    if name_or_path in weights.KNOWN:
        path = weights.resolve_known(name_or_path)
    else:
        path = weights.resolve(weights.WeightSpec(Path(name_or_path).name, "OMNIGLUE_SFM_SUPERPOINT"),
                               explicit=name_or_path)
    state = weights.load_state_dict(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # some training scripts wrap the weights
    return state, path
