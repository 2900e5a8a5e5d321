"""Scenes that grow, with exact ground truth: a courtyard of photo-textured facades walked around
by a camera, rendered off-screen for any number of views.

    python benchmarks/growth_scene.py OUT --views 400            # OUT/images, OUT/gt, OUT/scene.json
    python benchmarks/growth_scene.py OUT --views 36 --laps 1 --textures procedural --size 320x240

What is made (deterministic: the same arguments give the same bytes):

* **Geometry.** A rectangular courtyard whose perimeter grows with the number of views, so that
  the density of views (one every ``--step`` metres, 1 m by default) and the work per image stay
  fixed as N grows. Its sides are facades cut into segments 4-8 m wide and 4-12 m high, each set
  back by 0-2 m (with side walls where two setbacks meet), a back row of taller buildings
  (14-24 m) 12 m behind them, seen above the lower ones, boxes (kiosks, pillars, bins) on the
  pavement every 4-9 m for parallax, and a textured ground plane.
* **Textures.** Each facade segment shows a seeded random crop of a photo, flipped or not,
  shaded by its orientation to a fixed sun; each photo is used once (a photo on two walls would be
  a false overlap), and segments past the last photo, boxes and side walls get procedural facades.
  ``--textures auto`` takes the photos of ``../shared/data`` (urban100 and sun_hays80: unrelated
  photos, not the scene folders' many views of one building; never herzjesu_p8, our test scene)
  when that folder exists, else (a fresh clone, CI) seeded procedural facades (windows, bricks,
  signs, noise) everywhere; ``procedural`` forces those. The ground is procedural
  value noise with paving joints, computed at each hit point (no tiling, so no repeated patches).
* **Camera path.** ``--laps`` walks around the courtyard (default 2), at 6 m from the facades on
  the first lap and 4.5 m (half a step later, higher, more oblique) on the second: every place is
  revisited from another viewpoint, and the end of each lap closes a loop. Each view looks at the
  nearest wall (turning 45 degrees into each corner; on a side shorter than two turns they meet
  at its middle) with a seeded jitter of position and a smooth seeded wander of yaw and pitch
  along the path (std 8 degrees of yaw on the first lap, 18 on the second, correlated over about
  6 m: consecutive views differ by a few degrees, as a walker's do).
* **Rendering.** An exact ray caster in numpy (no GL stack, so CI, a laptop and a server render
  the same pixels): per pixel the nearest quad or ground hit, textures sampled trilinearly from
  mip pyramids at the pixel's footprint (no aliasing), per-view exposure gain, sensor noise, JPEG
  at quality 90 with EXIF ``FocalLengthIn35mmFilm`` (so all views share one camera, as photos of
  one phone do).
* **Ground truth.** ``gt/<name>.camera`` in Strecha's format (K, R camera-to-world, centre,
  size), which ``omniglue-sfm evaluate`` and ``evaluate-pairs`` read; K is in the features' pixel
  frame (top-left pixel centre at (0, 0)). ``overlaps.txt``: ``a b score`` for every pair whose
  views share surface (score = the smaller of the two shares of one view's visible points that
  the other sees unoccluded, from low-resolution depth maps), for retrieval recall.
  ``scene.json``: the parameters, each view's lap, the texture sources.

Resumable: images already written are kept (each view's pixels depend only on the arguments and
its index), so a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import io as _bytes_io
import json
import math
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SCENE_VERSION = 8  # 3: the first measured tables; 4-7: tried and reverted (docs/growth.md)
# photo folders under ../shared/data used as textures (see SOURCES.md there for each licence);
# herzjesu_p8 is our test scene and is never used
# Only collections of unrelated photos: the scene folders (lund, sacre_coeur, ...) hold many photos
# of one building, and two walls textured with two of them matched each other (40-50 verified
# inliers between places 30 m apart), a false overlap that the ground truth does not know of.
PHOTO_DIRS = ("train/urban100", "train/sun_hays80")
FOCAL_35MM = 28  # EXIF FocalLengthIn35mmFilm; focal = 28 mm over the 35 mm frame's diagonal
STREET = 6.0  # distance of the first lap from the facades (m)
BACK_ROW = 12.0  # distance of the taller back row of buildings behind the courtyard's walls (m)
SECOND_LAP = 4.5  # ... and of the second
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


def list_photos(textures: str) -> list[Path]:
    if textures == "procedural":
        return []
    photos = sorted(p for d in PHOTO_DIRS for p in (SHARED_DATA / d).glob("*")
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if textures == "photos" and not photos:
        raise FileNotFoundError(f"--textures photos: no photos under {SHARED_DATA} ({', '.join(PHOTO_DIRS)})")
    return photos


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
# the scene


@dataclass
class Scene:
    origins: np.ndarray  # (Q, 3) a corner of each quad
    us: np.ndarray  # (Q, 3) its width edge
    vs: np.ndarray  # (Q, 3) its height edge
    textures: list[TextureSpec]  # one per quad
    extent: tuple[float, float, float, float]  # ground: xmin, ymin, xmax, ymax

    @property
    def normals(self) -> np.ndarray:
        n = np.cross(self.us, self.vs)
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    @property
    def centers(self) -> np.ndarray:
        return self.origins + 0.5 * (self.us + self.vs)


def block_sides(A: float, B: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(start corner, unit direction, length) of the courtyard's sides, counter-clockwise from (0, 0)."""
    corners = [np.array(p, float) for p in ((0, 0), (A, 0), (A, B), (0, B))]
    out = []
    for k in range(4):
        a = corners[(k + 1) % 4] - corners[k]
        length = float(np.linalg.norm(a))
        out.append((corners[k], a / length, length))
    return out


def inward(a: np.ndarray) -> np.ndarray:
    """Into the courtyard from a side of direction ``a`` (counter-clockwise: the left)."""
    return np.array([-a[1], a[0]])


def build_scene(A: float, B: float, seed: int, photos: list[Path]) -> Scene:
    """The facades around a courtyard [0, A] x [0, B] (facing in), with boxes in front of them."""
    rng = rng_for(seed, "scene")
    unused = [photos[i] for i in rng_for(seed, "photos").permutation(len(photos))]
    O, U, V, T = [], [], [], []
    key = 0

    def quad(o: np.ndarray, u: np.ndarray, v: np.ndarray, w_m: float, h_m: float,
             photo_ok: bool = True) -> None:
        nonlocal key
        key += 1
        photo, crop, flip = None, (0.0, 0.0, 1.0), False
        if photo_ok and unused:  # each photo once: a photo on two walls is a false overlap
            photo = str(unused.pop())
            crop = (float(rng.random()), float(rng.random()), float(rng.uniform(0.55, 1.0)))
            flip = bool(rng.random() < 0.5)
        O.append(o)
        U.append(u)
        V.append(v)
        T.append(TextureSpec(key, w_m / h_m, w_m, h_m, photo, crop, flip))

    up = np.array([0.0, 0.0, 1.0])
    for corner, a, length in block_sides(A, B):
        n = inward(a)
        a3, n3, c3 = np.r_[a, 0.0], np.r_[n, 0.0], np.r_[corner, 0.0]
        cuts = [0.0]
        while length - cuts[-1] > 10.0:
            cuts.append(cuts[-1] + float(rng.uniform(4.0, 8.0)))
        cuts.append(length)
        # setbacks push a segment back (away from the courtyard); the end segments stay flush
        setbacks = [float(rng.uniform(0.0, 2.0)) if 0 < i < len(cuts) - 2 else 0.0
                    for i in range(len(cuts) - 1)]
        heights = [float(rng.uniform(4.0, 12.0)) for _ in setbacks]
        for i, (x0, x1) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
            e, h = setbacks[i], heights[i]
            # u runs against a: seen from the courtyard, the texture is not mirrored (normal = inward)
            quad(c3 + a3 * x1 - n3 * e, -a3 * (x1 - x0), up * h, x1 - x0, h)
            if i and abs(setbacks[i - 1] - e) > 1e-3:  # side wall between two setbacks
                deep, shallow = max(setbacks[i - 1], e), min(setbacks[i - 1], e)
                hh = heights[i] if e > setbacks[i - 1] else heights[i - 1]
                p_shallow, p_deep = c3 + a3 * x0 - n3 * shallow, c3 + a3 * x0 - n3 * deep
                # the wall faces the deeper segment's side of the cut
                if e > setbacks[i - 1]:  # recess after the cut: the wall faces +a
                    quad(p_deep, p_shallow - p_deep, up * hh, deep - shallow, hh, photo_ok=False)
                else:  # recess before the cut: faces -a
                    quad(p_shallow, p_deep - p_shallow, up * hh, deep - shallow, hh, photo_ok=False)
        # the back row: taller buildings BACK_ROW m behind, seen above the lower front walls
        x = -BACK_ROW
        while x < length + BACK_ROW - 1e-6:
            width = min(float(rng.uniform(8.0, 16.0)), length + BACK_ROW - x)
            h = float(rng.uniform(14.0, 24.0))
            quad(c3 + a3 * (x + width) - n3 * BACK_ROW, -a3 * width, up * h, width, h)
            x += width
        # boxes (kiosks, pillars, bins) in front of the facades, away from the corners
        x = float(rng.uniform(6.0, 9.0))
        while x < length - 6.0:
            side, tall = float(rng.uniform(0.4, 1.2)), float(rng.uniform(1.0, 3.0))
            d = float(rng.uniform(1.0, 3.2))
            centre = c3 + a3 * x + n3 * d
            ex, ey = a3 * side / 2, n3 * side / 2
            for p, u in ((centre - ex - ey, 2 * ex), (centre + ex - ey, 2 * ey),
                         (centre + ex + ey, -2 * ex), (centre - ex + ey, -2 * ey)):
                quad(p, u, up * tall, side, tall, photo_ok=False)
            x += float(rng.uniform(4.0, 9.0))
    return Scene(np.array(O), np.array(U), np.array(V), T, (-2.0, -2.0, A + 2.0, B + 2.0))


# --------------------------------------------------------------------------------------------
# the camera path


@dataclass(frozen=True)
class View:
    name: str
    lap: int
    R: np.ndarray  # world -> camera rotation (x right, y down, z forward)
    center: np.ndarray


CORNER_BLEND = 4.0  # m before and after a corner over which the view turns from one wall to the next


def path_length(A: float, B: float, d: float) -> float:
    return 2 * (A - 2 * d) + 2 * (B - 2 * d)


def path_point(s: float, A: float, B: float, d: float) -> tuple[np.ndarray, np.ndarray]:
    """Position (2D) at arc length ``s`` on the path ``d`` inside the courtyard's walls, and the
    direction from it towards the walls (the nearest wall; turning 45 degrees into a corner)."""
    s = s % path_length(A, B, d)
    sides = block_sides(A, B)
    for corner, a, length in sides:
        n = inward(a)
        inner = length - 2 * d
        if s <= inner:
            pos = corner + n * d + a * (d + s)
            look = -n
            # on a side shorter than two turns, the turns meet at its middle (no jump of the view)
            blend = min(CORNER_BLEND, inner / 2)
            if s > inner - blend:  # turning towards the next wall (ahead, a)
                w = 0.25 * math.pi * (s - (inner - blend)) / blend
                look = -n * math.cos(w) + a * math.sin(w)
            elif s < blend:  # still turning from the previous wall (behind, -a)
                w = 0.25 * math.pi * (blend - s) / blend
                look = -n * math.cos(w) - a * math.sin(w)
            return pos, look
        s -= inner
    raise AssertionError("unreachable")


def look_rotation(forward: np.ndarray) -> np.ndarray:
    """World -> camera rotation of a camera looking along ``forward`` with the world z up."""
    f = forward / np.linalg.norm(forward)
    right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    return np.stack([right, down, f])


MIN_SHORT_SIDE = 2 * STREET + 6.0


def block_size(views_per_lap: int, step: float) -> tuple[float, float]:
    """Courtyard sides A >= B (2:1, B at least MIN_SHORT_SIDE) whose first-lap path is about
    ``views_per_lap * step`` long."""
    total = (views_per_lap * step + 8 * STREET) / 2  # A + B
    B = max(MIN_SHORT_SIDE, total / 3)
    return max(total - B, B), B


JITTER_KNOTS_M = 6.0  # the smooth view jitter's correlation length along the path (m)


def smooth_jitter(s: float, length: float, seed: int, *keys: object) -> float:
    """A seeded function of arc length ``s`` on a closed path of ``length`` m, periodic with it:
    standard normal values at knots about ``JITTER_KNOTS_M`` apart, joined by a cosine ease (the
    result's spread is a little below 1 between knots)."""
    knots = max(3, round(length / JITTER_KNOTS_M))
    values = rng_for(seed, "jitter", *keys).normal(0.0, 1.0, knots)
    x = (s % length) / length * knots
    k = int(math.floor(x)) % knots
    f = x - math.floor(x)
    f = 0.5 - 0.5 * math.cos(math.pi * f)
    return float(values[k] * (1 - f) + values[(k + 1) % knots] * f)


def make_views(num_views: int, laps: int, step: float, seed: int) -> tuple[list[View], float, float]:
    per_lap = math.ceil(num_views / laps)
    A, B = block_size(per_lap, step)
    views = []
    for i in range(num_views):
        lap, j = divmod(i, per_lap)
        rng = rng_for(seed, "view", i)
        d = STREET if lap % 2 == 0 else SECOND_LAP
        length = path_length(A, B, d)
        s = (j + 0.5 * (lap % 2) + rng.uniform(-0.15, 0.15)) * length / per_lap
        pos, towards = path_point(s, A, B, d)
        pos = pos + rng.normal(0, 0.15, 2)
        # yaw and pitch wander smoothly along the lap (a walker turns gradually): independent draws
        # per view made consecutive views differ by 25 degrees and more on the second lap
        yaw = math.radians(smooth_jitter(s, length, seed, "yaw", lap) * (8.0 if lap % 2 == 0 else 18.0))
        wander = 0.5 + 0.5 * math.tanh(smooth_jitter(s, length, seed, "pitch", lap))
        pitch = math.radians((2.0 if lap % 2 == 0 else 6.0) + 6.0 * wander)
        c, sn = math.cos(yaw), math.sin(yaw)
        look = np.array([c * towards[0] - sn * towards[1], sn * towards[0] + c * towards[1]])
        forward = np.r_[look * math.cos(pitch), math.sin(pitch)]
        R = look_rotation(forward)
        roll = math.radians(rng.normal(0, 1.5))
        Rz = np.array([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
        height = (1.6 if lap % 2 == 0 else 2.3) + rng.normal(0, 0.1)
        views.append(View(f"{i:05d}.jpg", lap, Rz @ R, np.r_[pos, height]))
    return views, A, B


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


# --------------------------------------------------------------------------------------------
# ground truth


def intrinsics(size: tuple[int, int]) -> np.ndarray:
    W, H = size
    f = FOCAL_35MM / math.hypot(36, 24) * math.hypot(W, H)  # as COLMAP reads the EXIF focal
    return np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1.0]])


def write_camera(path: Path, K: np.ndarray, view: View, size: tuple[int, int]) -> None:
    rows = [K[0], K[1], K[2], np.zeros(3), view.R.T[0], view.R.T[1], view.R.T[2], view.center]
    text = "".join(" ".join(f"{v:.12g}" for v in row) + "\n" for row in rows) + f"{size[0]} {size[1]}\n"
    path.write_text(text)


DEPTH_STRIDE = 10  # low-resolution depth maps for the overlap ground truth


def overlaps(renderer: Renderer, views: list[View], radius: float = 30.0) -> list[tuple[str, str, float]]:
    """``(a, b, score)`` of every pair of views that share visible surface (score > 0.05)."""
    W, H = renderer.size
    K = renderer.K
    depth, points = [], []
    for v in views:
        z, _, _, _, d = renderer.trace(v.R, v.center, DEPTH_STRIDE)
        z = z.reshape(len(range(0, H, DEPTH_STRIDE)), -1)
        depth.append(z)
        finite = np.isfinite(z.ravel()) & (z.ravel() < 80)
        points.append(v.center + z.ravel()[finite, None] * d[finite])
    centers = np.stack([v.center for v in views])
    out = []
    share = {}
    for i, vi in enumerate(views):
        near = np.flatnonzero(np.linalg.norm(centers - vi.center, axis=1) < radius)
        for j in near:
            if j == i or len(points[i]) == 0:
                continue
            vj = views[j]
            cam = (points[i] - vj.center) @ vj.R.T
            zc = cam[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                u = K[0, 0] * cam[:, 0] / zc + K[0, 2]
                w = K[1, 1] * cam[:, 1] / zc + K[1, 2]
            inside = (zc > 0.1) & (u >= 0) & (u <= W - 1) & (w >= 0) & (w <= H - 1)
            col = np.clip(np.round(u[inside] / DEPTH_STRIDE).astype(int), 0, depth[j].shape[1] - 1)
            row = np.clip(np.round(w[inside] / DEPTH_STRIDE).astype(int), 0, depth[j].shape[0] - 1)
            seen = np.abs(depth[j][row, col] - zc[inside]) < 0.05 * zc[inside] + 0.05
            share[i, j] = float(seen.sum()) / len(points[i])
    for (i, j), sij in share.items():
        if i < j:
            score = min(sij, share.get((j, i), 0.0))
            if score > 0.05:
                out.append((views[i].name, views[j].name, round(score, 3)))
    return out


# --------------------------------------------------------------------------------------------
# entry point


def parse_size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def exif_bytes() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "omniglue-sfm"  # Make
    exif[0x0110] = "growth-scene"  # Model
    exif.get_ifd(0x8769)[0xA405] = FOCAL_35MM  # FocalLengthIn35mmFilm
    return exif.tobytes()


def generate(out: Path, views: int, seed: int = 0, laps: int = 2, step: float = 1.0,
             size: tuple[int, int] = (640, 480), textures: str = "auto", quiet: bool = False) -> dict:
    """Write ``out/images``, ``out/gt``, ``out/overlaps.txt`` and ``out/scene.json``; returns the
    scene record. Images already there are kept (resume)."""
    if views < 2 or laps < 1:
        raise ValueError("need at least 2 views and 1 lap")
    photos = list_photos(textures)
    out = Path(out)
    views_list, A, B = make_views(views, laps, step, seed)
    record = {"version": SCENE_VERSION, "views": views, "seed": seed, "laps": laps, "step": step,
              "size": list(size), "textures": "photos" if photos else "procedural", "block_m": [A, B],
              "photo_sources": sorted({str(Path(p).relative_to(SHARED_DATA).parent) for p in photos}),
              "laps_of": {v.name: v.lap for v in views_list}}
    done_path = out / "scene.json"
    if done_path.exists():
        old = json.loads(done_path.read_text())
        if {k: old.get(k) for k in record} == record and (out / "overlaps.txt").exists():
            return old
    scene = build_scene(A, B, seed, photos)
    K = intrinsics(size)
    renderer = Renderer(scene, K, size, seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "gt").mkdir(parents=True, exist_ok=True)
    exif = exif_bytes()
    for i, view in enumerate(views_list):
        path = out / "images" / view.name
        if not path.exists():
            pixels = renderer.render(view, rng_for(seed, "pixels", i))
            buffer = _bytes_io.BytesIO()
            Image.fromarray(pixels).save(buffer, "JPEG", quality=90, exif=exif)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, path)
        write_camera(out / "gt" / f"{view.name}.camera", K, view, size)
        if not quiet and (i + 1) % 50 == 0:
            print(f"rendered {i + 1} / {views}", file=sys.stderr, flush=True)
    pairs = overlaps(renderer, views_list)
    (out / "overlaps.txt").write_text("".join(f"{a} {b} {s}\n" for a, b, s in pairs))
    record["overlapping_pairs"] = len(pairs)
    tmp = done_path.with_name("scene.json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, done_path)
    return record


def read_overlaps(scene_dir: Path, threshold: float = 0.0) -> dict[tuple[str, str], float]:
    """Canonical pair -> overlap score, for pairs scoring at least ``threshold``."""
    out = {}
    for line in (Path(scene_dir) / "overlaps.txt").read_text().splitlines():
        a, b, s = line.split()
        if float(s) >= threshold:
            out[tuple(sorted((a, b)))] = float(s)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--views", type=int, required=True, help="number of views N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--laps", type=int, default=2, help="walks around the block (revisits)")
    p.add_argument("--step", type=float, default=1.0, help="metres between views on a lap")
    p.add_argument("--size", type=parse_size, default=(640, 480), help="WxH (default 640x480)")
    p.add_argument("--textures", choices=("auto", "photos", "procedural"), default="auto")
    args = p.parse_args(argv)
    record = generate(args.out, args.views, args.seed, args.laps, args.step, args.size, args.textures)
    print(f"{args.views} views of a {record['block_m'][0]:.0f} x {record['block_m'][1]:.0f} m block "
          f"({record['textures']} textures), {record['overlapping_pairs']} overlapping pairs -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
