"""2D pictures: matches of a pair (inliers green, outliers red) and keypoints coloured by track length."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image, ImageDraw, ImageFont

from ..formats import h5io, matches_h5, outputs
from ..formats.images import read_image
from .scene import load_model

GREEN = (40, 200, 60)


RED = (230, 40, 40)


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> (N, 3) uint8, a viridis-like ramp (dark blue -> green -> yellow)."""
    anchors = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)
    x = np.clip(np.asarray(values, float), 0, 1) * (len(anchors) - 1)
    lo = np.minimum(np.floor(x).astype(int), len(anchors) - 2)
    t = (x - lo)[:, None]
    return np.round(anchors[lo] * (1 - t) + anchors[lo + 1] * t).astype(np.uint8)


def _fit_height(img: np.ndarray, height: int) -> tuple[Image.Image, float]:
    pil = Image.fromarray(img)
    scale = height / pil.height
    return pil.resize((max(1, round(pil.width * scale)), height), Image.Resampling.LANCZOS), scale


def add_header(canvas: Image.Image, text: str, height: int) -> Image.Image:
    out = Image.new("RGB", (canvas.width, canvas.height + height), "white")
    out.paste(canvas, (0, height))
    ImageDraw.Draw(out).text((10, height // 2), text, fill="black", font=font(int(height * 0.55)),
                             anchor="lm")
    return out


@dataclass
class PairMatches:
    keypoints0: np.ndarray  # (N0, 2) features.h5 convention (top-left pixel centre at 0)
    keypoints1: np.ndarray
    matches: np.ndarray  # (K, 2) indices
    inliers: np.ndarray  # (K,) bool
    inlier_source: str


def _db_image_ids(db: pycolmap.Database, names: tuple[str, str]) -> tuple[int, int] | None:
    try:
        return tuple(int(db.read_image_with_name(n).image_id) for n in names)  # type: ignore[return-value]
    except (ValueError, RuntimeError, IndexError):
        return None


def _verified_inliers(db_path: Path, names: tuple[str, str], matches: np.ndarray) -> np.ndarray | None:
    """Which matches are inliers of the pair's verified two-view geometry in database.db."""
    if not db_path.exists():
        return None
    with pycolmap.Database.open(db_path) as db:
        ids = _db_image_ids(db, names)
        if ids is None or not db.exists_two_view_geometry(*ids):
            return None
        pairs = np.asarray(db.read_two_view_geometry(*ids).inlier_matches, np.int64).reshape(-1, 2)
    verified = {(int(a), int(b)) for a, b in pairs}
    return np.array([(int(a), int(b)) in verified for a, b in matches], bool)


def _fitted_inliers(kp0: np.ndarray, kp1: np.ndarray, matches: np.ndarray) -> np.ndarray:
    if len(matches) < 8:
        return np.zeros(len(matches), bool)
    options = pycolmap.RANSACOptions()
    options.max_error = 4.0 * max(1.0, float(np.ptp(kp0, axis=0).max()) / 1600.0)
    ret = pycolmap.estimate_fundamental_matrix(kp0[matches[:, 0]].astype(np.float64),
                                               kp1[matches[:, 1]].astype(np.float64), options)
    return np.zeros(len(matches), bool) if ret is None else np.asarray(ret["inlier_mask"], bool)


def load_pair(folder: Path, name0: str, name1: str) -> PairMatches:
    """Keypoints and matches of a pair from features.h5/matches.h5, else from database.db (sift)."""
    folder = Path(folder)
    db_path = folder / "database.db"
    if (folder / "features.h5").exists() and (folder / "matches.h5").exists():
        kp0 = h5io.read_keypoints(folder / "features.h5", name0)
        kp1 = h5io.read_keypoints(folder / "features.h5", name1)
        matches, _ = matches_h5.read_matches(folder / "matches.h5", name0, name1)
    elif db_path.exists():
        with pycolmap.Database.open(db_path) as db:
            ids = _db_image_ids(db, (name0, name1))
            if ids is None:
                raise KeyError(f"{name0!r} or {name1!r} is not in {db_path}")
            # database keypoints put the top-left pixel centre at (0.5, 0.5)
            kp0 = np.asarray(db.read_keypoints(ids[0]))[:, :2] - 0.5
            kp1 = np.asarray(db.read_keypoints(ids[1]))[:, :2] - 0.5
            matches = np.asarray(db.read_matches(*ids), np.int64).reshape(-1, 2)
    else:
        raise FileNotFoundError(f"{folder} holds neither features.h5 + matches.h5 nor database.db")
    inliers = _verified_inliers(db_path, (name0, name1), matches)
    source = "verified two-view geometry (database.db)"
    if inliers is None:
        inliers, source = _fitted_inliers(kp0, kp1, matches), "fundamental matrix fitted by pycolmap"
    return PairMatches(kp0, kp1, matches, inliers, source)


def draw_matches(img0: np.ndarray, img1: np.ndarray, pair: PairMatches, title: str, height: int = 720,
                 max_lines: int = 2000) -> Image.Image:
    """Side-by-side picture; inliers green, outliers red (drawn underneath)."""
    left, s0 = _fit_height(img0, height)
    right, s1 = _fit_height(img1, height)
    gap = 8
    canvas = Image.new("RGB", (left.width + gap + right.width, height), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    rng = np.random.default_rng(0)
    order = np.argsort(pair.inliers, kind="stable")  # outliers first, inliers on top
    if len(order) > max_lines:
        order = np.sort(rng.choice(order, max_lines, replace=False))
        order = order[np.argsort(pair.inliers[order], kind="stable")]
    width = max(1, height // 480)
    r = max(2, height // 300)
    for k in order:
        a, b = pair.matches[k]
        x0, y0 = (pair.keypoints0[a] + 0.5) * s0
        x1, y1 = (pair.keypoints1[b] + 0.5) * s1
        x1 += left.width + gap
        color = (*GREEN, 200) if pair.inliers[k] else (*RED, 150)
        draw.line([(x0, y0), (x1, y1)], fill=color, width=width)
        draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=color)
        draw.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], fill=color)
    canvas = Image.alpha_composite(canvas.convert("RGBA"), overlay).convert("RGB")
    return add_header(canvas, title, max(28, height // 18))


def viz_matches(folder: Path, name0: str, name1: str, out: Path, image_dir: Path | None = None) -> dict:
    folder = Path(folder)
    images = outputs.recorded_image_dir(folder, image_dir)
    pair = load_pair(folder, name0, name1)
    n_in = int(pair.inliers.sum())
    title = (f"{name0} - {name1}: {len(pair.matches)} matches, {n_in} inliers (green), "
             f"{len(pair.matches) - n_in} outliers (red); {pair.inlier_source}")
    picture = draw_matches(read_image(images / name0), read_image(images / name1), pair, title)
    save_png(picture, out)
    return {"matches": len(pair.matches), "inliers": n_in, "inlier_source": pair.inlier_source}


def track_lengths(rec: pycolmap.Reconstruction, image: pycolmap.Image) -> np.ndarray:
    """(N,) track length of each keypoint's 3D point, 0 when it has none."""
    out = np.zeros(image.num_points2D(), np.int64)
    for i, p in enumerate(image.points2D):
        if p.has_point3D():
            out[i] = rec.point3D(p.point3D_id).track.length()
    return out


def draw_keypoints(img: np.ndarray, xy: np.ndarray, lengths: np.ndarray, max_len: int,
                   height: int = 480) -> Image.Image:
    """One image with its keypoints: grey dots (no 3D point), coloured discs by track length."""
    pil, scale = _fit_height(img, height)
    draw = ImageDraw.Draw(pil)
    pts = xy * scale
    r = max(2, height // 160)
    for (x, y) in pts[lengths == 0]:
        draw.ellipse([x - 1, y - 1, x + 1, y + 1], fill=(150, 150, 150))
    tri = np.flatnonzero(lengths > 0)
    tri = tri[np.argsort(lengths[tri], kind="stable")]  # long tracks drawn last, on top
    colors = colormap((lengths[tri] - 2) / max(1, max_len - 2))
    for k, c in zip(tri, colors, strict=True):
        x, y = pts[k]
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in c), outline=(0, 0, 0))
    return pil


def _colorbar(width: int, max_len: int) -> Image.Image:
    bar = Image.new("RGB", (width, 50), "white")
    draw = ImageDraw.Draw(bar)
    x0, x1 = 200, width - 60
    ramp = colormap(np.linspace(0, 1, max(2, x1 - x0)))
    for i, c in enumerate(ramp):
        draw.line([(x0 + i, 12), (x0 + i, 32)], fill=tuple(int(v) for v in c))
    f = font(16)
    draw.text((10, 22), "track length:", fill="black", font=f, anchor="lm")
    draw.text((x0 - 8, 22), "2", fill="black", font=f, anchor="rm")
    draw.text((x1 + 8, 22), str(max_len), fill="black", font=f, anchor="lm")
    return bar


def viz_keypoints(folder: Path, out: Path, names: list[str] | None = None, image_dir: Path | None = None,
                  max_images: int = 6) -> dict:
    folder = Path(folder)
    images = outputs.recorded_image_dir(folder, image_dir)
    rec = load_model(folder)
    by_name = {rec.image(i).name: rec.image(i) for i in rec.reg_image_ids()}
    names = names or sorted(by_name)[:max_images]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KeyError(f"not registered in the model: {', '.join(unknown)}")
    all_lengths = {n: track_lengths(rec, by_name[n]) for n in names}
    max_len = max(2, max(int(v.max(initial=0)) for v in all_lengths.values()))
    tiles = []
    for n in names:
        # COLMAP image coordinates put the top-left pixel centre at (0.5, 0.5)
        xy = np.array([p.xy for p in by_name[n].points2D], float).reshape(-1, 2)
        tile = draw_keypoints(read_image(images / n), xy, all_lengths[n], max_len)
        tri = int((all_lengths[n] > 0).sum())
        tiles.append(add_header(tile, f"{n}: {len(xy)} keypoints, {tri} with a 3D point", 26))
    picture = tile_images(tiles, columns=min(3, len(tiles)))
    picture = _stack_vertical(picture, _colorbar(picture.width, max_len))
    save_png(picture, out)
    return {"images": names, "max_track_length": max_len}


def tile_images(tiles: list[Image.Image], columns: int, pad: int = 6) -> Image.Image:
    """Pictures in a grid of ``columns`` columns, ``pad`` px apart, on white."""
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    cw = max(t.width for t in tiles)
    rh = [max(t.height for t in row) for row in rows]
    canvas = Image.new("RGB", (columns * cw + (columns - 1) * pad, sum(rh) + (len(rows) - 1) * pad), "white")
    y = 0
    for row, h in zip(rows, rh, strict=True):
        for j, t in enumerate(row):
            canvas.paste(t, (j * (cw + pad), y))
        y += h + pad
    return canvas


def _stack_vertical(top: Image.Image, bottom: Image.Image) -> Image.Image:
    out = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), "white")
    out.paste(top, (0, 0))
    out.paste(bottom, (0, top.height))
    return out


def save_png(picture: Image.Image, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)

