"""LightGlue (kornia's implementation) with the official weights for ALIKED, DISK or SuperPoint."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import kornia.feature as KF
import torch

from ..runtime import weights
from .base import Matcher, unpadded_pairs

# kornia builds this buffer from the config; the official files do not hold it
_DERIVED = {"confidence_thresholds"}
# stale buffers in some official files (disk_lightglue.pth), unused by the model
_STALE = re.compile(r"^log_assignment\.\d+\.r$")


def load_lightglue_state(checkpoint: str, explicit: str | None = None) -> dict:
    """The one reader of LightGlue checkpoints: ``checkpoint`` is a ``weights.KNOWN`` name
    (e.g. ``aliked_lightglue``, resolved offline first) or a path. Older releases name layers
    ``self_attn.{i}.`` / ``cross_attn.{i}.`` (renamed to ``transformers.{i}.*``); stale buffers
    are dropped. Used by this plugin and by OmniGlue's warm start."""
    path = (weights.resolve_known(checkpoint, explicit) if checkpoint in weights.KNOWN
            else weights.resolve(weights.WeightSpec(Path(checkpoint).name, "OMNIGLUE_SFM_LIGHTGLUE"),
                                 explicit=checkpoint))
    pattern = re.compile(r"^(self_attn|cross_attn)\.(\d+)\.")
    state = weights.load_state_dict(path)
    return {pattern.sub(r"transformers.\2.\1.", k): v for k, v in state.items() if not _STALE.match(k)}


class LightGlueMatcher(Matcher):
    """Config: ``features`` (aliked, disk, superpoint), ``depth_confidence`` (early stopping) and
    ``width_confidence`` (point pruning), -1 disables either; ``filter_threshold``; ``weights``
    (explicit checkpoint path, optional).

    kornia's LightGlue takes no padding masks, so a padded batch runs pair by pair on the
    unpadded slices (correct, identical to running alone). A batch without padding and with
    both adaptive mechanisms off runs as one, which gives the same result.
    """

    default_conf: ClassVar[dict] = {
        "features": "aliked",
        "depth_confidence": 0.95,
        "width_confidence": 0.99,
        "filter_threshold": 0.1,
        "weights": None,
    }

    def __init__(self, conf: dict) -> None:
        super().__init__(conf)
        features = self.conf["features"]
        if features not in ("aliked", "disk", "superpoint"):
            raise ValueError(f"LightGlue: unsupported features {features!r} (aliked, disk, superpoint)")
        kconf = {
            **KF.LightGlue.features[features],
            "weights": None,  # we load the file ourselves (offline resolution)
            "depth_confidence": float(self.conf["depth_confidence"]),
            "width_confidence": float(self.conf["width_confidence"]),
            "filter_threshold": float(self.conf["filter_threshold"]),
        }
        self.net = KF.LightGlue(features=None, **kconf)
        name = f"{features}_lightglue"
        state = load_lightglue_state(name, self.conf.get("weights"))
        result = self.net.load_state_dict(state, strict=False)
        if set(result.missing_keys) - _DERIVED or result.unexpected_keys:
            raise weights.WeightsNotFoundError(
                f"{self.conf.get('weights') or name} does not match kornia's LightGlue for {features}: "
                f"missing {result.missing_keys}, "
                f"unexpected {result.unexpected_keys}"
            )
        self.eval()

    def _run(self, data: dict) -> dict:
        """kornia's LightGlue on an unpadded batch."""
        def side(i: str) -> dict:
            return {"keypoints": data[f"keypoints{i}"], "descriptors": data[f"descriptors{i}"],
                    "image_size": data[f"image_size{i}"].reshape(-1, 2)}

        return self.net({"image0": side("0"), "image1": side("1")})

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        kp0 = data["keypoints0"]
        b, n, _ = kp0.shape
        m = data["keypoints1"].shape[1]
        device = kp0.device
        # kornia enables autocast only through its own flag, which would otherwise switch it off
        self.net.conf.mp = device.type != "cpu" and torch.is_autocast_enabled(device.type)
        mask0 = data.get("mask0", torch.ones(b, n, dtype=torch.bool, device=device))
        mask1 = data.get("mask1", torch.ones(b, m, dtype=torch.bool, device=device))
        matches0 = torch.full((b, n), -1, dtype=torch.long, device=device)
        scores0 = torch.zeros((b, n), dtype=torch.float32, device=device)
        adaptive = self.conf["depth_confidence"] > 0 or self.conf["width_confidence"] > 0
        if bool(mask0.all()) and bool(mask1.all()) and not adaptive and n > 0 and m > 0:
            out = self._run(data)
            return {"matches0": out["matches0"], "matching_scores0": out["matching_scores0"].float()}
        for k, pair, n0, _ in unpadded_pairs(data):
            out = self._run(pair)
            matches0[k, :n0] = out["matches0"][0]
            scores0[k, :n0] = out["matching_scores0"][0].float()
        return {"matches0": matches0, "matching_scores0": scores0}
