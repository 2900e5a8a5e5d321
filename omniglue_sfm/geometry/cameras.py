"""Cameras: image sizes, the EXIF focal-length prior, and camera creation for maps and queries.

* Image frame: cameras live in the EXIF-oriented frame, the one ``images.read_image`` returns and
  ``features.h5``'s ``image_size`` records. COLMAP's own image reader ignores EXIF orientation (a
  portrait iPhone photo becomes a 1600x1200 camera), so cameras are made here, not through
  ``pycolmap.import_images``. The focal-length prior still comes from COLMAP's EXIF reader
  (``infer_camera_from_image``: focal length in pixels does not change under a 90-degree
  rotation); without EXIF it is ``1.2 * max(W, H)`` as in COLMAP.
* Map cameras (:func:`make_cameras`) are shared between images according to a camera mode; a
  query camera (:func:`guess_camera`, :func:`parse_camera_line`) is one per image, and a query
  list (:func:`resolve_queries`) may give it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pycolmap

from ..formats import h5io
from ..formats.images import IMAGE_EXTENSIONS, list_images

logger = logging.getLogger(__name__)

CAMERA_MODES = ("auto", "single", "per_image", "per_folder")
# default focal length without an EXIF prior, as COLMAP's ImageReaderOptions
DEFAULT_FOCAL_FACTOR = 1.2


@dataclass(frozen=True)
class CameraOptions:
    """How map images get cameras: shared by ``mode``, of COLMAP ``model``, with known ``params``."""

    mode: str = "auto"  # see CAMERA_MODES and camera_key()
    model: str = "SIMPLE_RADIAL"  # a COLMAP camera model name
    params: str | None = None  # known intrinsics, comma separated in the model's order

    def __post_init__(self) -> None:
        # checked here, before any work: a bad model or params would otherwise surface only
        # after extract and match, as COLMAP's internal check message
        if self.mode not in CAMERA_MODES:
            raise ValueError(f"unknown camera mode {self.mode!r}; choose one of {CAMERA_MODES}")
        check_camera_model(self.model)
        if self.params:
            check_camera_params(self.model, self.params)


def camera_model_names() -> list[str]:
    """COLMAP's camera model names (as ``--camera-model`` takes them)."""
    return [name for name in pycolmap.CameraModelId.__members__ if name != "INVALID"]


def check_camera_model(model: str) -> None:
    if model not in camera_model_names():
        raise ValueError(f"unknown camera model {model!r}; choose one of {', '.join(camera_model_names())}")


def check_camera_params(model: str, params: str) -> None:
    """``params`` (comma separated) must be finite numbers, as many as ``model`` has, with positive
    focal lengths."""
    cam = pycolmap.Camera.create_from_model_name(0, model, 1.0, 1, 1)
    info = cam.params_info
    want = len(info.split(","))
    parts = [p.strip() for p in params.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--camera-params {params!r} are not all numbers; model {model} takes "
                         f"{want} comma-separated numbers ({info})") from None
    if len(values) != want:
        raise ValueError(f"--camera-params {params!r} give {len(values)} number(s); model {model} takes "
                         f"{want} ({info})")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"--camera-params {params!r}: every value must be a finite number ({info})")
    if any(values[i] <= 0 for i in cam.focal_length_idxs()):
        raise ValueError(f"--camera-params {params!r}: the focal length must be positive, in pixels ({info})")


@dataclass(frozen=True)
class ImageInfo:
    name: str
    width: int
    height: int


def read_image_infos(features_path: Path, names: Sequence[str]) -> list[ImageInfo]:
    """The EXIF-oriented size of every image, from ``features.h5``'s ``image_size``."""
    infos = []
    with h5io.read_h5(features_path) as h5:
        for name in names:
            if name not in h5 or "keypoints" not in h5[name]:
                raise KeyError(f"no features for image {name!r} in {features_path}")
            w, h = (int(v) for v in h5[name]["image_size"][()])
            infos.append(ImageInfo(name, w, h))
    return infos


def focal_prior(path: Path, model: str, width: int, height: int) -> float | None:
    """EXIF focal length in pixels for an image of (width, height), or None without EXIF."""
    try:
        cam = pycolmap.infer_camera_from_image(path, pycolmap.ImageReaderOptions(camera_model=model))
    except Exception as err:  # unreadable EXIF is not fatal: fall back to the default focal
        logger.debug("no EXIF camera for %s: %s", path, err)
        return None
    if not cam.has_prior_focal_length:
        return None
    focal = float(cam.mean_focal_length())
    # COLMAP reads the stored (un-rotated) frame; the long side is the same in both frames.
    raw_long = max(cam.width, cam.height)
    return focal * max(width, height) / raw_long if raw_long else focal


# --------------------------------------------------------------------------------------------
# map cameras


def camera_key(info: ImageInfo, mode: str, focal: float | None) -> tuple:
    """Images with the same key share a camera."""
    folder = os.path.dirname(info.name)
    if mode == "single":
        return ("single", info.width, info.height)
    if mode == "per_folder":
        return (folder, info.width, info.height)
    if mode == "per_image" or focal is None:
        return ("image", info.name)
    # auto: images of the same folder, size and EXIF focal length share a camera
    return (folder, info.width, info.height, round(focal, 3))


def make_cameras(
    image_dir: Path, infos: Sequence[ImageInfo], options: CameraOptions | None = None
) -> tuple[list[pycolmap.Camera], list[int]]:
    """Cameras (ids unset) and, for every image, the index of its camera."""
    options = options or CameraOptions()
    camera_mode, camera_model, camera_params = options.mode, options.model, options.params
    if camera_mode == "single":
        sizes = {(i.width, i.height) for i in infos}
        if len(sizes) > 1:
            raise ValueError(f"--camera-mode single needs images of one size, found {sorted(sizes)}")
    cameras: list[pycolmap.Camera] = []
    index: dict[tuple, int] = {}
    assignment: list[int] = []
    for info in infos:
        focal = None if camera_params else focal_prior(
            image_dir / info.name, camera_model, info.width, info.height)
        key = camera_key(info, camera_mode, focal)
        if key not in index:
            index[key] = len(cameras)
            cameras.append(new_camera(info, camera_model, camera_params, focal))
        assignment.append(index[key])
    return cameras, assignment


def new_camera(info: ImageInfo, model: str, params: str | None, focal: float | None) -> pycolmap.Camera:
    """One camera of ``model``: ``params`` when given, else the focal prior or the default guess."""
    prior = focal is not None
    f = focal if prior else DEFAULT_FOCAL_FACTOR * max(info.width, info.height)
    cam = pycolmap.Camera.create_from_model_name(0, model, f, info.width, info.height)
    if params:
        if not cam.set_params_from_string(params) or not cam.verify_params():
            raise ValueError(f"camera params {params!r} do not fit model {model} ({cam.params_info})")
        prior = True
    cam.has_prior_focal_length = prior
    return cam


# --------------------------------------------------------------------------------------------
# query cameras


def parse_camera_line(tokens: Sequence[str], where: str) -> pycolmap.Camera:
    """``MODEL W H params...`` (hloc's ``*_with_intrinsics.txt``) -> a camera."""
    if len(tokens) < 4:
        raise ValueError(f"{where}: expected 'name MODEL W H params...', got {' '.join(tokens)!r}")
    model, width, height, params = tokens[0], int(tokens[1]), int(tokens[2]), [float(p) for p in tokens[3:]]
    try:
        cam = pycolmap.Camera(model=model, width=width, height=height, params=params)
    except Exception as err:  # pycolmap raises various types for a bad model name / param count
        raise ValueError(f"{where}: bad camera {' '.join(tokens)!r}: {err}") from err
    if not cam.verify_params():
        raise ValueError(f"{where}: camera params do not fit model {model} ({cam.params_info})")
    return cam


def guess_camera(path: Path, width: int, height: int) -> tuple[pycolmap.Camera, str]:
    """A SIMPLE_RADIAL camera with the EXIF focal ('exif') or the default guess ('guess')."""
    focal = focal_prior(path, "SIMPLE_RADIAL", width, height)  # the same EXIF reading as map cameras
    source = "exif" if focal is not None else "guess"
    if focal is None:
        focal = DEFAULT_FOCAL_FACTOR * max(width, height)
    cam = pycolmap.Camera(model="SIMPLE_RADIAL", width=width, height=height,
                          params=[focal, width / 2, height / 2, 0.0])
    return cam, source


def camera_dict(cam: pycolmap.Camera) -> dict:
    """A camera as JSON-friendly data (``localize.json``)."""
    return {"model": cam.model.name, "width": int(cam.width), "height": int(cam.height),
            "params": [float(p) for p in cam.params]}


# --------------------------------------------------------------------------------------------
# query lists: images to localize, each with its camera when the list gives one


@dataclass
class Query:
    name: str  # as given (relative to image_dir), also the key in query_features.h5
    camera: pycolmap.Camera | None = None  # known intrinsics (list file), else decided later


def read_query_list(path: Path) -> list[Query]:
    """A list file: one image a line, optionally followed by ``MODEL W H params...``."""
    queries = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        camera = parse_camera_line(tokens[1:], f"{path}:{line_no}") if len(tokens) > 1 else None
        queries.append(Query(tokens[0], camera))
    return queries


def resolve_queries(
    queries: Path | str | Sequence[str], image_dir: Path | str | None = None
) -> tuple[Path, list[Query]]:
    """(image folder, queries) from a folder, a list file, or a list of names under ``image_dir``."""
    if not isinstance(queries, (str, Path)):
        if image_dir is None:
            raise ValueError("a list of query names needs image_dir")
        return Path(image_dir), [Query(str(q)) for q in queries]
    path = Path(queries)
    if path.is_dir():
        return (Path(image_dir) if image_dir else path), [Query(n) for n in list_images(path)]
    if not path.is_file():
        raise FileNotFoundError(f"queries {path} is neither a folder nor a list file")
    if path.suffix.lower() in IMAGE_EXTENSIONS:  # a single image
        return path.parent, [Query(path.name)]
    return (Path(image_dir) if image_dir else path.parent), read_query_list(path)


def read_intrinsics(path: Path | str) -> dict[str, pycolmap.Camera]:
    """hloc-style intrinsics list: ``name MODEL W H params...`` a line."""
    return {q.name: q.camera for q in read_query_list(Path(path)) if q.camera is not None}
