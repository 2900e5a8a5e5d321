"""The released OmniGlue matcher (Jiang et al., CVPR 2024): the authors' TensorFlow SavedModel
``og_export`` (Apache-2.0), called pair by pair exactly as their wrapper calls it
(google-research/omniglue, ``src/omniglue/omniglue_extract.py`` and ``utils.py``).

Call: ``tf.saved_model.load(og_export).signatures['serving_default'](**inputs)`` with, for each
image k of the pair (batch of one, N keypoints):

=====================  ===========  =========================================================
input                  shape        content
=====================  ===========  =========================================================
keypoints{k}           (1, N, 2)    float32 (x, y) in original-image pixels
descriptors{k}         (1, N, 256)  float32 SuperPoint descriptors
scores{k}              (1, N, 1)    float32 SuperPoint scores
descriptors{k}_dino    (1, N, 768)  float32 DINOv2 ViT-B/14 descriptors (dinov2-official)
width{k}, height{k}    (1,)         int32 size of the original image
=====================  ===========  =========================================================

Output ``soft_assignment`` (1, N + 1, M + 1); the last row and column (dustbins) are dropped.
Matches (:func:`official_matches`): row-wise max and argmax, column-wise argmax; mutual pairs whose
value is > 1e-3; then pairs whose keypoints do not both have a score > 0 are dropped. The
confidence is the soft-assignment value.

The SavedModel has no mask input, so padding is not neutral: pairs always run one by one (a padded
batch from the match stage is cut back to its pairs, ``unpadded_pairs``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from ..runtime import extras, weights
from .base import Matcher, unpadded_pairs

MATCH_THRESHOLD = 1e-3
SIGNATURE = "serving_default"
OUTPUT = "soft_assignment"


def _released_inputs() -> dict[str, tuple[str, tuple[int | None, ...]]]:
    """Input name -> (dtype name, shape; None where any size goes) of the released signature."""
    out = {}
    for k in ("0", "1"):
        out |= {
            f"keypoints{k}": ("float32", (1, None, 2)),
            f"descriptors{k}": ("float32", (1, None, 256)),
            f"scores{k}": ("float32", (1, None, 1)),
            f"descriptors{k}_dino": ("float32", (1, None, 768)),
            f"width{k}": ("int32", (1,)),
            f"height{k}": ("int32", (1,)),
        }
    return out


INPUTS = _released_inputs()


def signature_problems(specs: dict, outputs: object) -> list[str]:
    """What in a serving signature (input name -> TensorSpec, and its outputs) differs from the
    released one; [] when it is the same interface."""
    problems = [f"missing input {name!r}" for name in INPUTS if name not in specs]
    problems += [f"unexpected input {name!r}" for name in specs if name not in INPUTS]
    for name, (dtype, shape) in INPUTS.items():
        spec = specs.get(name)
        if spec is None:
            continue
        if spec.dtype.name != dtype:
            problems.append(f"input {name!r} is {spec.dtype.name}, expected {dtype}")
        dims = spec.shape.as_list() if spec.shape.rank is not None else None
        if dims is not None and (len(dims) != len(shape) or any(
                a is not None and b is not None and a != b for a, b in zip(dims, shape, strict=False))):
            problems.append(f"input {name!r} has shape {tuple(dims)}, expected {shape}")
    if not isinstance(outputs, dict) or OUTPUT not in outputs:
        names = sorted(outputs) if isinstance(outputs, dict) else outputs
        problems.append(f"no output {OUTPUT!r} (outputs: {names})")
    return problems


def load_signature(path) -> tuple[object, object]:
    """(the loaded SavedModel, its checked serving signature); :class:`weights.WeightsNotFoundError`
    naming every difference from the released interface."""
    tf = extras.tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as err:  # not a SavedModel, or a broken one
        raise weights.WeightsNotFoundError(f"{path} is not a TensorFlow SavedModel: {type(err).__name__}: "
                                           f"{err}") from None
    signatures = getattr(loaded, "signatures", {}) or {}
    if SIGNATURE not in signatures:
        raise weights.WeightsNotFoundError(f"{path} is not the released OmniGlue (og_export): no "
                                           f"{SIGNATURE!r} signature (it has: {sorted(signatures)})")
    fn = signatures[SIGNATURE]
    _, specs = fn.structured_input_signature
    problems = signature_problems(dict(specs), fn.structured_outputs)
    if problems:
        raise weights.WeightsNotFoundError(f"{path} is not the released OmniGlue (og_export): its "
                                           f"{SIGNATURE!r} signature differs: " + "; ".join(problems))
    return loaded, fn


def official_inputs(f0: dict[str, np.ndarray], f1: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The signature's inputs for one pair; each ``f`` holds keypoints (N, 2), descriptors
    (N, 256), scores (N,), guidance (N, 768) and image_size (W, H) of the original image."""
    out = {}
    for k, f in (("0", f0), ("1", f1)):
        width, height = (int(round(float(v))) for v in np.asarray(f["image_size"]).reshape(2))
        out |= {
            f"keypoints{k}": np.asarray(f["keypoints"], np.float32)[None],
            f"descriptors{k}": np.asarray(f["descriptors"], np.float32)[None],
            f"scores{k}": np.asarray(f["scores"], np.float32).reshape(1, -1, 1),
            f"descriptors{k}_dino": np.asarray(f["guidance"], np.float32)[None],
            f"width{k}": np.array([width], np.int32),
            f"height{k}": np.array([height], np.int32),
        }
    return out


def official_matches(soft_assignment: np.ndarray, scores0: np.ndarray, scores1: np.ndarray,
                     threshold: float = MATCH_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """The authors' rule on a (N + 1, M + 1) soft assignment (dustbins last): matches0 (N,) int32
    (index into image 1 or -1) and their confidences (N,) float32."""
    tf = extras.tensorflow()
    p = np.asarray(soft_assignment, np.float32)[:-1, :-1]
    n, m = p.shape
    matches0 = np.full(n, -1, np.int32)
    confidence = np.zeros(n, np.float32)
    if n == 0 or m == 0:
        return matches0, confidence
    best = tf.math.reduce_max(p, axis=1).numpy()  # TF's max and argmax, as the authors (ties)
    col = tf.math.argmax(p, axis=1).numpy()
    row = tf.math.argmax(p, axis=0).numpy()
    mutual = row[col] == np.arange(n)
    keep = mutual & (best > np.float32(threshold))
    keep &= (np.asarray(scores0) > 0) & (np.asarray(scores1)[col] > 0)
    matches0[keep] = col[keep]
    confidence[keep] = p[np.flatnonzero(keep), col[keep]]
    return matches0, confidence


class OmniGlueOfficial(Matcher):
    """The ``omniglue-official`` matcher plugin. Config: ``weights`` (a ``weights.KNOWN`` name,
    default ``og_export``, or the SavedModel folder) and ``features`` (the extractor it takes:
    ``superpoint-official``, checked by the match stage)."""

    default_conf: ClassVar[dict] = {"weights": "og_export", "features": "superpoint-official"}
    required_inputs: ClassVar[tuple[str, ...]] = ("keypoints", "descriptors", "scores", "guidance")
    check_installed = staticmethod(extras.check_installed)  # TensorFlow, OpenCV

    def __init__(self, conf: dict) -> None:
        super().__init__(conf)
        name = str(self.conf["weights"])
        self.path = (weights.resolve_known(name) if name in weights.KNOWN
                     else weights.resolve(weights.KNOWN["og_export"], explicit=name))
        self._model, self.signature = load_signature(self.path)

    def soft_assignment(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The SavedModel's (N + 1, M + 1) soft assignment for one pair's inputs."""
        tf = extras.tensorflow()
        out = self.signature(**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        return out[OUTPUT].numpy()[0]

    def match_pair(self, f0: dict[str, np.ndarray],
                   f1: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """matches0 (N,) int32 and confidences (N,) float32 of one pair (see :func:`official_inputs`)."""
        for f in (f0, f1):
            dim = np.asarray(f["guidance"]).shape[-1]
            if dim != 768:
                raise ValueError(f"the released OmniGlue takes 768-d DINOv2 ViT-B/14 features, got {dim}-d "
                                 "guidance: extract with preset omniglue-official")
        soft = self.soft_assignment(official_inputs(f0, f1))
        return official_matches(soft, f0["scores"], f1["scores"])

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b, n = data["keypoints0"].shape[:2]
        matches0 = torch.full((b, n), -1, dtype=torch.int64)
        scores0 = torch.zeros(b, n)
        for k, pair, n0, _ in unpadded_pairs(data):
            f0, f1 = ({key: pair[f"{key}{s}"][0].float().cpu().numpy()
                       for key in ("keypoints", "descriptors", "scores", "guidance", "image_size")}
                      for s in ("0", "1"))
            m0, s0 = self.match_pair(f0, f1)
            matches0[k, :n0] = torch.from_numpy(m0.astype(np.int64))
            scores0[k, :n0] = torch.from_numpy(s0)
        device = data["keypoints0"].device
        return {"matches0": matches0.to(device), "matching_scores0": scores0.to(device)}
