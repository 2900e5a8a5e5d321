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
import io as _bytes_io
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, however this file is loaded

from growth_render import Renderer, TextureSpec, rng_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SCENE_VERSION = 8  # 3: the first measured tables; 4-7: tried and reverted (docs/growth.md)
# texture photos under ../shared/data (licences in its SOURCES.md; never herzjesu_p8, our test scene):
# unrelated photos only. The scene folders (lund, ...) hold many photos of one building: two walls
# showing two of them matched (40-50 inliers 30 m apart), an overlap the ground truth does not know.
PHOTO_DIRS = ("train/urban100", "train/sun_hays80")
FOCAL_35MM = 28  # EXIF FocalLengthIn35mmFilm; focal = 28 mm over the 35 mm frame's diagonal
STREET = 6.0  # distance of the first lap from the facades (m)
BACK_ROW = 12.0  # distance of the taller back row of buildings behind the courtyard's walls (m)
SECOND_LAP = 4.5  # ... and of the second


# --------------------------------------------------------------------------------------------
# textures of the scene


def list_photos(textures: str) -> list[Path]:
    if textures == "procedural":
        return []
    photos = sorted(p for d in PHOTO_DIRS for p in (SHARED_DATA / d).glob("*")
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if textures == "photos" and not photos:
        raise FileNotFoundError(f"--textures photos: no photos under {SHARED_DATA} ({', '.join(PHOTO_DIRS)})")
    return photos


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
