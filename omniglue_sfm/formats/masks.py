"""Masks: per-image PNGs that say where keypoints may be (nonzero) and where not (zero).

Naming: the mask of image ``<name>`` (its POSIX path relative to the image folder) is
``<mask folder>/<name>.png``, the extension appended, as hloc and COLMAP's ``--ImageReader.mask_path``
name them (``0000.jpg`` -> ``0000.jpg.png``; ``sub/a.png`` -> ``sub/a.png.png``).

A mask lives in the image frame of :mod:`omniglue_sfm.formats.images` (EXIF orientation applied, the frame
of ``features.h5``): it must have the EXIF-oriented image's size. Any mode PIL reads is accepted;
a pixel is kept when any of its channels is nonzero.

Resume: the mask folder is part of ``features.h5``'s configuration (``"masks"``, its absolute path),
and every image's features record the SHA-1 of the mask they were made with (``mask_sha1``), so a
changed mask re-extracts that image, and its pairs are matched again (``formats.provenance.source_sha1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from . import h5io, provenance
from .images import oriented_size

MASK_SUFFIX = ".png"
# datasets of a features.h5 item indexed by keypoint, and the axis that indexes them
_PER_KEYPOINT = {"keypoints": 0, "scores": 0, "descriptors": 1, "guidance": 1}


def mask_name(image_name: str) -> str:
    """The mask file of an image, relative to the mask folder."""
    return image_name + MASK_SUFFIX


@dataclass(frozen=True)
class MaskSet:
    """A folder of masks, one per image (see the module docstring for names and frame)."""

    root: Path

    def __post_init__(self) -> None:
        if not Path(self.root).is_dir():
            raise FileNotFoundError(f"mask folder does not exist: {self.root}")
        object.__setattr__(self, "root", Path(self.root).resolve())

    def config_value(self) -> str:
        """What ``features.h5``'s configuration records: another folder is another configuration."""
        return str(self.root)

    def path(self, image_name: str) -> Path:
        return self.root / mask_name(image_name)

    def check(self, image_names: list[str], image_dir: Path | None = None) -> None:
        """Every image has a mask file and (with ``image_dir``) a mask of its size, before any work
        is done (sizes from the files' headers, EXIF orientation applied)."""
        missing = [n for n in image_names if not self.path(n).is_file()]
        if missing:
            listed = ", ".join(mask_name(n) for n in missing[:5])
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise FileNotFoundError(
                f"{len(missing)} image(s) have no mask in {self.root}: missing {listed}{more}; every image "
                f"<name> needs <name>{MASK_SUFFIX} (white or nonzero = keep, 0 = ignore)")
        for name in image_names if image_dir is not None else ():
            try:
                image_size = oriented_size(Path(image_dir) / name)[0]
                mask_size = oriented_size(self.path(name))[0]
            except (OSError, ValueError, SyntaxError):
                continue  # an unreadable image is reported by extraction, an unreadable mask by load()
            if image_size != mask_size:
                raise ValueError(
                    f"mask {self.path(name)} is {mask_size[0]}x{mask_size[1]} but image {name} is "
                    f"{image_size[0]}x{image_size[1]} (after its EXIF orientation); masks must have their "
                    "image's size")

    def sha1(self, image_name: str) -> str:
        return provenance.file_digest(self.path(image_name))

    def record(self, image_name: str) -> dict:
        """The attribute of the image's ``features.h5`` group."""
        return {"mask_sha1": self.sha1(image_name)}

    def changed(self, attrs: dict, image_name: str) -> bool:
        """Whether stored features were made with another mask (or none) than the file now holds."""
        return h5io.attr_text(attrs.get("mask_sha1", "")) != self.sha1(image_name)

    def load(self, image_name: str, size: tuple[int, int]) -> np.ndarray:
        """(H, W) bool, True where keypoints may be; ``size`` is the image's (W, H)."""
        path = self.path(image_name)
        try:
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                if img.mode not in ("1", "L", "I", "I;16", "F", "RGB"):
                    img = img.convert("RGB")  # palettes expanded, alpha dropped
                arr = np.asarray(img)
        except (OSError, ValueError, SyntaxError) as err:
            raise ValueError(f"cannot read mask {path}: {type(err).__name__}: {err}") from err
        if (arr.shape[1], arr.shape[0]) != tuple(size):
            raise ValueError(
                f"mask {path} is {arr.shape[1]}x{arr.shape[0]} but image {image_name} is {size[0]}x{size[1]} "
                "(after its EXIF orientation); masks must have their image's size")
        return arr.any(axis=2) if arr.ndim == 3 else arr != 0

    def apply(self, image_name: str, item: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``item`` (a ``features.h5`` entry) without the keypoints that fall in masked-out pixels."""
        keep = keypoints_inside(item["keypoints"], self.load(image_name, tuple(item["image_size"])))
        return {k: (np.compress(keep, v, axis=_PER_KEYPOINT[k]) if k in _PER_KEYPOINT else v)
                for k, v in item.items()}


def keypoints_inside(keypoints: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) bool: the keypoint's pixel (centre of the top-left pixel at (0, 0)) is kept by ``mask``."""
    h, w = mask.shape
    cols = np.clip(np.rint(keypoints[:, 0]).astype(np.int64), 0, w - 1)
    rows = np.clip(np.rint(keypoints[:, 1]).astype(np.int64), 0, h - 1)
    return mask[rows, cols]
