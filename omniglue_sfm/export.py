"""``export``: a model -> undistorted images and PINHOLE cameras for gaussian splatting or nerfstudio.

``DEST`` receives (both formats) ``images/<name>`` (undistorted, through ``pycolmap.undistort_images``)
and ``sparse/0/`` (the model with PINHOLE cameras, COLMAP binary: gaussian-splatting's layout), and
``masks/<name>.png`` (undistorted the same way) when the features were extracted with ``--masks``.
``--format nerfstudio`` adds ``transforms.json`` and ``sparse_pc.ply``. ``DEST/.omniglue-sfm-export.json``
marks the folder as an export: ``--overwrite`` replaces only such a folder, and image scans skip it.

Image frame: the cameras live in the EXIF-oriented frame (:mod:`omniglue_sfm.geometry.cameras`) but COLMAP
reads pixels without the EXIF orientation, so images whose tag rotates them are handed to COLMAP
upright (``colmap_sift.prepare_images``); the exported images are therefore written as the cameras
see them, and no downstream tool needs to know about EXIF.

``transforms.json`` follows nerfstudio's convention: camera-to-world ``transform_matrix`` with
OpenGL camera axes (x right, y up, looking down -z), in a world rotated by ``applied_transform``
(COLMAP world -> nerfstudio world: ``[[1,0,0],[0,0,1],[0,-1,0]]``, y and z swapped and the new z
negated, as nerfstudio's own COLMAP import writes it); intrinsics ``fl_x fl_y cx cy w h`` in pixels
(COLMAP's convention, the top-left pixel's centre at (0.5, 0.5)), at the top level when every image
shares one camera, else per frame.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image

from .colmap.mapper import configure_colmap_logging
from .colmap_sift import prepare_images
from .formats import h5io, outputs
from .formats.masks import MaskSet, mask_name
from .geometry.cameras import ImageInfo
from .runtime import locks
from .runtime.devices import num_threads

log = logging.getLogger(__name__)

FORMATS = ("gsplat", "nerfstudio")
JPEG_QUALITY = 95
# COLMAP world -> nerfstudio world, as nerfstudio's own COLMAP import (ns-process-data,
# process_data/colmap_utils.colmap_to_json) writes it: new x = old x, new y = old z, new z = -old y
APPLIED_TRANSFORM = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]])
# OpenCV camera axes (COLMAP: y down, looking down +z) <-> OpenGL (y up, looking down -z)
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class ExportOptions:
    format: str = "gsplat"  # see FORMATS
    image_dir: Path | None = None  # default: the image folder stats.json records
    masks: Path | None = None  # default: the mask folder features.h5 records (none: no masks)
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown export format {self.format!r}; choose one of {', '.join(FORMATS)}")


@dataclass
class ExportResult:
    dest: Path
    num_images: int
    num_points3D: int
    masks: bool


# --------------------------------------------------------------------------------------------
# inputs


def find_masks(source: Path, given: Path | None) -> MaskSet | None:
    """``given``, else the mask folder the model's features were extracted with (if any)."""
    if given is not None:
        return MaskSet(given)
    features = source / "features.h5"
    recorded = h5io.read_config(features).get("masks") if features.is_file() else None
    if recorded is None:
        return None
    if not Path(recorded).is_dir():
        raise FileNotFoundError(f"the features of {source} were extracted with masks from {recorded}, "
                                "which no longer exists; pass --masks")
    return MaskSet(Path(recorded))


def check_dest(dest: Path, overwrite: bool, inputs: tuple[Path, ...]) -> None:
    """``dest`` is new or empty (or ``overwrite``), and holds none of the inputs (it is replaced)."""
    for path in inputs:
        if path.resolve() == dest or dest in path.resolve().parents:
            raise ValueError(f"export destination {dest} holds the input {path}; choose another folder")
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"export destination {dest} is a file")
    if dest.is_dir() and any(dest.iterdir()):
        if not overwrite:
            raise FileExistsError(f"export destination {dest} is not empty; choose another folder or "
                                  "--overwrite")
        if not (dest / outputs.EXPORT_MARKER).is_file():  # --overwrite replaces DEST whole: only an export
            raise FileExistsError(
                f"export destination {dest} was not written by `omniglue-sfm export` (it has no "
                f"{outputs.EXPORT_MARKER}), and --overwrite would delete everything in it; choose another "
                "folder, or empty it yourself")


# --------------------------------------------------------------------------------------------
# undistortion


def check_image_sizes(rec: pycolmap.Reconstruction, infos: list[ImageInfo]) -> None:
    """Every image has its camera's size (COLMAP's undistorter would abort the process otherwise)."""
    by_name = {img.name: img for img in rec.images.values()}
    for info in infos:
        cam = rec.cameras[by_name[info.name].camera_id]
        if (info.width, info.height) != (cam.width, cam.height):
            raise ValueError(f"image {info.name} is {info.width}x{info.height} (EXIF orientation applied) "
                             f"but its camera is {cam.width}x{cam.height}: is the image folder the one the "
                             "model was made from? (--images)")


def undistort(original: pycolmap.Reconstruction, model_dir: Path, image_dir: Path, names: list[str],
              work: Path) -> Path:
    """Undistorted images + PINHOLE model in ``work/undistorted`` ({images, sparse})."""
    upright, infos, failed = prepare_images(image_dir, names, work / "upright")
    if failed:
        raise FileNotFoundError(f"cannot read {len(failed)} image(s) of the model in {image_dir}: "
                                + "; ".join(f"{n}: {r}" for n, r in list(failed.items())[:5]))
    check_image_sizes(original, infos)
    out = work / "undistorted"
    pycolmap.undistort_images(out, model_dir, upright, image_names=names, output_type="COLMAP",
                              jpeg_quality=JPEG_QUALITY, num_threads=num_threads())
    return out


def undistort_masks(masks: MaskSet, original: pycolmap.Reconstruction, names: list[str], dest: Path) -> None:
    """Every image's mask through its original camera, nearest neighbour (masks stay binary)."""
    options = pycolmap.UndistortCameraOptions()
    options.warp_options.interpolation = pycolmap.WarpImageOptions.Interpolation.NEAREST_NEIGHBOR
    by_name = {img.name: img for img in original.images.values()}
    for name in names:
        camera = original.cameras[by_name[name].camera_id]
        keep = masks.load(name, (camera.width, camera.height))
        bitmap = pycolmap.Bitmap.from_array(np.where(keep, 255, 0).astype(np.uint8))
        warped, _ = pycolmap.undistort_image(options, bitmap, camera)
        target = dest / mask_name(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.squeeze(warped.to_array())).save(target)


# --------------------------------------------------------------------------------------------
# nerfstudio


def camera_to_world_gl(image: pycolmap.Image) -> np.ndarray:
    """nerfstudio's ``transform_matrix`` of an image: 4x4 camera-to-world, OpenGL axes, nerfstudio world."""
    w2c = np.eye(4)
    w2c[:3] = np.asarray(image.cam_from_world().matrix())
    applied = np.vstack([APPLIED_TRANSFORM, [0, 0, 0, 1]])
    return applied @ np.linalg.inv(w2c) @ CV_TO_GL


def intrinsics(camera: pycolmap.Camera) -> dict:
    fx, fy, cx, cy = (float(v) for v in camera.params)  # PINHOLE after undistortion
    return {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": int(camera.width), "h": int(camera.height)}


def transforms_json(rec: pycolmap.Reconstruction, with_masks: bool) -> dict:
    images = sorted((rec.images[i] for i in rec.reg_image_ids()), key=lambda im: im.name)
    shared = len({im.camera_id for im in images}) == 1
    out: dict = {"camera_model": "PINHOLE"}
    if shared:
        out.update(intrinsics(rec.cameras[images[0].camera_id]))
    frames = []
    for image in images:
        frame = {"file_path": f"images/{image.name}",
                 "transform_matrix": camera_to_world_gl(image).tolist(), "colmap_im_id": int(image.image_id)}
        if not shared:
            frame.update(intrinsics(rec.cameras[image.camera_id]))
        if with_masks:
            frame["mask_path"] = f"masks/{mask_name(image.name)}"
        frames.append(frame)
    out["frames"] = frames
    out["applied_transform"] = APPLIED_TRANSFORM.tolist()
    out["ply_file_path"] = "sparse_pc.ply"
    return out


def write_points_ply(rec: pycolmap.Reconstruction, path: Path) -> None:
    """The 3D points in nerfstudio's world (``applied_transform``), binary PLY with colours."""
    points = list(rec.points3D.values())
    xyz = np.array([p.xyz for p in points], dtype=np.float64).reshape(-1, 3)
    xyz = (xyz @ APPLIED_TRANSFORM[:, :3].T + APPLIED_TRANSFORM[:, 3]).astype(np.float32)
    rgb = np.array([p.color for p in points], dtype=np.uint8).reshape(-1, 3)
    vertex = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                          ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, axis in enumerate("xyz"):
        vertex[axis] = xyz[:, i]
    for i, channel in enumerate(("red", "green", "blue")):
        vertex[channel] = rgb[:, i]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(points)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex.tobytes())


# --------------------------------------------------------------------------------------------
# entry point


def main(source: Path | str, dest: Path | str, options: ExportOptions | None = None) -> ExportResult:
    """Export the model of ``source`` (a reconstruct folder or a model folder) into ``dest``."""
    options = options or ExportOptions()
    source, dest = Path(source), Path(dest).resolve()
    model_dir = outputs.find_model(source)
    image_dir = outputs.recorded_image_dir(source, options.image_dir)
    masks = find_masks(source, options.masks)
    check_dest(dest, options.overwrite, (source, image_dir) + ((masks.root,) if masks else ()))
    original = pycolmap.Reconstruction(model_dir)
    names = sorted(original.images[i].name for i in original.reg_image_ids())
    if not names:
        raise ValueError(f"the model in {model_dir} has no registered image")
    if masks is not None:
        masks.check(names)
    work = dest.with_name(dest.name + ".export.tmp")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # one export into DEST at a time; the lock sits beside DEST, which is replaced as a whole
    with locks.output_lock(work):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        configure_colmap_logging(work, verbose=False)  # COLMAP's chatter stays off the terminal
        try:
            staged = work / "dest"
            undistorted = undistort(original, model_dir, image_dir, names, work)
            (staged / "sparse").mkdir(parents=True)
            shutil.move(undistorted / "images", staged / "images")
            shutil.move(undistorted / "sparse", staged / "sparse" / "0")
            if masks is not None:
                undistort_masks(masks, original, names, staged / "masks")
            rec = pycolmap.Reconstruction(staged / "sparse" / "0")
            outputs.write_json(staged / outputs.EXPORT_MARKER, {"written_by": "omniglue-sfm export",
                                                                "format": options.format,
                                                                "source": str(source.resolve())})
            if options.format == "nerfstudio":
                outputs.write_json(staged / "transforms.json", transforms_json(rec, masks is not None))
                write_points_ply(rec, staged / "sparse_pc.ply")
            if dest.exists():
                shutil.rmtree(dest)
            staged.rename(dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return ExportResult(dest, len(names), rec.num_points3D(), masks is not None)
