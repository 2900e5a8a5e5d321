"""Pictures of every stage: matches, keypoints by track length, 3D renders, PLY and HTML exports.

``viz matches  DIR name0 name1 OUT.png``  matches of a pair side by side, inliers green, outliers
                                         red (the verified two-view geometry in ``database.db``,
                                         else a fundamental matrix fitted here with pycolmap)
``viz keypoints DIR OUT.png [names]``    keypoints coloured by the track length of their 3D point
                                         (grey: not triangulated)
``viz model DIR OUT.png``                3D render of the points and camera frustums (Open3D
                                         offscreen; a numpy/Pillow rasteriser when Open3D cannot
                                         render, which the log and the picture say)
``viz ply DIR OUT.ply``                  points + frustum edges as one PLY (MeshLab, CloudCompare)
``viz html DIR OUT.html``                interactive plotly page of points and frustums

``DIR`` is a ``reconstruct`` output folder (``sparse/``, ``features.h5``, ``matches.h5``,
``database.db``) or, for the 3D modes, a COLMAP model folder. ``--poses poses.txt`` adds
localized query cameras (green) to the 3D modes.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image, ImageDraw, ImageFont

from . import io
from .images import read_image

log = logging.getLogger(__name__)

GREEN = (40, 200, 60)
RED = (230, 40, 40)
MAP_CAMERA = (220, 60, 30)
QUERY_CAMERA = (20, 170, 60)


class RenderError(RuntimeError):
    """A 3D render gave no picture (missing libraries, a crashed GL/Vulkan driver)."""


# --------------------------------------------------------------------------------------------
# locating things in an output folder


def load_model(path: Path | str) -> pycolmap.Reconstruction:
    return pycolmap.Reconstruction(io.find_model(path))


# --------------------------------------------------------------------------------------------
# small drawing helpers


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


def _header(canvas: Image.Image, text: str, height: int) -> Image.Image:
    out = Image.new("RGB", (canvas.width, canvas.height + height), "white")
    out.paste(canvas, (0, height))
    ImageDraw.Draw(out).text((10, height // 2), text, fill="black", font=font(int(height * 0.55)),
                             anchor="lm")
    return out


# --------------------------------------------------------------------------------------------
# matches


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
        kp0 = io.read_keypoints(folder / "features.h5", name0)
        kp1 = io.read_keypoints(folder / "features.h5", name1)
        matches, _ = io.read_matches(folder / "matches.h5", name0, name1)
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
    return _header(canvas, title, max(28, height // 18))


def viz_matches(folder: Path, name0: str, name1: str, out: Path, image_dir: Path | None = None) -> dict:
    folder = Path(folder)
    images = io.recorded_image_dir(folder, image_dir)
    pair = load_pair(folder, name0, name1)
    n_in = int(pair.inliers.sum())
    title = (f"{name0} - {name1}: {len(pair.matches)} matches, {n_in} inliers (green), "
             f"{len(pair.matches) - n_in} outliers (red); {pair.inlier_source}")
    picture = draw_matches(read_image(images / name0), read_image(images / name1), pair, title)
    _save_png(picture, out)
    return {"matches": len(pair.matches), "inliers": n_in, "inlier_source": pair.inlier_source}


# --------------------------------------------------------------------------------------------
# keypoints by track length


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
    images = io.recorded_image_dir(folder, image_dir)
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
        tiles.append(_header(tile, f"{n}: {len(xy)} keypoints, {tri} with a 3D point", 26))
    picture = tile_images(tiles, columns=min(3, len(tiles)))
    picture = _stack_vertical(picture, _colorbar(picture.width, max_len))
    _save_png(picture, out)
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


def _save_png(picture: Image.Image, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)


# --------------------------------------------------------------------------------------------
# 3D geometry shared by the render, PLY and HTML


@dataclass
class Frustum:
    name: str
    center: np.ndarray  # (3,)
    corners: np.ndarray  # (4, 3) image corners at the drawing depth
    color: tuple[int, int, int]


@dataclass
class Scene3D:
    points: np.ndarray  # (N, 3)
    colors: np.ndarray  # (N, 3) uint8
    frustums: list[Frustum]

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frustum wireframe: vertices (V, 3), edges (E, 2) into them, edge colours (E, 3)."""
        verts, edges, colors = [], [], []
        for f in self.frustums:
            base = len(verts)
            verts.extend([f.center, *f.corners])
            lines = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1)]
            edges.extend((base + a, base + b) for a, b in lines)
            colors.extend([f.color] * len(lines))
        return (np.array(verts, float).reshape(-1, 3), np.array(edges, np.int64).reshape(-1, 2),
                np.array(colors, np.uint8).reshape(-1, 3))


def robust_points(rec: pycolmap.Reconstruction, max_error: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """3D points and colours without the far, badly-constrained few that ruin every view."""
    pts = [(p.xyz, p.color) for p in rec.points3D.values() if p.error <= max_error and p.track.length() >= 2]
    if not pts:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    xyz = np.array([p[0] for p in pts], float)
    rgb = np.array([p[1] for p in pts], np.uint8)
    med = np.median(xyz, axis=0)
    dist = np.linalg.norm(xyz - med, axis=1)
    keep = dist <= 4.0 * np.percentile(dist, 80) + 1e-9
    return xyz[keep], rgb[keep]


def frustum(cam_from_world: pycolmap.Rigid3d, camera: pycolmap.Camera, depth: float, name: str,
            color: tuple[int, int, int]) -> Frustum:
    world_from_cam = cam_from_world.inverse()
    w, h = camera.width, camera.height
    corners_img = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    rays = np.asarray(camera.cam_from_img(corners_img), float)  # normalised (x, y) at z = 1
    rays = np.hstack([rays, np.ones((4, 1))]) * depth
    corners = np.array([world_from_cam * r for r in rays])
    return Frustum(name, np.asarray(world_from_cam.translation, float), corners, color)


def build_scene(rec: pycolmap.Reconstruction, queries: dict[str, pycolmap.Rigid3d] | None = None,
                query_camera: pycolmap.Camera | None = None, frustum_scale: float = 1.0) -> Scene3D:
    """Points and frustums (map cameras orange-red, localized queries green)."""
    xyz, rgb = robust_points(rec)
    images = [rec.image(i) for i in sorted(rec.reg_image_ids())]
    centres = np.array([im.projection_center() for im in images]).reshape(-1, 3)
    extent_pts = np.vstack([xyz, centres]) if len(xyz) else centres
    extent = float(np.linalg.norm(np.ptp(extent_pts, axis=0))) if len(extent_pts) > 1 else 1.0
    depth = 0.04 * extent * frustum_scale
    frustums = [frustum(im.cam_from_world(), im.camera, depth, im.name, MAP_CAMERA) for im in images]
    cam = query_camera or (images[0].camera if images else None)
    for name, pose in (queries or {}).items():
        frustums.append(frustum(pose, cam, depth, name, QUERY_CAMERA))
    return Scene3D(xyz, rgb, frustums)


# --------------------------------------------------------------------------------------------
# the view (shared by Open3D and the software rasteriser)


@dataclass
class View:
    eye: np.ndarray
    center: np.ndarray
    up: np.ndarray
    fov_deg: float = 50.0


def default_view(scene: Scene3D, size: tuple[int, int] = (1280, 960), fov_deg: float = 50.0) -> View:
    """Behind and above the cameras, looking at the scene (how the photographer saw it), far
    enough back that the points' bulk and every camera fit in the picture."""
    cams = np.array([f.center for f in scene.frustums]).reshape(-1, 3)
    pts = scene.points if len(scene.points) else cams
    if len(scene.points) > 20:  # the bulk of the points: far stragglers would shrink everything
        lo, hi = np.percentile(scene.points, [2, 98], axis=0)
        pts = scene.points[np.all((scene.points >= lo) & (scene.points <= hi), axis=1)]
    everything = np.vstack([pts, cams, *[f.corners for f in scene.frustums]])
    center = (everything.min(axis=0) + everything.max(axis=0)) / 2
    if scene.frustums:  # mean viewing direction and image "down" of the cameras
        forward = np.mean([f.corners.mean(axis=0) - f.center for f in scene.frustums], axis=0)
        down = np.mean([(f.corners[2] + f.corners[3]) / 2 - (f.corners[0] + f.corners[1]) / 2
                        for f in scene.frustums], axis=0)
    else:
        forward, down = np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])
    forward /= np.linalg.norm(forward) + 1e-12
    up = -down / (np.linalg.norm(down) + 1e-12)
    direction = forward - 0.6 * up  # look forward and somewhat down
    direction /= np.linalg.norm(direction)
    # the smallest distance at which every point projects inside the picture (5 % margin)
    rot, _ = _look_at(View(center - direction, center, up, fov_deg))
    local = (everything - center) @ rot.T
    tan_y = np.tan(np.radians(fov_deg) / 2) * 0.95
    tan_x = tan_y * size[0] / size[1]
    need = np.maximum(np.abs(local[:, 0]) / tan_x, np.abs(local[:, 1]) / tan_y) - local[:, 2]
    distance = max(float(need.max()), 1e-6)
    return View(center - direction * distance, center, up, fov_deg)


def _look_at(view: View) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera rotation (x right, y down, z forward) and the eye position."""
    z = view.center - view.eye
    z /= np.linalg.norm(z)
    x = np.cross(z, view.up)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z]), view.eye


# --------------------------------------------------------------------------------------------
# rendering


def _render_open3d(scene: Scene3D, view: View, size: tuple[int, int], point_size: float) -> np.ndarray:
    import open3d as o3d

    w, h = size
    renderer = o3d.visualization.rendering.OffscreenRenderer(w, h)
    renderer.scene.set_background([1.0, 1.0, 1.0, 1.0])
    renderer.scene.view.set_post_processing(False)  # tone mapping would wash out the point colours
    if len(scene.points):
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(scene.points))
        pcd.colors = o3d.utility.Vector3dVector(scene.colors.astype(float) / 255.0)
        mat = o3d.visualization.rendering.MaterialRecord()
        mat.shader = "defaultUnlit"
        mat.point_size = point_size
        renderer.scene.add_geometry("points", pcd, mat)
    verts, edges, colors = scene.edges()
    if len(edges):
        lines = o3d.geometry.LineSet(o3d.utility.Vector3dVector(verts), o3d.utility.Vector2iVector(edges))
        lines.colors = o3d.utility.Vector3dVector(colors.astype(float) / 255.0)
        lmat = o3d.visualization.rendering.MaterialRecord()
        lmat.shader = "unlitLine"
        lmat.line_width = 2.0
        renderer.scene.add_geometry("cameras", lines, lmat)
    renderer.setup_camera(view.fov_deg, view.center, view.eye, view.up)
    image = np.asarray(renderer.render_to_image()).copy()
    del renderer
    return image


def _render_open3d_child(scene: Scene3D, view: View, size: tuple[int, int], point_size: float,
                         queue: multiprocessing.Queue) -> None:
    if not log.isEnabledFor(logging.DEBUG):  # Filament/Vulkan chatter on stdout and stderr
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    try:
        queue.put(("ok", _render_open3d(scene, view, size, point_size)))
    except BaseException as err:  # report every failure (missing libraries included) to the parent
        queue.put(("error", f"{type(err).__name__}: {err}"))


def render_open3d(scene: Scene3D, view: View, size: tuple[int, int], point_size: float,
                  timeout: float = 300.0) -> np.ndarray:
    """Open3D offscreen render in a child process: a crash of the GL/Vulkan driver cannot take
    the caller down, and each render gets a fresh renderer (Open3D keeps one engine per process)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_render_open3d_child, args=(scene, view, size, point_size, queue))
    proc.start()
    try:
        status, value = queue.get(timeout=timeout)
    except Exception as err:
        proc.kill()
        raise RenderError(f"Open3D render gave no result (exit code {proc.exitcode}): {err}") from err
    finally:
        proc.join(timeout=10)
    if status != "ok":
        raise RenderError(value)
    return value


def render_software(scene: Scene3D, view: View, size: tuple[int, int], point_size: float) -> np.ndarray:
    """Pinhole projection with a painter's algorithm (far to near); lines drawn with Pillow."""
    w, h = size
    rot, eye = _look_at(view)
    f = 0.5 * h / np.tan(np.radians(view.fov_deg) / 2)

    def project(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = (x - eye) @ rot.T
        z = c[:, 2]
        uv = c[:, :2] / np.maximum(z, 1e-9)[:, None] * f + [w / 2, h / 2]
        return uv, z

    image = np.full((h, w, 3), 255, np.uint8)
    if len(scene.points):
        uv, z = project(scene.points)
        order = np.argsort(-z)  # far first, near points overwrite them
        uv, z, col = uv[order], z[order], scene.colors[order]
        r = max(1, round(point_size / 2))
        ok = (z > 1e-6) & (uv[:, 0] >= -r) & (uv[:, 0] < w + r) & (uv[:, 1] >= -r) & (uv[:, 1] < h + r)
        ui, vi, col = np.round(uv[ok, 0]).astype(int), np.round(uv[ok, 1]).astype(int), col[ok]
        for dy in range(-r + 1, r):
            for dx in range(-r + 1, r):
                x, y = ui + dx, vi + dy
                inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
                image[y[inside], x[inside]] = col[inside]
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    verts, edges, colors = scene.edges()
    if len(edges):
        uv, z = project(verts)
        for (a, b), c in zip(edges, colors, strict=True):
            if z[a] > 1e-6 and z[b] > 1e-6:
                draw.line([tuple(uv[a]), tuple(uv[b])], fill=tuple(int(v) for v in c), width=2)
    return np.asarray(pil)


def auto_point_size(num_points: int, size: tuple[int, int]) -> float:
    """Big dots for sparse models, small ones for dense models (a similar ink coverage)."""
    return float(np.clip(np.sqrt(size[0] * size[1] / max(num_points, 1)) / 6.0, 2.0, 7.0))


def render_model(folder: Path | str, out: Path | str, size: tuple[int, int] = (1280, 960),
                 poses: Path | str | None = None, title: str | None = None,
                 point_size: float | None = None, backend: str = "auto") -> dict:
    """Render a model to PNG. ``backend``: ``open3d``, ``software`` or ``auto`` (Open3D, else
    software, with a log message and a label in the picture saying so)."""
    rec = load_model(folder)
    scene = build_scene(rec, _read_poses(poses))
    if not scene.frustums and not len(scene.points):
        raise ValueError(f"the model in {io.find_model(folder)} is empty: nothing to render")
    view = default_view(scene, size)
    point_size = point_size or auto_point_size(len(scene.points), size)
    used, fallback_reason = backend, None
    if backend in ("auto", "open3d"):
        try:
            image = render_open3d(scene, view, size, point_size)
            used = "open3d"
        except Exception as err:
            if backend == "open3d":
                raise
            fallback_reason = str(err).splitlines()[0][:80]
            log.warning("Open3D offscreen rendering failed (%s); using the numpy/Pillow software "
                        "rasteriser instead", err)
            used = "software"
    if used == "software":
        image = render_software(scene, view, size, point_size)
    label = title or f"{io.find_model(folder)}"
    label += f"  |  {rec.num_reg_images()} cameras, {len(scene.points)} points"
    if used == "software":
        label += "  |  software rasteriser"
        if fallback_reason:
            label += f" (Open3D failed: {fallback_reason})"
    picture = _header(Image.fromarray(image), label, 34)
    _save_png(picture, Path(out))
    return {"backend": used, "points": int(len(scene.points)), "cameras": len(scene.frustums)}


def _read_poses(poses: Path | str | None) -> dict[str, pycolmap.Rigid3d] | None:
    if poses is None:
        return None
    return io.read_poses(poses)


# --------------------------------------------------------------------------------------------
# PLY and HTML


def write_ply(folder: Path | str, out: Path | str, poses: Path | str | None = None) -> dict:
    """Binary PLY: coloured points + frustum vertices, with the frustum wireframe as edges."""
    scene = build_scene(load_model(folder), _read_poses(poses))
    verts, edges, ecolors = scene.edges()
    vcolors = np.zeros((len(verts), 3), np.uint8)
    for (a, b), c in zip(edges, ecolors, strict=True):
        vcolors[a] = vcolors[b] = c
    xyz = np.vstack([scene.points, verts]).astype(np.float32)
    rgb = np.vstack([scene.colors, vcolors]).astype(np.uint8)
    edges = edges + len(scene.points)
    rgb_fields = [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), *rgb_fields])
    etype = np.dtype([("vertex1", "<i4"), ("vertex2", "<i4"), *rgb_fields])
    vdata = np.empty(len(xyz), vtype)
    vdata["x"], vdata["y"], vdata["z"] = xyz.T
    vdata["red"], vdata["green"], vdata["blue"] = rgb.T
    edata = np.empty(len(edges), etype)
    edata["vertex1"], edata["vertex2"] = edges.T.astype(np.int32)
    edata["red"], edata["green"], edata["blue"] = ecolors.T
    header = "\n".join([
        "ply", "format binary_little_endian 1.0", "comment omniglue-sfm: points + camera frustums",
        f"element vertex {len(vdata)}", "property float x", "property float y", "property float z",
        "property uchar red", "property uchar green", "property uchar blue",
        f"element edge {len(edata)}", "property int vertex1", "property int vertex2",
        "property uchar red", "property uchar green", "property uchar blue", "end_header\n"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vdata.tobytes())
        f.write(edata.tobytes())
    return {"points": int(len(scene.points)), "cameras": len(scene.frustums)}


def write_html(folder: Path | str, out: Path | str, poses: Path | str | None = None,
               offline: bool = True, max_points: int = 200_000) -> dict:
    """Interactive plotly page; ``offline`` embeds plotly.js (bigger file, works without internet)."""
    import plotly.graph_objects as go

    scene = build_scene(load_model(folder), _read_poses(poses))
    pts, cols = scene.points, scene.colors
    if len(pts) > max_points:
        keep = np.random.default_rng(0).choice(len(pts), max_points, replace=False)
        pts, cols = pts[keep], cols[keep]
    fig = go.Figure()
    fig.add_trace(go.Scatter3d(
        x=pts[:, 0], y=pts[:, 1], z=pts[:, 2], mode="markers", name=f"{len(pts)} points",
        marker={"size": 1.5, "color": [f"rgb({r},{g},{b})" for r, g, b in cols]}, hoverinfo="skip"))
    for color, label in ((MAP_CAMERA, "map cameras"), (QUERY_CAMERA, "localized queries")):
        xs, ys, zs, names = [], [], [], []
        for f in (f for f in scene.frustums if f.color == color):
            c, k = f.center, f.corners
            for seq in ([c, k[0], k[1], c, k[2], k[3], c], [k[0], k[3]], [k[1], k[2]]):
                for p in seq:
                    xs.append(p[0])
                    ys.append(p[1])
                    zs.append(p[2])
                    names.append(f.name)
                xs.append(None)
                ys.append(None)
                zs.append(None)
                names.append(None)
        if xs:
            fig.add_trace(go.Scatter3d(x=xs, y=ys, z=zs, mode="lines", name=label, text=names,
                                       hoverinfo="text", line={"color": f"rgb{color}", "width": 3}))
    fig.update_layout(scene={"aspectmode": "data", "xaxis": {"visible": False}, "yaxis": {"visible": False},
                             "zaxis": {"visible": False}},
                      margin={"l": 0, "r": 0, "t": 30, "b": 0}, title=str(io.find_model(folder)),
                      paper_bgcolor="white")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(out, include_plotlyjs=True if offline else "cdn")
    return {"points": int(len(pts)), "cameras": len(scene.frustums)}


# --------------------------------------------------------------------------------------------
# command line


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("viz", help="pictures: matches, keypoints, 3D render, PLY, HTML",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = p.add_subparsers(dest="mode", required=True, metavar="MODE")
    m = modes.add_parser("matches", help="matches of one pair (inliers green, outliers red)")
    m.add_argument("folder", type=Path, help="reconstruct output folder")
    m.add_argument("name0")
    m.add_argument("name1")
    m.add_argument("out", type=Path, help="PNG to write")
    m.add_argument("--images", type=Path, default=None, help="image folder (default: from stats.json)")
    k = modes.add_parser("keypoints", help="keypoints coloured by track length")
    k.add_argument("folder", type=Path, help="reconstruct output folder")
    k.add_argument("out", type=Path, help="PNG to write")
    k.add_argument("names", nargs="*", help="images to show (default: the first 6 registered)")
    k.add_argument("--images", type=Path, default=None, help="image folder (default: from stats.json)")
    r = modes.add_parser("model", help="3D render of points and cameras to PNG")
    r.add_argument("folder", type=Path, help="reconstruct output folder or COLMAP model folder")
    r.add_argument("out", type=Path, help="PNG to write")
    r.add_argument("--size", default="1280x960", help="WxH in pixels")
    r.add_argument("--backend", choices=("auto", "open3d", "software"), default="auto")
    r.add_argument("--point-size", type=float, default=None, help="default: from the number of points")
    for name, helptext in (("ply", "points + camera frustums as PLY"), ("html", "interactive plotly page")):
        e = modes.add_parser(name, help=helptext)
        e.add_argument("folder", type=Path, help="reconstruct output folder or COLMAP model folder")
        e.add_argument("out", type=Path)
        if name == "html":
            e.add_argument("--cdn", action="store_true", help="load plotly.js from its CDN (small file)")
    for sp in (r, modes.choices["ply"], modes.choices["html"]):
        sp.add_argument("--poses", type=Path, default=None, help="poses.txt of localized queries (green)")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    if args.mode == "matches":
        info = viz_matches(args.folder, args.name0, args.name1, args.out, args.images)
    elif args.mode == "keypoints":
        info = viz_keypoints(args.folder, args.out, args.names or None, args.images)
    elif args.mode == "model":
        w, h = (int(v) for v in args.size.lower().split("x"))
        info = render_model(args.folder, args.out, (w, h), args.poses, point_size=args.point_size,
                            backend=args.backend)
    elif args.mode == "ply":
        info = write_ply(args.folder, args.out, args.poses)
    else:
        info = write_html(args.folder, args.out, args.poses, offline=not args.cdn)
    print(f"wrote {args.out} ({', '.join(f'{k}={v}' for k, v in info.items())})")
    return 0
