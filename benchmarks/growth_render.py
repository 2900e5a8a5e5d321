"""The growth scenes' pixels (benchmarks/growth_scene.py makes the scene, the path and the
ground truth): seeded noise, facade textures (a crop of a photo, or procedural), mip-mapped
trilinear sampling, and the exact numpy ray caster with its shading, exposure, noise and ground."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:  # the scene and the views are growth_scene's
    from growth_scene import Scene, View

MAX_DISTANCE = 80.0  # quads farther than this from a camera are not drawn (never visible past the block)
SUN = np.array([0.45, -0.6, 0.66]) / np.linalg.norm([0.45, -0.6, 0.66])


# --------------------------------------------------------------------------------------------
# seeded helpers


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """An independent generator per (seed, keys): a view's pixels depend on nothing else."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _hash01(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) values on an integer lattice."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = h & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 15
    return h.astype(np.float64) / 4294967296.0


def value_noise(x: np.ndarray, y: np.ndarray, salt: int) -> np.ndarray:
    ix, iy = np.floor(x), np.floor(y)
    fx, fy = x - ix, y - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    v00, v10 = _hash01(ix, iy, salt), _hash01(ix + 1, iy, salt)
    v01, v11 = _hash01(ix, iy + 1, salt), _hash01(ix + 1, iy + 1, salt)
    return (v00 * (1 - fx) + v10 * fx) * (1 - fy) + (v01 * (1 - fx) + v11 * fx) * fy


# --------------------------------------------------------------------------------------------
# textures


def procedural_facade(rng: np.random.Generator, width_m: float, height_m: float,
                      px_per_m: int = 48) -> np.ndarray:
    """A seeded facade picture (uint8 H x W x 3), with nothing that repeats (repeated bricks or
    stripes would make matches ambiguous): blotches of a random palette (quantised multi-octave
    noise, like weathered render or graffiti), windows of varied sizes, noisy posters."""
    w, h = max(8, int(width_m * px_per_m)), max(8, int(height_m * px_per_m))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    salt = int(rng.integers(1 << 30))
    noise = sum((value_noise(xx / s, yy / s, salt + k) - 0.5) * a
                for k, (s, a) in enumerate(((40, 0.6), (14, 0.4), (5, 0.25))))
    levels = 7
    palette = rng.uniform(0.15, 0.95, (levels, 3))
    index = np.clip(((noise + 0.6) / 1.2 * levels).astype(np.int64), 0, levels - 1)
    fine = value_noise(xx / 1.5, yy / 1.5, salt + 5)[..., None]
    img = palette[index] * (0.85 + 0.3 * fine)
    floors = max(2, int(height_m / rng.uniform(2.8, 3.6)))
    for f in range(floors):
        x = float(rng.uniform(0, 0.6)) * px_per_m
        while x < w - 0.5 * px_per_m:
            ww = rng.uniform(0.5, 1.6) * px_per_m
            wh = rng.uniform(0.35, 0.65) * h / floors
            cy = h - (f + rng.uniform(0.4, 0.6)) * h / floors
            x0, x1, y0, y1 = int(x), int(min(x + ww, w)), int(cy - wh / 2), int(cy + wh / 2)
            img[max(y0 - 3, 0):y1 + 3, max(x0 - 3, 0):x1 + 3] = rng.uniform(0.5, 0.95, 3)  # frame
            img[y0:y1, x0:x1] = rng.uniform(0.05, 0.4, 3) * (0.4 + 1.2 * fine[y0:y1, x0:x1])
            x += ww + rng.uniform(0.6, 2.5) * px_per_m
    street = int(min(height_m, 4.5) * px_per_m)
    for _ in range(int(rng.integers(6, 14) * width_m / 6)):  # posters at street level
        sw, sh = int(rng.uniform(0.2, 1.2) * px_per_m), int(rng.uniform(0.2, 1.0) * px_per_m)
        x0, y0 = int(rng.integers(0, max(1, w - sw))), max(0, h - int(rng.integers(sh, max(sh + 1, street))))
        grid = np.mgrid[0:sh, 0:sw] / rng.uniform(2, 6)
        q = np.clip((value_noise(grid[0], grid[1], salt + 11 + x0) * 4).astype(np.int64), 0, 3)
        block = rng.uniform(0, 1, (4, 3))[q]
        img[y0:y0 + sh, x0:x0 + sw] = block[: h - y0, : w - x0]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@dataclass(frozen=True)
class TextureSpec:
    """How one surface's texture is made: a crop of a photo, or a procedural facade."""

    key: int  # seed key
    aspect: float  # width / height of the surface
    width_m: float
    height_m: float
    photo: str | None  # path, or None for procedural
    crop: tuple[float, float, float] = (0.0, 0.0, 1.0)  # x0, y0 (fractions), scale of the largest crop
    flip: bool = False

    def build(self, seed: int) -> np.ndarray:
        if self.photo is None:
            return procedural_facade(rng_for(seed, "tex", self.key), self.width_m, self.height_m)
        with Image.open(self.photo) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            W, H = img.size
            cw = min(W, H * self.aspect) * self.crop[2]
            ch = cw / self.aspect
            x0, y0 = self.crop[0] * (W - cw), self.crop[1] * (H - ch)
            img = img.crop((int(x0), int(y0), int(x0 + cw), int(y0 + ch)))
            long_side = 1024  # enough texels for a 640 px view at 4.5 m
            if max(img.size) > long_side:
                f = long_side / max(img.size)
                img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))),
                                 Image.Resampling.BOX)
            if self.flip:
                img = ImageOps.mirror(img)
            return np.asarray(img)


def mip_pyramid(tex: np.ndarray) -> list[np.ndarray]:
    levels = [tex.astype(np.float32)]
    while min(levels[-1].shape[:2]) >= 2:
        t = levels[-1]
        h, w = t.shape[0] // 2 * 2, t.shape[1] // 2 * 2
        t = t[:h, :w]
        levels.append(0.25 * (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]))
    return levels


def _bilinear(tex: np.ndarray, s: np.ndarray, r: np.ndarray) -> np.ndarray:
    h, w = tex.shape[:2]
    x = np.clip(s * w - 0.5, 0, w - 1)
    y = np.clip((1.0 - r) * h - 0.5, 0, h - 1)  # r = 0 at the bottom of the surface
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx
    bottom = tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def sample_trilinear(levels: list[np.ndarray], s: np.ndarray, r: np.ndarray, lod: np.ndarray) -> np.ndarray:
    lod = np.clip(lod, 0, len(levels) - 1)
    lo = np.floor(lod).astype(np.int64)
    frac = (lod - lo)[:, None]
    out = np.zeros((len(s), 3), np.float32)
    for level in np.unique(lo):
        sel = lo == level
        a = _bilinear(levels[level], s[sel], r[sel])
        b = _bilinear(levels[min(level + 1, len(levels) - 1)], s[sel], r[sel])
        out[sel] = a * (1 - frac[sel]) + b * frac[sel]
    return out


# --------------------------------------------------------------------------------------------
# rendering


class Renderer:
    def __init__(self, scene: Scene, K: np.ndarray, size: tuple[int, int], seed: int,
                 cache: int = 96) -> None:
        self.scene, self.K, self.size, self.seed = scene, K, size, seed
        self.normals = scene.normals
        self.corners = np.stack([scene.origins, scene.origins + scene.us, scene.origins + scene.vs,
                                 scene.origins + scene.us + scene.vs], axis=1)  # (Q, 4, 3)
        self.shade = (0.72 + 0.28 * np.clip(self.normals @ SUN, 0, 1)).astype(np.float32)
        self.cache: OrderedDict[int, list[np.ndarray]] = OrderedDict()
        self.cache_size = cache

    def texture(self, q: int) -> list[np.ndarray]:
        if q in self.cache:
            self.cache.move_to_end(q)
            return self.cache[q]
        levels = mip_pyramid(self.scene.textures[q].build(self.seed))
        self.cache[q] = levels
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return levels

    def visible_quads(self, R: np.ndarray, C: np.ndarray) -> np.ndarray:
        """Quads that may be seen: near enough and not wholly outside one side of the frustum."""
        W, H = self.size
        cam = (self.corners - C) @ R.T  # (Q, 4, 3)
        x, y, z = cam[..., 0], cam[..., 1], cam[..., 2]
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        outside = ((z <= 0.05).all(1) | (x < -(cx + 1) / fx * z).all(1) | (x > (W - cx) / fx * z).all(1)
                   | (y < -(cy + 1) / fy * z).all(1) | (y > (H - cy) / fy * z).all(1))
        near = np.linalg.norm(self.scene.centers - C, axis=1) < MAX_DISTANCE + np.linalg.norm(
            self.scene.us + self.scene.vs, axis=1) / 2
        return np.flatnonzero(~outside & near)

    def trace(self, R: np.ndarray, C: np.ndarray, stride: int = 1) -> tuple[np.ndarray, ...]:
        """Per pixel (row-major, every ``stride``-th pixel): hit depth z (inf: sky), quad index (-1:
        ground, -2: sky), texture coordinates s, r, and the ray directions (camera z = 1)."""
        W, H = self.size
        ys, xs = np.mgrid[0:H:stride, 0:W:stride]
        pix = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], 1)
        d = (pix @ np.linalg.inv(self.K).T) @ R  # world directions, camera z component 1
        M = len(d)
        best = np.full(M, np.inf)
        index = np.full(M, -2, np.int64)
        s_out, r_out = np.zeros(M), np.zeros(M)
        ground = d[:, 2] < -1e-9
        tg = np.where(ground, -C[2] / np.where(ground, d[:, 2], -1.0), np.inf)
        best[ground], index[ground] = tg[ground], -1
        sc = self.scene
        for q in self.visible_quads(R, C):
            n = self.normals[q]
            denom = d @ n
            with np.errstate(divide="ignore", invalid="ignore"):
                t = ((sc.origins[q] - C) @ n) / denom
            ok = (t > 0.05) & (t < best)
            if not ok.any():
                continue
            idx = np.flatnonzero(ok)
            p = C + t[idx, None] * d[idx] - sc.origins[q]
            s = (p @ sc.us[q]) / (sc.us[q] @ sc.us[q])
            r = (p @ sc.vs[q]) / (sc.vs[q] @ sc.vs[q])
            inside = (s >= 0) & (s <= 1) & (r >= 0) & (r <= 1)
            idx = idx[inside]
            best[idx], index[idx], s_out[idx], r_out[idx] = t[idx], q, s[inside], r[inside]
        return best, index, s_out, r_out, d

    def render(self, view: View, rng: np.random.Generator) -> np.ndarray:
        W, H = self.size
        R, C = view.R, view.center
        z, index, s, r, d = self.trace(R, C)
        f = self.K[0, 0]
        img = np.zeros((len(z), 3), np.float32)
        # sky: a gradient by elevation
        sky = index == -2
        elevation = d[sky, 2] / np.linalg.norm(d[sky], axis=1)
        img[sky] = np.array([0.62, 0.74, 0.9]) * 255 * (0.85 + 0.15 * elevation[:, None])
        ground = np.flatnonzero(index == -1)
        if len(ground):
            p = C + z[ground, None] * d[ground]
            grazing = np.abs(d[ground, 2]) / np.linalg.norm(d[ground], axis=1)
            footprint = z[ground] / f / np.maximum(grazing, 0.05)
            img[ground] = ground_colour(p[:, 0], p[:, 1], footprint, self.seed)
        for q in np.unique(index[index >= 0]):
            sel = np.flatnonzero(index == q)
            levels = self.texture(int(q))
            tex_per_m = levels[0].shape[1] / np.linalg.norm(self.scene.us[q])
            cos = np.abs(d[sel] @ self.normals[q]) / np.linalg.norm(d[sel], axis=1)
            lod = np.log2(np.maximum(z[sel] / f * tex_per_m / np.sqrt(np.maximum(cos, 0.1)), 1e-6))
            img[sel] = sample_trilinear(levels, s[sel], r[sel], lod) * self.shade[q]
        img = img.reshape(H, W, 3) * rng.uniform(0.9, 1.1) + rng.normal(0, 1.5, (H, W, 3))
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def ground_colour(x: np.ndarray, y: np.ndarray, footprint: np.ndarray, seed: int) -> np.ndarray:
    """Procedural pavement at world points: multi-octave value noise (octaves finer than the
    pixel footprint fade out); no slab joints, whose grid would repeat."""
    total = np.zeros(len(x))
    for k, wavelength in enumerate((4.0, 1.0, 0.4, 0.15, 0.06, 0.025)):
        fade = np.clip(wavelength / (2 * footprint) - 1, 0, 1)
        total += fade * 0.5 * (value_noise(x / wavelength, y / wavelength, seed * 31 + k) - 0.5) * (
            0.9 if wavelength > 0.5 else 0.6)
    tint = value_noise(x / 25.0, y / 25.0, seed * 31 + 99)[:, None] * np.array([0.08, 0.05, 0.0])
    grey = (0.5 + total)[:, None]
    return np.clip((grey + tint) * np.array([0.55, 0.54, 0.52]) * 255, 0, 255)
