"""Ground-truth scenes: the Strecha ``.camera`` format and camera-pose helpers.

A Strecha ``<image name>.camera`` file holds 9 lines: K (3 rows); radial distortion; R (3 rows);
the camera centre C in world coordinates; ``width height``. R maps camera to world coordinates
(openMVG's reader treats it so, and reconstructions confirm it: see tests/test_evaluate.py), so
the world-to-camera pose is ``R_cw = R^T``, ``t_cw = -R^T C``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pycolmap

CAMERA_SUFFIX = ".camera"


@dataclass(frozen=True)
class CameraPose:
    """A world-to-camera pose ``x_cam = R x_world + t`` (and optionally intrinsics)."""

    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3,)
    K: np.ndarray | None = None
    size: tuple[int, int] | None = None  # (W, H)

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t


def read_strecha_camera(path: Path | str) -> CameraPose:
    values = Path(path).read_text().split()
    if len(values) < 26:
        raise ValueError(f"{path}: a Strecha .camera file has 26 numbers, found {len(values)}")
    nums = np.array([float(v) for v in values[:26]])
    K = nums[0:9].reshape(3, 3)
    R_c2w = nums[12:21].reshape(3, 3)
    C = nums[21:24]
    if not np.allclose(R_c2w @ R_c2w.T, np.eye(3), atol=1e-3):
        raise ValueError(f"{path}: R is not a rotation")
    R = R_c2w.T
    return CameraPose(R=R, t=-R @ C, K=K, size=(int(nums[24]), int(nums[25])))


def write_strecha_camera(path: Path | str, pose: CameraPose) -> None:
    """The inverse of :func:`read_strecha_camera` (used to build synthetic scenes)."""
    K = pose.K if pose.K is not None else np.eye(3)
    w, h = pose.size if pose.size is not None else (0, 0)
    rows = [K[0], K[1], K[2], np.zeros(3), pose.R.T[0], pose.R.T[1], pose.R.T[2], pose.center]
    text = "".join(" ".join(f"{v:.12g}" for v in row) + "\n" for row in rows) + f"{w} {h}\n"
    Path(path).write_text(text)


def read_strecha_dir(gt_dir: Path | str) -> dict[str, CameraPose]:
    """Every ``<name>.camera`` below ``gt_dir``, keyed by the image name (relative POSIX path)."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"ground-truth folder does not exist: {gt_dir}")
    poses = {
        p.relative_to(gt_dir).as_posix()[: -len(CAMERA_SUFFIX)]: read_strecha_camera(p)
        for p in sorted(gt_dir.rglob(f"*{CAMERA_SUFFIX}"))
    }
    if not poses:
        raise FileNotFoundError(f"no *{CAMERA_SUFFIX} files in {gt_dir}")
    return poses


def model_poses(model_dir: Path | str) -> dict[str, CameraPose]:
    """Poses of the registered images of a COLMAP model, keyed by image name."""
    import pycolmap

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder does not exist: {model_dir}")
    rec = pycolmap.Reconstruction(model_dir)
    poses = {}
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        pose = image.cam_from_world()
        poses[image.name] = CameraPose(R=np.asarray(pose.rotation.matrix()),
                                       t=np.asarray(pose.translation))
    return poses


def poses_to_reconstruction(poses: dict[str, CameraPose]) -> pycolmap.Reconstruction:
    """A COLMAP model (no points) of known poses: one PINHOLE camera per image from its ``K`` and
    ``size`` (e.g. a Strecha scene, as a ``triangulate --reference``)."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    for image_id, (name, pose) in enumerate(sorted(poses.items()), 1):
        if pose.K is None or pose.size is None:
            raise ValueError(f"pose of {name} has no intrinsics (K and size)")
        K = pose.K
        cam = pycolmap.Camera(model="PINHOLE", width=pose.size[0], height=pose.size[1],
                              params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]], camera_id=image_id)
        rec.add_camera_with_trivial_rig(cam)
        cam_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(pose.R), pose.t)
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=image_id, image_id=image_id),
                                         cam_from_world)
    return rec
