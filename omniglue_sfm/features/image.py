"""Features of one image: downscaled, through the extractor (and guidance), keypoints in original pixels.

An extractor with ``reads_original`` (the released OmniGlue's front end) gets the original uint8
image instead and does its own resizing, as its authors' code does (:func:`extract_original`).

The image arrives as read by :mod:`omniglue_sfm.formats.images` (EXIF orientation applied; large
images possibly decoded reduced). With a ``turn`` it is extracted upright and its keypoints are
mapped back to the original pixels, the frame of ``features.h5`` (docs/design.md, section 1).
"""

from __future__ import annotations

import numpy as np
import torch

from ..formats.images import resize_for_extraction, scale_keypoints
from ..geometry.turns import from_upright, turn_image
from ..guidance.aliked_grid import global_descriptor
from ..guidance.base import sample_dense


def extract_original(
    img: np.ndarray, extractor: torch.nn.Module, guidance: torch.nn.Module | None,
    full_size: tuple[int, int] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """:func:`extract_image` for an extractor (and guidance) that reads the original uint8 image
    itself (``reads_original``): keypoints come back in its pixels, guidance is sampled by the
    guidance plugin at them and stored float32 (the released OmniGlue's input, as its authors
    compute it)."""
    if full_size is not None and tuple(full_size) != (img.shape[1], img.shape[0]):
        raise ValueError(f"{type(extractor).__name__} needs the image decoded at full size")
    pred = extractor.extract_original(img)
    item = {
        "keypoints": pred["keypoints"].astype(np.float32),
        "scores": pred["scores"].astype(np.float32),
        "descriptors": pred["descriptors"].T.astype(np.float32),  # (D, N)
        "image_size": np.array([img.shape[1], img.shape[0]], dtype=np.int64),
    }
    gvec = None
    if guidance is not None:
        sampled, gvec = guidance.describe_original(img, pred["keypoints"])
        item["guidance"] = sampled.T.astype(np.float32)  # (C, N)
    return item, gvec


def extract_image(
    img: np.ndarray, extractor: torch.nn.Module, guidance: torch.nn.Module | None,
    resize_max: int | None, device: torch.device, full_size: tuple[int, int] | None = None, turn: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features of one (H, W, 3) uint8 image: the ``features.h5`` item and its global descriptor.

    ``full_size`` (W, H): the original's size when ``img`` was decoded reduced (large images).
    With ``turn`` the image is extracted upright (turned ``turn`` quarter-turns counter-clockwise)
    and its keypoints are mapped back to the original pixels; ``image_size`` stays the original's.
    """
    if getattr(extractor, "reads_original", False):
        if turn:
            raise ValueError(f"{type(extractor).__name__} takes images as stored, not turned")
        return extract_original(img, extractor, guidance, full_size)
    full_w, full_h = full_size or (img.shape[1], img.shape[0])
    img = turn_image(img, turn) if turn else img
    upright_size = (full_h, full_w) if turn % 2 else (full_w, full_h)  # full size, turned upright
    resized, scale = resize_for_extraction(img, resize_max, upright_size)
    tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None]
    tensor = tensor.to(device=device, dtype=torch.float32) / 255.0
    with torch.inference_mode():
        pred = extractor(tensor)
        kp = pred["keypoints"]
        item = {
            "keypoints": scale_keypoints(kp.cpu().numpy(), scale),
            "scores": pred["scores"].cpu().numpy().astype(np.float32),
            "descriptors": pred["descriptors"].t().cpu().numpy().astype(np.float32),  # (D, N)
            "image_size": np.array([full_w, full_h], dtype=np.int64),
        }
        if turn:
            back = from_upright(item["keypoints"], upright_size, turn)[0]
            item["keypoints"] = back.astype(np.float32)
        if guidance is not None:
            gout = guidance(tensor, pred)
            size = (resized.shape[1], resized.shape[0])
            sampled = sample_dense(gout["dense"], kp, size)  # (N, C)
            item["guidance"] = sampled.t().cpu().numpy().astype(np.float16)
            gdesc = gout["global_descriptor"]
        elif "dense" in pred:
            gdesc = global_descriptor(pred["dense"])
        else:
            gdesc = None
    gvec = None if gdesc is None else gdesc.float().cpu().numpy().astype(np.float32)
    return item, gvec
