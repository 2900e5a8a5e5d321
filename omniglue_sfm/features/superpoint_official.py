"""SuperPoint as the released OmniGlue runs it: rpautrat's TF1 SavedModel ``sp_v6`` (MIT), through
TensorFlow, with the conventions of the authors' wrapper (google-research/omniglue,
``src/omniglue/superpoint_extract.py``). Preset ``omniglue-official``; docs/omniglue.md.

S1  the full-resolution RGB image (uint8), each side brought to the nearest multiple of 8 (a
    remainder below 4 rounds down, else up), OpenCV bilinear on uint8;
S2  grey by OpenCV from uint8, then / 255 as float32, fed as (1, H, W, 1) to ``superpoint/image:0``;
S3  detection threshold and NMS are the model's own (inside ``sp_v6``: box NMS of 4-px boxes at IoU
    0.1 over the pixels with probability >= 0.001): every pixel of ``superpoint/prob_nms:0`` above
    0 is a keypoint; no other NMS, threshold or border removal here;
S4  the best ``max_keypoints`` (1024) by score, returned in ASCENDING score order (ties as numpy's
    default argsort orders the float64 scores, as in the authors' code);
S5  each descriptor is ``superpoint/descriptors:0`` (the model's dense map: coarse cells upsampled
    x8 with cell i at pixel 8i, L2-normalised after upsampling) read at the integer keypoint pixel;
S6  keypoints back to the original image: x / ((W' - 1) / (W - 1)), y / ((H' - 1) / (H - 1)).

Images are read as everywhere in this package (EXIF orientation applied); the authors' demo reads
the stored pixels, which is the same for photos without an orientation tag.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..runtime import extras, weights
from .base import Extractor

INPUT = "superpoint/image:0"
PROB_NMS = "superpoint/prob_nms:0"
DESCRIPTORS = "superpoint/descriptors:0"


def nearest_multiple_of_8(side: int) -> int:
    """S1: the side the authors resize to (remainder < 4 down, else up)."""
    rest = side % 8
    return side - rest if rest < 4 else side + 8 - rest


def resize_for_superpoint(image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """S1: (H, W, 3) uint8 -> the image SuperPoint sees and the (x, y) keypoint scale factors
    ``(new - 1) / (old - 1)`` (S6)."""
    cv2 = extras.cv2()
    h, w = image.shape[:2]
    new_h, new_w = nearest_multiple_of_8(h), nearest_multiple_of_8(w)
    if min(h, w) < 4 or min(new_h, new_w) == 0:
        raise ValueError(f"image of {w}x{h} pixels is too small for SuperPoint")
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return resized, ((new_w - 1) / (w - 1), (new_h - 1) / (h - 1))


def grey_input(image: np.ndarray) -> np.ndarray:
    """S2: (H, W, 3) RGB uint8 -> (1, H, W, 1) float32 in [0, 1], grey by OpenCV on uint8."""
    cv2 = extras.cv2()
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return (grey.astype(np.float32) / 255.0)[None, :, :, None]


def select_keypoints(prob: np.ndarray, max_keypoints: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S3, S4: (rows, cols, scores float64) of every pixel of the NMS map above 0, the best
    ``max_keypoints`` (all when <= 0) in ascending score order."""
    rows, cols = np.nonzero(prob > 0)
    scores = prob[rows, cols].astype(np.float64)
    order = scores.argsort()  # numpy's default sort, on float64 scores: the authors' order
    keep = len(order) if max_keypoints <= 0 else min(max_keypoints, len(order))
    order = order[len(order) - keep:]
    return rows[order], cols[order], scores[order]


def keypoints_to_original(rows: np.ndarray, cols: np.ndarray, factors: tuple[float, float]) -> np.ndarray:
    """S6: pixel (row, col) of the resized image -> (x, y) float64 in the original image."""
    xy = np.stack([cols, rows], axis=-1).astype(np.float64)
    return xy / np.asarray(factors, dtype=np.float64)


class SuperPointOfficial(Extractor):
    """The ``superpoint-official`` extractor plugin.

    Config: ``weights`` (a ``weights.KNOWN`` name, default ``sp_v6``, or the path of the SavedModel
    folder) and ``max_keypoints`` (1024 as the authors; <= 0 keeps all). It reads the original
    image itself (``reads_original``): ``extract`` hands it the uint8 RGB picture, full size.
    """

    reads_original: ClassVar[bool] = True
    check_installed = staticmethod(extras.check_installed)  # TensorFlow, OpenCV
    default_conf: ClassVar[dict] = {"weights": "sp_v6", "max_keypoints": 1024}
    descriptor_dim = 256

    def __init__(self, conf: dict) -> None:
        super().__init__(conf)
        self.path = saved_model_path(self.conf["weights"], "sp_v6")
        tf = extras.tensorflow()
        extras.cv2()
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        try:
            tf.compat.v1.saved_model.loader.load(self._session, [tf.compat.v1.saved_model.SERVING],
                                                 str(self.path))
        except Exception as err:  # a broken or foreign SavedModel: say which file, not TF's internals
            raise weights.WeightsNotFoundError(f"{self.path} is not a TF1 SavedModel of SuperPoint "
                                               f"(sp_v6): {type(err).__name__}: {err}") from None
        names = {t.name for op in self._graph.get_operations() for t in op.outputs}
        absent = [n for n in (INPUT, PROB_NMS, DESCRIPTORS) if n not in names]
        if absent:
            raise weights.WeightsNotFoundError(
                f"{self.path} is not SuperPoint sp_v6: it has no tensor {', '.join(absent)}")

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        raise TypeError("superpoint-official reads the original uint8 image: call extract_original()")

    def run_model(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """S1, S2 and sp_v6: (prob_nms (H', W'), descriptors (H', W', 256), scale factors)."""
        resized, factors = resize_for_superpoint(image)
        prob, dense = self._session.run([PROB_NMS, DESCRIPTORS], feed_dict={INPUT: grey_input(resized)})
        return prob[0], dense[0], factors

    def extract_original(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """(H, W, 3) uint8 RGB, full size -> keypoints (N, 2) float32 in its pixels, scores (N,)
        and descriptors (N, 256) float32, in ascending score order."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"superpoint-official takes an (H, W, 3) uint8 image, got {image.dtype} "
                             f"{image.shape}")
        prob, dense, factors = self.run_model(image)
        rows, cols, scores = select_keypoints(prob, int(self.conf["max_keypoints"]))
        return {
            "keypoints": keypoints_to_original(rows, cols, factors).astype(np.float32),
            "scores": scores.astype(np.float32),
            "descriptors": dense[rows, cols].astype(np.float32),  # S5: the dense map at the pixel
        }

    def close(self) -> None:
        self._session.close()


def saved_model_path(name_or_path: str, known: str) -> Path:
    """A SavedModel folder: a ``weights.KNOWN`` name (the weights policy) or a folder path."""
    if name_or_path in weights.KNOWN:
        return weights.resolve_known(name_or_path)
    return weights.resolve(weights.KNOWN[known], explicit=name_or_path)
