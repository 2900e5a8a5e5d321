"""360-degree photos: equirectangular panoramas -> a rig of pinhole views with known relative poses.

An equirectangular panorama (2:1, longitude across, latitude down) is cut into ``views`` square
pinhole views around the horizon (yaw every 360/views degrees, field of view ``fov`` degrees,
default 6 views of 90 degrees: neighbours overlap by 30 degrees; the poles, mostly sky and
ground or the tripod, are left out). Each view is an ordinary photo for extraction and matching;
in the database the views of one panorama form a frame of one rig whose sensors' poses are fixed
(``pycolmap.apply_rig_config``), so the mapper estimates one pose per panorama.

Frames: the panorama's frame is a camera frame (x right, y down, z forward at the panorama's
centre column); the rig frame is view 0's camera (the reference sensor, looking at the centre
column), and view ``k`` is that camera turned right by ``k * 360 / views`` degrees about y.

Files: view ``k`` of panorama ``name`` is ``view_<k>/<name>`` (COLMAP's rig convention: the rig
camera is the folder, the frame is the file name), JPEG, ``size`` pixels a side (default: the
panorama's angular resolution, width * fov / 360).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ASPECT = 2.0
ASPECT_TOLERANCE = 0.01  # |W / H - 2| / 2 at most: a pixel of rounding on either side
VIEW_PREFIX = "view_"


class PanoramaError(ValueError):
    """An image that was to be a panorama is not one, or panoramas and photos are mixed."""


def is_equirectangular(size: tuple[int, int]) -> bool:
    """Whether (W, H) has the 2:1 shape of an equirectangular panorama."""
    w, h = size
    return h > 0 and abs(w / h - ASPECT) <= ASPECT * ASPECT_TOLERANCE


def check_panoramas(sizes: dict[str, tuple[int, int]], mode: str) -> bool:
    """Whether the images (name -> oriented (W, H)) are panoramas. ``mode``: ``auto`` (all 2:1:
    yes; none: no; some: an error), ``on`` (every one must be 2:1) or ``off``."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"unknown panorama mode {mode!r}; choose auto, on or off")
    if mode == "off" or not sizes:
        return False
    wide = sorted(n for n, s in sizes.items() if is_equirectangular(s))
    other = sorted(n for n in sizes if n not in set(wide))
    if mode == "on" and other:
        w, h = sizes[other[0]]
        raise PanoramaError(f"{other[0]} is {w}x{h}, not 2:1: not an equirectangular panorama"
                            + (f" (and {len(other) - 1} more)" if len(other) > 1 else ""))
    if mode == "auto" and wide and other:
        raise PanoramaError(
            f"{len(wide)} of {len(sizes)} images are 2:1 panoramas (e.g. {wide[0]}) and {len(other)} are "
            f"photos (e.g. {other[0]}): reconstruct them in separate runs, or say which they are with "
            "--panoramas on / off")
    return bool(wide)


@dataclass(frozen=True)
class PanoramaOptions:
    views: int = 6
    fov: float = 90.0  # degrees, each view's horizontal and vertical field of view
    size: int | None = None  # pixels a side; None: the panorama's angular resolution

    def __post_init__(self) -> None:
        if not 3 <= self.views <= 36:
            raise ValueError(f"--pano-views must be within 3..36, got {self.views}")
        if not 30.0 <= self.fov <= 150.0:
            raise ValueError(f"--pano-fov must be within 30..150 degrees, got {self.fov}")
        if 360.0 / self.views > self.fov:
            raise ValueError(f"{self.views} views of {self.fov:g} degrees leave gaps around the horizon")
        if self.size is not None and self.size < 32:
            raise ValueError(f"--pano-view-size must be at least 32 pixels, got {self.size}")

    def view_size(self, pano_width: int) -> int:
        return self.size or max(32, round(pano_width * self.fov / 360.0))

    def focal(self, size: int) -> float:
        return (size / 2.0) / math.tan(math.radians(self.fov) / 2.0)

    def yaws(self) -> list[float]:
        return [k * 360.0 / self.views for k in range(self.views)]


def yaw_rotation(degrees: float) -> np.ndarray:
    """Rotation about y (down) by ``degrees``: turns the forward axis z towards x (right)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def cams_from_rig(options: PanoramaOptions) -> list[np.ndarray]:
    """Each view's rotation ``cam_from_rig`` (the rig frame is view 0's)."""
    return [yaw_rotation(y).T for y in options.yaws()]


def view_name(k: int, pano_name: str) -> str:
    return f"{VIEW_PREFIX}{k}/{pano_name}"


def directions_to_pixels(d: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Directions in the panorama frame (..., 3) -> equirectangular pixel coordinates (u, v),
    pixel centres at integers."""
    lon = np.arctan2(d[..., 0], d[..., 2])
    lat = np.arctan2(-d[..., 1], np.hypot(d[..., 0], d[..., 2]))
    u = (lon + math.pi) / (2 * math.pi) * width - 0.5
    v = (math.pi / 2 - lat) / math.pi * height - 0.5
    return u, v


def pixels_to_directions(width: int, height: int) -> np.ndarray:
    """(H, W, 3) unit directions of every equirectangular pixel centre, in the panorama frame."""
    lon = (np.arange(width) + 0.5) / width * 2 * math.pi - math.pi
    lat = math.pi / 2 - (np.arange(height) + 0.5) / height * math.pi
    lon, lat = np.meshgrid(lon, lat)
    return np.stack([np.cos(lat) * np.sin(lon), -np.sin(lat), np.cos(lat) * np.cos(lon)], axis=-1)


def _bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample ``image`` (H, W, C) at (u, v); u wraps around (longitude), v is clamped."""
    h, w = image.shape[:2]
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = (u - u0)[..., None], (v - v0)[..., None]
    u0 = u0.astype(np.int64)
    v0 = v0.astype(np.int64)
    x0, x1 = u0 % w, (u0 + 1) % w
    y0, y1 = np.clip(v0, 0, h - 1), np.clip(v0 + 1, 0, h - 1)
    img = image.astype(np.float32)
    top = img[y0, x0] * (1 - fu) + img[y0, x1] * fu
    bottom = img[y1, x0] * (1 - fu) + img[y1, x1] * fu
    return top * (1 - fv) + bottom * fv


def render_view(pano: np.ndarray, cam_from_pano: np.ndarray, size: int, focal: float) -> np.ndarray:
    """The pinhole view (size x size, principal point at the centre) of an equirectangular image."""
    h, w = pano.shape[:2]
    coords = (np.arange(size) + 0.5 - size / 2.0) / focal
    x, y = np.meshgrid(coords, coords)
    rays = np.stack([x, y, np.ones_like(x)], axis=-1) @ cam_from_pano  # (cam_from_pano^T ray)
    u, v = directions_to_pixels(rays, w, h)
    out = _bilinear(pano, u, v)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def cut(pano: np.ndarray, options: PanoramaOptions) -> list[np.ndarray]:
    """The views of one panorama, in view order."""
    size = options.view_size(pano.shape[1])
    focal = options.focal(size)
    return [render_view(pano, r, size, focal) for r in cams_from_rig(options)]


def camera_params(options: PanoramaOptions, pano_width: int) -> tuple[int, str]:
    """(view size, COLMAP PINHOLE parameters 'fx,fy,cx,cy') of the views."""
    size = options.view_size(pano_width)
    f = options.focal(size)
    return size, f"{f:.6f},{f:.6f},{size / 2:.6f},{size / 2:.6f}"


def rig_config(options: PanoramaOptions):
    """A ``pycolmap.RigConfig``: view ``k`` (images ``view_<k>/...``) at its fixed rotation."""
    import pycolmap

    cameras = []
    for k, rotation in enumerate(cams_from_rig(options)):
        cam = pycolmap.RigConfigCamera()
        cam.image_prefix = f"{VIEW_PREFIX}{k}/"
        cam.ref_sensor = k == 0
        cam.cam_from_rig = pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), np.zeros(3))
        cameras.append(cam)
    config = pycolmap.RigConfig()
    config.cameras = cameras
    return config


def pano_of_view(view: str) -> tuple[int, str] | None:
    """``view_<k>/<name>`` -> (k, name); None for another name."""
    head, _, rest = view.partition("/")
    if not head.startswith(VIEW_PREFIX) or not rest or not head[len(VIEW_PREFIX):].isdigit():
        return None
    return int(head[len(VIEW_PREFIX):]), rest


def same_panorama(a: str, b: str) -> bool:
    pa, pb = pano_of_view(a), pano_of_view(b)
    return pa is not None and pb is not None and pa[1] == pb[1]


def view_names(pano_names: Sequence[str], options: PanoramaOptions) -> list[str]:
    return sorted(view_name(k, n) for n in pano_names for k in range(options.views))


def write_views(pano_path: Path, pano_name: str, out_dir: Path, options: PanoramaOptions,
                quality: int = 95) -> list[str]:
    """Cut the panorama at ``pano_path`` into ``out_dir/view_<k>/<pano_name>``; returns the names."""
    from PIL import Image

    from ..formats.images import read_image

    pano = read_image(pano_path)
    names = []
    for k, view in enumerate(cut(pano, options)):
        name = view_name(k, pano_name)
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        suffix = target.suffix.lower()
        kwargs = {"quality": quality} if suffix in (".jpg", ".jpeg") else {}
        Image.fromarray(view).save(target, **kwargs)
        names.append(name)
    return names
