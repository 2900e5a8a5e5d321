"""The 3D scene of a model: robust points, camera frustums (map and localized queries), the default view."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from ..formats import outputs, textfiles

MAP_CAMERA = (220, 60, 30)


QUERY_CAMERA = (20, 170, 60)


def load_model(path: Path | str) -> pycolmap.Reconstruction:
    return pycolmap.Reconstruction(outputs.find_model(path))


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
    rot, _ = look_at(View(center - direction, center, up, fov_deg))
    local = (everything - center) @ rot.T
    tan_y = np.tan(np.radians(fov_deg) / 2) * 0.95
    tan_x = tan_y * size[0] / size[1]
    need = np.maximum(np.abs(local[:, 0]) / tan_x, np.abs(local[:, 1]) / tan_y) - local[:, 2]
    distance = max(float(need.max()), 1e-6)
    return View(center - direction * distance, center, up, fov_deg)


def look_at(view: View) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera rotation (x right, y down, z forward) and the eye position."""
    z = view.center - view.eye
    z /= np.linalg.norm(z)
    x = np.cross(z, view.up)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z]), view.eye


def read_query_poses(poses: Path | str | None) -> dict[str, pycolmap.Rigid3d] | None:
    if poses is None:
        return None
    return textfiles.read_poses(poses)

