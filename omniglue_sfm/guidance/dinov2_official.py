"""DINOv2 ViT-B/14 as the released OmniGlue runs it: our ViT (``guidance/dinov2.py``, the official
``dinov2_vitb14_pretrain.pth`` loaded strictly) with the pre- and post-processing of the authors'
wrapper (google-research/omniglue, ``src/omniglue/dino_extract.py``). Preset ``omniglue-official``.

D1  the ORIGINAL image (uint8 RGB, full size), not the one the local features were extracted from;
D2  long side brought to at most 630 (the short side ``int(630 * short / long)``), both sides
    floored to multiples of 14, OpenCV bilinear on uint8; ImageNet normalisation (in float64, then
    float32); the last block's tokens through the final LayerNorm, patch tokens only;
D3  keypoint (x, y) of the original image -> grid coordinates ``u = x / W * w``, ``v = y / H * h``
    (float32; cell (i, j) at integer coordinates (j, i), no half-cell offset);
D4  bilinear lookup that takes the right/lower neighbour only while it exists (``u < w - 1``):
    in the last column/row the vector fades (weight 1 - frac, no clamp, no renormalisation);
    no L2 normalisation;
D5  float32 (stored float32 in ``features.h5``, fed float32 to the matcher).

The global descriptor (retrieval pairs) is the final-LayerNorm CLS token, L2-normalised.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..runtime import extras, weights
from .base import Guidance
from .dinov2 import IMAGENET_MEAN, IMAGENET_STD, dino_input_size, load_vit

MAX_SIDE = 630
FEATURE_DIM = 768  # hard-coded in the released matcher's input: ViT-B/14 only


def resize_for_dino(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """D2: (H, W, 3) uint8 -> the resized uint8 image the ViT sees."""
    cv2 = extras.cv2()
    h, w = dino_input_size(image.shape[0], image.shape[1], max_side)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def normalise(image: np.ndarray) -> torch.Tensor:
    """D2: uint8 (H, W, 3) -> (1, 3, H, W) float32, ImageNet normalisation computed in float64."""
    x = (image / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    return torch.from_numpy(x).permute(2, 0, 1)[None].float()


def sample_official(grid: np.ndarray, keypoints: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """D3, D4: the (h, w, C) feature grid at keypoints (N, 2) of an image of ``size`` (W, H)
    pixels -> (N, C) float32."""
    h, w = grid.shape[:2]
    kp = np.asarray(keypoints, dtype=np.float32).reshape(-1, 2)
    uv = kp / np.asarray(size, dtype=np.float32) * np.asarray([w, h], dtype=np.float32)
    if len(uv) and (uv.min() < 0 or (uv[:, 0] > w).any() or (uv[:, 1] > h).any()):
        raise ValueError(f"keypoints outside the {size[0]}x{size[1]} image")
    u, v = uv[:, 0], uv[:, 1]
    x0, y0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    has_x1 = (u != x0) & (u < w - 1)  # a right neighbour only inside the grid (D4)
    has_y1 = (v != y0) & (v < h - 1)
    out = np.zeros((len(kp), grid.shape[2]), dtype=np.float64)
    one = np.float32(1)
    # the authors' loop order: for x in (x0, x1): for y in (y0, y1); weights in float32
    for dx in (0, 1):
        xs = x0 + dx
        wx = one - np.abs(u - xs.astype(np.float32))
        for dy in (0, 1):
            ys = y0 + dy
            wy = one - np.abs(v - ys.astype(np.float32))
            used = (has_x1 if dx else np.ones_like(has_x1)) & (has_y1 if dy else np.ones_like(has_y1))
            idx = np.flatnonzero(used)
            out[idx] += (wx[idx] * wy[idx])[:, None] * grid[ys[idx], xs[idx]]
    return out.astype(np.float32)


class DINOv2Official(Guidance):
    """The ``dinov2-official`` guidance plugin. Config: ``weights`` (a ``weights.KNOWN`` name,
    default ``dinov2_vitb14``, or a checkpoint path). It reads the original image itself
    (``reads_original``) and samples at the keypoints itself (:meth:`describe_original`)."""

    reads_original: ClassVar[bool] = True
    check_installed = staticmethod(extras.check_installed)  # TensorFlow, OpenCV
    default_conf: ClassVar[dict] = {"weights": "dinov2_vitb14"}
    dim = FEATURE_DIM

    def __init__(self, conf: dict) -> None:
        super().__init__(conf)
        name = str(self.conf["weights"])
        path = (weights.resolve_known(name) if name in weights.KNOWN
                else weights.resolve(weights.KNOWN["dinov2_vitb14"], explicit=name))
        self.vit = load_vit(path)
        if self.vit.dim != FEATURE_DIM or self.vit.num_registers:
            raise weights.WeightsNotFoundError(
                f"{path} holds a {self.vit.dim}-d ViT with {self.vit.num_registers} registers; the released "
                f"OmniGlue takes DINOv2 ViT-B/14 without registers ({FEATURE_DIM}-d, "
                "dinov2_vitb14_pretrain.pth)")
        extras.cv2()
        self.eval()

    def forward(self, image: torch.Tensor, features: dict | None = None) -> dict[str, torch.Tensor]:
        raise TypeError("dinov2-official reads the original uint8 image: call describe_original()")

    @torch.inference_mode()
    def features(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """D1, D2: (H, W, 3) uint8 -> (the (h, w, 768) float32 patch grid, the CLS token (768,))."""
        device = self.vit.cls_token.device
        cls_token, patches = self.vit(normalise(resize_for_dino(image)).to(device))
        return patches[0].permute(1, 2, 0).float().cpu().numpy(), cls_token[0].float().cpu().numpy()

    def describe_original(self, image: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB, full size, and keypoints (N, 2) in its pixels -> the DINO
        descriptors (N, 768) float32 and the global descriptor (768,) float32."""
        grid, cls_token = self.features(image)
        sampled = sample_official(grid, keypoints, (image.shape[1], image.shape[0]))
        gdesc = F.normalize(torch.from_numpy(cls_token), dim=0).numpy().astype(np.float32)
        return sampled, gdesc
