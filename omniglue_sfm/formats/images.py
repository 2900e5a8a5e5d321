"""Finding and reading photos.

Orientation convention: images are read with their EXIF orientation **applied**, i.e. as people
see them (and as COLMAP 4 reads them). Keypoints and ``image_size`` in ``features.h5`` are in this
EXIF-oriented frame. A phone photo stored landscape with orientation tag 6 therefore has
``image_size`` (H_stored, W_stored) and keypoints in the upright picture.

Every image becomes (H, W, 3) uint8 RGB: grayscale is repeated, alpha is dropped, palettes are
expanded and 16-bit samples are scaled down to 8 bit.

Large images: Pillow's decompression-bomb guard (a warning above 89 MP, an error above 179 MP) is
meant for untrusted uploads; a 200 MP phone photo is a normal input here. We lift it for the files
we chose to read and apply our own limit, ``MAX_PIXELS``, checked from the header before any
decoding. A reader that only needs a smaller picture (extraction at ``resize_max``, point colours)
asks for ``max_side``: an image above ``LARGE_PIXELS`` is then decoded at reduced size (JPEG's DCT
scaling through Pillow's ``draft``, else an integer-factor ``reduce``), never below ``max_side``,
so memory stays bounded. Smaller images are decoded in full, so their results do not change.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .outputs import OUTPUT_MARKERS

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
MAX_PIXELS = 1_000_000_000  # refuse above one gigapixel (3 GB as RGB): not a photo we can use
LARGE_PIXELS = 50_000_000  # above this, a reader asking for ``max_side`` gets a reduced decode
EXIF_ORIENTATION = 0x0112
MIN_SIDE = 16  # px: smaller images (1x1, 480x1) hold no keypoints; they are listed as unreadable
# A Huffman-coded JPEG spends at least 2 bits (DC code + end of block; at least 1 in a progressive
# DC scan) on each 8x8 block of luminance: one byte per 512 pixels or more. A file with under half
# that for the size its header claims is truncated, or lies about its size (libjpeg would decode
# the missing rest as grey without an error).
JPEG_MIN_PIXELS_PER_BYTE = 1024


class ImageReadError(OSError):
    """An image file exists but cannot be decoded."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def list_images(root: Path | str) -> list[str]:
    """Sorted POSIX paths (relative to ``root``) of every image below ``root``, recursively.

    Hidden files and folders (starting with ``.``) are skipped, e.g. ``.ipynb_checkpoints``, and so
    are our own output folders below ``root`` (``reconstruct photos photos/out``, an export into
    ``photos/``): a folder holding one of ``outputs.OUTPUT_MARKERS`` is skipped, with a warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder does not exist: {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames
                       if not d.startswith(".") and not _is_output(Path(dirpath) / d, root)]
        for fname in filenames:
            if fname.startswith(".") or not fname.lower().endswith(IMAGE_EXTENSIONS):
                continue
            found.append((Path(dirpath) / fname).relative_to(root).as_posix())
    return sorted(found)


def _is_output(folder: Path, root: Path) -> bool:
    marker = next((m for m in OUTPUT_MARKERS if (folder / m).exists()), None)
    if marker is not None:
        log.warning("skipping %s: an omniglue-sfm output folder (it holds %s), not photos",
                    folder.relative_to(root).as_posix(), marker)
    return marker is not None


def none_readable(image_dir: Path | str, failed: dict[str, str]) -> ValueError:
    """The error for a folder whose images all failed to read (bad input: exit 1, not 2)."""
    listed = "; ".join(f"{name}: {reason}" for name, reason in list(failed.items())[:5])
    more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
    return ValueError(f"none of the {len(failed)} image(s) in {image_dir} could be read: {listed}{more}")


def _to_uint8_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit (or 32-bit) single channel: scale the full range of the type down to 8 bit
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max(initial=0))
        if img.mode.startswith("I;16"):
            top = 65535.0
        elif img.mode == "F":
            top = 1.0 if peak <= 1.0 else peak  # float images: [0, 1] or whatever range they use
        else:
            top = 65535.0 if peak > 255 else 255.0  # mode "I" holds 8- or 16-bit data
        arr = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, LA, P, RGBA, CMYK, YCbCr...: alpha is dropped
    return np.asarray(img, dtype=np.uint8).copy()


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an image before it is even opened (None: a non-empty regular file)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
        return "no such file"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself)"
        return f"{type(err).__name__}: {err.strerror or err}"
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


def read_image(path: Path | str, max_side: int | None = None, draft_side: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB with the EXIF orientation applied; raises :class:`ImageReadError`.

    With ``max_side``, a large image may come back reduced (see the module doc); use
    :func:`read_image_sized` when the full size matters. ``draft_side``: a JPEG of any size may be
    decoded at a reduced scale (1/2, 1/4, 1/8) whose sides stay at least this long, several times
    faster, for callers that downscale anyway (the orientation pass).
    """
    return read_image_sized(path, max_side, draft_side)[0]


def read_image_sized(
    path: Path | str, max_side: int | None = None, draft_side: int | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """The pixels (as :func:`read_image`) and ``(W, H)`` of the full EXIF-oriented image."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise ImageReadError(path, problem)
    try:
        with _without_pillow_bomb_guard(), Image.open(path) as img:
            full_size = _checked_oriented_size(path, img)
            if draft_side:
                img.draft(img.mode, (draft_side, draft_side))  # JPEG only, else a no-op
            img = _decode(img, max_side)
            img = ImageOps.exif_transpose(img)
            arr = _to_uint8_rgb(img)
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageReadError(path, f"{type(err).__name__}: {err}") from err
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(path, f"unexpected image shape {arr.shape}")
    return arr, full_size


@contextmanager
def _without_pillow_bomb_guard() -> Iterator[None]:
    """Pillow's guard is off while we open a file we chose to read (``MAX_PIXELS`` applies)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def oriented_size(path: Path | str) -> tuple[tuple[int, int], bool]:
    """(W, H) after the EXIF orientation, from the header alone, and whether the orientation
    changes the pixels (a tag other than 1)."""
    with _without_pillow_bomb_guard(), Image.open(path) as img:
        return _oriented(img)


def _oriented(img: Image.Image) -> tuple[tuple[int, int], bool]:
    w, h = img.size
    orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    return ((h, w) if orientation in (5, 6, 7, 8) else (w, h)), orientation not in (None, 1)


def _checked_oriented_size(path: Path, img: Image.Image) -> tuple[int, int]:
    """(W, H) after the EXIF orientation, from the header; refuses images above ``MAX_PIXELS``."""
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageReadError(path, f"{w}x{h} pixels ({w * h / 1e6:.0f} MP) is above the limit of "
                                   f"{MAX_PIXELS / 1e6:.0f} MP; downscale it first")
    if min(w, h) < MIN_SIDE:
        raise ImageReadError(path, f"too small: {w}x{h} pixels (keypoints need at least {MIN_SIDE} on each "
                                   "side)")
    if img.format == "JPEG" and not _arithmetic_jpeg(path):
        needed = w * h // JPEG_MIN_PIXELS_PER_BYTE
        size = path.stat().st_size
        if size < needed:  # libjpeg fills the missing blocks with grey and does not complain
            raise ImageReadError(path, f"truncated: its header says {w}x{h} pixels, which takes at least "
                                       f"{needed} bytes as JPEG, but the file has {size}")
    return _oriented(img)[0]


def _arithmetic_jpeg(path: Path) -> bool:
    """Whether a JPEG frame is arithmetic-coded (SOF9-11, 13-15; rare): no size floor holds then."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return any(bytes([0xFF, marker]) in head for marker in (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def _decode(img: Image.Image, max_side: int | None) -> Image.Image:
    """Decode ``img``; a large one at reduced size (long side still >= ``max_side``) when asked."""
    w, h = img.size
    if not max_side or w * h <= LARGE_PIXELS or max(w, h) <= max_side:
        img.load()  # decode now: truncated files fail here, not later
        return img
    factor = max_side / max(w, h)
    img.draft(img.mode, (math.ceil(w * factor), math.ceil(h * factor)))  # JPEG only, else a no-op
    img.load()
    step = max(img.size) // max_side
    if step >= 2 and img.mode in ("L", "RGB", "RGBA", "LA", "I", "F", "I;16"):
        img = img.reduce(step)  # box average over step x step blocks: area-preserving
    return img


def resize_for_extraction(
    img: np.ndarray, resize_max: int | None, full_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Downscale so the long side is at most ``resize_max`` (never upscale).

    ``full_size`` (W, H) is the size of the original when ``img`` was decoded reduced
    (:func:`read_image_sized`); the target size and the scale are computed from it, so a reduced
    decode gives the same frame as a full one. Returns the resized image and ``scale_xy`` =
    original / resized size per axis; keypoints go back to original pixels with
    ``(kp + 0.5) * scale_xy - 0.5`` (pixel centres at integers).
    """
    h, w = img.shape[:2]
    full_w, full_h = full_size or (w, h)
    if not resize_max or resize_max <= 0 or max(full_w, full_h) <= resize_max:
        return img, np.array([full_w / w, full_h / h], dtype=np.float64)
    factor = resize_max / max(full_w, full_h)
    new_w, new_h = max(1, round(full_w * factor)), max(1, round(full_h * factor))
    # BOX is an area average: no aliasing when shrinking a lot (like cv2.INTER_AREA in hloc)
    resized = np.array(Image.fromarray(img).resize((new_w, new_h), Image.Resampling.BOX))
    return resized, np.array([full_w / new_w, full_h / new_h], dtype=np.float64)


def scale_keypoints(kp: np.ndarray, scale_xy: np.ndarray) -> np.ndarray:
    """Keypoints of the resized image -> original pixels (centre of the top-left pixel at 0)."""
    return ((kp + 0.5) * scale_xy - 0.5).astype(np.float32)
