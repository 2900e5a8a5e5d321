"""DISK keypoints and descriptors (kornia's implementation, official ``depth`` weights)."""

from __future__ import annotations

from typing import ClassVar

import kornia.feature as KF
import torch
import torch.nn.functional as F

from ..runtime import weights
from .base import Extractor


class DISKExtractor(Extractor):
    """DISK (Tyszkiewicz et al. 2020).

    Config: ``max_keypoints``, ``nms_window`` (odd), ``detection_threshold``, ``weights``.
    Also returns ``dense``: the (1, 128, H, W) descriptor map, L2-normalised per pixel.
    """

    default_conf: ClassVar[dict] = {
        "max_keypoints": 2048,
        "nms_window": 5,
        "detection_threshold": 0.0,
        "weights": None,
    }
    descriptor_dim = 128

    def __init__(self, conf: dict) -> None:
        super().__init__(conf)
        self.net = KF.DISK(desc_dim=self.descriptor_dim)
        path = weights.resolve_known("disk", self.conf.get("weights"))
        state = weights.load_state_dict(path)
        if "extractor" not in state:
            raise weights.WeightsNotFoundError(f"{path} is not a DISK checkpoint (no 'extractor' entry)")
        self.net.load_state_dict(state["extractor"])  # strict: the file matches kornia exactly
        self.eval()

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = image.shape[-2:]
        # the U-Net needs multiples of 16: pad bottom/right, crop the maps back
        padded = F.pad(image, (0, (-w) % 16, 0, (-h) % 16))
        heatmap, dense = self.net.heatmap_and_dense_descriptors(padded)
        heatmap, dense = heatmap[..., :h, :w], dense[..., :h, :w]
        kp = KF.disk.detector.heatmap_to_keypoints(
            heatmap, n=int(self.conf["max_keypoints"]), window_size=int(self.conf["nms_window"]),
            score_threshold=float(self.conf["detection_threshold"]),
        )[0]
        feats = kp.merge_with_descriptors(dense[0])
        return {
            "keypoints": feats.keypoints.float(),
            "scores": feats.detection_scores.float(),
            "descriptors": feats.descriptors.float(),
            "dense": F.normalize(dense, dim=1),
        }
