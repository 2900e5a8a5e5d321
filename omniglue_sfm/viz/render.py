"""3D renders to PNG: Open3D off-screen, or a numpy/Pillow rasteriser when Open3D cannot render
(the log and the picture say which).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..formats import outputs
from .draw import add_header, save_png
from .scene import Scene3D, View, build_scene, default_view, load_model, look_at, read_query_poses

log = logging.getLogger(__name__)


class RenderError(RuntimeError):
    """A 3D render gave no picture (missing libraries, a crashed GL/Vulkan driver)."""


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
    rot, eye = look_at(view)
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
    scene = build_scene(rec, read_query_poses(poses))
    if not scene.frustums and not len(scene.points):
        raise ValueError(f"the model in {outputs.find_model(folder)} is empty: nothing to render")
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
    label = title or f"{outputs.find_model(folder)}"
    label += f"  |  {rec.num_reg_images()} cameras, {len(scene.points)} points"
    if used == "software":
        label += "  |  software rasteriser"
        if fallback_reason:
            label += f" (Open3D failed: {fallback_reason})"
    picture = add_header(Image.fromarray(image), label, 34)
    save_png(picture, Path(out))
    return {"backend": used, "points": int(len(scene.points)), "cameras": len(scene.frustums)}

