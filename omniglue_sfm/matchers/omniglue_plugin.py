"""The ``omniglue`` matcher plugin (:class:`OmniGlueMatcher`) and the checkpoint format it loads.

Checkpoints: ``{"conf", "state_dict", "metadata"}`` and optionally ``"base"``, the name of a
LightGlue checkpoint the state dict is applied on top of. A model that differs from LightGlue
only in a few tensors (the guidance scales, retrained heads) then ships as those tensors alone:
exact, and a few kilobytes instead of 12 M parameters. A full state dict stores 2-D weights as
int8 with one float scale per output row, to stay under the 20 MB we allow inside the package.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import Matcher
from .omniglue import VERSION, OmniGlue


class OmniGlueMatcher(Matcher):
    """The ``omniglue`` matcher plugin: an :class:`OmniGlue` with a checkpoint.

    Config keys: ``weights`` (a name in ``weights.KNOWN`` or a path), and any model conf key
    to override (``depth_confidence``, ``width_confidence``, ``filter_threshold``, ``guidance``).
    """

    default_conf: ClassVar[dict] = {"weights": "omniglue"}
    required_inputs: ClassVar[tuple[str, ...]] = ("keypoints", "descriptors", "guidance")

    @classmethod
    def config_keys(cls) -> set[str]:
        """What a preset's [matcher] may set: the checkpoint and any model conf key."""
        return set(cls.default_conf) | set(OmniGlue.default_conf)

    def __init__(self, conf: dict) -> None:
        super().__init__(conf)
        unknown = set(self.conf) - set(OmniGlue.default_conf) - {"weights"}
        if unknown:  # a typo such as "guidence" must not silently run the default
            raise ValueError(f"unknown omniglue matcher keys {sorted(unknown)}; "
                             f"known: weights, {', '.join(sorted(OmniGlue.default_conf))}")
        self.model, self.metadata = load_model(
            self.conf["weights"], {k: v for k, v in self.conf.items() if k in OmniGlue.default_conf})
        self.model.eval()
        if not self.model.conf["guidance"]:
            self.required_inputs = ("keypoints", "descriptors")

    @torch.inference_mode()
    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(data)
        return {"matches0": out["matches0"], "matching_scores0": out["matching_scores0"]}


def load_checkpoint(weights: str) -> dict:
    """Resolve ``weights`` (a ``weights.KNOWN`` name or a file path) and read the checkpoint."""
    from pathlib import Path

    from ..runtime import weights as W

    path = W.resolve_known(weights) if weights in W.KNOWN else W.resolve(
        W.WeightSpec(Path(weights).name, "OMNIGLUE_SFM_OMNIGLUE"), explicit=weights
    )
    ckpt = W.load_state_dict(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "conf" not in ckpt:
        raise W.WeightsNotFoundError(
            f"{path} is not an omniglue-sfm OmniGlue checkpoint (expected keys 'conf' and 'state_dict')"
        )
    if ckpt["conf"].get("version", 1) != VERSION:
        raise W.WeightsNotFoundError(
            f"{path} is an OmniGlue v{ckpt['conf'].get('version', 1)} checkpoint; this release reads "
            f"v{VERSION} (LightGlue-compatible trunk, docs/omniglue.md): retrain it or use the shipped one")
    return ckpt


def load_model(weights: str, overrides: dict | None = None) -> tuple[OmniGlue, dict]:
    """An :class:`OmniGlue` with the checkpoint ``weights`` applied (base first); its metadata."""
    ckpt = load_checkpoint(weights)
    model = OmniGlue({**ckpt["conf"], **(overrides or {})})
    state = dequantize_state_dict(ckpt["state_dict"])
    if ckpt.get("base"):
        warm_start(model, ckpt["base"])
        missing = set(model.state_dict()) - set(state)
        state = {**{k: v for k, v in model.state_dict().items() if k in missing}, **state}
    model.load_state_dict(state)
    return model, ckpt.get("metadata", {})


def warm_start(model: OmniGlue, checkpoint: str = "aliked_lightglue") -> list[str]:
    """Load a LightGlue checkpoint (a ``weights.KNOWN`` name or a path) into ``model``.

    The parameter names are LightGlue's, so this is an exact copy; returns the keys left as
    initialised (the guidance scales, zero: the model then computes exactly LightGlue)."""
    from .lightglue import load_lightglue_state

    state = load_lightglue_state(checkpoint)
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(f"{checkpoint}: {key} has shape {tuple(value.shape)}, model expects "
                             f"{tuple(own[key].shape)}")
    result = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return sorted(result.missing_keys)


def quantize_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        value = value.detach().float().cpu()
        if value.ndim == 2 and value.numel() >= 4096:
            scale = value.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127.0
            out[key + ".int8"] = (value / scale).round().clamp(-127, 127).to(torch.int8)
            out[key + ".scale"] = scale.squeeze(1)
        else:
            out[key] = value
    return out


def dequantize_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".int8"):
            base = key[: -len(".int8")]
            out[base] = value.float() * state_dict[base + ".scale"].float()[:, None]
        elif not key.endswith(".scale") or key[: -len(".scale")] + ".int8" not in state_dict:
            out[key] = value.float()
    return out


def save_checkpoint(model: OmniGlue, path, metadata: dict, quantize: bool = True,
                    base: str | None = None) -> None:
    """Write ``{"conf", "state_dict", "metadata"[, "base"]}`` atomically.

    With ``base`` (a LightGlue checkpoint name) only the tensors that differ from it are stored;
    otherwise the whole state dict. With ``quantize``, 2-D weights of 4096+ entries are stored
    as int8 either way (small tensors such as the guidance scales stay exact)."""
    import os
    from pathlib import Path

    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt: dict = {"conf": dict(model.conf), "metadata": dict(metadata)}
    if base:
        ref = OmniGlue(dict(model.conf))
        warm_start(ref, base)
        ref_state = ref.state_dict()
        state = {k: v for k, v in state.items() if k not in ref_state or not torch.equal(v, ref_state[k])}
        ckpt["base"] = base
        if quantize:  # a large difference (a retrained trunk) is stored like a full state dict
            state = quantize_state_dict(state)
    elif quantize:
        state = quantize_state_dict(state)
    ckpt["state_dict"] = state
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)

