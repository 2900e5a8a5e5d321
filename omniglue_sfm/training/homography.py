"""Synthetic homography pairs (the paper's SH100 / SH200) and photometric augmentation.

A pair is made from one photo: view 0 is an axis-aligned ``(W, H)`` crop; view 1 is the
quadrilateral obtained by moving each corner of that crop by a random vector of length at most
``max_shift`` pixels, warped back onto a ``(W, H)`` patch. ``H_0to1`` maps view-0 pixels to view-1
pixels. Pixel convention everywhere: the centre of the top-left pixel is (0, 0).

The paper defines SH100 / SH200 as corner moves of up to 100 / 200 px (on SuperGlue's 640x480
crops). :func:`scaled_shift` scales that to other crop sizes by the crop's longest side, so a
480x360 crop uses 75 / 150 px: the same relative distortion.

Everything is torch / numpy (no OpenCV, no albumentations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

REFERENCE_WIDTH = 640  # SH100 / SH200 are defined on 640x480 crops


def scaled_shift(shift_at_640: float, patch_size: tuple[int, int]) -> float:
    """Corner displacement for a crop of ``patch_size`` = (W, H) equivalent to ``shift_at_640``."""
    return shift_at_640 * max(patch_size) / REFERENCE_WIDTH


def homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """DLT: the 3x3 H with dst ~ H src for >= 4 point pairs (float64, H[2,2] = 1)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.shape[0] < 4:
        raise ValueError("homography_from_points needs >= 4 matching (x, y) points")
    # Hartley normalisation keeps the SVD well conditioned for pixel coordinates
    t_src, t_dst = _normaliser(src), _normaliser(dst)
    s = _apply(t_src, src)
    d = _apply(t_dst, dst)
    n = s.shape[0]
    a = np.zeros((2 * n, 9))
    a[0::2, 0:2], a[0::2, 2] = s, 1
    a[0::2, 6:8], a[0::2, 8] = -d[:, :1] * s, -d[:, 0]
    a[1::2, 3:5], a[1::2, 5] = s, 1
    a[1::2, 6:8], a[1::2, 8] = -d[:, 1:] * s, -d[:, 1]
    h = np.linalg.svd(a)[2][-1].reshape(3, 3)
    h = np.linalg.inv(t_dst) @ h @ t_src
    return h / h[2, 2]


def _normaliser(pts: np.ndarray) -> np.ndarray:
    c = pts.mean(0)
    scale = math.sqrt(2) / max(np.sqrt(((pts - c) ** 2).sum(1)).mean(), 1e-12)
    return np.array([[scale, 0, -scale * c[0]], [0, scale, -scale * c[1]], [0, 0, 1]])


def _apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = pts @ h[:, :2].T + h[:, 2]
    return p[:, :2] / p[:, 2:]


def warp_points(h: np.ndarray | torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 homography to (N, 2) points (torch, float32 result)."""
    h = torch.as_tensor(h, dtype=torch.float64)
    p = pts.to(torch.float64) @ h[:, :2].T + h[:, 2]
    # H is defined up to scale (estimators may return H[2, 2] < 0): keep z's sign, guard only 0
    z = p[:, 2:]
    z = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    return (p[:, :2] / z).float()


def patch_corners(size: tuple[int, int]) -> np.ndarray:
    """(4, 2) corner pixel centres of a (W, H) image: TL, TR, BR, BL."""
    w, h = size
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)


def is_convex(quad: np.ndarray) -> bool:
    """True if the 4-point polygon (in order) is strictly convex."""
    signs = []
    for i in range(4):
        a, b, c = quad[i], quad[(i + 1) % 4], quad[(i + 2) % 4]
        u, v = b - a, c - b
        signs.append(u[0] * v[1] - u[1] * v[0])  # z of the 2-D cross product
    signs = np.array(signs)
    return bool(np.all(signs > 1e-6) or np.all(signs < -1e-6))


@dataclass
class CropGeometry:
    """Where view 0 comes from in the photo (shared by all pairs of one photo)."""

    scale: float  # photo resize factor
    origin: tuple[float, float]  # top-left of the view-0 crop in the rescaled photo


def sample_crop(photo_size: tuple[int, int], patch_size: tuple[int, int], margin: float,
                rng: np.random.Generator) -> CropGeometry:
    """A random crop with ``margin`` px of photo on every side (room for the corner moves).

    The photo is rescaled by a random factor in [need, max(1, 1.15 need)], where ``need`` makes
    the crop plus the margin fit (small photos are upscaled).
    """
    pw, ph = photo_size
    w, h = patch_size
    need = max((w + 2 * margin) / pw, (h + 2 * margin) / ph)
    scale = rng.uniform(need, max(1.0, 1.15 * need))
    sw, sh = pw * scale, ph * scale
    x0 = rng.uniform(margin, max(margin, sw - w - margin))
    y0 = rng.uniform(margin, max(margin, sh - h - margin))
    return CropGeometry(scale, (x0, y0))


def sample_homography(patch_size: tuple[int, int], max_shift: float, rng: np.random.Generator,
                      max_tries: int = 100) -> np.ndarray:
    """H_0to1 for a view 1 whose corners are view 0's moved by vectors of length <= max_shift.

    Each corner move is uniform in the disc of radius ``max_shift``; non-convex quadrilaterals
    are re-drawn. The view-1 quadrilateral (in view-0 pixels) is ``H^-1`` of the patch corners.
    """
    base = patch_corners(patch_size)
    moved = base
    for _ in range(max_tries):
        radius = max_shift * np.sqrt(rng.uniform(0, 1, 4))
        angle = rng.uniform(0, 2 * np.pi, 4)
        moved = base + np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
        if is_convex(moved):
            break
    # G maps view-1 pixels to view-0 pixels (the moved quad), so H_0to1 = G^-1
    g = homography_from_points(base, moved)
    h01 = np.linalg.inv(g)
    return h01 / h01[2, 2]


def warp_image(photo: torch.Tensor, to_photo: np.ndarray, patch_size: tuple[int, int]) -> torch.Tensor:
    """Render a (W, H) patch whose pixel q shows photo point ``to_photo @ q``.

    photo: (3, Hs, Ws) float in [0, 1] (already rescaled); bilinear, border padding.
    """
    w, h = patch_size
    hs, ws = photo.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    pts = torch.stack([xs.flatten(), ys.flatten()], 1)
    src = warp_points(to_photo, pts).view(h, w, 2)
    grid = torch.empty_like(src)
    grid[..., 0] = src[..., 0] / (ws - 1) * 2 - 1
    grid[..., 1] = src[..., 1] / (hs - 1) * 2 - 1
    out = F.grid_sample(photo[None], grid[None], mode="bilinear", padding_mode="border", align_corners=True)
    return out[0]


def render_views(
    photo: torch.Tensor, crop: CropGeometry, homographies: list[np.ndarray], patch_size: tuple[int, int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """View 0 and one view 1 per H_0to1, (3, H, W) each, from the photo (3, Hp, Wp) in [0, 1]."""
    hp, wp = photo.shape[-2:]
    size = (max(2, round(hp * crop.scale)), max(2, round(wp * crop.scale)))
    # antialias when shrinking, like a camera further away
    scaled = F.interpolate(photo[None], size=size, mode="bilinear", align_corners=False,
                           antialias=crop.scale < 1)[0]
    x0, y0 = crop.origin
    t = np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], np.float64)  # view-0 pixel -> photo
    view0 = warp_image(scaled, t, patch_size)
    views1 = [warp_image(scaled, t @ np.linalg.inv(h), patch_size) for h in homographies]
    return view0, views1


# --------------------------------------------------------------------------------------------
# photometric augmentation (in the spirit of glue-factory's "lg" pipeline, torch only)


def photometric_augment(img: torch.Tensor, rng: np.random.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random brightness / contrast / gamma / blur / noise on a (3, H, W) image in [0, 1].

    Each effect is applied independently with its own probability; ``strength`` 0 disables all.
    Returns a new tensor clamped to [0, 1].
    """
    if strength <= 0:
        return img
    x = img.clone()
    if rng.uniform() < 0.5 * strength:  # brightness / contrast
        b = rng.uniform(-0.25, 0.15) * strength
        c = 1 + rng.uniform(-0.3, 0.2) * strength
        mean = x.mean()
        x = (x - mean) * c + mean + b
    if rng.uniform() < 0.3 * strength:  # gamma
        x = x.clamp(0, 1) ** float(np.exp(rng.uniform(-0.5, 0.5) * strength))
    if rng.uniform() < 0.2 * strength:  # gaussian blur
        x = gaussian_blur(x, float(rng.uniform(0.5, 1.5)))
    if rng.uniform() < 0.1 * strength:  # motion blur, random direction
        x = motion_blur(x, int(rng.integers(3, 8)), float(rng.uniform(0, np.pi)))
    if rng.uniform() < 0.3 * strength:  # sensor noise
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        x = x + torch.randn(x.shape, generator=gen) * float(rng.uniform(0.005, 0.03))
    return x.clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    kx, ky = k.view(1, 1, 1, -1).expand(c, 1, 1, -1), k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    y = F.conv2d(F.pad(x[None], (radius, radius, 0, 0), mode="replicate"), kx, groups=c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), ky, groups=c)
    return y[0]


def motion_blur(x: torch.Tensor, length: int, angle: float) -> torch.Tensor:
    size = 2 * (length // 2) + 1
    k = torch.zeros(size, size, dtype=x.dtype)
    c = size // 2
    for s in np.linspace(-c, c, 2 * size):
        k[int(round(c + s * np.sin(angle))), int(round(c + s * np.cos(angle)))] = 1
    k = k / k.sum()
    ch = x.shape[0]
    y = F.conv2d(F.pad(x[None], (c, c, c, c), mode="replicate"), k.expand(ch, 1, size, size), groups=ch)
    return y[0]


def to_uint8_like(img: torch.Tensor) -> torch.Tensor:
    """Quantise to 8 bit and back: training images look like the decoded photos the pipeline sees."""
    return (img.clamp(0, 1) * 255).round() / 255
